// histofetch review: one figure at a time, keyboard first. No framework, no network but
// this server. Manifest values are set with textContent; only the caption's highlight
// markup comes as HTML, built on the server from escaped pieces.
"use strict";

const $ = (id) => document.getElementById(id);
const LABEL_TEXT = {
  metastasis: "metastasis",
  no_metastasis: "no metastasis",
  not_usable: "not usable",
  abstain: "abstain",
};
const state = {
  items: [],     // [{id, label, weak_label}] matching the filters
  index: 0,
  current: null, // the full item shown
  undo: [],      // [{id, previous}] answers of this tab, newest last
  zoom: 0,       // 0 = fit, else a scale factor
  heat: false,
  progress: null, // the run's counts, as the server last sent them
  retry: null,    // what → runs while the figure to show did not load (it is not skipped)
  unsaved: null,  // {id, here, away}: the NOT SAVED message while it is the one said
};
const FILTER_IDS = ["f-status", "f-disagree", "f-record", "f-weak", "f-label"];

function filters() {
  const q = new URLSearchParams();
  for (const [key, id] of [["status", "f-status"], ["disagree", "f-disagree"],
    ["record", "f-record"], ["weak", "f-weak"], ["label", "f-label"]]) {
    const v = $(id).value;
    if (v) q.set(key, v);
  }
  return q;
}

// Saved answers go to a polite status region, failures to an alert region (a screen reader
// says them at once); both inside #status, under the answer buttons.
function say(text, isError) {
  state.unsaved = null;  // a NOT SAVED message is kept only while it is the one said
  $("status-polite").textContent = isError ? "" : text;
  $("status-alert").textContent = isError ? text : "";
  $("status").classList.toggle("error", Boolean(isError));
}

// fetch's own TypeError ("Failed to fetch") said nothing a reviewer can act on: the page
// names the cause (the server stopped or the network is down) instead.
class Unreachable extends Error {}
// The figure to show did not load (its /api/item/ request failed).
class NotLoaded extends Error {}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Unreachable("the review server does not answer (stopped? start histofetch review again)");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showProgress(p) {
  state.progress = p;
  const bar = $("progress-bar");
  bar.max = Math.max(1, p.total);
  bar.value = p.reviewed;
  $("progress-text").textContent =
    `${p.reviewed} / ${p.total} reviewed · ${p.metastasis} m · ${p.no_metastasis} n · ${p.not_usable} u`;
}

async function loadList(keepId) {
  const body = await api(`/api/items?${filters().toString()}`);
  state.items = body.items;
  showProgress(body.progress);
  const at = keepId ? state.items.findIndex((x) => x.id === keepId) : -1;
  state.index = at >= 0 ? at : Math.min(state.index, Math.max(0, state.items.length - 1));
  await show();
}

