"""Screenshot of the teaching case viewer for the docs, with the page's size and load time.

Run: .venv/bin/neuroradfm demo --out /tmp/demo19   (once: the phantom case and its predictions)
     .venv/bin/python bench/viewer_screenshot.py --case /tmp/demo19/case/BraTS-PHN-00000-000 \
         --results /tmp/demo19/results/BraTS-PHN-00000-000 --out docs/teaching-viewer.png
Writes the teacher's (revealed) page: four sequences, the eleven heat maps (``--map`` first, at 60 % opacity), the
tumour outline, the model's answer and the truth; then a headless-Chromium screenshot (WebGL2 in SwiftShader, the
network cut with ``unshare -n`` where allowed). Prints the time write_case_viewer took, the page size and the time
Chromium took until the page said it was loaded (data-state="OK" on its <html>). Needs the Debian package ``chromium``.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neuroradfm.io.loader import find_brats_files, read_sequence
from neuroradfm.map_files import read_heatmap
from neuroradfm.teach.viewer import RevealPanel, write_case_viewer

FLAGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def panels(results: Path, clinical: Path | None) -> list[RevealPanel]:
    """The model's answer (predictions.json) and, when the case's clinical row is there, the truth."""
    predictions = json.loads((results / "predictions.json").read_text(encoding="utf-8"))
    rows = "".join(f"<tr><td>{html.escape(m['label'])}</td><td>{m['probability']:.2f}</td>"
                   f"<td>{html.escape(str(m['call']))}</td></tr>" for m in predictions["markers"])
    found = [RevealPanel("model", "Reveal the model's answer",
                         f"<table><tr><th>marker</th><th>p</th><th>call</th></tr>{rows}</table>")]
    if clinical is not None and clinical.is_file():
        with clinical.open(encoding="utf-8", newline="") as handle:
            row = next((r for r in csv.DictReader(handle) if r["case_id"] == predictions["case_id"]), None)
        if row is not None:
            truth = "".join(f"<tr><td>{html.escape(m['label'])}</td><td>{html.escape(row.get(m['key'], ''))}</td></tr>"
                            for m in predictions["markers"] if m["key"] in row)
            found.append(RevealPanel("truth", "Reveal the truth", f"<table>{truth}</table>"))
    return found


def chromium_run(page: Path, arguments: list[str], timeout: float = 300) -> tuple[float, str]:
    """(wall seconds, DOM) of one headless-Chromium run on ``page``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: install the Debian package 'chromium'")
    unshare = shutil.which("unshare")
    offline = [unshare, "-n"] if unshare and subprocess.run([unshare, "-n", "true"]).returncode == 0 else []
    with tempfile.TemporaryDirectory(prefix="viewer-shot-") as profile:
        start = time.perf_counter()
        done = subprocess.run([*offline, chromium, *FLAGS, f"--user-data-dir={profile}", *arguments,
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, required=True, help="BraTS-style case folder (sequences and -seg)")
    parser.add_argument("--results", type=Path, required=True, help="the case's predict output folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--map", default="idh1", help="the heat map shown first (heatmap_<map>.nrrd)")
    parser.add_argument("--spacing", type=float, default=2.0, help="sequence grid, mm")
    parser.add_argument("--map-spacing", type=float, default=2.0, help="heat map grid, mm")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--html", type=Path, default=None, help="keep the page here (else a temporary file)")
    args = parser.parse_args(argv)

    files = find_brats_files(args.case)
    sequences = {key: read_sequence(path) for key, path in files.items() if key != "seg"}
    heatmaps = sorted(args.results.glob("heatmap_*.nrrd"), key=lambda p: p.stem != f"heatmap_{args.map}")
    maps = {p.stem.removeprefix("heatmap_"): read_heatmap(p) for p in heatmaps}
    tumour = read_sequence(files["seg"]) if "seg" in files else None
    with tempfile.TemporaryDirectory(prefix="viewer-") as folder:
        page = args.html or Path(folder) / "viewer.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_case_viewer(page, title=f"Teaching case {args.case.name}", sequences=sequences, maps=maps,
                          tumour=tumour, panels=panels(args.results, args.case.parent / "clinical.csv"),
                          revealed=True, notice="Synthetic phantom - not for clinical use", spacing_mm=args.spacing,
                          map_spacing_mm=args.map_spacing)
        written = time.perf_counter() - start
        args.out.parent.mkdir(parents=True, exist_ok=True)
        seconds, dom = chromium_run(page, ["--dump-dom", f"--screenshot={args.out}", "--virtual-time-budget=60000",
                                           f"--window-size={args.width},{args.height}"])
        found = re.search(r'<html[^>]*\sdata-state="([^"]*)"', dom)
        state = found[1] if found else "(not loaded)"
        size = page.stat().st_size
    if state != "OK":
        raise SystemExit(f"the page did not load: {state[:500]}")
    print(f"write_case_viewer {written:.1f} s; page {size / 2**20:.2f} MiB ({size} bytes) at {args.spacing:g} mm "
          f"(maps {args.map_spacing:g} mm), "
          f"{len(sequences)} sequences, {len(maps)} maps; Chromium (SwiftShader) run to loaded {seconds:.1f} s; "
          f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
