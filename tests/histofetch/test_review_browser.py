"""The review page in a real headless browser (Debian chromium + chromedriver, Selenium).

Labels figures with the keyboard, undoes one, reloads, checks the manifest, and keeps a
screenshot under ``tests/artifacts/`` (ignored by git). Skips with the reason when
chromium or chromedriver is absent; ``.ci/run`` installs both with apt.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_kit import answer_filter_cases, make_run, make_scores

from histocore.manifest import Manifest
from histofetch.review.server import build_server, url_of

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


def _started(
    run: Path, scores: Path | None = None, port: int = 0
) -> tuple[Any, Any, threading.Thread]:
    """The review server of ``run`` started (on a free port unless ``port``):
    ``(server, socket, thread)``."""
    server, sock = build_server(run, port=port, reviewer="tester", scores=scores)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a wait, no bound: it can take a while when loaded
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, sock, thread


@pytest.fixture(autouse=True)
def pages_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page asks for the list 2 figures at a time (200 by default), so every test here
    moves, answers and undoes across pages of the list."""
    from histofetch.review import app

    monkeypatch.setattr(app, "PAGE", 2)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The run made (and filtered) once a module, and its scores: a test reviews a copy
    (each test made and filtered its own run: most of its time on a loaded machine)."""
    root = tmp_path_factory.mktemp("review-kit")
    run = make_run(root)
    return run, make_scores(run, root)


def _copy_run(kit: tuple[Path, Path], tmp_path: Path) -> Path:
    import gc

    gc.collect()  # no store connection of the kit's left open while it is copied
    return Path(shutil.copytree(kit[0], tmp_path / "run"))


@pytest.fixture
def served(kit: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    run = _copy_run(kit, tmp_path)
    server, sock, thread = _started(run, scores=kit[1])
    yield url_of(sock), run
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless chromium a module (each test started its own: seconds each)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="histofetch-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """The module's chromium as a fresh one is: one tab, 1400 x 900, scripts on, an empty
    console log. Each test's server has its own port, so its page has its own storage."""
    d = chromium
    yield d
    for handle in d.window_handles[1:]:  # the tabs a test opened
        d.switch_to.window(handle)
        d.close()
    d.switch_to.window(d.window_handles[0])
    d.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    d.get("about:blank")
    d.set_window_size(1400, 900)
    d.get_log("browser")  # read: the next test's log starts empty


def _wait(driver, condition, timeout: float = 30.0):  # generous: CI machines can be loaded
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _press(driver, key: str, expect_status: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()
    _wait(driver, lambda d: expect_status in _text(d, "status"))


def test_keyboard_review_survives_a_reload(served: tuple[str, Path], browser) -> None:
    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    assert "Metastatic carcinoma" in d.find_element("css selector", "mark.ev-metastasis").text
    assert _text(d, "weak-label") == "metastasis"
    assert "max 0.900" in _text(d, "score")
    assert _text(d, "progress-text").startswith("0 / 4 reviewed")
    _press(d, "m", "saved pmid:1/fig1: metastasis")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig2")
    _press(d, "n", "saved pmid:1/fig2: no metastasis")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig1")
    _press(d, "u", "saved pmid:2/fig1: not usable")
    _press(d, "z", "undone: pmid:2/fig1")  # the "u" was a slip
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig1")
    _press(d, "m", "saved pmid:2/fig1: metastasis")
    # the hostile caption is shown as text: no element, no script ran
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig2")
    assert "<img src=x" in _text(d, "caption") and "<script>" in _text(d, "caption")
    assert not d.find_elements("css selector", "#caption img, #caption script")
    assert d.title == "histofetch review"
    assert _text(d, "progress-text").startswith("3 / 4 reviewed")
    ARTIFACTS.mkdir(exist_ok=True)
    # reload: answers are in the manifest, the page shows them
    d.refresh()
    _wait(d, lambda d: _text(d, "progress-text").startswith("3 / 4 reviewed"))
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig2")  # the only unreviewed one
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "f-status")).select_by_value("all")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    assert _text(d, "label") == "metastasis" and "by tester" in _text(d, "label-by")
    d.save_screenshot(str(ARTIFACTS / "review_page.png"))
    images = Manifest.load(run).images
    assert {k: i.label for k, i in images.items()} == {
        "pmid:1/fig1": "metastasis",
        "pmid:1/fig2": "no_metastasis",
        "pmid:2/fig1": "metastasis",
        "pmid:2/fig2": None,
    }
    assert images["pmid:1/fig1"].label_by == "tester" and images["pmid:1/fig1"].label_at
    # the disagreement filter: weak label "no metastasis" vs the model's 0.8
    Select(d.find_element("id", "f-disagree")).select_by_value("model")
    _wait(d, lambda d: (_text(d, "position"), _text(d, "figure-id")) == ("1 / 1", "pmid:1/fig2"))
    assert (ARTIFACTS / "review_page.png").stat().st_size > 10_000
    # a second tab answers the last figure while the first answers its own: both are kept
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig2")
    _press(d, "u", "saved pmid:2/fig2: not usable")
    d.switch_to.window(first)
    _press(d, "m", "saved pmid:1/fig2: metastasis")  # the first tab changes its mind
    labels = {k: i.label for k, i in Manifest.load(run).images.items()}
    assert labels == {
        "pmid:1/fig1": "metastasis",
        "pmid:1/fig2": "metastasis",
        "pmid:2/fig1": "metastasis",
        "pmid:2/fig2": "not_usable",
    }


