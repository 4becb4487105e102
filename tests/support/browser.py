"""Real headless Chromium for the dashboard's tests: Debian's chromium, driven by Playwright.

Playwright's Python package brings its driver, not a browser: the one it drives
is Debian's (``apt-get install chromium``; ``.ci/run`` installs it when missing),
so nothing is downloaded at test time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

#: The browser itself; /usr/bin/chromium is Debian's wrapper script around it.
CHROMIUM = Path("/usr/lib/chromium/chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium, closed (with Playwright's driver) when the block ends."""
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
