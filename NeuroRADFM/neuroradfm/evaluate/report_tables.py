"""The evaluation's numbers as CSV tables, one per section, made from metrics.json alone (as the report is)."""

from __future__ import annotations

import csv
import math
import numbers
from pathlib import Path
from typing import Any

from neuroradfm.evaluate.report_format import (
    NOT_EVALUABLE,
    OK,
    _bundles,
    _ci_pair,
    _marker_order,
    _ok,
    _reason,
    _result,
    _sort_keys,
)
from neuroradfm.evaluate.robustness_plot import CASES_HEADER, SUMMARY_HEADER

MARKERS_HEADER = ["bundle", "marker", "scope", "status", "reason", "n", "n_pos", "n_neg", "auc", "auc_ci_low",
                  "auc_ci_high", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece", "threshold_mean"]
CONTINUOUS_HEADER = ["bundle", "variable", "scope", "status", "reason", "n", "spearman", "spearman_ci_low",
                     "spearman_ci_high", "p_value"]
SURVIVAL_HEADER = ["bundle", "scope", "status", "reason", "subgroup", "n", "events", "c_index", "c_index_ci_low",
                   "c_index_ci_high", "logrank_p"]
CALIBRATION_HEADER = ["bundle", "horizon_days", "status", "reason", "group", "predicted", "observed",
                      "observed_ci_low", "observed_ci_high", "n"]
SITE_INVARIANCE_HEADER = ["bundle", "status", "reason", "silhouette_pca", "pca_components",
                          "site_classifier_balanced_accuracy", "chance", "colour_marker"]
COORDINATES_HEADER = ["bundle", "case_id", "site", "pca_x", "pca_y", "tsne_x", "tsne_y", "colour_value"]
COMPARISON_HEADER = ["a", "b", "kind", "name", "status", "reason", "n", "value_a", "value_b", "difference",
                     "difference_ci_low", "difference_ci_high", "statistic", "p_value", "n_markers"]
DATA_EFFICIENCY_HEADER = ["bundle", "marker", "setting_kind", "setting", "mean", "sd", "n_runs", "status", "reason"]
CAM_HEADER = ["bundle", "status", "reason", "dilation_mm", "n_cases", "head", "peak_in_tumour", "mass_in_tumour",
              "n"]

Row = dict[str, Any]


def _status(entry: object) -> dict[str, Any]:
    if _ok(entry):
        return {"status": OK, "reason": None}
    return {"status": (entry.get("status") if isinstance(entry, dict) else None) or NOT_EVALUABLE,
            "reason": _reason(entry)}


def _marker_numbers(entry: dict) -> Row:
    low, high = _ci_pair(entry.get("auc_ci"))
    return {**{k: entry.get(k) for k in ("n", "n_pos", "n_neg", "auc", "balanced_accuracy", "sensitivity",
                                         "specificity", "brier", "ece", "threshold_mean")},
            "auc_ci_low": low, "auc_ci_high": high}


def _marker_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "markers")
        if not isinstance(block, dict):
            continue
        for key in _marker_order(block):
            entry = block[key]
            base = {"bundle": label, "marker": key}
            if not _ok(entry):
                rows.append({**base, "scope": "pooled", **_status(entry)})
                continue
            pooled = entry.get("pooled")
            rows.append({**base, "scope": "pooled", **_status(pooled),
                         **(_marker_numbers(pooled) if _ok(pooled) else {})})
            for site, site_entry in (entry.get("sites") or {}).items():
                rows.append({**base, "scope": site, **_status(site_entry),
                             **(_marker_numbers(site_entry) if _ok(site_entry) else {})})
    return rows


def _continuous_numbers(entry: dict) -> Row:
    low, high = _ci_pair(entry.get("spearman_ci"))
    return {"n": entry.get("n"), "spearman": entry.get("spearman"), "spearman_ci_low": low, "spearman_ci_high": high,
            "p_value": entry.get("p_value")}


def _continuous_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "continuous")
        if not isinstance(block, dict) or ("status" in block and not _ok(block)):
            if isinstance(block, dict):
                rows.append({"bundle": label, "scope": "pooled", **_status(block)})
            continue
        for key, entry in block.items():
            base = {"bundle": label, "variable": key}
            rows.append({**base, "scope": "pooled", **_status(entry), **(_continuous_numbers(entry) if _ok(entry)
                                                                         else {})})
            if _ok(entry):
                for site, site_entry in (entry.get("sites") or {}).items():
                    rows.append({**base, "scope": site, **_status(site_entry),
                                 **(_continuous_numbers(site_entry) if _ok(site_entry) else {})})
    return rows