def test_bad_run_gets_an_error_page(served: tuple[str, Path], browser) -> None:
    url, run = served
    (run / "manifest.jsonl").write_text("{not json\n")
    browser.get(url)
    _wait(browser, lambda d: d.find_elements("id", "error-message"))
    assert "not valid JSON" in _text(browser, "error-message")
    assert browser.title.startswith("histofetch review: cannot open")


def test_a_long_unbroken_title_stays_inside_the_side_panel(
    served: tuple[str, Path], browser
) -> None:
    # A local PDF's record is titled by its file stem, one long word: it pushed the side
    # panel wider than its column (a horizontal scroll bar under every figure, also under
    # "Nothing matches these filters.", where the hidden title still took its width).
    url, run = served
    m = Manifest.load(run)
    m.records["pmid:1"].title = "pos_bawaneh2022_cancers14_4849_TNBC_HE_lung_metastasis_" * 2
    m.commit_record("pmid:1")
    m.save()
    m.close()
    browser.get(url)
    _wait(browser, lambda d: "metastasis_pos" in _text(d, "article-title"))
    widths = "const s = document.querySelector('.side'); return [s.scrollWidth, s.clientWidth];"
    scroll, client = browser.execute_script(widths)
    assert scroll <= client, f"side panel scrolls sideways: {scroll} > {client} px"


def test_the_page_loads_without_an_error_in_the_console(served: tuple[str, Path], browser) -> None:
    # Every load logged "favicon.ico - Failed to load resource: ... 404 (Not Found)".
    url, _run = served
    browser.get(url)
    _wait(browser, lambda d: "reviewed" in _text(d, "progress-text"))
    _wait(browser, lambda d: d.find_element("id", "article-title").text)
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_all_reviewed_says_so_and_shows_all_in_one_click(served: tuple[str, Path], browser) -> None:
    from selenium.webdriver.support.ui import Select

    from histofetch.review.data import save_answer

    url, run = served
    answers = {"pmid:1/fig1": "metastasis", "pmid:1/fig2": "no_metastasis",
               "pmid:2/fig1": "metastasis"}  # fmt: skip
    with Manifest.load(run) as m:
        for image_id, label in answers.items():
            save_answer(m, image_id, label, "earlier")
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig2")  # the one left
    assert not d.find_element("id", "empty").is_displayed()
    _press(d, "u", "saved pmid:2/fig2: not usable")  # the last answer of the run
    _wait(d, lambda d: d.find_element("id", "empty").is_displayed())
    assert _text(d, "empty-text") == "All 4 figures of this run are reviewed."
    # keyboard users: the focus is on "show all" (it stayed nowhere), Enter shows them
    assert d.switch_to.active_element.get_attribute("id") == "empty-action"
    assert _text(d, "empty-detail") == "2 metastasis · 1 no metastasis · 1 not usable"
    assert "Nothing matches" not in _text(d, "empty")
    assert not d.find_element("id", "stage").is_displayed()
    assert not d.find_element("id", "figure-id").is_displayed()  # no stale facts beside it
    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "review_all_reviewed.png"))
    # a fresh load of the finished run says the same
    d.refresh()
    _wait(d, lambda d: _text(d, "empty-text") == "All 4 figures of this run are reviewed.")
    d.find_element("id", "empty-action").click()
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    assert Select(d.find_element("id", "f-status")).first_selected_option.text == "all"
    assert _text(d, "position") == "1 / 4" and not d.find_element("id", "empty").is_displayed()
    assert d.find_element("id", "figure-id").is_displayed()
    # filters that match nothing keep saying so, with the click that clears them
    Select(d.find_element("id", "f-label")).select_by_value("unreviewed")
    _wait(d, lambda d: _text(d, "empty-text") == "Nothing matches these filters.")
    assert _text(d, "empty-detail") == "4 figures in this run; unreviewed: none."
    assert _text(d, "empty-action") == "clear filters"
    d.save_screenshot(str(ARTIFACTS / "review_no_match.png"))
    d.find_element("id", "empty-action").click()
    _wait(d, lambda d: _text(d, "position") == "1 / 4")
    assert Select(d.find_element("id", "f-label")).first_selected_option.text == "any"


