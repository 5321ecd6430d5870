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
  items: [],     // one page of the figures matching the filters: [{id, label, weak_label}]
  offset: 0,     // the list index of items[0]
  total: 0,      // how many figures match the filters (the whole list, not only this page)
  stale: false,  // the list did not (re)load: ← and → load it again before they move
  index: 0,      // the figure shown, as an index of the whole list
  current: null, // the full item shown
  undo: [],      // [{id, previous}] answers of this tab, newest last
  zoom: 0,       // 0 = fit, else a scale factor
  heat: false,
  progress: null, // the run's counts, as the server last sent them
  retry: null,    // what → runs while the figure to show did not load (it is not skipped)
  unsaved: null,  // {id, here, away}: the NOT SAVED message while it is the one said
  imageError: false,  // the message said is that the image shown did not load
};
const FILTER_IDS = ["f-status", "f-disagree", "f-record", "f-weak", "f-label"];
// The list comes a page at a time (the whole list was 6 MB of JSON at 100,000 figures and
// the first figure waited for it): the page around the figure shown, a quarter behind it.
const PAGE = Math.max(1, Number(document.body.dataset.page) || 200);
// The heartbeat: a stopped server is said within this long, not at the next answer.
const HEARTBEAT_MS = 5000;

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
  state.imageError = false;
  $("status-polite").textContent = isError ? "" : text;
  $("status-alert").textContent = isError ? text : "";
  $("status").classList.toggle("error", Boolean(isError));
}

// fetch's own TypeError ("Failed to fetch") said nothing a reviewer can act on: the page
// names the cause (the server stopped or the network is down) instead.
class Unreachable extends Error {}
// The figure to show did not load (its /api/item/ request failed).
class NotLoaded extends Error {}

// The banner under the header while the server does not answer: said at once (the
// heartbeat, the tab shown again, the network back), not only at the next answer, which
// then was not saved. It goes when the server answers again.
function serverDown(down) {
  const was = !$("server-down").hidden;
  if (down === was) return;
  $("server-down").hidden = !down;
  document.body.classList.toggle("server-down", down);
  if (!down && !state.unsaved && !state.retry) say("the review server answers again");
}

let beating = false;
async function heartbeat() {
  if (beating) return;
  beating = true;
  try {
    await fetch("/api/alive", { cache: "no-store" });
    serverDown(false);  // any answer: the server is there
  } catch (e) {
    serverDown(true);
  } finally {
    beating = false;
  }
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    serverDown(true);
    throw new Unreachable("the review server does not answer (stopped? start histofetch review again)");
  }
  serverDown(false);
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

// The row of the list at `index`, when it is in the page loaded.
function rowAt(index) {
  const n = index - state.offset;
  return n >= 0 && n < state.items.length ? state.items[n] : null;
}

// One page of the list: the one holding the figure `around` names (body.at: its index, or
// null where it does not match the filters), or the first figure `after` the one it names
// or the last `before` it, in the run's order (body.at: its index), else the one from
// `offset` on. The server counts the whole list (total) and the run (progress).
async function fetchList({ around = null, after = null, before = null, offset = 0 } = {}) {
  const q = filters();
  q.set("limit", String(PAGE));
  q.set("offset", String(Math.max(0, Math.floor(offset))));
  if (around !== null) q.set("around", around);
  if (after !== null) q.set("after", after);
  if (before !== null) q.set("before", before);
  let body;
  try {
    body = await api(`/api/items?${q.toString()}`);
  } catch (e) {
    state.stale = true;  // the page loaded is the old list's: moves reload it first
    throw e;
  }
  state.stale = false;
  state.items = body.items;
  state.offset = body.offset;
  state.total = body.total;
  showProgress(body.progress);
  return body;
}

// The page whose figures are around list index `index`.
function fetchPageOf(index) {
  return fetchList({ offset: index - Math.floor(PAGE / 4) });
}

async function loadList() {
  await fetchPageOf(state.index);
  await show();
}

// Whether a figure answered still matches the filters, as the server's matches() says:
// only the filters that read the answer can take it off the list (status, the review
// label, disagreements between the weak label and the review). A rule changed here or
// there is a failure of test_review_browser.py's table of every case.
function stillMatches(row) {
  const status = $("f-status").value || "all";
  if (status === "unreviewed" && row.label) return false;
  if (status === "reviewed" && !row.label) return false;
  const weak = ["metastasis", "no_metastasis"].includes(row.weak_label) ? row.weak_label : null;
  if ($("f-disagree").value === "review" && (!weak || !row.label || row.label === weak)) return false;
  const label = $("f-label").value;
  return !(label && (row.label || "unreviewed") !== label);
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
  // keyboard users: the one thing to do next has the focus (it stayed on the answer key
  // or nowhere), unless they are typing in a field
  const at = document.activeElement;
  if (!(at instanceof HTMLInputElement || at instanceof HTMLSelectElement)) action.focus();
}

function emptyAction() {
  if ($("empty-action").dataset.action === "all") {
    $("f-status").value = "all";
  } else {
    for (const id of FILTER_IDS) $(id).value = "";
    $("f-status").value = "all";
  }
  state.index = 0;
  enqueue(() => shown(loadList, ""));
}