def _survival_rows(metrics: dict) -> tuple[list[Row], list[Row]]:
    rows, calibration_rows = [], []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "survival")
        if not isinstance(block, dict) or not block:
            continue
        if not _ok(block):
            rows.append({"bundle": label, "scope": "pooled", **_status(block)})
            continue
        pooled = block.get("pooled") or {}
        low, high = _ci_pair(pooled.get("c_index_ci"))
        rows.append({"bundle": label, "scope": "pooled", **_status(pooled), "subgroup": block.get("subgroup"),
                     "n": pooled.get("n", block.get("n")), "events": pooled.get("events", block.get("events")),
                     "c_index": pooled.get("c_index"), "c_index_ci_low": low, "c_index_ci_high": high,
                     "logrank_p": block.get("logrank_p")})
        for site, entry in (block.get("sites") or {}).items():
            row = {"bundle": label, "scope": site, **_status(entry), "subgroup": block.get("subgroup")}
            if _ok(entry):
                low, high = _ci_pair(entry.get("c_index_ci"))
                row.update(n=entry.get("n"), events=entry.get("events"), c_index=entry.get("c_index"),
                           c_index_ci_low=low, c_index_ci_high=high)
            rows.append(row)
        for horizon, entry in (block.get("calibration") or {}).items():
            base = {"bundle": label, "horizon_days": horizon}
            if not _ok(entry):
                calibration_rows.append({**base, **_status(entry)})
                continue
            for index, group in enumerate(entry.get("groups") or []):
                low, high = _ci_pair(group.get("observed_ci"))
                calibration_rows.append({**base, **_status(group if "status" in group else entry), "group": index + 1,
                                         "predicted": group.get("predicted"), "observed": group.get("observed"),
                                         "observed_ci_low": low, "observed_ci_high": high, "n": group.get("n")})
    return rows, calibration_rows


def _site_invariance_rows(metrics: dict) -> tuple[list[Row], list[Row]]:
    data = metrics.get("data") or {}
    case_ids, case_sites = data.get("case_ids") or [], data.get("case_sites") or []
    rows, coordinates = [], []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "site_invariance")
        if not isinstance(block, dict) or not block:
            continue
        row = {"bundle": label, **_status(block)}
        if _ok(block):
            row.update({k: block.get(k) for k in SITE_INVARIANCE_HEADER[3:]})
        # the maps are there also when a single site leaves the site numbers not evaluable
        pca, tsne = block.get("pca_2d") or [], block.get("tsne_2d") or []
        colours = block.get("colour_values") or []
        for index in range(max(len(pca), len(tsne))):
            p = pca[index] if index < len(pca) and pca[index] else [None, None]
            t = tsne[index] if index < len(tsne) and tsne[index] else [None, None]
            coordinates.append({
                "bundle": label, "case_id": case_ids[index] if index < len(case_ids) else None,
                "site": case_sites[index] if index < len(case_sites) else None,
                "pca_x": p[0], "pca_y": p[1], "tsne_x": t[0], "tsne_y": t[1],
                "colour_value": colours[index] if index < len(colours) else None})
        rows.append(row)
    return rows, coordinates


def _comparison_rows(metrics: dict) -> list[Row]:
    rows = []
    for pair in metrics.get("comparison") or []:
        base = {"a": pair.get("a"), "b": pair.get("b")}
        for key in _marker_order(pair.get("markers") or {}):
            entry = pair["markers"][key]
            row = {**base, "kind": "marker", "name": key, **_status(entry)}
            if _ok(entry):
                low, high = _ci_pair(entry.get("ci"))
                row.update(n=entry.get("n"), value_a=entry.get("auc_a"), value_b=entry.get("auc_b"),
                           difference=entry.get("difference"), difference_ci_low=low, difference_ci_high=high)
            rows.append(row)
        for test in ("wilcoxon", "t_test"):
            entry = pair.get(test)
            if entry is None:
                continue
            row = {**base, "kind": "test", "name": test, **_status(entry)}
            if _ok(entry):
                row.update(statistic=entry.get("statistic"), p_value=entry.get("p_value"),
                           n_markers=entry.get("n_markers"))
            rows.append(row)
        for metric, values in (pair.get("summary") or {}).items():
            values = values or {}
            rows.append({**base, "kind": "summary", "name": metric, "status": OK, "value_a": values.get("a"),
                         "value_b": values.get("b")})
    return rows


def _data_efficiency_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "data_efficiency")
        if not isinstance(block, dict) or not block:
            continue
        if "status" in block and not _ok(block):
            rows.append({"bundle": label, **_status(block)})
            continue
        for key in _marker_order(block):
            entry = block[key]
            if not _ok(entry):
                rows.append({"bundle": label, "marker": key, **_status(entry)})
                continue
            for kind in ("per_class", "fraction"):
                for setting in _sort_keys(entry.get(kind) or {}):
                    point = entry[kind][setting]
                    rows.append({"bundle": label, "marker": key, "setting_kind": kind, "setting": setting,
                                 **_status(point), **({k: point.get(k) for k in ("mean", "sd", "n_runs")}
                                                      if _ok(point) else {})})
    return rows