def test_partial_scores_never_stop_the_page_nor_show_another_figures_score(
    kit: tuple[Path, Path], tmp_path: Path, browser
) -> None:
    """An image_scores.csv row with only one of max/topk_mean (the reader takes either)
    stopped show() at `undefined.toFixed`: the article, the heatmap button and the chosen
    key were never updated and the status read 'Cannot read properties of undefined'. A
    figure the CSV does not score (an eval of fewer figures) kept the previous figure's
    score on screen."""
    run = _copy_run(kit, tmp_path)
    scores = tmp_path / "eval"
    scores.mkdir()
    (scores / "image_scores.csv").write_text(
        "image_id,max,topk_mean\npmid:1/fig1,0.9,\npmid:1/fig2,,0.25\n"
    )  # pmid:2/fig1 and pmid:2/fig2 not scored
    server, sock, thread = _started(run, scores=scores)
    try:
        from selenium.webdriver.common.action_chains import ActionChains

        d = browser
        d.get(url_of(sock))
        _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
        _wait(d, lambda d: _text(d, "article-title") == "Sentinel nodes <b>in</b> breast cancer")
        assert _text(d, "score") == "max 0.900 → metastasis" and not _text(d, "status")
        ActionChains(d).send_keys("\ue014").perform()  # arrow right
        _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig2")
        _wait(d, lambda d: _text(d, "score") == "top-k mean 0.250")
        ActionChains(d).send_keys("\ue014").perform()
        _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig1")
        _wait(d, lambda d: _text(d, "score") == "no score for this figure")
        assert _text(d, "article-title") == "Axillary staging" and not _text(d, "status")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _next(driver, image_id: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    _wait(driver, lambda d: _text(d, "figure-id") == image_id)


def test_a_jats_figure_label_is_shown_in_bold_before_its_caption(
    kit: tuple[Path, Path], tmp_path: Path, browser
) -> None:
    """The JATS ``<label>`` ("Figure 4") stored as ``figure_label`` was not shown; now it is,
    in bold, as text (markup in it stays text), and not twice where the caption (a PDF's)
    starts with it."""
    run = _copy_run(kit, tmp_path)
    m = Manifest.load(run)
    m.images["pmid:1/fig1"].figure_label = "Figure 1."  # the caption says "Figure 1." itself
    m.images["pmid:1/fig2"].figure_label = "<img src=x onerror=\"document.title='pwned'\">Fig 2"
    m.images["pmid:2/fig2"].figure_label = "Figure 4"
    m.save()
    m.close()
    server, sock, thread = _started(run)
    try:
        d = browser
        d.get(url_of(sock))
        _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
        assert _text(d, "caption").startswith("Figure 1. Metastatic carcinoma")  # once
        assert not d.find_elements("css selector", "#caption strong")
        _next(d, "pmid:1/fig2")
        (label,) = d.find_elements("css selector", "#caption > strong.fig-label:first-child")
        assert label.text == "<img src=x onerror=\"document.title='pwned'\">Fig 2"
        assert _text(d, "caption").startswith(label.text + " Figure 2. No evidence")
        assert not d.find_elements("css selector", "#caption img") and d.title != "pwned"
        assert label.value_of_css_property("font-weight") in ("700", "bold")
        _next(d, "pmid:2/fig1")
        _next(d, "pmid:2/fig2")
        assert _text(d, "caption").startswith("Figure 4 Lymph node <img src=x")
        assert d.find_element("css selector", "#caption > strong").text == "Figure 4"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _answer_all_but_last(run: Path) -> None:
    from histofetch.review.data import save_answer

    with Manifest.load(run) as m:
        for image_id in ("pmid:1/fig1", "pmid:1/fig2", "pmid:2/fig1"):
            save_answer(m, image_id, "metastasis", "earlier")


def test_the_progress_bar_shows_the_count_before_any_script_runs(
    served: tuple[str, Path], browser
) -> None:
    """A screenshot (``chromium --headless --screenshot --virtual-time-budget=3000``) showed
    the bar empty beside "2 / 2 reviewed": a div whose width the script set, growing by a
    CSS transition that had not run yet. The bar is now a <progress> the server fills."""
    import io

    import PIL.Image

    url, run = served
    _answer_all_but_last(run)  # 3 of 4
    d = browser
    d.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    d.get(url)
    assert _text(d, "progress-text") == "3 / 4 reviewed"  # the server's text, no script ran
    bar = d.find_element("css selector", ".progress-track")
    shot = PIL.Image.open(io.BytesIO(bar.screenshot_as_png)).convert("RGB")
    w, h = shot.size
    px = shot.load()  # RGB: each pixel a tuple
    assert px is not None
    filled, empty = px[int(w * 0.7), h // 2], px[int(w * 0.9), h // 2]
    assert isinstance(filled, tuple) and isinstance(empty, tuple)
    assert filled[2] > 150 and filled[2] > filled[1] + 60, f"the first 3/4 not filled: {filled}"
    assert empty[2] < 100, f"the last 1/4 filled: {empty}"


def test_keys_answer_with_caps_lock_and_not_while_typing(served: tuple[str, Path], browser) -> None:
    """With Caps Lock on (or Shift held) a key sent "M", which the page ignored, silently.
    Typing in the reviewer field never answers; the answer given is marked by more than
    its colour (aria-current, a check mark: the keys are action buttons, not toggles, so
    not aria-pressed)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    field = d.find_element("id", "reviewer")
    field.click()
    ActionChains(d).send_keys("mnu").perform()  # typed into the name, not three answers
    assert field.get_attribute("value").endswith("mnu") and _text(d, "figure-id") == "pmid:1/fig1"
    ActionChains(d).send_keys(Keys.ESCAPE).perform()  # leaves the field: keys answer again
    ActionChains(d).send_keys("M").perform()
    _wait(d, lambda d: "saved pmid:1/fig1: metastasis" in _text(d, "status"), timeout=10)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig2")
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "f-status")).select_by_value("all")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    pressed = d.find_elements("css selector", '.key[aria-current="true"]')
    assert [b.get_attribute("data-label") for b in pressed] == ["metastasis"]
    assert not d.find_elements("css selector", ".key[aria-pressed]")
    mark = "return getComputedStyle(arguments[0], '::after').content"
    assert "\u2713" in d.execute_script(mark, pressed[0])
    assert Manifest.load(run).images["pmid:1/fig1"].label == "metastasis"


def test_a_stopped_server_is_said_plainly_and_the_figure_waits(
    kit: tuple[Path, Path], tmp_path: Path, browser
) -> None:
    """With the server stopped an answer said only "not saved: Failed to fetch", at the end
    of the side panel (below a long caption: out of sight). Now it names the figure, the
    answer and the cause, under the answer keys, and the figure stays to be answered again."""
    run = _copy_run(kit, tmp_path)
    server, sock, thread = _started(run)
    port = sock.getsockname()[1]
    d = browser
    d.get(url_of(sock))
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    banner = d.find_element("id", "server-down")
    assert not banner.is_displayed()
    server.should_exit = True
    thread.join(timeout=10)
    # said before any key (it was said only by the next answer, not saved): the heartbeat
    # (every 5 s) or, as here, the tab shown again asks the server
    d.execute_script("document.dispatchEvent(new Event('visibilitychange'))")
    _wait(d, lambda d: banner.is_displayed(), timeout=10)
    assert "The review server does not answer" in banner.text and not _text(d, "status")
    assert banner.get_attribute("role") == "alert"
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).send_keys("m").perform()
    _wait(d, lambda d: "NOT SAVED" in _text(d, "status"))
    said = _text(d, "status")
    assert "pmid:1/fig1 metastasis" in said and "server does not answer" in said, said
    assert "still not reviewed" in said and _text(d, "figure-id") == "pmid:1/fig1"
    status = d.find_element("id", "status")
    assert status.is_displayed() and status.location["y"] < 300  # under the keys, in sight
    # the server back on its port: the banner goes at the next heartbeat (here: focus)
    server, _sock, thread = _started(run, port=port)
    try:
        d.execute_script("window.dispatchEvent(new Event('focus'))")
        _wait(d, lambda d: not banner.is_displayed(), timeout=10)
        _press(d, "m", "saved pmid:1/fig1: metastasis")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_image_says_which_figure_of_which_article_it_is(
    served: tuple[str, Path], browser
) -> None:
    url, run = served
    with Manifest.load(run) as m:  # a JATS label with its full stop: not "Figure 2. of the"
        m.update_image("pmid:1/fig2", figure_label="Figure 2.", caption="No evidence of cancer.")
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    alt = d.find_element("id", "figure").get_attribute("alt")
    assert alt == 'figure of the article "Sentinel nodes <b>in</b> breast cancer" (pmid:1/fig1)'
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).send_keys("h").perform()  # the heatmap shown: the text says so
    _wait(d, lambda d: "/heatmap/" in d.find_element("id", "figure").get_attribute("src"))
    assert (
        d.find_element("id", "figure").get_attribute("alt")
        == alt + ", with the model's heatmap over it"
    )
    ActionChains(d).send_keys("h").perform()
    _wait(d, lambda d: d.find_element("id", "figure").get_attribute("alt") == alt)
    _next(d, "pmid:1/fig2")
    alt = d.find_element("id", "figure").get_attribute("alt")
    assert alt.startswith('Figure 2 of the article "Sentinel nodes'), alt
    # ARIA names the plus key "Plus" ("+" joins a shortcut's keys); "=" zooms in too
    assert d.find_element("id", "zoom-in").get_attribute("aria-keyshortcuts") == "Plus ="
    assert d.find_element("tag name", "h1").text.startswith("histofetch review")
    for b in d.find_elements("css selector", "button:not([hidden])"):  # every one named
        assert b.accessible_name.strip() or not b.is_displayed(), b.get_attribute("id")
    assert d.find_element("id", "zoom-out").accessible_name == "zoom out"
    # the caption's evidence kinds differ by more than colour: each its own underline,
    # shown in the legend too
    style = (
        "const s = getComputedStyle(arguments[0]);"
        "return [s.textDecorationLine, s.textDecorationStyle];"
    )
    kinds = {
        m.get_attribute("class"): tuple(d.execute_script(style, m))
        for m in d.find_elements("css selector", ".legend mark")
    }
    assert len(kinds) == 4 and all(line == "underline" for line, _ in kinds.values()), kinds
    assert len({how for _, how in kinds.values()}) == 4, kinds


def test_a_narrow_window_scrolls_the_page_not_a_sliver_of_side_panel(
    served: tuple[str, Path], browser
) -> None:
    """At 800 px (or 200% zoom) the side panel was a scroll box a few lines high under the
    figure; now the page scrolls as a whole, nothing sideways, the figure fits."""
    url, run = served
    d = browser
    import dataclasses

    with Manifest.load(run) as m:  # counts as long as a big run's: "0 / 2000 reviewed · …"
        for n in range(1996):
            m.add_image(dataclasses.replace(m.images["pmid:2/fig1"], id=f"pmid:2/x{n}"))
        m.save()
    d.set_window_size(800, 1000)
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    side = "const s = document.querySelector('.side'); return [s.scrollHeight, s.clientHeight];"
    scroll, client = d.execute_script(side)
    assert scroll <= client + 1, f"the side panel scrolls inside itself: {scroll} > {client} px"
    doc = "const e = document.documentElement; return [e.scrollWidth, e.clientWidth];"
    wide, width = d.execute_script(doc)
    assert wide <= width, f"the page scrolls sideways: {wide} > {width} px"
    # the counts ran under the reviewer field (a 2,000-figure run at 800 px): the bar wraps
    counts, name = (d.find_element("css selector", s).rect for s in ("#progress-text", ".reviewer"))
    apart = (
        counts["x"] + counts["width"] <= name["x"]
        or counts["y"] + counts["height"] <= name["y"]
        or name["y"] + name["height"] <= counts["y"]
    )
    assert apart, f"the progress counts overlap the reviewer field: {counts} {name}"
    img = d.find_element("id", "figure").rect
    stage = d.find_element("id", "stage").rect
    assert img["width"] <= stage["width"] and img["height"] <= stage["height"]


def _fail_once(driver, prefix: str) -> None:
    """The page's next request whose path starts with ``prefix`` fails as an unreachable
    server does (fetch rejects with a TypeError); every other one goes through."""
    driver.execute_script(
        "const real = window.fetch; let armed = true;"
        "window.fetch = (p, o) => (armed && String(p).startsWith(arguments[0]))"
        " ? (armed = false, Promise.reject(new TypeError('x'))) : real(p, o);",
        prefix,
    )


def _labels(run: Path) -> dict[str, str | None]:
    with Manifest.load(run) as m:
        return {k: i.label for k, i in m.images.items()}


def _log(run: Path) -> list[tuple[str, str | None]]:
    import json

    lines = (run / "review_log.jsonl").read_text().splitlines()
    return [(e["image_id"], e["label"]) for e in map(json.loads, lines)]


def test_a_next_figure_that_does_not_load_is_said_and_never_answered_in_its_place(
    served: tuple[str, Path], browser
) -> None:
    """Review 42 S1: a save that worked with the next figure failing to load left the page on
    the figure just answered (its "not reviewed" pill, the status only "the review server
    does not answer"), while the list had moved on: the next n answered that figure again and
    took the next one off the list unanswered. Now the page says the answer was saved and the
    next figure did not load, shows no figure (keys answer nothing), and → loads that figure
    (it is not skipped). A → whose figure did not load did the same. The answer buttons were
    hidden meanwhile (a mouse user had to reload the page): they stay, a click loads the
    figure again (answering nothing unseen), and a retry button does the same; a figure
    whose image file does not load keeps them too, with a retry."""
    from selenium.webdriver.common.action_chains import ActionChains

    url, run = served
    with Manifest.load(run) as m:  # its facts load, its image file does not
        m.update_image("pmid:2/fig2", path="images/gone.png")
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _fail_once(d, "/api/item/")
    _press(d, "m", "saved pmid:1/fig1: metastasis; the next figure pmid:1/fig2 did not load: ")
    said = _text(d, "status")
    assert "server does not answer" in said and said.endswith("(press → to retry)"), said
    assert not d.find_element("id", "figure-id").is_displayed()  # not fig1's facts as fig2's
    assert not d.find_element("id", "figure").is_displayed()
    ActionChains(d).send_keys("n").perform()  # no figure shown: answers nothing
    keys = d.find_elements("css selector", ".answer-keys .key")
    assert len(keys) == 3 and all(k.is_displayed() for k in keys)
    retry = d.find_element("id", "retry")
    assert retry.is_displayed()
    retry.click()  # loads the figure that did not load, not the one after it (→ does too)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig2")
    assert _text(d, "status") == "" and _text(d, "label") == "not reviewed"
    assert not retry.is_displayed()
    _press(d, "n", "saved pmid:1/fig2: no metastasis")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig1")
    assert _log(run) == [("pmid:1/fig1", "metastasis"), ("pmid:1/fig2", "no_metastasis")]
    # a move whose figure does not load: the same
    _fail_once(d, "/api/item/")
    _press(d, "\ue014", "figure pmid:2/fig2 did not load: ")  # arrow right
    ActionChains(d).send_keys("u").perform()  # pmid:2/fig1 is not on screen: not answered
    d.find_element("css selector", ".key-u").click()  # a click loads it: answers nothing
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig2")
    assert _labels(run)["pmid:2/fig2"] is None and _text(d, "label") == "not reviewed"
    # its image file is gone: said, with a retry; the buttons stay and answer it
    _wait(d, lambda d: "the image of pmid:2/fig2 did not load" in _text(d, "status"))
    assert d.find_element("id", "retry").is_displayed()
    d.find_element("id", "retry").click()  # tried again: still gone, said again
    _wait(d, lambda d: "the image of pmid:2/fig2 did not load" in _text(d, "status"))
    # another figure shown: the message (and its retry) was about the image gone, not this
    ActionChains(d).send_keys("\ue012").perform()  # arrow left
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:2/fig1")
    assert _text(d, "status") == "" and not d.find_element("id", "retry").is_displayed()
    _next(d, "pmid:2/fig2")
    _wait(d, lambda d: "the image of pmid:2/fig2 did not load" in _text(d, "status"))
    d.find_element("css selector", ".key-u").click()
    _wait(d, lambda d: "saved pmid:2/fig2: not usable" in _text(d, "status"))
    assert _labels(run) == {
        "pmid:1/fig1": "metastasis",
        "pmid:1/fig2": "no_metastasis",
        "pmid:2/fig1": None,
        "pmid:2/fig2": "not_usable",
    }


def test_not_saved_says_go_back_once_another_figure_is_shown(
    served: tuple[str, Path], browser
) -> None:
    """Review 42 M1: after a failed save on fig1 and →, fig2 was shown under "NOT SAVED:
    pmid:1/fig1 … answer it again", and m answered fig2. Now the message says to go back to
    fig1 while another figure is shown, and "answer it again" once fig1 is back. A failed
    answer is said in an alert region (a screen reader says it at once), a saved one in a
    polite status."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _fail_once(d, "/api/label")
    _press(d, "m", "NOT SAVED: pmid:1/fig1 metastasis")
    assert _text(d, "status").endswith("It is still not reviewed; answer it again.")
    assert _text(d, "status-alert") == _text(d, "status") and not _text(d, "status-polite")
    assert d.find_element("id", "status-alert").get_attribute("role") == "alert"
    _next(d, "pmid:1/fig2")
    said = _text(d, "status")
    assert said.startswith("NOT SAVED: pmid:1/fig1 metastasis"), said
    assert said.endswith("go back to pmid:1/fig1 to answer it again."), said
    ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _wait(d, lambda d: _text(d, "status").endswith("; answer it again."))
    _press(d, "m", "saved pmid:1/fig1: metastasis")
    assert _text(d, "status-polite") == "saved pmid:1/fig1: metastasis"
    assert not _text(d, "status-alert")
    assert d.find_element("id", "status-polite").get_attribute("role") == "status"
    assert _labels(run)["pmid:1/fig1"] == "metastasis"


def test_an_undo_saved_is_never_said_failed_nor_posted_twice(
    served: tuple[str, Path], browser
) -> None:
    """Review 42 M2: an undo saved, with the list failing to reload after it, was said "undo
    failed" and stayed on the undo stack, so z posted it again. Only a failed POST is a
    failed undo now; a reload failing after it is said as such and → reloads (← too: it
    walked the list from before the undo)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _press(d, "m", "saved pmid:1/fig1: metastasis")
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig2")
    _fail_once(d, "/api/items")
    _press(d, "z", "undone: pmid:1/fig1 is not reviewed again; the list of figures did not")
    assert _text(d, "status").endswith("(press → to retry)") and "undo failed" not in _text(
        d, "status"
    )
    assert d.execute_script("return state.undo.length") == 0
    assert _labels(run)["pmid:1/fig1"] is None
    # ← reloads too (it walked the old list, where the figure undone was not: fig2 showed)
    ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _wait(d, lambda d: _text(d, "status") == "undone: pmid:1/fig1 is not reviewed again")
    assert _text(d, "label") == "not reviewed"
    _press(d, "z", "nothing to undo")
    assert _log(run) == [("pmid:1/fig1", "metastasis"), ("pmid:1/fig1", None)]
    # a failed POST is a failed undo: the answer stands and z tries it again
    _press(d, "u", "saved pmid:1/fig1: not usable")
    _fail_once(d, "/api/label")
    _press(d, "z", "undo failed: the review server does not answer")
    assert d.execute_script("return state.undo.length") == 1
    _press(d, "z", "undone: pmid:1/fig1 is not reviewed again")
    assert _labels(run)["pmid:1/fig1"] is None


def test_modified_and_held_keys_answer_nothing(served: tuple[str, Path], browser) -> None:
    """Review 42 M3: Ctrl/Meta/Alt with a letter are the browser's or the system's keys (the
    guard was untested), and a held key's repeats answered one figure after another."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    for modifier in (Keys.CONTROL, Keys.META, Keys.ALT):
        for letter in "MNUZ":
            ActionChains(d).key_down(modifier).send_keys(letter).key_up(modifier).perform()
    for letter in "mnuz":  # an auto-repeated keydown, as a held key sends
        key = {"type": "keyDown", "key": letter, "text": letter, "autoRepeat": True}
        d.execute_cdp_cmd("Input.dispatchKeyEvent", key)
        d.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", "key": letter})
    _next(d, "pmid:1/fig2")  # queued after anything those keys queued
    assert _text(d, "status") == "" and _text(d, "position") == "2 / 4"
    assert not (run / "review_log.jsonl").exists() or _log(run) == []
    assert set(_labels(run).values()) == {None}


def _select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def _shown(driver, image_id: str, position: str) -> None:
    _wait(driver, lambda d: (_text(d, "figure-id"), _text(d, "position")) == (image_id, position))


def test_answers_that_take_figures_off_the_review_label_list_skip_none(
    served: tuple[str, Path], browser
) -> None:
    """Review 48: only the "unreviewed" status moved the list's index after an answer; with
    the review label filter set to "unreviewed" (status all) each answer took a figure off
    the list while the page went on by index, and the next page, asked for by index, began
    past pmid:2/fig1: it was never shown (fig1, fig2, then pmid:2/fig2 at "2 / 2"). The
    next figure is found by its place after the one answered now, never by a stale index."""
    url, run = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    _select(d, "f-status", "all")
    _select(d, "f-label", "unreviewed")
    _shown(d, "pmid:1/fig1", "1 / 4")
    _press(d, "m", "saved pmid:1/fig1: metastasis")
    _shown(d, "pmid:1/fig2", "1 / 3")
    _press(d, "m", "saved pmid:1/fig2: metastasis")
    _shown(d, "pmid:2/fig1", "1 / 2")
    _press(d, "n", "saved pmid:2/fig1: no metastasis")
    _shown(d, "pmid:2/fig2", "1 / 1")
    _press(d, "u", "saved pmid:2/fig2: not usable")
    _wait(d, lambda d: _text(d, "empty-text") == "Nothing matches these filters.")
    assert _log(run) == [
        ("pmid:1/fig1", "metastasis"),
        ("pmid:1/fig2", "metastasis"),
        ("pmid:2/fig1", "no_metastasis"),
        ("pmid:2/fig2", "not_usable"),
    ]


def test_answers_that_take_figures_off_the_reviewed_or_disagreement_list_skip_none(
    served: tuple[str, Path], browser
) -> None:
    """Review 48, as above for "reviewed" with a review label (an answer changed takes the
    figure off: pmid:2/fig1 was skipped; so it was when another tab's answer took one off
    before the page moved on) and for disagreements between the weak label and the review
    (an answer agreeing takes it off: the position said "2 / 3" of a list of 2). ← and →
    across pages after answers walk the list as it is."""
    from selenium.webdriver.common.action_chains import ActionChains

    from histofetch.review.data import save_answer

    url, run = served
    with Manifest.load(run) as m:
        for image_id in ("pmid:1/fig1", "pmid:1/fig2", "pmid:2/fig1", "pmid:2/fig2"):
            save_answer(m, image_id, "metastasis", "earlier")
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "empty-text") == "All 4 figures of this run are reviewed.")
    _select(d, "f-status", "reviewed")
    _select(d, "f-label", "metastasis")
    _shown(d, "pmid:1/fig1", "1 / 4")
    _next(d, "pmid:1/fig2")
    with Manifest.load(run) as m:  # another tab takes pmid:1/fig1 off the list
        save_answer(m, "pmid:1/fig1", "no_metastasis", "other")
    _next(d, "pmid:2/fig1")
    assert _text(d, "position") == "2 / 3"
    ActionChains(d).send_keys("\ue012").perform()  # arrow left: the page before
    _shown(d, "pmid:1/fig2", "1 / 3")
    _press(d, "n", "saved pmid:1/fig2: no metastasis")
    _shown(d, "pmid:2/fig1", "1 / 2")
    _press(d, "n", "saved pmid:2/fig1: no metastasis")
    _shown(d, "pmid:2/fig2", "1 / 1")
    # weak labels: metastasis, no metastasis, metastasis, abstain (never a disagreement)
    _select(d, "f-status", "all")
    _select(d, "f-label", "")
    with Manifest.load(run) as m:  # pmid:1/fig2 disagrees too
        save_answer(m, "pmid:1/fig2", "metastasis", "earlier")
    _select(d, "f-disagree", "review")
    _shown(d, "pmid:1/fig1", "1 / 3")
    _press(d, "m", "saved pmid:1/fig1: metastasis")  # now agrees: off the list
    _shown(d, "pmid:1/fig2", "1 / 2")
    _next(d, "pmid:2/fig1")
    assert _text(d, "position") == "2 / 2"
    ActionChains(d).send_keys("\ue012").perform()
    _shown(d, "pmid:1/fig2", "1 / 2")
    _press(d, "n", "saved pmid:1/fig2: no metastasis")
    _shown(d, "pmid:2/fig1", "1 / 1")


def test_the_pages_rule_for_an_answered_figure_is_the_servers(
    served: tuple[str, Path], browser
) -> None:
    """The review-status rule (and the review label and disagreement filters) is written
    twice: the server's ``matches`` chooses the list, the page's ``stillMatches`` whether
    the figure just answered stays on it (the page moves on by it). Both answer each case
    of the table alike (a rule changed on one side only skipped or repeated figures)."""
    from histocore.manifest import Image
    from histofetch.review.data import matches

    url, _ = served
    d = browser
    d.get(url)
    _wait(d, lambda d: _text(d, "figure-id") == "pmid:1/fig1")
    cases = answer_filter_cases()
    page = d.execute_script(
        """const out = [];
        for (const c of arguments[0]) {  // the filters set, no change event: no reload
          $("f-status").value = c.status;
          $("f-disagree").value = c.disagree;
          $("f-label").value = c.label_filter;
          if ($("f-label").value !== c.label_filter) throw new Error(c.label_filter);
          out.push(stillMatches({id: "x", label: c.label, weak_label: c.weak_label}));
        }
        return out;""",
        cases,
    )
    server = [
        matches(
            Image(id="x", record_id="r", path="p", sha256="0", width=1, height=1,
                  label=c["label"], weak_label=c["weak_label"]),
            None,
            {"status": c["status"], "disagree": c["disagree"], "label": c["label_filter"]},
        )
        for c in cases
    ]  # fmt: skip
    differ = [(c, p) for c, p, s in zip(cases, page, server, strict=True) if p != s]
    assert not differ, differ[:5]
    assert 0 < sum(server) < len(cases)  # the table has cases kept and cases taken off
