"""Robustness of a bundle to image artifacts: its own heads on corrupted copies of held-out cases.

For every artifact family and level of ``neuroradfm.artifacts`` (applied to the preprocessed model input, see
there), each case's channels are corrupted (a seed per case, the same for every family and level, so the levels of
a family are one artifact made stronger), embedded by the bundle's encoder (``embeddings.encode``, the path
``evaluate`` embeds with) and read by the bundle's heads as they are, nothing refitted:

- per marker probe: the ROC AUC of its probabilities against the labels, and its change from the clean cases;
- the Cox head: Harrell's c-index (lifelines) of its risk against overall survival, and its change;
- per case: the cosine similarity of the embedding to the same case's clean embedding, in the standardised space
  the heads read (the bundle's feature mean and scale; without heads, centred on the clean cases' mean), beside
  the mean cosine between two different clean cases (what "unrelated" looks like);
- per case: the OOD head's Mahalanobis distance; the mean, the share of cases flagged (above the bundle's
  threshold) and the share whose distance rose above its clean distance.

``robustness_sweep`` takes channels already on the model grid (what an evaluation's cache holds), so ``evaluate``
can add it as a report section; ``robustness`` starts from a manifest; ``write_robustness`` writes the JSON, two
CSV tables and the figure (one panel per metric, one line per family).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lifelines.utils import concordance_index

from neuroradfm.artifacts import FAMILIES, LEVELS, apply_artifact, family
from neuroradfm.atomic import atomic_file
from neuroradfm.evaluate.data import EvalData, eval_data
from neuroradfm.evaluate.embeddings import encode
from neuroradfm.evaluate.robustness_plot import CASES_HEADER, SUMMARY_HEADER, robustness_figure
from neuroradfm.evaluate.statistics import auc, safe
from neuroradfm.evaluate.survival_eval import MIN_SCOPE_CASES, MIN_SCOPE_EVENTS
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import Bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.models.heads import Heads
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.ssl.augment import sample_seed
from neuroradfm.train.cohort import cache_cohort

FORMAT, FORMAT_VERSION = "neuroradfm-robustness", 1
MIN_CLASS_CASES = 2
"""Positives and negatives a marker's AUC needs (as ``evaluate``: fewer is not evaluable)."""
FILES = {"json": "robustness.json", "summary": "robustness.csv", "cases": "robustness_cases.csv",
         "figure": "robustness.png"}


@dataclass
class RobustnessSettings:
    families: tuple[str, ...] = tuple(FAMILIES)
    levels: tuple[int, ...] = tuple(range(LEVELS))
    seed: int = 0
    """Base of every case's artifact seed (case i draws ``sample_seed(seed, i)``)."""
    batch_size: int = 4
    device: str = "auto"
    subgroup: str | None = "all"
    """The survival cases, as ``evaluate --subgroup`` (default: every case, as the bundle's Cox head was fitted)."""

    def __post_init__(self) -> None:
        for name in self.families:
            family(name)
        self.levels = tuple(sorted({int(level) for level in self.levels} | {0}))
        if not all(0 <= level < LEVELS for level in self.levels):
            raise ValueError(f"levels must lie in 0 .. {LEVELS - 1}, got {self.levels}")


@dataclass
class HeadOutputs:
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    risk: np.ndarray | None = None
    ood: np.ndarray | None = None


def head_outputs(heads: Heads | None, features: np.ndarray) -> HeadOutputs:
    """Every head of a bundle on (N, D) raw embeddings: marker probabilities, Cox risk, OOD distance."""
    if heads is None:
        return HeadOutputs()
    with np.errstate(all="ignore"):
        weights, biases = heads.marker_weights()
        logits = features @ weights.T + biases
        probabilities = {h.key: 1.0 / (1.0 + np.exp(-logits[:, m])) for m, h in enumerate(heads.markers)}
        risk = None
        if heads.cox is not None:
            cox_w, cox_b = heads.cox_weights()
            risk = features @ cox_w + cox_b
        ood = None
        if heads.ood is not None:
            ood = np.array([heads.ood.distance(s) for s in heads.standardise(features)])
    return HeadOutputs(probabilities, risk, ood)


