"""Drive the web demo in headless Chromium: run each tab's task and screenshot it (``docs/screenshots/``).

    python -m unimask.web_demo_screenshots --output docs/screenshots            # default model
    python -m unimask.web_demo_screenshots --model DIR --output docs/screenshots

Needs Playwright (the Python package; its own browser downloads are not used) and the Debian ``chromium``
package at ``/usr/bin/chromium``. The browser only talks to the app on 127.0.0.1. The helpers here are
also what the end-to-end test (``tests/web/test_browser.py``) uses to drive the page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
# Bounds of every browser wait (milliseconds).
PAGE_TIMEOUT_MS = 60_000
RESULT_TIMEOUT_MS = 180_000
TAB_NAMES = {
    "understanding": "Understanding",
    "text_to_image": "Text to image",
    "editing": "Editing",
    "interleaved": "Interleaved",
    "chat": "Chat",
}
# Per tab: the button that runs it and a JavaScript predicate that holds once its result is rendered.
_RUN_BUTTON = {
    "understanding": "#understanding-run",
    "text_to_image": "#t2i-run",
    "editing": "#edit-run",
    "interleaved": "#interleaved-run",
    "chat": "#chat-run",
}
_IMAGE_RENDERED = "(sel) => { const i = document.querySelector(sel + ' img'); return !!(i && i.src && i.complete && i.naturalWidth > 0); }"
_TEXT_RENDERED = "(sel) => { const t = document.querySelector(sel + ' textarea'); return !!(t && t.value.trim().length > 0); }"
_STATS_RENDERED = "(sel) => { const s = document.querySelector(sel); return !!(s && s.innerText.includes('forward passes')); }"
_RESULT_READY = {
    "understanding": (_TEXT_RENDERED, "#understanding-answer"),
    "text_to_image": (_IMAGE_RENDERED, "#t2i-result"),
    "editing": (_IMAGE_RENDERED, "#edit-result"),
    "interleaved": (_STATS_RENDERED, "#interleaved-stats"),
    "chat": (_STATS_RENDERED, "#chat-stats"),
}


def launch_browser(playwright: Any) -> Any:
    """Headless Debian Chromium through Playwright (``playwright``: a started ``sync_playwright()``)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS), timeout=PAGE_TIMEOUT_MS
    )


def open_app(browser: Any, url: str) -> Any:
    """A new page showing the app at ``url`` (loaded and rendered). Returns the Playwright page."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(url, wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector("#understanding-question", state="visible", timeout=PAGE_TIMEOUT_MS)
    return page


def show_tab(page: Any, task: str) -> None:
    """Select the tab of ``task`` (a key of `TAB_NAMES`)."""
    if task not in TAB_NAMES:
        raise ValueError(f"task={task!r} is not a tab; allowed: {sorted(TAB_NAMES)}")
    page.get_by_role("tab", name=TAB_NAMES[task], exact=True).click()
    page.wait_for_selector(_RUN_BUTTON[task], state="visible", timeout=PAGE_TIMEOUT_MS)


def open_advanced(page: Any) -> None:
    """Open the advanced options panel and wait until its fields are shown."""
    page.locator("#advanced").get_by_text("Advanced options").first.click()
    page.wait_for_selector("#opt-seed", state="visible", timeout=PAGE_TIMEOUT_MS)


def fill_field(field: Any, text: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Type ``text`` into ``field`` (a Playwright locator of an input or textarea) and leave it, so Gradio
    commits the value. Retypes until the field still holds ``text`` a moment later: a Gradio field that is
    mounted or re-rendered just after the typing (a panel opening) resets itself to its last committed value.
    Raises ``TimeoutError`` when ``text`` does not stay within ``timeout_ms``."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        field.fill(text)
        field.press("Tab")
        field.page.wait_for_timeout(500)
        if field.input_value() == text:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the field kept resetting; it holds {field.input_value()!r}, not {text!r}")


def run_tab(page: Any, task: str, text: str | None = None, timeout_ms: int = RESULT_TIMEOUT_MS) -> None:
    """Show ``task``'s tab, optionally replace its prompt / question / message with ``text``, press its
    button and wait (at most ``timeout_ms``) until the result is rendered."""
    show_tab(page, task)
    if text is not None:
        field = {"understanding": "#understanding-question", "text_to_image": "#t2i-prompt", "editing": "#edit-prompt",
                 "interleaved": "#interleaved-prompt", "chat": "#chat-message"}[task]
        fill_field(page.locator(f"{field} textarea"), text)
    page.locator(_RUN_BUTTON[task]).click()
    predicate, selector = _RESULT_READY[task]
    page.wait_for_function(predicate, arg=selector, timeout=timeout_ms)


def rendered_image_size(page: Any, selector: str) -> tuple[int, int]:
    """(naturalWidth, naturalHeight) of the first image inside ``selector``; (0, 0) when there is none."""
    size = page.evaluate(
        "(sel) => { const i = document.querySelector(sel + ' img'); return i ? [i.naturalWidth, i.naturalHeight] : [0, 0]; }",
        selector,
    )
    return int(size[0]), int(size[1])


def capture_tabs(url: str, output_dir: str | Path) -> list[Path]:
    """Run every tab of the app at ``url`` once and save ``<task>.png`` per tab plus ``advanced.png``
    (the options panel open) into ``output_dir``. Returns the written paths."""
    from playwright.sync_api import sync_playwright

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = open_app(browser, url)
            for task in TAB_NAMES:
                run_tab(page, task)
                path = output / f"{task}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
            show_tab(page, "text_to_image")
            open_advanced(page)
            path = output / "advanced.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    """Serve the app on 127.0.0.1, capture every tab, print the paths. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--output", default="docs/screenshots", help="folder for the PNG screenshots")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from unimask.pipelines.pipeline_uni import UniPipeline
    from unimask.web_demo import build_app, launch_app

    try:
        pipe = UniPipeline.from_pretrained(args.model)
    except ValueError as error:
        print(f"web_demo_screenshots: {error}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    app = build_app(pipe, model_name=str(args.model or "shapes-default"), seed=args.seed)
    url = launch_app(app, port=None, block=False)
    try:
        for path in capture_tabs(url, args.output):
            print(path)
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
