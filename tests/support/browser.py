"""Debian's Chromium, driven by Playwright, with the network blocked: what a user sees opening a page offline."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

# every host name fails to resolve, and Chromium's own background traffic is off: nothing leaves the machine
OFFLINE_ARGS = ["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Visit:
    page: object  # playwright's Page
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def chromium() -> str:
    """The browser to drive: $CHROMIUM, or Debian's `chromium` (`make browser` installs it)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("Debian's chromium is not installed: run `make browser` (apt-get install chromium), or set "
                    "CHROMIUM to a Chromium binary")
    return path


@contextmanager
def offline_browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=OFFLINE_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def visit(browser, url: str) -> Visit:
    """Open `url` in a new page, recording every request it makes and every one that failed."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = Visit(page)
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("requestfailed", lambda r: seen.failed.append(f"{r.url} ({r.failure})"))
    page.goto(url, wait_until="load")
    return seen
