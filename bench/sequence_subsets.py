"""Sequence subsets and artifact augmentation on held-out phantoms (issue 17's evidence).

Bundles compared on the same held-out cases (a phantom seed none of them saw; the demo training cohort is seed 1),
each bundle's own heads applied as they are (nothing refitted):

1. each marker's AUC for every subset of ``neuroradfm.subsets.EVALUATED_SUBSETS`` (the missing sequences zeroed on
   the model grid, as preprocessing gives a case without them), and the mean, beside the all-four figure; the
   first bundle is the reference the all-four change is measured against (the bundle trained without sequence
   dropout);
2. the artifact sweep of ``neuroradfm.evaluate.robustness`` for the bundles given with ``--sweep`` (with and
   without ``--artifact-augment``): mean AUC change, cosine to the clean embedding, OOD distance per family and
   level, side by side, and one figure with both bundles' curves.

Writes subsets.csv, robustness_<label>.json and robustness_compare.png to ``--out`` and replaces the generated part
of the section "Sequence subsets and artifact augmentation (issue 17)" of bench/RESULTS.md.

Run: .venv/bin/python bench/sequence_subsets.py --manifest HELD_OUT.csv --model A B C --labels a b c
     [--sweep b c] [--cache build/robustness/cache] [--out bench/sequence_subsets]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_section import update_results  # noqa: E402

from neuroradfm.artifacts import FAMILIES  # noqa: E402
from neuroradfm.evaluate.data import eval_data  # noqa: E402
from neuroradfm.evaluate.embeddings import encode  # noqa: E402
from neuroradfm.evaluate.robustness import RobustnessSettings, head_outputs, robustness_sweep  # noqa: E402
from neuroradfm.evaluate.statistics import auc  # noqa: E402
from neuroradfm.io import read_manifest  # noqa: E402
from neuroradfm.models.bundle import Bundle, load_bundle  # noqa: E402
from neuroradfm.subsets import EVALUATED_SUBSETS, keep_only, label  # noqa: E402
from neuroradfm.train.cohort import cache_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Sequence subsets and artifact augmentation (issue 17)"
BEGIN, END = "<!-- bench/sequence_subsets.py: begin -->", "<!-- bench/sequence_subsets.py: end -->"


def subset_table(bundle: Bundle, cases: list[np.ndarray], labels: dict[str, np.ndarray],
                 batch: int = 4) -> dict[tuple[str, ...], dict[str, float | None]]:
    """Subset -> marker -> AUC of the bundle's own probes on the held-out cases with only that subset."""
    device = torch.device("cpu")
    bundle.encoder.eval()
    out = {}
    for subset in EVALUATED_SUBSETS:
        z = np.concatenate([encode(bundle, keep_only(np.stack([np.asarray(c, np.float32) for c in cases[i:i + batch]]),
                                                     subset), device) for i in range(0, len(cases), batch)])
        probabilities = head_outputs(bundle.heads, z).probabilities
        row = {}
        for key, p in probabilities.items():
            y = labels.get(key)
            known = None if y is None else ~np.isnan(y)
            try:
                row[key] = auc(y[known], p[known]) if known is not None else None
            except ValueError:
                row[key] = None
        out[subset] = row
    return out


def _mean(row: dict[str, float | None]) -> float | None:
    values = [v for v in row.values() if v is not None]
    return float(np.mean(values)) if values else None


