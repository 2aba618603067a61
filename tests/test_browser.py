"""The lab's page in a real headless Chromium (Debian's, driven by Playwright): generate, read
a text, switch hidden units, see the training curve. Screenshots go to $RNNKIT_SCREENSHOTS
(the README's come from `RNNKIT_SCREENSHOTS=docs pytest tests/test_browser.py`) or tmp_path."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from test_lab import TEXT, runs, start_lab  # noqa: F401  (runs: the shared fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine: install Debian's chromium package "
                             "(apt-get install -y chromium; .ci/run does) to run the page tests")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (Playwright's sync API allows one instance at a time)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(runs, browser):  # noqa: F811
    proc, url = start_lab(*runs)
    page = open_lab(browser, url, viewport={"width": 1100, "height": 760})
    yield page
    page.close()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def _wait_for(page, condition: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript condition from Python: Playwright's wait_for_function evaluates a
    string in the page, which the lab's CSP (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)


def open_lab(browser, url: str, **page_options):
    """A new page on the lab at `url`, once its run list has loaded."""
    page = browser.new_page(**page_options)
    page.goto(url + "/")
    page.wait_for_selector("#run option", state="attached")
    return page


def generate_in_page(page, **fields) -> None:
    """Fill Generate's fields (prefix=, seed=, length=…), press Generate, wait until done."""
    for name, value in fields.items():
        page.fill(f"#gen-{name}", str(value))
    page.click("#gen-go")
    _wait_for(page, "document.querySelector('#gen-status').textContent === 'done'")


