"""``neuroradfm evaluate``: how good are one or more bundles on a cohort, per site and per marker, in one report.

Every bundle is evaluated on the same cases and the same outer splits: frozen embeddings (cached, see
``embeddings``), the marker probes and the Cox head of ``fit-heads`` refitted on each training fold and tested on
its held-out cases, site invariance, data efficiency and Grad-CAM localisation, then paired comparisons between the
bundles. Per bundle also the marker AUCs with fewer sequences on the same folds (``subset_eval``; ``--subsets``) and,
opt-in, the artifact sweep of ``robustness`` (``--robustness``). ``--reference-columns`` adds manifest columns (a
clinical baseline; on the phantom, the planted traits: the ceiling of what an image model can reach) as one more
feature set, evaluated identically.

Output folder: ``OUT/report/`` (metrics.json, report.html, CSV tables) replaces an earlier report as a whole, written
under a staging name and swapped in when complete; ``OUT/cache/`` (unless ``--cache``) keeps preprocessed cases and
embeddings between runs.
"""

from __future__ import annotations

import datetime
import fnmatch
import itertools
import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import neuroradfm
from neuroradfm.artifacts import FAMILIES, LEVELS
from neuroradfm.atomic import STAGING_NAME, atomic_folder
from neuroradfm.errors import BundleError, InputError, SettingsError
from neuroradfm.evaluate import compare, efficiency, markers_eval, site_eval, survival_eval
from neuroradfm.evaluate.data import CONTINUOUS, EvalData, eval_data
from neuroradfm.evaluate.embeddings import DILATION_MM, embed_cases, embed_subsets
from neuroradfm.evaluate.report import render_report
from neuroradfm.evaluate.report_tables import write_tables
from neuroradfm.evaluate.robustness import RobustnessSettings, robustness_sweep
from neuroradfm.evaluate.splits import SPLIT_KINDS, Split, make_split
from neuroradfm.evaluate.statistics import safe
from neuroradfm.evaluate.subset_eval import SUBSET_MODES, chosen_subsets, subset_section
from neuroradfm.io import CaseEntry, read_manifest
from neuroradfm.io.manifest import read_clinical
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.models.bundle import Bundle, load_bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.output_paths import ERRORS_LOG, check_destinations, prepare_output_folder, remove_created
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.subsets import ALL_FOUR
from neuroradfm.train.cohort import cache_cohort, file_hash

REPORT_FOLDER = "report"
CACHE_FOLDER = "cache"
REPORT_FILES = ("metrics.json", "report.html", "*.csv")
"""What a report folder holds (metrics.json first: the mark of an earlier report that may be replaced)."""
FORMAT, FORMAT_VERSION = "neuroradfm-evaluation", 1


