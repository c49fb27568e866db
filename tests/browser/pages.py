"""Page helpers for the browser tests that run a stack of their own (not the shared ``live`` one).

``Browsers`` opens logged-in pages on any server of the stack and checks
every page it opened when it closes; ``shared_worker=False`` takes
SharedWorker away from a context (conftest.per_tab_streams), as on Android
Chrome, so each tab holds its own stream.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.browser.conftest import SCREENSHOTS, PageRecorder, log_in, per_tab_streams, wait_ready

DESKTOP = {"viewport": {"width": 1400, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
LOOKS = {
    "desktop-light": {**DESKTOP, "color_scheme": "light"},
    "desktop-dark": {**DESKTOP, "color_scheme": "dark"},
    "phone-light": {**PHONE, "color_scheme": "light"},
    "phone-dark": {**PHONE, "color_scheme": "dark"},
}
# Where a person looks at the screenshots of a run (the CI keeps test-artifacts/screenshots/ too).
SHOTS = Path("/tmp/shots")


def shot(page, name: str) -> Path:
    """A screenshot in test-artifacts/screenshots/ and /tmp/shots/; returns its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")  # a sliding sidebar is shown where it ends
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


class Browsers:
    """Logged-in pages, one browser context per person and look; ``close()`` checks each page's record."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []

    def context(self, base_url: str, username: str, *, shared_worker: bool = True, **options):
        """A new context (a browser profile of its own) logged in as ``username`` on ``base_url``."""
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = self.browser.new_context(base_url=base_url, **options)
        context.set_default_timeout(15_000)
        if not shared_worker:
            per_tab_streams(context)
        self.contexts.append(context)
        page = self.tab(context)
        log_in(page, username)
        wait_ready(page)
        return context, page

    def tab(self, context, path: str | None = None):
        """Another page of ``context`` (at ``path`` when given, then waited for), recording what it does."""
        page = context.new_page()
        page.recorder = PageRecorder(page)
        if path is not None:
            page.goto(path)
            wait_ready(page)
        return page

    def close(self):
        try:
            for context in self.contexts:
                for page in context.pages:
                    page.recorder.check()
        finally:
            for context in self.contexts:
                context.close()