def _shot(page, name, tmp_path):
    folder = Path(os.environ.get("RNNKIT_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(folder / f"lab-{name}.png"))


def test_generate_streams_text_into_the_page(page, tmp_path):
    generate_in_page(page, prefix="the time machine", seed=4)
    texts = page.locator("#gen-out pre").all_inner_texts()
    assert len(texts) == 2 and all(t.startswith("the time machine") and len(t) == 316
                                   for t in texts)
    _shot(page, "generate", tmp_path)
    page.fill("#gen-length", "10000")                    # a long one, stopped half-way
    page.click("#gen-go")
    _wait_for(page, "document.querySelector('#gen-out pre')?.textContent.length > 60")
    page.click("#gen-stop")
    _wait_for(page, "document.querySelector('#gen-status').textContent === 'stopped'")
    assert len(page.locator("#gen-out pre").first.inner_text()) < 10_000


def test_reading_a_text_shades_each_character_and_shows_five_guesses(page, tmp_path):
    page.click("nav button[data-panel=read]")
    page.fill("#read-text", TEXT)
    page.click("#read-go")
    page.wait_for_selector("#read-out span")
    spans = page.locator("#read-out span")
    cleaned = "the time traveller for so it will be convenient to speak of him was expounding " \
              "a recondite matter to us"
    assert spans.count() == len(cleaned)
    assert "bits per character" in page.inner_text("#read-summary")
    page.hover("#read-out span[data-i='12']")
    page.wait_for_selector("#tooltip:not([hidden])")
    assert page.locator("#tooltip tr").count() == 5
    _shot(page, "read", tmp_path)


def test_hidden_units_switch_from_the_ranking(page, tmp_path):
    page.click("nav button[data-panel=units]")
    page.click("#units-go")
    page.wait_for_selector("#units-out span")
    shading = "[...document.querySelectorAll('#units-out span')].map(e => e.style.background)"
    before = page.evaluate(shading)
    button = page.locator("#units-ranking button:not([data-unit='0'])").first   # another unit
    unit = button.get_attribute("data-unit")
    button.click()
    assert page.input_value("#units-unit") == unit
    assert page.evaluate(shading) != before             # the text is shaded by the new unit
    _shot(page, "units", tmp_path)


def test_the_training_panel_draws_both_curves(page, tmp_path):
    page.click("nav button[data-panel=training]")
    page.wait_for_selector("#curve polyline.val")
    assert page.locator("#curve polyline").count() == 2
    assert "15 epochs" in page.inner_text("#training-status")
    _shot(page, "training", tmp_path)


def test_unknown_characters_are_shown_on_the_page(page):
    page.select_option("#run", "lstm")
    page.click("nav button[data-panel=read]")
    page.fill("#read-text", "He said ¿qué?")
    page.click("#read-go")
    page.wait_for_selector("#read-unknown:not([hidden])")
    assert '"¿" at 8' in page.inner_text("#read-unknown")
    assert page.locator("#read-out span").count() == 0     # the earlier text's shading is gone
    page.click("#read-anyway")
    _wait_for(page, f"document.querySelectorAll('#read-out span').length == "
                           f"{len('He said ¿qué?')}")


HOSTILE = "<img/src=x/onerror=window.pwned=1>"          # a word of the corpus, as scraped text


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A word-level run whose tokens, corpus file name and run name are all markup."""
    from rnnkit.cli import main
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "<img src=x onerror=window.pwned=2>.txt"
    corpus.write_text(f"hello {HOSTILE} world <b>bold</b> again\n" * 300)
    out = root / "<img src=x onerror=window.pwned=3>"
    assert main(["train", "--corpus", str(corpus), "--token", "word", "--clean", "none",
                 "--hidden", "16", "--epochs", "2", "--batch-size", "4", "--num-steps", "5",
                 "--sample-every", "0", "--out", str(out)]) == 0
    return corpus, out


def test_hostile_tokens_and_names_appear_as_text_and_run_nothing(hostile_run, browser):
    corpus, out = hostile_run
    proc, url = start_lab(out)
    errors = []
    try:
        page = browser.new_page()
        page.on("console", lambda m: m.type == "error" and not m.text.startswith(
            "Failed to load resource") and errors.append(m.text))   # (4xx answers: fine)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#run option", state="attached")
        assert page.locator("#run option").first.inner_text() == out.name   # run name
        generate_in_page(page, prefix="hello", length=40)            # generated text
        assert HOSTILE in page.inner_text("#gen-out")
        page.click("nav button[data-panel=read]")                  # tooltip: the guesses
        page.fill("#read-text", f"hello {HOSTILE} world")
        page.click("#read-go")
        page.wait_for_selector("#read-out span[data-i='1']")
        page.hover("#read-out span[data-i='1']")
        page.wait_for_selector("#tooltip:not([hidden])")
        assert HOSTILE in page.inner_text("#tooltip")
        page.fill("#read-text", "hello <script>window.pwned=4</script> world")
        page.click("#read-go")                                     # the unknown-token notice
        page.wait_for_selector("#read-unknown:not([hidden])")
        assert "<script>window.pwned=4</script>" in page.inner_text("#read-unknown")
        page.fill("#read-text", f"hello {HOSTILE} world")
        page.click("nav button[data-panel=units]")                 # unit tooltip, ranking
        page.click("#units-go")
        page.wait_for_selector("#units-out span[data-i='1']")
        page.hover("#units-out span[data-i='1']")
        _wait_for(page, "document.querySelector('#tooltip').textContent.includes('unit 0')")
        assert HOSTILE in page.inner_text("#tooltip")
        page.click("nav button[data-panel=training]")              # config: the corpus path
        page.wait_for_selector("#config tr")
        assert corpus.name in page.inner_text("#config")
        time.sleep(0.3)
        assert page.evaluate("window.pwned") is None               # no handler ran
        assert page.evaluate("document.querySelectorAll('img, script:not([src])').length"
                             ) == 0                                # and no markup was made
        assert page.evaluate("[...document.querySelectorAll('b')].every(b => "
                             "b.closest('#units-ranking') && b.textContent !== 'bold')")
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert errors == []            # nothing the CSP or Trusted Types had to refuse, no JS error


def test_copies_of_the_training_text_are_underlined_with_where_they_occur(browser, tmp_path):
    from rnnkit.cli import main
    text = ("The Time Traveller (for so it will be convenient to speak of him) was expounding "
            "a recondite matter to us. His grey eyes shone and twinkled.\n")
    corpus = tmp_path / "t.txt"
    corpus.write_text(text * 60)
    run = tmp_path / "memorised"
    assert main(["train", "--corpus", str(corpus), "--clean", "none", "--hidden", "96",
                 "--batch-size", "8", "--num-steps", "40", "--lr", "2", "--epochs", "12",
                 "--sample-every", "0", "--end-on", "last", "--out", str(run)]) == 0
    proc, url = start_lab(run)
    try:
        page = open_lab(browser, url)
        generate_in_page(page, prefix="His grey", length=200)
        sample = page.inner_text("#gen-out pre")
        copies = page.locator("#gen-out pre u.copy")
        assert copies.count() >= 1 and len(sample) == len("His grey") + 200
        first = copies.first
        # a copy of 20+ characters starts it (overlapping copies are underlined as one)
        assert len(first.inner_text()) >= 20 and first.inner_text()[:20] in text * 4
        title = first.get_attribute("title")
        assert "copied from the training text" in title and first.inner_text()[:20] in title
        first.hover()                                          # the browser shows the title
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_a_transformer_run_says_its_units_panel_is_for_recurrent_cells(browser, tmp_path):
    from rnnkit.cli import main
    run = tmp_path / "tf"
    assert main(["train", "--cell", "transformer", "--hidden", "32", "--layers", "1",
                 "--num-steps", "16", "--max-tokens", "3000", "--batch-size", "8", "--epochs",
                 "1", "--optimizer", "adamw", "--lr", "3e-3", "--sample-every", "0",
                 "--out", str(run)]) == 0
    proc, url = start_lab(run)
    try:
        page = open_lab(browser, url)
        page.click("nav button[data-panel=units]")
        assert "for recurrent cells: a transformer run" in page.inner_text("#units-status")
        assert page.is_disabled("#units-go") and page.is_disabled("#units-state")
        page.click("nav button[data-panel=read]")                # reading still works
        page.fill("#read-text", "the time machine")
        page.click("#read-go")
        _wait_for(page, "document.querySelector('#read-summary').textContent"
                        ".includes('bits per character')")
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