def _space(bundle: Bundle, clean: np.ndarray):
    """The space cosines are taken in: the heads' standardisation, else centred on the clean cases."""
    if bundle.heads is not None:
        return bundle.heads.standardise
    mean = clean.mean(axis=0)
    return lambda z: np.asarray(z, np.float64) - mean


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _between_cases(clean: np.ndarray) -> float | None:
    """Mean cosine between two different clean cases: the level at which a corrupted case is as close to its clean
    self as to any other case."""
    n = len(clean)
    if n < 2:
        return None
    unit = clean / np.maximum(np.linalg.norm(clean, axis=1, keepdims=True), 1e-12)
    gram = unit @ unit.T
    return safe((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def _evaluable(data: EvalData, heads: Heads | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Marker key -> rows with a known label, for the heads whose label column allows an AUC; and why not for the
    others."""
    rows, reasons = {}, {}
    for head in [] if heads is None else heads.markers:
        if head.key not in data.labels:
            reasons[head.key] = f"{head.key}: no label column"
            continue
        y = data.labels[head.key]
        known = np.flatnonzero(~np.isnan(y))
        positives = int(np.sum(y[known] == 1))
        negatives = len(known) - positives
        if positives < MIN_CLASS_CASES or negatives < MIN_CLASS_CASES:
            reasons[head.key] = f"{head.key}: {positives} positive / {negatives} negative"
            continue
        rows[head.key] = known
    return rows, reasons


def _survival_rows(data: EvalData, outputs: HeadOutputs) -> tuple[np.ndarray | None, str | None]:
    if outputs.risk is None:
        return None, "the bundle has no Cox head"
    if data.os_days is None or data.os_event is None:
        return None, "no survival columns (os_days, os_event)"
    keep = np.flatnonzero(data.subgroup & np.isfinite(data.os_days) & np.isfinite(data.os_event))
    events = int(data.os_event[keep].sum())
    if len(keep) < MIN_SCOPE_CASES or events < MIN_SCOPE_EVENTS:
        return None, (f"survival ({data.subgroup_label}): {len(keep)} cases and {events} events (need at least "
                      f"{MIN_SCOPE_CASES} and {MIN_SCOPE_EVENTS})")
    return keep, None


def _metrics(data: EvalData, outputs: HeadOutputs, markers: dict[str, np.ndarray],
             survival: np.ndarray | None) -> dict[str, Any]:
    aucs = {key: auc(data.labels[key][rows], outputs.probabilities[key][rows]) for key, rows in markers.items()}
    c_index = None
    if survival is not None and outputs.risk is not None:
        c_index = float(concordance_index(data.os_days[survival], -outputs.risk[survival], data.os_event[survival]))
    return {"auc": aucs, "c_index": c_index}


def _row(name: str, level: int, n: int, metrics: dict, clean: dict, cosine: np.ndarray, outputs: HeadOutputs,
         clean_ood: np.ndarray | None, threshold: float | None) -> dict[str, Any]:
    deltas = {key: value - clean["auc"][key] for key, value in metrics["auc"].items()}
    row: dict[str, Any] = {
        "family": name, "level": level, "strength": family(name).strengths[level], "n": n,
        "auc": {k: safe(v) for k, v in metrics["auc"].items()},
        "delta_auc": {k: safe(v) for k, v in deltas.items()},
        "mean_auc": safe(np.mean(list(metrics["auc"].values()))) if deltas else None,
        "mean_delta_auc": safe(np.mean(list(deltas.values()))) if deltas else None,
        "c_index": safe(metrics["c_index"]),
        "delta_c_index": (safe(metrics["c_index"] - clean["c_index"]) if metrics["c_index"] is not None else None),
        "cosine_mean": safe(cosine.mean()), "cosine_min": safe(cosine.min()),
        "ood_mean": None, "ood_median": None, "ood_flagged": None, "ood_above_clean": None,
    }
    if outputs.ood is not None and clean_ood is not None:
        row.update(ood_mean=safe(outputs.ood.mean()), ood_median=safe(np.median(outputs.ood)),
                   ood_flagged=None if threshold is None else safe(np.mean(outputs.ood > threshold)),
                   ood_above_clean=safe(np.mean(outputs.ood > clean_ood)))
    return row


def _embed(bundle: Bundle, cases: Sequence[np.ndarray], name: str | None, level: int, seeds: list[int],
           settings: RobustnessSettings, device) -> np.ndarray:
    out = []
    for start in range(0, len(cases), settings.batch_size):
        batch = [np.asarray(cases[i], np.float32) if name is None else apply_artifact(cases[i], name, level, seeds[i])
                 for i in range(start, min(start + settings.batch_size, len(cases)))]
        out.append(encode(bundle, np.stack(batch), device))
    return np.concatenate(out)


def robustness_sweep(bundle: Bundle, cases: Sequence[np.ndarray], data: EvalData,
                     settings: RobustnessSettings | None = None, progress: Progress = null_progress) -> dict[str, Any]:
    """The sweep on ``cases`` (each (4, K, J, I) on the bundle's model grid; float16 or memory-mapped is fine),
    aligned with ``data``. Returns a JSON-ready dict: ``clean`` (the heads on the clean cases), ``rows`` (one per
    family and level; level 0 is the clean cases for every family), ``per_case`` (cosine, OOD distance and risk of
    each case at each family and level) and ``not_evaluable`` (the heads without a number, and why)."""
    settings = settings or RobustnessSettings()
    if len(cases) != len(data):
        raise ValueError(f"{len(cases)} cases but {len(data)} rows of data")
    device = resolve_device(settings.device)
    bundle.encoder.to(device).eval()
    heads = bundle.heads
    seeds = [sample_seed(settings.seed, i) for i in range(len(cases))]
    progress("robustness", 0.0, "clean cases")
    clean_z = _embed(bundle, cases, None, 0, seeds, settings, device)
    space = _space(bundle, clean_z)
    clean_s = space(clean_z)
    clean_out = head_outputs(heads, clean_z)
    markers, reasons = _evaluable(data, heads)
    survival, survival_reason = _survival_rows(data, clean_out)
    if survival_reason:
        reasons["survival"] = survival_reason
    clean = _metrics(data, clean_out, markers, survival)
    threshold = None if heads is None or heads.ood is None else float(heads.ood.threshold)
    rows, per_case = [], []
    steps = [(name, level) for name in settings.families for level in settings.levels]
    for step, (name, level) in enumerate(steps):
        progress("robustness", step / len(steps), f"{name} level {level}")
        if level == 0:
            z, outputs, metrics = clean_z, clean_out, clean
        else:
            z = _embed(bundle, cases, name, level, seeds, settings, device)
            outputs = head_outputs(heads, z)
            metrics = _metrics(data, outputs, markers, survival)
        cosine = _cosines(space(z), clean_s)
        rows.append(_row(name, level, len(cases), metrics, clean, cosine, outputs, clean_out.ood, threshold))
        for i, case_id in enumerate(data.case_ids):
            per_case.append({"case_id": case_id, "family": name, "level": level,
                             "strength": family(name).strengths[level], "cosine": safe(cosine[i]),
                             "ood_distance": None if outputs.ood is None else safe(outputs.ood[i]),
                             "risk": None if outputs.risk is None else safe(outputs.risk[i])})
    progress("robustness", 1.0, f"{len(steps)} family levels on {len(cases)} cases")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "bundle": {"name": bundle.name, "content_hash": bundle.card.get("content_hash")},
        "applied_to": "the preprocessed model input (z-scored channels on the model grid), the brain mask and the "
                      "z-score applied again after the artifact (neuroradfm.artifacts)",
        "settings": {**asdict(settings), "families": list(settings.families), "levels": list(settings.levels)},
        "families": {name: {"description": FAMILIES[name].description, "parameter": FAMILIES[name].parameter,
                            "strengths": list(FAMILIES[name].strengths)} for name in settings.families},
        "case_ids": list(data.case_ids), "survival_subgroup": data.subgroup_label,
        "clean": {"auc": {k: safe(v) for k, v in clean["auc"].items()},
                  "mean_auc": safe(np.mean(list(clean["auc"].values()))) if clean["auc"] else None,
                  "c_index": safe(clean["c_index"]),
                  "ood_mean": None if clean_out.ood is None else safe(clean_out.ood.mean()),
                  "ood_threshold": threshold,
                  "cosine_between_cases": _between_cases(clean_s)},
        "rows": rows, "per_case": per_case, "not_evaluable": reasons,
    }


def robustness(manifest: str | Path, bundle: Bundle, cache_dir: str | Path,
               settings: RobustnessSettings | None = None, progress: Progress = null_progress) -> dict[str, Any]:
    """``robustness_sweep`` on a manifest's cases, preprocessed with the bundle's settings into ``cache_dir`` (the
    trainers' and ``evaluate``'s preprocessed-case cache; a case already there is not preprocessed again). Cases
    that fail to load are left out and listed under ``failures``."""
    settings = settings or RobustnessSettings()
    entries = read_manifest(manifest)
    cohort = cache_cohort(entries, bundle.preprocessing, cache_dir, sub_progress(progress, 0.0, 0.3))
    data, problems, _ = eval_data(cohort.entries, subgroup=settings.subgroup)
    cases = [cohort.channels(i) for i in range(len(cohort.entries))]
    result = robustness_sweep(bundle, cases, data, settings, sub_progress(progress, 0.3, 1.0))
    result["failures"] = dict(cohort.failures)
    result["not_evaluable"].update(problems)
    return result


def _cell(value: object) -> object:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def write_robustness(result: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """``robustness.json``, ``robustness.csv`` (one row per family and level, per-marker AUC and change columns),
    ``robustness_cases.csv`` and ``robustness.png`` in ``folder``; returns their paths by kind."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in FILES.items()}
    with atomic_file(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    keys = list(result["clean"]["auc"])
    header = SUMMARY_HEADER + [f"auc_{k}" for k in keys] + [f"delta_auc_{k}" for k in keys]
    with atomic_file(paths["summary"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in result["rows"]:
            writer.writerow([_cell(row[k]) for k in SUMMARY_HEADER] + [_cell(row["auc"].get(k)) for k in keys]
                            + [_cell(row["delta_auc"].get(k)) for k in keys])
    with atomic_file(paths["cases"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CASES_HEADER)
        for row in result["per_case"]:
            writer.writerow([_cell(row[k]) for k in CASES_HEADER])
    figure = robustness_figure(result)
    with atomic_file(paths["figure"]) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return paths