function pill(el, value) {
  el.textContent = value ? (LABEL_TEXT[value] || value) : "not reviewed";
  el.className = `pill pill-${value || "none"}`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// What an empty list means: every figure reviewed (the default view's end), or filters
// that match nothing; each with the one click that shows figures again.
function explainEmpty() {
  const p = state.progress;
  const action = $("empty-action");
  const allDone = p && p.total > 0 && p.reviewed === p.total;
  if (allDone && $("f-status").value === "unreviewed") {
    $("empty-text").textContent = p.total === 1
      ? "The 1 figure of this run is reviewed."
      : `All ${p.total} figures of this run are reviewed.`;
    $("empty-detail").textContent =
      `${p.metastasis} metastasis · ${p.no_metastasis} no metastasis · ${p.not_usable} not usable`;
    action.textContent = `show all ${plural(p.total, "figure")}`;
    action.dataset.action = "all";
  } else {
    const rest = p && p.total > p.reviewed ? `${p.total - p.reviewed} of ${p.total}` : "none";
    $("empty-text").textContent = "Nothing matches these filters.";
    $("empty-detail").textContent = p
      ? `${plural(p.total, "figure")} in this run; unreviewed: ${rest}.`
      : "";
    action.textContent = "clear filters";
    action.dataset.action = "clear";
  }
  action.hidden = false;
}

function emptyAction() {
  if ($("empty-action").dataset.action === "all") {
    $("f-status").value = "all";
  } else {
    for (const id of FILTER_IDS) $(id).value = "";
    $("f-status").value = "all";
  }
  state.index = 0;
  enqueue(() => shown(() => loadList(null), ""));
}

async function show() {
  const empty = state.items.length === 0;
  $("empty").hidden = !empty;
  $("stage").hidden = empty;
  document.body.classList.toggle("nothing-shown", empty);  // no stale figure facts beside it
  $("position").textContent = empty ? "0 / 0" : `${state.index + 1} / ${state.items.length}`;
  state.current = null;  // keys answer nothing until the next figure is shown
  if (empty) { document.body.classList.remove("not-loaded"); explainEmpty(); return; }
  const id = state.items[state.index].id;
  let it;
  try {
    it = await api(`/api/item/${encodeURIComponent(id)}`);
  } catch (e) {
    // the last figure's image and facts are not this one's: hidden, not shown as if current
    document.body.classList.add("not-loaded");
    throw new NotLoaded(`figure ${id} did not load: ${e.message}`);
  }
  document.body.classList.remove("not-loaded");
  state.current = it;
  state.heat = false;
  const img = $("figure");
  img.src = `/image/${encodeURIComponent(id)}`;
  img.alt = altText(it);
  $("figure-id").textContent = it.panel ? `${id} (panel ${it.panel})` : id;
  pill($("label"), it.label);
  $("label-by").textContent = it.label_by ? `by ${it.label_by}, ${it.label_at}` : "";
  pill($("weak-label"), it.weak_label);
  $("rules").textContent = it.rules || "";
  $("site").textContent = (it.site || "unknown").replace("_", " ");
  const caption = $("caption");
  caption.innerHTML = it.has_caption ? it.caption_html : "<em>no caption</em>";
  if (it.figure_label) {  // the JATS label ("Figure 1"), as text, in bold before the caption
    const label = document.createElement("strong");
    label.className = "fig-label";
    label.textContent = it.figure_label;
    caption.prepend(label, " ");
  }
  $("leakage").textContent = it.leakage.length ? it.leakage.join(", ") : "none";
  $("leakage").classList.toggle("warn", it.leakage.length > 0);
  $("score").textContent = scoreText(it.score);
  $("toggle-heat").hidden = !it.heatmap;
  const a = it.article;
  const link = $("article-title");
  link.textContent = a.title || it.record_id;
  if (a.link) link.href = a.link; else link.removeAttribute("href");
  $("article-meta").textContent = [a.journal, a.year, a.license ? `licence ${a.license}` : "licence unknown", a.ids]
    .filter(Boolean).join(" · ");
  for (const b of document.querySelectorAll(".key")) {
    // action buttons, not toggles (aria-pressed said "pressed"; pressing again does not
    // take the answer back): the answer given is the current one
    b.classList.toggle("chosen", b.dataset.label === it.label);
    if (b.dataset.label === it.label) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  $("toggle-heat").setAttribute("aria-pressed", "false");
  $("toggle-heat").classList.remove("chosen");
  applyZoom();
  const u = state.unsaved;
  if (u) {  // a NOT SAVED figure left: its message says to go back to it, not to answer this one
    say(u.id === it.id ? u.here : u.away, true);
    state.unsaved = u;
  } else if (state.retry) {
    say("");  // the figure that did not load is shown now
  }
  state.retry = null;
}

// What a screen reader says for the image: which figure (or panel) of which article.
function altText(it) {
  // a JATS label often ends in a full stop ("Figure 1."): not "Figure 1. of the article"
  const what = (it.figure_label || "").replace(/[\s.:;,]+$/, "") || "figure";
  const panel = it.panel ? `, panel ${it.panel}` : "";
  const title = it.article.title || it.record_id;
  return `${what}${panel} of the article "${title}" (${it.id})`;
}

// The model's score line: a scores CSV row may hold only max or only topk_mean (the
// server takes either), and a figure it does not score must not keep the last one's line.
function scoreText(score) {
  if (document.body.dataset.hasScores !== "yes") return $("score").textContent;
  if (!score) return "no score for this figure";
  const m = score.max, k = score.topk_mean;
  const parts = [];
  if (typeof m === "number") parts.push(`max ${m.toFixed(3)}`);
  if (typeof k === "number") parts.push(`top-k mean ${k.toFixed(3)}`);
  const call = typeof m === "number" ? ` → ${m >= 0.5 ? "metastasis" : "no metastasis"}` : "";
  return parts.join(" · ") + call;
}

function applyZoom() {
  const img = $("figure");
  const it = state.current;
  if (!it) return;
  if (state.zoom === 0) {
    img.classList.add("fit");
    img.style.width = "";
    $("zoom-level").textContent = "fit";
  } else {
    img.classList.remove("fit");
    img.style.width = `${Math.round(it.width * state.zoom)}px`;
    $("zoom-level").textContent = `${Math.round(state.zoom * 100)}%`;
  }
}

function zoomBy(factor) {
  if (!state.current) return;  // nothing shown (no figure, or it did not load)
  const img = $("figure");
  const base = state.zoom === 0 ? img.clientWidth / Math.max(1, state.current.width) : state.zoom;
  state.zoom = Math.min(16, Math.max(0.05, base * factor));
  applyZoom();
}

async function answer(label) {
  const it = state.current;
  if (!it) return;
  const reviewer = $("reviewer").value.trim();
  const said = label ? LABEL_TEXT[label] : "cleared";
  let body;
  try {
    body = await api("/api/label", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: it.id, label, reviewer }),
    });
  } catch (e) {
    // the figure stays on screen with its old answer, so the same key answers it again;
    // once another figure is shown the message says to go back to this one (show())
    const was = it.label ? LABEL_TEXT[it.label] : "not reviewed";
    const why = `NOT SAVED: ${it.id} ${said}: ${e.message}. It is still ${was}; `;
    const unsaved = { id: it.id, here: `${why}answer it again.`, away: `${why}go back to ${it.id} to answer it again.` };
    say(unsaved.here, true);
    state.unsaved = unsaved;
    return;
  }
  state.undo.push({ id: it.id, previous: it.label });
  showProgress(body.progress);
  say(`saved ${it.id}: ${said}`);
  const row = state.items[state.index];
  row.label = label;
  if ($("f-status").value === "unreviewed" && label) {
    state.items.splice(state.index, 1);  // answered: leaves the "unreviewed" list
    if (state.index >= state.items.length) state.index = Math.max(0, state.items.length - 1);
  } else if (state.index < state.items.length - 1) {
    state.index += 1;
  }
  await shown(show, `saved ${it.id}: ${said}; the next `);
}

