"""Robustness of a bundle to image artifacts on held-out phantom cases (issue 17, item 5).

Generates a fresh phantom cohort (a seed the bundle never saw; the demo bundle's training cohort is seed 1), or
takes ``--manifest``, and runs ``neuroradfm.evaluate.robustness`` on it: every artifact family of
``neuroradfm.artifacts`` at levels 0-4, the bundle's own heads on the corrupted embeddings. Writes
robustness.json, robustness.csv, robustness_cases.csv and robustness.png to ``--out`` and replaces (or appends) the
section "Robustness to image artifacts" of bench/RESULTS.md with the command, the tables and the figure's path
(its generated part, between two comment lines: a reading written below them stays).

Run: .venv/bin/python bench/robustness.py [--model BUNDLE] [--n 16] [--seed 424242] [--native-fraction 0.25]
     [--work build/robustness] [--out bench/robustness] [--no-results]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
from results_section import update_results  # noqa: E402

from neuroradfm.demo import demo_bundle_path
from neuroradfm.evaluate.robustness import RobustnessSettings, robustness, write_robustness
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.phantom import generate_cohort
from neuroradfm.progress import make_progress
from neuroradfm.train.cohort import cache_cohort

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Robustness to image artifacts (issue 17)"
BEGIN, END = "<!-- bench/robustness.py: begin -->", "<!-- bench/robustness.py: end -->"
"""The generated part of the section: a rerun replaces what lies between these, text after END stays."""


def _f(value: object, signed: bool = False, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(value: object) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def markdown(result: dict, command: str, minutes: dict[str, float], figure: str) -> str:
    clean = result["clean"]
    families = result["families"]
    lines = [
        BEGIN, "",
        f"`{command}` ({datetime.date.today().isoformat()}; {len(result['case_ids'])} held-out cases; on this "
        f"machine's 2 cores: phantom {minutes['phantom']:.1f} min, preprocessing {minutes['preprocess']:.1f} min, "
        f"sweep {minutes['sweep']:.1f} min; the first two are skipped when --work already holds them). "
        f"Bundle: {result['bundle']['name']} "
        f"(`{str(result['bundle']['content_hash'])[:19]}...`). Artifacts are applied to {result['applied_to']}; "
        "every case has its own seed, the same at every level, so a level is the same artifact made stronger. "
        "The bundle's heads are applied as they are (nothing refitted).", "",
        f"Clean: mean marker AUC {_f(clean['mean_auc'])}, c-index {_f(clean['c_index'])}, mean OOD distance "
        f"{_f(clean['ood_mean'], digits=1)} (threshold {_f(clean['ood_threshold'], digits=1)}); two different "
        f"clean cases have a mean cosine of {_f(clean['cosine_between_cases'])} in the heads' standardised space.",
        "", "| family | strength at levels 1-4 |", "|---|---|",
        *(f"| {name} | {', '.join(f'{s:g}' for s in spec['strengths'][1:])} ({spec['parameter']}) |"
          for name, spec in families.items()),
        "",
        "| family | level | mean ΔAUC | Δ c-index | cosine to clean (mean, min) | OOD distance (mean) | "
        "OOD flagged | OOD above clean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["level"] == 0:
            continue
        lines.append(f"| {row['family']} | {row['level']} | {_f(row['mean_delta_auc'], True)} | "
                     f"{_f(row['delta_c_index'], True)} | {_f(row['cosine_mean'])}, {_f(row['cosine_min'])} | "
                     f"{_f(row['ood_mean'], digits=1)} | {_pct(row['ood_flagged'])} | "
                     f"{_pct(row['ood_above_clean'])} |")
    strongest = {r["family"]: r for r in result["rows"] if r["level"] == max(result["settings"]["levels"])}
    keys = list(clean["auc"])
    lines += ["", "Per marker at the strongest level (level 4): ΔAUC from the clean AUC", "",
              "| marker | clean AUC | " + " | ".join(strongest) + " |", "|---" * (len(strongest) + 2) + "|"]
    for key in keys:
        lines.append(f"| {key} | {_f(clean['auc'][key])} | "
                     + " | ".join(_f(r["delta_auc"].get(key), True) for r in strongest.values()) + " |")
    if result["not_evaluable"]:
        lines += ["", "Not evaluable: " + "; ".join(result["not_evaluable"].values()) + "."]
    lines += ["", f"Figure: [{figure}]({figure.removeprefix('bench/')}) (one panel per metric, one line per "
                  "family); tables: robustness.csv, robustness_cases.csv and robustness.json beside it.", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the demo bundle)")
    parser.add_argument("--manifest", type=Path, default=None, help="held-out cases (default: a fresh phantom)")
    parser.add_argument("--n", type=int, default=16, help="phantom cases to generate")
    parser.add_argument("--seed", type=int, default=424242, help="the phantom's seed (the demo bundle's is 1)")
    parser.add_argument("--native-fraction", type=float, default=0.25)
    parser.add_argument("--spacing", type=float, default=2.0, help="the phantom's voxel size, mm")
    parser.add_argument("--artifact-seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "robustness",
                        help="phantom and preprocessed-case cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "robustness")
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--progress", default="tqdm", choices=["tqdm", "json", "none"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    bundle = load_bundle(args.model or demo_bundle_path())
    progress = make_progress(args.progress)
    minutes, start = {}, time.perf_counter()
    manifest = args.manifest
    if manifest is None:
        folder = args.work / f"phantom-seed{args.seed}-n{args.n}-native{args.native_fraction:g}"
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            generate_cohort(folder, n=args.n, sites=4, seed=args.seed, spacing=args.spacing,
                            native_fraction=args.native_fraction)
    minutes["phantom"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    cache_cohort(read_manifest(manifest), bundle.preprocessing, args.work / "cache")  # what robustness() reads
    minutes["preprocess"], start = (time.perf_counter() - start) / 60, time.perf_counter()
    result = robustness(manifest, bundle, args.work / "cache", RobustnessSettings(seed=args.artifact_seed), progress)
    paths = write_robustness(result, args.out)
    minutes["sweep"] = (time.perf_counter() - start) / 60
    command = " ".join([".venv/bin/python bench/robustness.py", *map(shlex.quote, sys.argv[1:])])
    try:
        figure = str(paths["figure"].resolve().relative_to(ROOT))
    except ValueError:
        figure = str(paths["figure"])
    section = markdown(result, command, minutes, figure)
    print(section)
    if not args.no_results:
        update_results(HEADING, BEGIN, END, section)


if __name__ == "__main__":
    main()
