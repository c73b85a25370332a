"""Evidence for `neuroradfm evaluate` on a phantom cohort, where the truth is known: each figure beside its ceiling.

Runs the evaluation of two bundles (e.g. an ERM encoder and its Group-DRO twin) with the planted imaging traits
(``trait_*``) as a third feature set: the oracle probe, the AUC an image model could reach if it read the traits
perfectly. Adds the c-index of the planted hazard itself (the phantom's Weibull linear predictor, from the manifest's
markers, age and tumour radius) on the same survival cases, and prints the tables of bench/RESULTS.md.

Run (PYTHONPATH at the core, or the venv's neuroradfm installed):
  python bench/evaluate_phantom.py --manifest build/eval-phantom/manifest.csv \
      --model build/eval-bundles/erm build/eval-bundles/dro --labels erm,dro --cache build/eval-cache \
      --out build/eval-report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from lifelines.utils import concordance_index

from neuroradfm.evaluate.data import eval_data
from neuroradfm.evaluate.run import EvaluateSettings, evaluate
from neuroradfm.io import read_manifest
from neuroradfm.phantom.biology import LOG_HAZARD, LOG_HAZARD_PER_MM_RADIUS, LOG_HAZARD_PER_YEAR_OF_AGE
from neuroradfm.progress import make_progress


def planted_hazard(manifest: Path, case_ids: list[str]) -> dict:
    """C-index of the phantom's own linear predictor on the default survival subgroup of ``case_ids``."""
    entries = {e.case_id: e for e in read_manifest(manifest)}
    chosen = [entries[c] for c in case_ids]
    data, _, _ = eval_data(chosen)
    lp = np.array([sum(LOG_HAZARD[k] * float(e.clinical[k]) for k in LOG_HAZARD)
                   + LOG_HAZARD_PER_YEAR_OF_AGE * (float(e.clinical["age"]) - 50)
                   + LOG_HAZARD_PER_MM_RADIUS * (float(e.clinical["trait_radius_mm"]) - 16) for e in chosen])
    keep = data.subgroup & ~np.isnan(data.os_days)
    out = {"subgroup": data.subgroup_label, "n": int(keep.sum()),
           "c_index": float(concordance_index(data.os_days[keep], -lp[keep], data.os_event[keep]))}
    for site in sorted(set(data.sites)):
        at = keep & (np.array(data.sites) == site)
        if at.sum() >= 5 and data.os_event[at].sum() >= 2:
            out[site] = float(concordance_index(data.os_days[at], -lp[at], data.os_event[at]))
    return out


def _f(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def tables(metrics: dict, hazard: dict) -> str:
    labels = [b["label"] for b in metrics["bundles"]]
    results = metrics["results"]
    lines = ["| marker | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    keys = [k for k in results[labels[0]]["markers"]]
    for key in keys:
        cells = []
        for label in labels:
            entry = results[label]["markers"].get(key, {})
            pooled = entry.get("pooled", {}) if entry.get("status") == "ok" else {}
            cells.append(f"{_f(pooled.get('auc'))} [{_f((pooled.get('auc_ci') or [None])[0])}, "
                         f"{_f((pooled.get('auc_ci') or [None, None])[1])}]" if pooled.get("status") == "ok"
                         else "not evaluable")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| | " + " | ".join(labels) + " | planted hazard |")
    lines.append("|---" * (len(labels) + 2) + "|")
    rows = [("mean marker AUC", "mean_marker_auc"), ("worst-site mean AUC", "worst_site_mean_auc"),
            ("worst site", "worst_site"), ("survival c-index (held out)", "survival_c_index"),
            ("site silhouette (PCA)", "site_silhouette"),
            ("site-classifier balanced accuracy", "site_classifier_balanced_accuracy")]
    for title, key in rows:
        extra = _f(hazard["c_index"]) if key == "survival_c_index" else ""
        lines.append(f"| {title} | " + " | ".join(_f(results[label]["summary"].get(key)) for label in labels)
                     + f" | {extra} |")
    lines.append("")
    for pair in metrics["comparison"]:
        w, t = pair["wilcoxon"], pair["t_test"]
        lines.append(f"- {pair['a']} vs {pair['b']}: Wilcoxon p = {_f(w.get('p_value'))} "
                     f"({w.get('n_markers', w.get('reason'))} markers), paired t-test p = {_f(t.get('p_value'))}; "
                     + ", ".join(f"{k} {_f(v.get('difference'))} [{_f((v.get('ci') or [None])[0])}, "
                                 f"{_f((v.get('ci') or [None, None])[1])}]"
                                 for k, v in pair["markers"].items() if v.get("status") == "ok"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--labels")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="kfold")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    report = evaluate(args.manifest, args.model, args.out,
                      EvaluateSettings(split=args.split, seed=args.seed,
                                       reference_columns=[["trait_*"], ["site"]]),
                      labels=args.labels.split(",") if args.labels else None, cache_dir=args.cache,
                      progress=make_progress("tqdm"))
    seconds = time.perf_counter() - start
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    hazard = planted_hazard(args.manifest, metrics["data"]["case_ids"])
    print(f"report: {report} ({seconds:.0f} s)")
    print(json.dumps({"planted_hazard": hazard}, indent=1))
    print(tables(metrics, hazard))


if __name__ == "__main__":
    main()