// Runs `load` (show, or undo's reload), which shows a figure. When it fails the page says
// so after `done` (what did work), shows no figure (keys answer nothing: the one on screen
// was not the one at state.index any more, so m answered it twice and dropped the next),
// and → runs `load` again.
async function shown(load, done) {
  try {
    await load();
  } catch (e) {
    state.current = null;
    document.body.classList.add("not-loaded");
    state.retry = load;
    say(`${done}${e.message} (press → to retry)`, true);
  }
}

async function undo() {
  const last = state.undo.pop();
  if (!last) { say("nothing to undo"); return; }
  let body;
  try {
    body = await api("/api/label", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: last.id, label: last.previous, reviewer: $("reviewer").value.trim() }),
    });
  } catch (e) {  // only this is a failed undo: the answer stands, z tries again
    state.undo.push(last);
    say(`undo failed: ${e.message}`, true);
    return;
  }
  // saved: off the stack (a second z would post it again); a reload failing after this is
  // said as such, and → reloads
  showProgress(body.progress);
  const undone = `undone: ${last.id} is ${last.previous ? LABEL_TEXT[last.previous] : "not reviewed"} again`;
  const showUndone = async () => {
    try {
      await loadList(null);
    } catch (e) {
      throw e instanceof NotLoaded ? e : new Error(`the list of figures did not reload: ${e.message}`);
    }
    const at = state.items.findIndex((x) => x.id === last.id);
    if (at < 0) {  // not in this filter's list any more: go back to everything
      $("f-status").value = "all";
      await loadList(last.id);
    } else if (at !== state.index || !state.current) {
      state.index = at;
      await show();
    }
    // said only once the page shows the figure again, so the next key answers that one
    say(undone);
  };
  await shown(showUndone, `${undone}; `);
}