def _f(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")


def _describe(name: str, bundle: Bundle) -> str:
    settings = bundle.card.get("training", {}).get("settings", {})
    return (f"**{name}** = {bundle.name} (`{str(bundle.card.get('content_hash'))[:19]}...`, sequence dropout "
            f"{settings.get('sequence_dropout', 0)}, artifact augment {settings.get('artifact_augment', 0)})")


def _figure(sweeps: dict[str, dict], path: Path) -> None:
    families = list(next(iter(sweeps.values()))["families"])
    fig, axes = plt.subplots(3, len(families), figsize=(2.6 * len(families), 6.6), sharey="row", squeeze=False)
    metrics = (("mean_delta_auc", "mean ΔAUC"), ("cosine_mean", "cosine to clean"), ("ood_mean", "OOD distance"))
    for column, name in enumerate(families):
        for row, (key, title) in enumerate(metrics):
            ax = axes[row][column]
            for (label_, sweep), style in zip(sweeps.items(), ("-o", "--s", ":^")):
                rows = [r for r in sweep["rows"] if r["family"] == name]
                ax.plot([r["level"] for r in rows], [np.nan if r[key] is None else r[key] for r in rows], style,
                        label=label_, markersize=3)
            if row == 0:
                ax.set_title(name, fontsize=9)
            if column == 0:
                ax.set_ylabel(title, fontsize=8)
            if row == 2:
                ax.set_xlabel("level", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save(out: Path, tables: dict, sweeps: dict, timing: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    markers = sorted({k for table in tables.values() for row in table.values() for k in row})
    with (out / "subsets.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["bundle", "subset", "sequences", *markers, "mean_auc"])
        for name, table in tables.items():
            for subset, row in table.items():
                writer.writerow([name, label(subset), "+".join(subset), *[row.get(k, "") for k in markers],
                                 _mean(row)])
    for name, sweep in sweeps.items():
        (out / f"robustness_{name}.json").write_text(json.dumps(sweep, indent=1) + "\n", encoding="utf-8")
    (out / "timing.json").write_text(json.dumps(timing) + "\n", encoding="utf-8")


def _saved(out: Path, names: list[str], sweep_names: list[str]) -> tuple[dict, dict, dict]:
    """What ``_save`` wrote: the subset tables of ``names``, the sweeps of ``sweep_names`` and the timings."""
    tables: dict[str, dict] = {name: {} for name in names}
    with (out / "subsets.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["bundle"] in tables:
                values = {k: (float(v) if v else None) for k, v in row.items()
                          if k not in ("bundle", "subset", "sequences", "mean_auc")}
                tables[row["bundle"]][tuple(row["sequences"].split("+"))] = values
    sweeps = {name: json.loads((out / f"robustness_{name}.json").read_text(encoding="utf-8")) for name in sweep_names}
    return tables, sweeps, json.loads((out / "timing.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="held-out cases")
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="bundles; the first is the reference")
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--sweep", nargs="*", default=[], help="labels of the bundles to run the artifact sweep on")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "robustness" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "sequence_subsets")
    parser.add_argument("--detail", help="label of the bundle whose per-marker table is shown (default: the third, "
                                         "else the last)")
    parser.add_argument("--reuse", action="store_true",
                        help="re-render the tables from the files an earlier run left in --out (no encoding)")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    if len(args.labels) != len(args.model):
        parser.error("one label per model")
    started = time.time()
    bundles = {name: load_bundle(path) for name, path in zip(args.labels, args.model)}
    first = next(iter(bundles.values()))
    cohort = cache_cohort(read_manifest(args.manifest), first.preprocessing, args.cache)
    data, _, _ = eval_data(cohort.entries, subgroup="all")
    cases = [cohort.channels(i) for i in range(len(cohort.entries))]
    if args.reuse:
        tables, sweeps, timing = _saved(args.out, list(bundles), args.sweep)
    else:
        tables = {name: subset_table(bundle, cases, data.labels) for name, bundle in bundles.items()}
        timing = {"subsets_min": (time.time() - started) / 60}
        sweeps = {}
        for name in args.sweep:
            sweeps[name] = robustness_sweep(bundles[name], cases, data,
                                            RobustnessSettings(device="cpu", subgroup="all"))
        timing["sweeps_min"] = (time.time() - started) / 60 - timing["subsets_min"]
        _save(args.out, tables, sweeps, timing)
    markers = sorted({k for table in tables.values() for row in table.values() for k in row})
    if sweeps:
        _figure(sweeps, args.out / "robustness_compare.png")

    lines = [f"`{shlex.join(['.venv/bin/python', *sys.argv])}` ({datetime.date.today()}; {len(cases)} held-out "
             f"cases; subsets {timing['subsets_min']:.1f} min, sweeps {timing['sweeps_min']:.1f} min on 2 cores). "
             "Each bundle's own heads, nothing refitted; a missing sequence is a zero channel on the model grid.", ""]
    lines += ["Bundles: " + "; ".join(_describe(name, b) for name, b in bundles.items()), ""]
    names = list(tables)
    lines += ["Mean marker AUC per subset (Δ: against the same bundle's all-four figure):", "",
              "| subset | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for subset in EVALUATED_SUBSETS:
        cells = []
        for name in names:
            mean, full = _mean(tables[name][subset]), _mean(tables[name][EVALUATED_SUBSETS[0]])
            cells.append(_f(mean) + ("" if subset == EVALUATED_SUBSETS[0] or mean is None or full is None
                                     else f" ({_f(mean - full, True)})"))
        lines.append(f"| {label(subset)} | " + " | ".join(cells) + " |")
    reference, full_rows = names[0], {n: _mean(tables[n][EVALUATED_SUBSETS[0]]) for n in names}
    lines += ["", "All four sequences, against " + reference + ": " + "; ".join(
        f"{n} {_f(full_rows[n] - full_rows[reference], True)}" for n in names[1:]
        if full_rows[n] is not None and full_rows[reference] is not None) + " mean AUC.", ""]
    last = args.detail or names[min(2, len(names) - 1)]
    lines += [f"Per marker, {last}:", "", "| subset | " + " | ".join(markers) + " |", "|---|" + "---|" * len(markers)]
    for subset in EVALUATED_SUBSETS:
        lines.append(f"| {label(subset)} | " + " | ".join(_f(tables[last][subset].get(k)) for k in markers) + " |")
    if sweeps:
        lines += ["", "Artifact sweep (mean ΔAUC / mean cosine to clean / OOD flagged), per family at levels 1-4:", "",
                  "| family | level | " + " | ".join(sweeps) + " |", "|---|---|" + "---|" * len(sweeps)]
        for family in FAMILIES:
            for level in range(1, 5):
                cells = []
                for sweep in sweeps.values():
                    row = next(r for r in sweep["rows"] if r["family"] == family and r["level"] == level)
                    flagged = "–" if row["ood_flagged"] is None else f"{100 * row['ood_flagged']:.0f}%"
                    cells.append(f"{_f(row['mean_delta_auc'], True)} / {_f(row['cosine_mean'])} / {flagged}")
                lines.append(f"| {family} | {level} | " + " | ".join(cells) + " |")
        worst = {name: float(np.mean([r["mean_delta_auc"] for r in s["rows"] if r["level"] == 4
                                       and r["mean_delta_auc"] is not None])) for name, s in sweeps.items()}
        cosine = {name: float(np.mean([r["cosine_mean"] for r in s["rows"] if r["level"] == 4]))
                  for name, s in sweeps.items()}
        lines += ["", "Mean ΔAUC at level 4 over the families: " + "; ".join(f"{n} {v:+.3f}" for n, v in worst.items())
                  + "; mean cosine to the clean embedding at level 4: "
                  + "; ".join(f"{n} {v:.2f}" for n, v in cosine.items())
                  + f". Curves: `{(args.out / 'robustness_compare.png').relative_to(ROOT)}`."]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        update_results(HEADING, BEGIN, END, f"{BEGIN}\n\n{text}\n\n{END}")


if __name__ == "__main__":
    main()