@dataclass
class EvaluateSettings:
    split: str = "kfold"
    folds: int = 5
    split_column: str | None = None
    seed: int = 0
    n_boot: int = 1000
    subgroup: str | None = None
    """None: IDH-wildtype glioblastoma when the columns exist; "all"; or a pandas query over the clinical columns."""
    cutoffs: dict[str, float] = field(default_factory=dict)
    """Continuous column -> cut-off of its binarised marker (``ki67_index`` 20, ``tp53_expression`` 10)."""
    colour_marker: str = "idh1"
    reference_columns: list[list[str]] = field(default_factory=list)
    """Feature sets of manifest columns (glob patterns; ``site``: the site one-hot), each evaluated as one more
    "bundle": a clinical baseline, the phantom's planted traits (the ceiling), the site alone (the shortcut)."""
    per_class: tuple[int, ...] = (1, 5, 10)
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    efficiency_seeds: int = 5
    """Repeats of each data-efficiency setting (0: no data-efficiency section)."""
    dilation_mm: float = DILATION_MM
    batch_size: int = 4
    device: str = "auto"
    subsets: str = "auto"
    """Sequence-subset table: auto (the EVALUATED_SUBSETS each bundle was trained for), none, or all (every one,
    also for a bundle trained on all four only)."""
    robustness: bool = False
    """Add the artifact sweep (``evaluate.robustness``) of each bundle, its heads as they are."""
    robustness_families: tuple[str, ...] = tuple(FAMILIES)
    robustness_levels: tuple[int, ...] = tuple(range(LEVELS))
    robustness_cases: int = 0
    """Cases the sweep runs on, drawn with the seed (0: every case)."""

    def __post_init__(self) -> None:
        if self.split not in SPLIT_KINDS:
            raise SettingsError("--split", f"unknown split {self.split!r}; choose one of {', '.join(SPLIT_KINDS)}")
        if self.split == "column" and not self.split_column:
            raise SettingsError("--split-column", "--split column needs --split-column NAME")
        checks = (("--folds", self.folds, 2), ("--bootstrap", self.n_boot, 0), ("--seed", self.seed, 0),
                  ("--efficiency-seeds", self.efficiency_seeds, 0), ("--batch-size", self.batch_size, 1))
        for flag, value, low in checks:
            if value < low:
                raise SettingsError(flag, f"must be at least {low}, got {value}")
        for name, cutoff in self.cutoffs.items():
            if name not in CONTINUOUS:
                raise SettingsError("--cutoff", f"unknown continuous column {name!r}; known: {', '.join(CONTINUOUS)}")
            if not np.isfinite(cutoff) or cutoff < 0:
                raise SettingsError("--cutoff", f"{name}: the cut-off must be a number >= 0, got {cutoff}")
        if self.colour_marker not in MARKER_KEYS:
            raise SettingsError("--colour-marker", f"unknown marker {self.colour_marker!r}; choose one of "
                                                   f"{', '.join(MARKER_KEYS)}")
        if not 0 <= self.dilation_mm <= 50:
            raise SettingsError("--dilation", f"must lie in 0..50 mm, got {self.dilation_mm}")
        if any(not 0 < f <= 1 for f in self.fractions) or any(k < 1 for k in self.per_class):
            raise SettingsError("--fractions", "fractions must lie in (0, 1] and cases per class be at least 1")
        if self.subsets not in SUBSET_MODES:
            raise SettingsError("--subsets", f"unknown mode {self.subsets!r}; choose one of {', '.join(SUBSET_MODES)}")
        if self.robustness_cases < 0:
            raise SettingsError("--robustness-cases", f"must be at least 0, got {self.robustness_cases}")
        unknown = [name for name in self.robustness_families if name not in FAMILIES]
        if unknown or not self.robustness_families:
            raise SettingsError("--robustness-families", f"unknown artifact family {', '.join(unknown) or '(none)'}; "
                                                         f"choose among {', '.join(FAMILIES)}")
        try:
            self.robustness_levels = self.robustness_settings().levels
        except ValueError as error:
            raise SettingsError("--robustness-levels", str(error)) from None

    def robustness_settings(self) -> RobustnessSettings:
        """The sweep's settings (``--robustness``): seed, batch size and device shared with the evaluation."""
        return RobustnessSettings(families=tuple(self.robustness_families), levels=tuple(self.robustness_levels),
                                  seed=self.seed, batch_size=self.batch_size, device=self.device)


