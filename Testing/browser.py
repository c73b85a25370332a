"""Headless Chromium for the tests that render our offline pages: one set of flags, a run with a timeout, and the
network cut off where this machine allows it (so a page that fetched anything would show it)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium")
MISSING = "chromium is not installed (CI installs the Debian package 'chromium')"
FLAGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
"""For every page; add NO_GPU for plain pages or WEBGL for pages that draw with WebGL."""
NO_GPU = ["--disable-gpu"]
WEBGL = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
"""WebGL2 in software (docs/VIEWER-CHOICE.md): --use-gl=swiftshader fails, --disable-gpu only falls back with a
deprecation warning."""


@functools.cache
def network_cut() -> list[str]:
    """The prefix that runs a command without any network (``unshare -n``: root or user namespaces), or [] where
    this machine does not allow it: then the pages' own "no URL in the page" checks are what is left."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    try:
        done = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-n"] if done.returncode == 0 else []


def run_chromium(page: Path, profile: Path, *arguments: str, gpu: list[str] = NO_GPU, timeout: float = 120,
                 offline: bool = True) -> subprocess.CompletedProcess:
    """Open ``page`` (a file) in headless Chromium with a fresh profile folder; ``arguments``: --dump-dom,
    --screenshot=..., --window-size=..., --virtual-time-budget=... Raises on a timeout."""
    assert CHROMIUM is not None, MISSING
    prefix = network_cut() if offline else []
    command = [*prefix, CHROMIUM, *FLAGS, *gpu, f"--user-data-dir={profile}", *arguments, page.as_uri()]
    return subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