def _cam_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "cam_localisation")
        if not isinstance(block, dict) or not block:
            continue
        if not _ok(block):
            rows.append({"bundle": label, **_status(block)})
            continue
        for head, entry in (block.get("heads") or {}).items():
            rows.append({"bundle": label, **_status(entry), "dilation_mm": block.get("dilation_mm"),
                         "n_cases": block.get("n_cases"), "head": head,
                         **({k: entry.get(k) for k in ("peak_in_tumour", "mass_in_tumour", "n")} if _ok(entry)
                            else {})})
    return rows


SUBSETS_HEADER = ["bundle", "subset", "sequences", "trained", "status", "reason", "cases", "left_out", "mean_auc",
                  "mean_delta_auc"]


def _image_blocks(metrics: dict, section: str) -> list[tuple[str, dict]]:
    return [(label, block) for label, _ in _bundles(metrics)
            if isinstance(block := _result(metrics, label, section), dict)]


def _subset_rows(metrics: dict) -> tuple[list[str], list[Row]]:
    """One row per bundle and sequence subset: its mean and per-marker AUCs and their difference to all four."""
    blocks = _image_blocks(metrics, "sequence_subsets")
    keys = _marker_order(dict.fromkeys(k for _, b in blocks for k in b.get("markers") or []))
    rows = []
    for label, block in blocks:
        base = {"bundle": label, **_status(block), "cases": block.get("cases"), "left_out": block.get("left_out")}
        if not _ok(block):
            rows.append(base)
            continue
        for row in block.get("subsets") or []:
            rows.append({**base, "subset": row.get("label"), "sequences": "+".join(row.get("sequences") or []),
                         "trained": row.get("trained"), "mean_auc": row.get("mean_auc"),
                         "mean_delta_auc": row.get("mean_delta_auc"),
                         **{f"auc_{k}": (row.get("auc") or {}).get(k) for k in keys},
                         **{f"delta_auc_{k}": (row.get("delta_auc") or {}).get(k) for k in keys}})
    return SUBSETS_HEADER + [f"auc_{k}" for k in keys] + [f"delta_auc_{k}" for k in keys], rows


def _robustness_rows(metrics: dict) -> tuple[list[str], list[Row], list[Row]]:
    """The sweep's tables (``robustness.write_robustness``'s columns) with a bundle column: one row per family and
    level, and one per case, family and level."""
    blocks = _image_blocks(metrics, "robustness")
    keys = _marker_order(dict.fromkeys(k for _, b in blocks for k in (b.get("clean") or {}).get("auc") or {}))
    rows, cases = [], []
    for label, block in blocks:
        if not _ok(block):
            rows.append({"bundle": label, **_status(block)})
            continue
        for row in block.get("rows") or []:
            rows.append({"bundle": label, **_status(block), **{k: row.get(k) for k in SUMMARY_HEADER},
                         **{f"auc_{k}": (row.get("auc") or {}).get(k) for k in keys},
                         **{f"delta_auc_{k}": (row.get("delta_auc") or {}).get(k) for k in keys}})
        cases += [{"bundle": label, **{k: row.get(k) for k in CASES_HEADER}} for row in block.get("per_case") or []]
    header = ["bundle", "status", "reason", *SUMMARY_HEADER, *(f"auc_{k}" for k in keys),
              *(f"delta_auc_{k}" for k in keys)]
    return header, rows, cases


def _cell(value: object) -> object:
    """A CSV cell: None -> empty, floats in full precision (repr), everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return value


def write_tables(metrics: dict, folder: Path) -> list[Path]:
    """The numbers of metrics.json as UTF-8 CSV files in ``folder`` (created); only tables with rows are written.
    Returns the paths written."""
    folder = Path(folder)
    survival, calibration = _survival_rows(metrics)
    site_invariance, coordinates = _site_invariance_rows(metrics)
    subsets_header, subsets = _subset_rows(metrics)
    robustness_header, robustness, robustness_cases = _robustness_rows(metrics)
    tables = [
        ("markers.csv", MARKERS_HEADER, _marker_rows(metrics)),
        ("continuous.csv", CONTINUOUS_HEADER, _continuous_rows(metrics)),
        ("survival.csv", SURVIVAL_HEADER, survival),
        ("survival_calibration.csv", CALIBRATION_HEADER, calibration),
        ("site_invariance.csv", SITE_INVARIANCE_HEADER, site_invariance),
        ("site_invariance_coordinates.csv", COORDINATES_HEADER, coordinates),
        ("comparison.csv", COMPARISON_HEADER, _comparison_rows(metrics)),
        ("data_efficiency.csv", DATA_EFFICIENCY_HEADER, _data_efficiency_rows(metrics)),
        ("cam_localisation.csv", CAM_HEADER, _cam_rows(metrics)),
        ("sequence_subsets.csv", subsets_header, subsets),
        ("robustness.csv", robustness_header, robustness),
        ("robustness_cases.csv", ["bundle", *CASES_HEADER], robustness_cases),
    ]
    written = []
    for name, header, rows in tables:
        if not rows:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="", extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in header})
        written.append(path)
    return written