def _check_out(out: Path) -> None:
    """OUT holds nothing but an earlier evaluation's report and cache: a user's folder is never written into."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SettingsError("--out", f"{out} exists and is not a folder")
    if not out.is_dir():
        return
    allowed = {REPORT_FOLDER, CACHE_FOLDER, ERRORS_LOG}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed and not STAGING_NAME.match(p.name))
    if foreign:
        raise SettingsError("--out", f"{out} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                                     f"which is not an earlier evaluation (only {REPORT_FOLDER}/ and {CACHE_FOLDER}/ "
                                     "are written there): choose an empty or new folder")


def _labels(bundles: list[Bundle], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(bundles):
            raise SettingsError("--labels", f"{len(labels)} label(s) for {len(bundles)} bundle(s)")
        if len(set(labels)) != len(labels) or any(not label.strip() for label in labels):
            raise SettingsError("--labels", f"labels must be distinct and not empty, got {labels}")
        return labels
    names: list[str] = []
    for bundle in bundles:
        name, k = bundle.name, 2
        while name in names:
            name, k = f"{bundle.name}-{k}", k + 1
        names.append(name)
    return names


def _check_inputs(bundles: list[Bundle]) -> None:
    """Bundles compared on one cohort must take the same sequences (their grids may differ: each preprocesses the
    cases its own way)."""
    specs = [(b.path, (b.card.get("input") or {}).get("sequences", list(neuroradfm.SEQUENCES))) for b in bundles]
    if len({tuple(sequences) for _, sequences in specs}) > 1:
        listed = "; ".join(f"{path}: {', '.join(sequences)}" for path, sequences in specs)
        raise BundleError(bundles[1].path, f"the bundles take different input sequences ({listed}); evaluate bundles "
                                           "that take the same inputs together")


def _merge_clinical(entries: list[CaseEntry], clinical: Path) -> list[str]:
    """Clinical columns from a separate table, joined on case_id (they take precedence over the manifest's)."""
    table = read_clinical(clinical)
    missing = [e.case_id for e in entries if e.case_id not in table]
    if missing:
        raise InputError(clinical, f"{len(missing)} of the manifest's {len(entries)} cases have no row in the "
                                   f"clinical table: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    for entry in entries:
        entry.clinical = {**entry.clinical, **table[entry.case_id]}
    extra = len(set(table) - {e.case_id for e in entries})
    return [f"clinical table {clinical.name}: {extra} row(s) for cases not in the manifest (not used)"] if extra else []


def _reference_features(entries: list[CaseEntry], patterns: list[str], manifest: Path) -> tuple[np.ndarray, list[str]]:
    """Manifest columns as features: numbers as they are (empty cells: the column mean), text one-hot; ``site`` is
    the site column."""
    names = sorted({k for e in entries for k in e.clinical} | {"site"})
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    targets = {*MARKER_KEYS, "os_days", "os_event", *CONTINUOUS}
    leaking = [n for n in chosen if n in targets]
    if leaking:
        raise SettingsError("--reference-columns", f"{', '.join(leaking)} are evaluation targets, not features")
    if not chosen:
        raise InputError(manifest, f"no column matches --reference-columns {', '.join(patterns)}")
    columns = []
    for name in chosen:
        cells = [e.site if name == "site" else e.clinical.get(name) for e in entries]
        if all(c is None or isinstance(c, (int, float)) for c in cells):
            values = np.array([np.nan if c is None else float(c) for c in cells])
            columns.append(np.where(np.isnan(values), np.nanmean(values) if np.isfinite(values).any() else 0.0,
                                    values)[:, None])
        else:
            levels = sorted({str(c) for c in cells if c is not None})
            columns.append(np.array([[float(str(c) == level) for level in levels] for c in cells]))
    return np.hstack(columns).astype(np.float64), chosen


def _analyse(features: np.ndarray, data: EvalData, split: Split, settings: EvaluateSettings,
             cam: dict[str, dict[str, tuple[bool, float]]] | None, has_heads: bool,
             progress: Progress) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every section for one feature set; returns the results and the out-of-fold marker probabilities."""
    seed, n_boot = settings.seed, settings.n_boot
    progress("markers", 0.0, "marker probes")
    markers, oof = markers_eval.evaluate_markers(features, data, split.folds, seed=seed, n_boot=n_boot)
    continuous = markers_eval.evaluate_continuous(features, data, split.folds, seed=seed, n_boot=n_boot)
    progress("survival", 0.3, "Cox model")
    survival, _ = survival_eval.evaluate_survival(features, data, split.folds, seed=seed, n_boot=n_boot)
    progress("sites", 0.45, "site invariance")
    sites = site_eval.site_invariance(features, data, seed=seed, colour_marker=settings.colour_marker)
    result = {"markers": markers, "continuous": continuous, "survival": survival, "site_invariance": sites}
    if settings.efficiency_seeds:
        progress("efficiency", 0.6, "data efficiency")
        result["data_efficiency"] = efficiency.data_efficiency(
            features, data, split.folds, seeds=tuple(range(seed, seed + settings.efficiency_seeds)),
            per_class=settings.per_class, fractions=settings.fractions)
    result["cam_localisation"] = _cam_summary(cam, has_heads, data, settings.dilation_mm)
    return result, oof


def _cam_summary(cam: dict[str, dict[str, tuple[bool, float]]] | None, has_heads: bool, data: EvalData,
                 dilation_mm: float) -> dict[str, Any]:
    if cam is None:
        return {"status": "not evaluable", "reason": "a feature set of manifest columns has no maps"}
    if not has_heads:
        return {"status": "not evaluable", "reason": "an encoder-only bundle has no heads whose maps could be scored "
                                                     "(add them with neuroradfm fit-heads)"}
    cases = [case for case in data.case_ids if case in cam]
    if not cases:
        return {"status": "not evaluable", "reason": "no evaluated case has a tumour segmentation (manifest column "
                                                     "seg)"}
    keys = list(cam[cases[0]])
    heads = {key: {"peak_in_tumour": float(np.mean([cam[c][key][0] for c in cases])),
                   "mass_in_tumour": float(np.mean([cam[c][key][1] for c in cases])), "n": len(cases)} for key in keys}
    return {"status": "ok", "dilation_mm": dilation_mm, "n_cases": len(cases), "heads": heads}


def _model_inputs(bundle: Bundle, entries: list[CaseEntry], cache: Path,
                  progress: Progress) -> list[np.ndarray | None]:
    """Each case's (4, K, J, I) model input, memory-mapped from the cache that embedding filled (None for a case
    that cannot be read back)."""
    try:
        cohort = cache_cohort(entries, bundle.preprocessing, cache, progress)
    except InputError:
        return [None] * len(entries)
    index = {case: k for k, case in enumerate(cohort.case_ids)}
    return [cohort.channels(index[e.case_id]) if e.case_id in index else None for e in entries]


def _subsets_and_robustness(bundle: Bundle, entries: list[CaseEntry], features: np.ndarray, data: EvalData,
                            split: Split, cache: Path, device: torch.device, settings: EvaluateSettings,
                            progress: Progress) -> dict[str, Any]:
    """One bundle's ``sequence_subsets`` block (the outer folds of the marker table, heads fitted on all four and
    applied to fewer) and, with --robustness, its ``robustness`` block (the artifact sweep's result)."""
    out: dict[str, Any] = {}
    subsets = chosen_subsets(settings.subsets, bundle.sequence_subsets)
    needed = settings.robustness or any(s != ALL_FOUR for s in subsets)
    cases = _model_inputs(bundle, entries, cache, sub_progress(progress, 0.0, 0.1)) if needed else []
    if subsets == [ALL_FOUR]:
        out["sequence_subsets"] = {
            "status": "not computed", "mode": settings.subsets,
            "trained_for": [list(s) for s in bundle.sequence_subsets],
            "reason": f"{bundle.name} was trained for all four sequences only; --subsets all shows how it does with "
                      "fewer"}
    elif subsets:  # none: []
        others = [s for s in subsets if s != ALL_FOUR]
        embedded, complete = embed_subsets(bundle, entries, cases, cache, device, others,
                                           sub_progress(progress, 0.1, 0.5), settings.batch_size)
        progress("subsets", 0.5, f"{bundle.name}: marker probes per sequence subset")
        with threadpool_limits(1):
            out["sequence_subsets"] = subset_section(features, embedded, complete, data.labels, split.folds,
                                                     mode=settings.subsets, trained_for=bundle.sequence_subsets,
                                                     subjects=data.subjects, seed=settings.seed)
    if settings.robustness:
        keep = [i for i, c in enumerate(cases) if c is not None]
        if settings.robustness_cases and len(keep) > settings.robustness_cases:
            drawn = np.random.default_rng(settings.seed).choice(keep, settings.robustness_cases, replace=False)
            keep = sorted(int(i) for i in drawn)
        if len(keep) < 2:
            out["robustness"] = {"status": "not evaluable", "reason": f"{len(keep)} case(s) could be read back"}
        else:
            sweep = robustness_sweep(bundle, [cases[i] for i in keep], data.subset(keep),
                                     settings.robustness_settings(), sub_progress(progress, 0.6, 1.0))
            out["robustness"] = {"status": "ok", "cases_in_evaluation": len(data), **sweep}
    return out


def _summary(result: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers a comparison puts side by side."""
    aucs = [m["pooled"]["auc"] for m in result["markers"].values()
            if m.get("status") == "ok" and m.get("pooled", {}).get("status") == "ok"]
    per_site: dict[str, list[float]] = {}
    for m in result["markers"].values():
        for site, entry in (m.get("sites") or {}).items():
            if entry.get("status") == "ok" and entry.get("auc") is not None:
                per_site.setdefault(site, []).append(entry["auc"])
    site_means = {site: float(np.mean(v)) for site, v in per_site.items()}
    survival = result["survival"]
    sites = result["site_invariance"]
    return {"mean_marker_auc": safe(np.mean(aucs)) if aucs else None,
            "worst_site_mean_auc": min(site_means.values()) if site_means else None,
            "worst_site": min(site_means, key=site_means.get) if site_means else None,
            "survival_c_index": (survival.get("pooled") or {}).get("c_index") if survival.get("status") == "ok"
            else None,
            "site_silhouette": sites.get("silhouette_pca"),
            "site_classifier_balanced_accuracy": sites.get("site_classifier_balanced_accuracy")}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return safe(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def evaluate(manifest: str | Path, models: list[str | Path], out: str | Path,
             settings: EvaluateSettings | None = None, *, labels: list[str] | None = None,
             clinical: str | Path | None = None, cache_dir: str | Path | None = None,
             progress: Progress = null_progress, command: list[str] | None = None) -> Path:
    """Evaluate ``models`` (bundle folders) on the cases of ``manifest``; returns the report's path
    (``OUT/report/report.html``, beside metrics.json and the CSV tables)."""
    settings = settings or EvaluateSettings()
    manifest, out = Path(manifest), Path(out)
    if not models and not settings.reference_columns:
        raise SettingsError("--model", "give at least one bundle (or --reference-columns)")
    check_destinations(folders={"--out": out, "--cache": cache_dir})
    _check_out(out)
    device = resolve_device(settings.device)
    bundles = [load_bundle(path) for path in models]
    names = _labels(bundles, labels)
    _check_inputs(bundles)
    entries = read_manifest(manifest)
    notes = _merge_clinical(entries, Path(clinical)) if clinical is not None else []
    data, problems, data_notes = eval_data(entries, subgroup=settings.subgroup, cutoffs=settings.cutoffs)
    notes += data_notes
    if not data.labels and data.os_days is None and not data.continuous:
        raise InputError(clinical or manifest, "nothing to evaluate: no marker column with 0/1 labels and no usable "
                                               "os_days/os_event; " + "; ".join(problems.values()))
    split_values = None
    if settings.split == "column":
        if not any(settings.split_column in e.clinical for e in entries):
            raise InputError(manifest, f"split column {settings.split_column!r} is not in the manifest")
        split_values = [e.clinical.get(settings.split_column) for e in entries]
    references = [(f"reference: {', '.join(patterns)}", *_reference_features(entries, patterns, manifest))
                  for patterns in settings.reference_columns]
    created = prepare_output_folder(out)
    cache = Path(cache_dir) if cache_dir is not None else out / CACHE_FOLDER
    try:
        embedded = [embed_cases(bundle, entries, cache, device,
                                sub_progress(progress, 0.7 * i / len(bundles), 0.7 * (i + 1) / len(bundles)),
                                settings.batch_size, settings.dilation_mm) for i, bundle in enumerate(bundles)]
    except BaseException:
        remove_created(created)  # only folders still empty: a cache that holds cases is kept for the next run
        raise
    failed: dict[str, str] = {}
    for result in embedded:
        for case, reason in result.failures.items():
            failed.setdefault(case, reason)
    usable = [i for i, e in enumerate(entries) if e.case_id not in failed]
    if len(usable) < 2:
        raise InputError(manifest, f"only {len(usable)} case(s) could be embedded: "
                                   + "; ".join(f"{c}: {r}" for c, r in list(failed.items())[:5]))
    data = data.subset(usable)
    if split_values is not None:
        split_values = [split_values[i] for i in usable]
    try:
        split = make_split(data, settings.split, folds=settings.folds, seed=settings.seed,
                           column=settings.split_column, column_values=split_values)
    except InputError as error:
        raise InputError(manifest, error.problem) from None

    sources: list[tuple[str, np.ndarray, dict | None, bool]] = []
    for name, bundle, result in zip(names, bundles, embedded):
        row = {case: k for k, case in enumerate(result.case_ids)}
        features = result.features[[row[c] for c in data.case_ids]]
        heads = bundle.heads is not None and bool(bundle.heads.markers or bundle.heads.cox is not None)
        sources.append((name, features, result.cam, heads))
    for name, features, _ in references:
        sources.append((name, features[usable], None, False))

    extras = bool(bundles) and (settings.subsets != "none" or settings.robustness)
    span = 0.15 if extras else 0.25
    results, oofs = {}, {}
    for i, (name, features, cam, heads) in enumerate(sources):
        part = sub_progress(progress, 0.7 + span * i / len(sources), 0.7 + span * (i + 1) / len(sources))
        with threadpool_limits(1):  # thousands of small fits: threads only add overhead
            results[name], oofs[name] = _analyse(features, data, split, settings, cam, heads, part)
        for key, problem in problems.items():
            section = "survival" if key == "survival" else "continuous" if key in CONTINUOUS else "markers"
            entry = {"status": "not evaluable", "reason": problem}
            if section == "survival":
                results[name]["survival"] = entry
            else:
                results[name][section][key] = entry
    if extras:
        used = [entries[i] for i in usable]
        for i, (name, bundle, source) in enumerate(zip(names, bundles, sources)):
            part = sub_progress(progress, 0.85 + 0.1 * i / len(bundles), 0.85 + 0.1 * (i + 1) / len(bundles))
            results[name].update(_subsets_and_robustness(bundle, used, source[1], data, split, cache, device,
                                                         settings, part))
    for name in results:
        results[name]["summary"] = _summary(results[name])
    comparisons = []
    for a, b in itertools.combinations(list(results), 2):
        summary = {k: (v, results[b]["summary"][k]) for k, v in results[a]["summary"].items() if k != "worst_site"}
        with threadpool_limits(1):
            comparisons.append(compare.compare_bundles(a, oofs[a], b, oofs[b], data, seed=settings.seed,
                                                       n_boot=settings.n_boot, summary=summary))

    bundle_rows = [{"label": name, "name": b.name, "path": str(b.path), "content_hash": b.card.get("content_hash"),
                    "embedding_dim": b.encoder.embedding_dim, "kind": "bundle", "heads": source[3],
                    "failed_cases": e.failures, "cached_cases": e.cached,
                    "preprocessing": b.preprocessing.to_dict(), "description": b.card.get("description")}
                   for name, b, e, source in zip(names, bundles, embedded, sources)]
    for name, features, columns in references:
        bundle_rows.append({"label": name, "name": "manifest columns", "path": str(manifest), "content_hash": None,
                            "embedding_dim": int(features.shape[1]), "kind": "columns", "heads": False,
                            "columns": columns, "failed_cases": {}})
    metrics = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"neuroradfm": neuroradfm.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "command": " ".join(command) if command else None,
        "data": {"manifest": manifest.name, "manifest_path": str(manifest), "manifest_hash": file_hash(manifest),
                 "clinical": None if clinical is None else str(clinical),
                 "cases_in_manifest": len(entries), "cases_used": len(data), "failed_cases": failed,
                 "sites": {site: data.sites.count(site) for site in sorted(set(data.sites))},
                 "subjects": len(set(data.subjects)), "case_ids": data.case_ids, "case_sites": data.sites,
                 "marker_columns": list(data.labels), "continuous_columns": list(data.continuous),
                 "survival_subgroup": data.subgroup_label, "not_evaluable": problems, "notes": notes},
        "split": split.summary(data),
        "seeds": {"split": settings.seed, "probes": settings.seed, "bootstrap": settings.seed, "tsne": settings.seed,
                  "data_efficiency": list(range(settings.seed, settings.seed + settings.efficiency_seeds))},
        "settings": {"n_boot": settings.n_boot, "cutoffs": {k: settings.cutoffs.get(k, v[1]) for k, v in
                                                            CONTINUOUS.items()},
                     "subgroup": data.subgroup_label, "colour_marker": settings.colour_marker,
                     "per_class": list(settings.per_class), "fractions": list(settings.fractions),
                     "dilation_mm": settings.dilation_mm, "device": str(device),
                     "reference_columns": settings.reference_columns, "subsets": settings.subsets,
                     "robustness": {"families": list(settings.robustness_families),
                                    "levels": list(settings.robustness_levels),
                                    "cases": settings.robustness_cases or "all"} if settings.robustness else None},
        "bundles": bundle_rows, "results": results, "comparison": comparisons,
    }
    metrics = _json_safe(metrics)
    progress("report", 0.96, "writing the report")
    inputs = [manifest, *models, *([clinical] if clinical else []), *([cache_dir] if cache_dir else [])]
    with atomic_folder(out / REPORT_FOLDER, REPORT_FILES, inputs) as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n",
                                              encoding="utf-8")
        write_tables(metrics, staging)
        (staging / "report.html").write_text(render_report(metrics), encoding="utf-8")
    report = out / REPORT_FOLDER / "report.html"
    progress("done", 1.0, str(report))
    return report


def parse_cutoffs(items: list[str]) -> dict[str, float]:
    """``--cutoff ki67_index=15`` items as a dict (the settings check the names and values)."""
    cutoffs = {}
    for item in items:
        name, _, value = item.partition("=")
        if not re.fullmatch(r"\s*[A-Za-z0-9_]+\s*", name) or not value.strip():
            raise SettingsError("--cutoff", f"expected NAME=VALUE (e.g. ki67_index=20), got {item!r}")
        try:
            cutoffs[name.strip()] = float(value)
        except ValueError:
            raise SettingsError("--cutoff", f"{item!r}: {value!r} is not a number") from None
    return cutoffs


def parse_list(text: str, flag: str, kind: type = str) -> tuple:
    """A comma-separated option (``--robustness-families blur,noise``, ``--robustness-levels 2,4``) as a tuple."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = tuple(kind(item) for item in items)
    except ValueError:
        raise SettingsError(flag, f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    if not values:
        raise SettingsError(flag, f"expected comma-separated values, got {text!r}")
    return values
