"""Screenshot of the top of an evaluation report, for the docs.

Run: .venv/bin/python bench/report_screenshot.py --metrics runs/eval/metrics.json --out docs/evaluation-report.png
Renders the report of a metrics.json to a temporary HTML page and takes a headless-Chromium screenshot of its top
(1400 x 2400 by default). Needs the Debian package ``chromium``; the page loads nothing from the network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from neuroradfm.evaluate.report import render_report

CHROMIUM_FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def screenshot(html_path: Path, out: Path, width: int = 1400, height: int = 2400, timeout: float = 120) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``html_path`` rendered by headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: install the Debian package 'chromium'")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="report-shot-") as profile:
        result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
                                 f"--window-size={width},{height}", html_path.resolve().as_uri()],
                                capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json written by neuroradfm evaluate")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--html", type=Path, default=None, help="also keep the rendered page here")
    args = parser.parse_args(argv)
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="report-") as folder:
        page = Path(folder) / "report.html"
        page.write_text(render_report(metrics), encoding="utf-8")
        if args.html is not None:
            args.html.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page, args.html)
        screenshot(page, args.out, args.width, args.height)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
