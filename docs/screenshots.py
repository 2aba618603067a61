"""The README's screenshots of the lab: `rnnkit serve` over the runs given, driven in Debian's
headless Chromium by Playwright, one PNG per panel into docs/.

    python docs/screenshots.py runs/tm-quality
    (e.g. over rnnkit train --preset quality --time-budget 240)
"""
import shutil
import signal
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_browser import FLAGS, generate_in_page, open_lab  # noqa: E402
from test_lab import start_lab  # noqa: E402

DOCS = Path(__file__).resolve().parent
TEXT = ('"Clearly," the Time Traveller proceeded, "any real body must have extension in four '
        'directions: it must have Length, Breadth, Thickness, and (Duration)."')


def main(run_dirs: list[str]) -> None:
    proc, url = start_lab(*run_dirs)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = open_lab(browser, url, viewport={"width": 1100, "height": 720})
            generate_in_page(page, prefix="The Time Traveller", seed=1)
            page.screenshot(path=str(DOCS / "lab-generate.png"))
            page.click("nav button[data-panel=read]")
            page.fill("#read-text", TEXT)
            page.click("#read-go")
            page.wait_for_selector("#read-out span")
            page.hover("#read-out span[data-i='25']")
            page.screenshot(path=str(DOCS / "lab-read.png"))
            page.click("nav button[data-panel=units]")
            page.click("#units-go")
            page.wait_for_selector("#units-ranking button")
            page.locator("#units-ranking div").first.locator("button").first.click()
            page.screenshot(path=str(DOCS / "lab-units.png"))
            page.click("nav button[data-panel=training]")
            page.wait_for_selector("#curve polyline")
            page.screenshot(path=str(DOCS / "lab-training.png"))
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