// Shows the figure at state.index, loading its page first where it is not loaded; `seek`
// ({after: id} or {before: id}): the figure next to that one, found by its place in the
// run's order, not by index (answers take figures off a filtered list, another tab answers
// too: the page at an index the list had skipped figures unseen).
async function show(seek = null) {
  state.current = null;  // keys answer nothing until the next figure is shown
  if (seek) {
    let body;
    try {
      body = await fetchList(seek);
    } catch (e) {
      document.body.classList.add("not-loaded");
      const where = seek.after ? `after ${seek.after}` : `before ${seek.before}`;
      throw new NotLoaded(`figure ${where} did not load: ${e.message}`);
    }
    if (body.at !== null) state.index = body.at;
  }
  const clamp = () => { state.index = Math.min(state.index, Math.max(0, state.total - 1)); };
  clamp();
  // a figure outside the page loaded: its page first (twice at most: the list may have
  // shrunk meanwhile, leaving the index past its end)
  for (let n = 0; n < 2 && state.total > 0 && !rowAt(state.index); n += 1) {
    try {
      await fetchPageOf(state.index);
    } catch (e) {
      document.body.classList.add("not-loaded");
      throw new NotLoaded(`figure ${state.index + 1} of the list did not load: ${e.message}`);
    }
    clamp();
  }
  const row = rowAt(state.index);
  const empty = !row;
  $("empty").hidden = !empty;
  $("stage").hidden = empty;
  document.body.classList.toggle("nothing-shown", empty);  // no stale figure facts beside it
  $("position").textContent = empty ? "0 / 0" : `${state.index + 1} / ${state.total}`;
  if (empty) { document.body.classList.remove("not-loaded"); setRetry(null); explainEmpty(); return; }
  const id = row.id;
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
  } else if (state.retry || state.imageError) {
    say("");  // the figure that did not load is shown now, or the image that did not is gone
  }
  setRetry(null);
}

// What → and the retry button run while no figure is shown because it did not load.
function setRetry(load) {
  state.retry = load;
  $("retry").hidden = !load;
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
  const row = rowAt(state.index);
  if (row === null || row.id !== it.id) {
    state.items = [];  // the page loaded is not the list shown: the next figure is looked for
  } else {
    row.label = label;
    if (!stillMatches(row)) {  // the answer took it off this list: the next one has its index
      state.items.splice(state.index - state.offset, 1);
      state.total = Math.max(0, state.total - 1);
      if (state.index >= state.total) state.index = Math.max(0, state.total - 1);
    } else if (state.index < state.total - 1) {
      state.index += 1;
    }
  }
  // past the page loaded: the figure after this one, by its place (not the list's index)
  const seek = rowAt(state.index) ? null : { after: it.id };
  await shown(() => show(seek), `saved ${it.id}: ${said}; the next `);
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
    say(`${done}${e.message} (press → to retry)`, true);
    setRetry(load);
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
    let body;
    try {
      body = await fetchList({ around: last.id });
      if (body.at === null) {  // not in this filter's list any more: go back to everything
        $("f-status").value = "all";
        body = await fetchList({ around: last.id });
      }
    } catch (e) {
      throw new Error(`the list of figures did not reload: ${e.message}`);
    }
    state.index = body.at === null ? 0 : body.at;
    await show();
    // said only once the page shows the figure again, so the next key answers that one
    say(undone);
  };
  await shown(showUndone, `${undone}; `);
}

async function move(step) {
  const retry = state.retry;
  // → loads it again: not skipped; ← too while the list did not load (it walked the old
  // list: after an undo whose list did not reload, the figure undone was not in it)
  if (retry && (step > 0 || state.stale)) { await shown(retry, ""); return; }
  if (!state.total) return;
  const to = Math.min(state.total - 1, Math.max(0, state.index + step));
  const from = rowAt(state.index);
  // past the page loaded: the figure next to this one, by its place (not the list's index)
  const seek = to !== state.index && !rowAt(to) && from
    ? (step > 0 ? { after: from.id } : { before: from.id })
    : null;
  state.index = to;
  await shown(() => show(seek), "");
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
  // with no figure shown because it did not load, a click loads it again (the buttons
  // were hidden: a mouse user had to reload the page); it answers nothing unseen
  b.addEventListener("click", () => enqueue(() => (
    state.retry && !state.current ? shown(state.retry, "") : answer(b.dataset.label))));
}
$("retry").addEventListener("click", () => {
  if (state.retry) enqueue(() => shown(state.retry, ""));
  else if (state.current) reloadImage();
});
// the image file did not load (the figure's facts did): said, with the retry button; the
// answer buttons stay (the figure may be answered "not usable"), → moves on as ever
$("figure").addEventListener("error", () => {
  const it = state.current;
  if (!it) return;
  say(`the image of ${it.id} did not load (retry loads it again)`, true);
  state.imageError = true;  // said over this figure only: show() clears it
  $("retry").hidden = false;
});
function reloadImage() {
  const img = $("figure");
  say("");
  $("retry").hidden = true;
  img.src = `${img.src.split("?")[0]}?again=${Date.now()}`;  // not the failed one from the cache
}
setInterval(() => { if (document.visibilityState === "visible") heartbeat(); }, HEARTBEAT_MS);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") heartbeat();
});
window.addEventListener("online", heartbeat);
window.addEventListener("offline", heartbeat);
window.addEventListener("focus", heartbeat);
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
    enqueue(() => { state.index = 0; return shown(loadList, ""); });
  });
}
const savedName = window.localStorage.getItem("histofetch-reviewer");
if (savedName && !$("reviewer").value) $("reviewer").value = savedName;
$("reviewer").addEventListener("change", () => window.localStorage.setItem("histofetch-reviewer", $("reviewer").value));
enqueue(() => shown(loadList, "cannot load figures: "));
