"""A real headless browser for the console's tests: Debian's Chromium (``/usr/bin/chromium``),
driven by Playwright's Python package with that system browser (Playwright's own browser
download is never used), with a fake microphone that plays a WAV file.

Each page is watched for what the tests forbid: console errors, uncaught exceptions, failed
requests, and any request to another origin than the gateway's (the console must work offline:
no CDN, no font service, nothing). Screenshots go to ``test-artifacts/console/`` (or
``CALLBRIDGE_SCREENSHOTS``), one per view, so a run leaves pictures of what it checked.

Without Chromium the browser tests are skipped, unless ``CALLBRIDGE_REQUIRE_BROWSER=1`` (CI
sets it), when they fail: a missing browser must not pass for a green run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, Route, async_playwright

CHROMIUM = os.environ.get("CALLBRIDGE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("CALLBRIDGE_SCREENSHOTS", ROOT / "test-artifacts" / "console"))
#: Quiet, deterministic Chromium: no GPU, no sandbox (containers run it as root), and none of
#: the browser's own traffic (updates, sync, safe browsing) that would not be the page's.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
)


def require_browser() -> None:
    """Skip the test without Chromium (fail instead in CI)."""
    if shutil.which(CHROMIUM) is None:
        message = f"no browser for the console tests: {CHROMIUM} (Debian package chromium)"
        if os.environ.get("CALLBRIDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Watch:
    """What a page did that the tests forbid."""

    origin: str
    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.external, f"requests to other origins: {self.external}"


@contextlib.asynccontextmanager
async def browser_page(
    origin: str, *, microphone: Path | None = None
) -> AsyncIterator[tuple[Page, Watch]]:
    """A fresh browser and page for ``origin`` (the gateway's base URL); ``microphone``: a WAV
    the fake microphone plays (from when the page opens it, in a loop)."""
    flags = list(FLAGS)
    if microphone is not None:
        flags += [
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",
        ]
    watch = Watch(origin)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            context = await browser.new_context(
                permissions=["microphone"], viewport={"width": 1280, "height": 900}
            )
            page = await context.new_page()
            page.on("console", lambda m: m.type == "error" and watch.errors.append(m.text))
            page.on("pageerror", lambda e: watch.errors.append(f"uncaught: {e}"))
            # A request cut short by leaving the page (the live events' stream, at log-out)
            # is ERR_ABORTED: the browser's doing, not a failure.
            page.on(
                "requestfailed",
                lambda r: (
                    "ERR_ABORTED" not in str(r.failure)
                    and watch.errors.append(f"request failed: {r.url} {r.failure}")
                ),
            )

            async def only_ours(route: Route) -> None:
                url = route.request.url
                parts = urlsplit(url)
                if f"{parts.scheme}://{parts.netloc}" == origin or parts.scheme in ("data", "blob"):
                    await route.continue_()
                else:
                    watch.external.append(url)
                    await route.abort()

            await context.route("**/*", only_ours)
            yield page, watch
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Save the page as ``<SCREENSHOTS>/<name>.png``."""
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