async function move(step) {
  const retry = state.retry;
  if (retry && step > 0) { await shown(retry, ""); return; }  // → loads it again: not skipped
  if (!state.items.length) return;
  state.index = Math.min(state.items.length - 1, Math.max(0, state.index + step));
  await shown(show, "");
}

function toggleHeat() {
  const it = state.current;
  if (!it || !it.heatmap) return;
  state.heat = !state.heat;
  $("figure").src = state.heat ? `/heatmap/${encodeURIComponent(it.id)}` : `/image/${encodeURIComponent(it.id)}`;
  $("figure").alt = state.heat ? `${altText(it)}, with the model's heatmap over it` : altText(it);
  $("toggle-heat").classList.toggle("chosen", state.heat);
  $("toggle-heat").setAttribute("aria-pressed", String(state.heat));
}

// Answers, undo and moves run one after another: a key pressed while the previous action
// is still loading the next figure waits for it, so it can never answer the wrong figure.
let queue = Promise.resolve();
function enqueue(action) {
  queue = queue.then(action).catch((e) => say(e.message, true));
}

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;  // the browser's and the system's keys
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  // a held key repeats: it answered (or undid) one figure after another
  if (ev.repeat && ["m", "n", "u", "z"].includes(key)) { ev.preventDefault(); return; }
  const keys = {
    m: () => enqueue(() => answer("metastasis")),
    n: () => enqueue(() => answer("no_metastasis")),
    u: () => enqueue(() => answer("not_usable")),
    z: () => enqueue(() => undo()),
    ArrowRight: () => enqueue(() => move(1)),
    ArrowLeft: () => enqueue(() => move(-1)),
    "+": () => zoomBy(1.25),
    "=": () => zoomBy(1.25),
    "-": () => zoomBy(0.8),
    "0": () => { state.zoom = 0; applyZoom(); },
    "1": () => { state.zoom = 1; applyZoom(); },
    h: () => toggleHeat(),
  };
  // a letter with Caps Lock or Shift (M) answers as m does: it did nothing, silently
  const act = keys[key];
  if (act) { ev.preventDefault(); act(); }
});

for (const b of document.querySelectorAll(".key")) {
  b.addEventListener("click", () => enqueue(() => answer(b.dataset.label)));
}
$("zoom-in").addEventListener("click", () => zoomBy(1.25));
$("zoom-out").addEventListener("click", () => zoomBy(0.8));
$("zoom-fit").addEventListener("click", () => { state.zoom = 0; applyZoom(); });
$("zoom-full").addEventListener("click", () => { state.zoom = 1; applyZoom(); });
$("toggle-heat").addEventListener("click", toggleHeat);
$("figure").addEventListener("dblclick", () => { state.zoom = state.zoom === 0 ? 1 : 0; applyZoom(); });
$("empty-action").addEventListener("click", emptyAction);
for (const id of FILTER_IDS) {
  $(id).addEventListener("change", () => {
    $(id).blur();  // keys answer again right after a filter change
    // queued as keys are: an answer still saving moved the index of the list it was in
    enqueue(() => { state.index = 0; return shown(() => loadList(null), ""); });
  });
}
const savedName = window.localStorage.getItem("histofetch-reviewer");
if (savedName && !$("reviewer").value) $("reviewer").value = savedName;
$("reviewer").addEventListener("change", () => window.localStorage.setItem("histofetch-reviewer", $("reviewer").value));
enqueue(() => shown(() => loadList(null), "cannot load figures: "));
