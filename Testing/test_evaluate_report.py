"""The evaluation report page and CSV tables, made from a metrics.json dict alone (issue 13).

The fixture is a realistic metrics dict whose numbers come from scikit-learn / lifelines on synthetic predictions:
2 bundles (one named "<script>alert(1)</script>"), 3 markers (one not evaluable), 3 sites (one not evaluable for a
marker), survival with Kaplan-Meier data and calibration, site invariance with 2-D coordinates for 30 cases,
a comparison, data efficiency and Grad-CAM localisation.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

from browser import CHROMIUM, MISSING, run_chromium
from neuroradfm.evaluate.report import SECTIONS, render_report
from neuroradfm.evaluate.report_tables import write_tables
from neuroradfm.evaluate.statistics import expected_calibration_error, reliability
from neuroradfm.markers import MARKER_KEYS

EVIL = "<script>alert(1)</script>"
SITES = ["site-A", "site-B", "site-C"]
BAD_CASE = "case-<7>&"
CODEL_REASON = "codel_1p19q: 2 positive / 28 negative in the cohort"
SITE_C_REASON = "idh1: 0 positive / 10 negative in site-C"
TP53_REASON = "tp53_expression: only 4 cases with a value"
CAM_REASON = "no tumour segmentation in the manifest (column seg absent)"
WILCOXON_REASON = "2 evaluable markers: too few for a Wilcoxon test"
CAL_REASON = "730 days: 3 cases followed for 2 years"
NOT_EVALUABLE_MARKER = "codel_1p19q"


def _binary_block(y: np.ndarray, p: np.ndarray, with_reliability: bool) -> dict:
    """Pooled / per-site marker numbers as the analysis writes them, computed by scikit-learn."""
    predicted = (p >= 0.5).astype(int)
    out = {"status": "ok", "n": int(len(y)), "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()),
           "auc": float(roc_auc_score(y, p)), "auc_ci": [float(roc_auc_score(y, p)) - 0.11, 0.97],
           "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
           "sensitivity": float(predicted[y == 1].mean()), "specificity": float(1 - predicted[y == 0].mean()),
           "brier": float(brier_score_loss(y, p)), "ece": expected_calibration_error(y, p), "threshold_mean": 0.5}
    if with_reliability:
        out["reliability"] = reliability(y, p)
    return out


def _km(times: np.ndarray, events: np.ndarray) -> dict:
    fitter = KaplanMeierFitter().fit(times, events)
    table = fitter.survival_function_
    return {"times": [float(t) for t in table.index], "survival": [float(s) for s in table.iloc[:, 0]]}


def make_metrics(n_cases: int = 30, markers: tuple[str, ...] = ("mgmt", "idh1", NOT_EVALUABLE_MARKER),
                 seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    case_ids = [f"case-{i:03d}" for i in range(n_cases)]
    case_sites = [SITES[i % 3] for i in range(n_cases)]
    site_array = np.array(case_sites)
    bundles = [
        {"label": "erm", "name": "ERM baseline", "path": "/models/erm", "content_hash": "sha256:" + "a" * 64,
         "embedding_dim": 128, "kind": "bundle", "heads": True, "failed_cases": {}},
        {"label": "dro", "name": EVIL, "path": "/models/dro", "content_hash": "sha256:" + "b" * 64,
         "embedding_dim": 128, "kind": "bundle", "heads": True, "failed_cases": {"case-003": "out of memory"}},
    ]
    results: dict = {}
    for b_index, bundle in enumerate(bundles):
        label = bundle["label"]
        marker_block: dict = {}
        efficiency: dict = {}
        for m_index, key in enumerate(markers):
            if key == NOT_EVALUABLE_MARKER:
                marker_block[key] = {"status": "not evaluable", "reason": CODEL_REASON}
                efficiency[key] = {"status": "not evaluable", "reason": CODEL_REASON}
                continue
            y = (np.arange(n_cases) % 2).astype(float)
            if key == "idh1":
                y[site_array == "site-C"] = 0
            p = np.clip(0.5 + (y - 0.5) * (0.3 + 0.1 * b_index) + rng.normal(0, 0.2, n_cases), 0.01, 0.99)
            sites = {}
            for site in SITES:
                members = site_array == site
                if key == "idh1" and site == "site-C":
                    sites[site] = {"status": "not evaluable", "reason": SITE_C_REASON}
                else:
                    sites[site] = _binary_block(y[members], p[members], with_reliability=False)
            if key == "idh1" and label == "dro":
                sites["site-B"]["auc_ci"] = None  # an interval the bootstrap could not give
            marker_block[key] = {"status": "ok", "pooled": _binary_block(y, p, with_reliability=True),
                                 "sites": sites,
                                 "folds_not_evaluable": ["fold 3: 1 positive / 5 negative in training"]
                                 if key == "idh1" else []}
            base = 0.6 + 0.05 * b_index + 0.01 * m_index
            efficiency[key] = {
                "status": "ok",
                "per_class": {str(k): {"mean": base + 0.02 * i, "sd": 0.05, "n_runs": 5}
                              for i, k in enumerate((1, 5, 10))},
                "fraction": {str(f): {"mean": base + 0.03 * i, "sd": 0.04, "n_runs": 5}
                             for i, f in enumerate((0.1, 0.25, 0.5, 1.0))}}

        continuous = {
            "ki67_index": {"status": "ok", "n": n_cases, "spearman": 0.41 + 0.05 * b_index,
                           "spearman_ci": [0.12, 0.66], "p_value": 0.00123,
                           "sites": {s: {"status": "ok", "n": int((site_array == s).sum()), "spearman": 0.3,
                                         "spearman_ci": [-0.2, 0.7], "p_value": 0.2} for s in SITES}},
            "tp53_expression": {"status": "not evaluable", "reason": TP53_REASON}}

        days = rng.exponential(500, n_cases) + 10
        events = (rng.uniform(size=n_cases) < 0.7).astype(float)
        risk = -days + rng.normal(0, 200, n_cases)
        high = risk > np.median(risk)
        c_index = float(concordance_index(days, -risk, events))
        survival = {
            "status": "ok", "subgroup": "idh1 == 0 (IDH-wildtype)", "n": n_cases, "events": int(events.sum()),
            "pooled": {"c_index": c_index, "c_index_ci": [c_index - 0.1, min(c_index + 0.1, 1.0)]},
            "sites": {"site-A": {"status": "ok", "n": 10, "events": 7, "c_index": 0.7, "c_index_ci": [0.5, 0.9]},
                      "site-B": {"status": "ok", "n": 10, "events": 6, "c_index": 0.64, "c_index_ci": [0.4, 0.85]},
                      "site-C": {"status": "not evaluable", "reason": "site-C: 1 event in 10 cases"}},
            "logrank_p": float(logrank_test(days[high], days[~high], events[high], events[~high]).p_value),
            "km": {"low": _km(days[~high], events[~high]), "high": _km(days[high], events[high]),
                   "at_risk": {"times": [0, 365, 730, 1095],
                               "low": [int((days[~high] >= t).sum()) for t in (0, 365, 730, 1095)],
                               "high": [int((days[high] >= t).sum()) for t in (0, 365, 730, 1095)]}},
            "calibration": {
                "365": {"status": "ok", "groups": [
                    {"predicted": 0.3, "observed": 0.35, "observed_ci": [0.15, 0.55], "n": 10},
                    {"predicted": 0.55, "observed": 0.5, "observed_ci": [0.3, 0.7], "n": 10},
                    {"predicted": 0.8, "observed": 0.72, "observed_ci": [0.5, 0.9], "n": 10}]},
                "730": ({"status": "not evaluable", "reason": CAL_REASON} if label == "dro" else
                        {"status": "ok", "groups": [
                            {"predicted": 0.2, "observed": 0.25, "observed_ci": [0.05, 0.45], "n": 15},
                            {"predicted": 0.5, "observed": 0.4, "observed_ci": None, "n": 15}]})}}

        site_invariance = {
            "status": "ok", "silhouette_pca": 0.12 - 0.1 * b_index, "pca_components": 10,
            "site_classifier_balanced_accuracy": 0.61 - 0.2 * b_index, "chance": 1 / 3,
            "pca_2d": rng.normal(size=(n_cases, 2)).round(4).tolist(),
            "tsne_2d": (rng.normal(size=(n_cases, 2)) * 10).round(4).tolist(),
            "colour_marker": "idh1",
            "colour_values": [None if i % 7 == 0 else int(i % 2) for i in range(n_cases)]}
        cam = ({"status": "ok", "dilation_mm": 4.0, "n_cases": n_cases,
                "heads": {"mgmt": {"peak_in_tumour": 0.7, "mass_in_tumour": 0.55, "n": n_cases},
                          "idh1": {"peak_in_tumour": 0.8, "mass_in_tumour": 0.61, "n": n_cases},
                          "survival": {"peak_in_tumour": 0.65, "mass_in_tumour": 0.5, "n": n_cases}}}
               if label == "erm" else {"status": "not evaluable", "reason": CAM_REASON})
        results[label] = {"markers": marker_block, "continuous": continuous, "survival": survival,
                          "site_invariance": site_invariance, "data_efficiency": efficiency,
                          "cam_localisation": cam}

    comparison_markers = {}
    for key in markers:
        a, b = results["erm"]["markers"][key], results["dro"]["markers"][key]
        if a["status"] != "ok":
            comparison_markers[key] = {"status": "not evaluable", "reason": CODEL_REASON}
            continue
        auc_a, auc_b = a["pooled"]["auc"], b["pooled"]["auc"]
        comparison_markers[key] = {"status": "ok", "auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b,
                                   "ci": [auc_a - auc_b - 0.1, auc_a - auc_b + 0.1], "n": n_cases}
    return {
        "format": "neuroradfm-evaluation", "format_version": 1, "created": "2026-12-02T18:00:00+00:00",
        "software": {"neuroradfm": "0.1.0", "scikit-learn": "1.9.0"},
        "command": "neuroradfm evaluate --manifest manifest.csv --model erm=/models/erm --model dro=/models/dro",
        "data": {"manifest": "manifest.csv", "manifest_path": "/data/manifest.csv",
                 "manifest_hash": "sha256:" + "c" * 64, "cases_in_manifest": n_cases + 1, "cases_used": n_cases,
                 "failed_cases": {BAD_CASE: "T1ce unreadable & skipped"},
                 "sites": {s: int((site_array == s).sum()) for s in SITES}, "subjects": n_cases,
                 "case_ids": case_ids, "case_sites": case_sites, "marker_columns": list(markers),
                 "notes": ["column tp53_expr_high absent"]},
        "split": {"kind": "kfold", "description": "5-fold stratified by site, grouped by subject_id", "folds": 5,
                  "seed": 0, "column": None, "group_column": "subject_id",
                  "fold_sizes": [[n_cases - n_cases // 5, n_cases // 5]] * 5},
        "seeds": {"split": 0, "probes": 0, "bootstrap": 0, "tsne": 0, "data_efficiency": [0, 1, 2, 3, 4]},
        "settings": {"n_boot": 50, "ki67_cutoff": 20.0, "tp53_cutoff": 10.0, "subgroup": "idh1 == 0",
                     "colour_marker": "idh1", "per_class": [1, 5, 10], "fractions": [0.1, 0.25, 0.5, 1.0]},
        "bundles": bundles,
        "results": results,
        "comparison": [{"a": "erm", "b": "dro", "markers": comparison_markers,
                        "wilcoxon": {"status": "not evaluable", "reason": WILCOXON_REASON},
                        "t_test": {"status": "ok", "statistic": 1.234, "p_value": 0.0456, "n_markers": 2},
                        "summary": {"mean AUC": {"a": 0.71, "b": 0.69},
                                    "c-index": {"a": results["erm"]["survival"]["pooled"]["c_index"],
                                                "b": results["dro"]["survival"]["pooled"]["c_index"]}}}],
    }


@pytest.fixture(scope="module")
def metrics() -> dict:
    # through JSON, as run.py writes and the report reads it: no NaN, plain types only
    return json.loads(json.dumps(make_metrics(), allow_nan=False))


@pytest.fixture(scope="module")
def page(metrics) -> str:
    return render_report(metrics)


class _Page(HTMLParser):
    """Section ids with their <h2> text, and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self._section: str | None = None
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = ""
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.append(attrs.get("src") or "")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2 and self._section is not None:
            self.sections[self._section] += data


def _parse(text: str) -> _Page:
    parser = _Page()
    parser.feed(text)
    return parser


def _section(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}">')
    return text[start:text.index("</section>", start)]


def test_every_section_has_its_id_and_heading(page):
    parsed = _parse(page)
    assert list(parsed.sections) == [sid for sid, _ in SECTIONS]
    assert parsed.sections == dict(SECTIONS)
    assert page.index('id="summary"') < page.index('id="markers"')


def test_untrusted_text_is_escaped(page):
    assert "<script" not in page.lower()
    assert html.escape(EVIL) in page
    assert html.escape(BAD_CASE) in page and BAD_CASE not in page
    assert "T1ce unreadable &amp; skipped" in page


def test_no_network_references(page):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "url(" not in page and "@import" not in page
    # every link is an in-page anchor
    assert set(re.findall(r'href="([^"]*)"', page)) == {f"#{sid}" for sid, _ in SECTIONS}
    assert "default-src 'none'" in page


def test_images_are_embedded_pngs(page):
    images = _parse(page).images
    # reliability x2, Kaplan-Meier x2, survival calibration x2, PCA/t-SNE x2, data efficiency (mgmt, idh1)
    assert len(images) == 10
    for src in images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()
        assert image.format == "PNG" and image.width > 200 and image.height > 150
    assert "Figure not drawn" not in page


def test_not_evaluable_reasons_are_shown(page):
    for reason in (CODEL_REASON, SITE_C_REASON, TP53_REASON, CAM_REASON, WILCOXON_REASON, CAL_REASON,
                   "site-C: 1 event in 10 cases", "fold 3: 1 positive / 5 negative in training"):
        assert html.escape(reason) in page, reason
    assert f"not evaluable ({html.escape(CODEL_REASON)})" in _section(page, "markers")
    assert f"not evaluable ({html.escape(SITE_C_REASON)})" in _section(page, "markers")
    assert f"not evaluable ({html.escape(CAM_REASON)})" in _section(page, "cam-localisation")
    assert f"not evaluable ({html.escape(CODEL_REASON)})" in _section(page, "data-efficiency")
    # no empty table cell anywhere
    assert not re.search(r"<td[^>]*>\s*</td>", page)


def test_numbers_are_formatted(page, metrics):
    markers = _section(page, "markers")
    pooled = metrics["results"]["erm"]["markers"]["mgmt"]["pooled"]
    assert f"{pooled['auc']:.3f} [{pooled['auc_ci'][0]:.3f}, {pooled['auc_ci'][1]:.3f}]" in markers
    assert f"{pooled['brier']:.3f}" in markers and f"{pooled['ece']:.3f}" in markers
    assert f"{pooled['n_pos']} / {pooled['n_neg']}" in markers
    site_b = metrics["results"]["dro"]["markers"]["idh1"]["sites"]["site-B"]
    assert f"{site_b['auc']:.3f} [CI n/a]" in markers
    assert "p = 0.0456" in _section(page, "comparison")  # p-values in %.3g
    assert "0.00123" in _section(page, "continuous")
    survival = metrics["results"]["erm"]["survival"]
    assert f"{survival['logrank_p']:.3g}" in _section(page, "survival")
    assert f"{survival['pooled']['c_index']:.3f}" in _section(page, "survival")
    summary = _section(page, "summary")
    assert "sha256:" + "c" * 64 in summary and "31" in summary and "site-C" in summary
    assert "sha256:" + "b" * 64 in summary
    cam = _section(page, "cam-localisation")
    assert "0.700" in cam and "0.550" in cam
    invariance = _section(page, "site-invariance")
    assert "0.333" in invariance and "+0.277" in invariance  # 0.61 - 1/3


def test_absent_sections_say_why():
    minimal = make_metrics()
    minimal["bundles"] = minimal["bundles"][:1]
    minimal["results"] = {"erm": {"markers": minimal["results"]["erm"]["markers"]}}
    minimal["comparison"] = []
    text = render_report(minimal)
    assert _parse(text).sections == dict(SECTIONS)
    assert "no continuous column" in _section(text, "continuous")
    assert "no survival columns" in _section(text, "survival")
    assert "nothing to compare" in _section(text, "comparison")
    assert "no data-efficiency results" in _section(text, "data-efficiency")
    assert "no Grad-CAM block" in _section(text, "cam-localisation")
    assert "no site-invariance block" in _section(text, "site-invariance")
    # a whole block that is not evaluable
    minimal["results"]["erm"]["survival"] = {"status": "not evaluable", "reason": "os_days: 2 events in 30 cases"}
    assert "not evaluable (os_days: 2 events in 30 cases)" in _section(render_report(minimal), "survival")
    # nothing at all still gives a page with every section
    assert _parse(render_report({})).sections == dict(SECTIONS)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_csv_tables(metrics, tmp_path):
    paths = write_tables(metrics, tmp_path / "tables")
    names = [p.name for p in paths]
    assert names == ["markers.csv", "continuous.csv", "survival.csv", "survival_calibration.csv",
                     "site_invariance.csv", "site_invariance_coordinates.csv", "comparison.csv",
                     "data_efficiency.csv", "cam_localisation.csv"]
    tables = {p.name: _read(p) for p in paths}

    header, rows = tables["markers.csv"]
    assert header[:16] == ["bundle", "marker", "scope", "status", "reason", "n", "n_pos", "n_neg", "auc",
                           "auc_ci_low", "auc_ci_high", "balanced_accuracy", "sensitivity", "specificity", "brier",
                           "ece"]
    # per bundle: 2 evaluable markers x (pooled + 3 sites) + 1 not evaluable marker
    assert len(rows) == 2 * (2 * 4 + 1)
    by = {(r["bundle"], r["marker"], r["scope"]): r for r in rows}
    pooled = metrics["results"]["erm"]["markers"]["mgmt"]["pooled"]
    row = by[("erm", "mgmt", "pooled")]
    assert row["status"] == "ok" and row["reason"] == ""
    for key in ("auc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece"):
        assert float(row[key]) == pooled[key]
    assert (float(row["auc_ci_low"]), float(row["auc_ci_high"])) == tuple(pooled["auc_ci"])
    assert (int(row["n"]), int(row["n_pos"]), int(row["n_neg"])) == (pooled["n"], pooled["n_pos"], pooled["n_neg"])
    assert by[("erm", "idh1", "site-C")]["status"] == "not evaluable"
    assert by[("erm", "idh1", "site-C")]["reason"] == SITE_C_REASON and by[("erm", "idh1", "site-C")]["auc"] == ""
    assert by[("dro", NOT_EVALUABLE_MARKER, "pooled")]["reason"] == CODEL_REASON
    assert by[("dro", "idh1", "site-B")]["auc_ci_low"] == "" and by[("dro", "idh1", "site-B")]["auc"] != ""

    header, rows = tables["survival.csv"]
    assert header == ["bundle", "scope", "status", "reason", "subgroup", "n", "events", "c_index", "c_index_ci_low",
                      "c_index_ci_high", "logrank_p"]
    assert len(rows) == 2 * 4
    survival = metrics["results"]["dro"]["survival"]
    pooled_row = next(r for r in rows if r["bundle"] == "dro" and r["scope"] == "pooled")
    assert float(pooled_row["c_index"]) == survival["pooled"]["c_index"]
    assert float(pooled_row["logrank_p"]) == survival["logrank_p"]
    assert int(pooled_row["events"]) == survival["events"]
    site_c = next(r for r in rows if r["bundle"] == "dro" and r["scope"] == "site-C")
    assert site_c["status"] == "not evaluable" and site_c["c_index"] == ""

    _, rows = tables["survival_calibration.csv"]
    assert len(rows) == (3 + 2) + (3 + 1)
    assert any(r["bundle"] == "dro" and r["horizon_days"] == "730" and r["reason"] == CAL_REASON for r in rows)

    header, rows = tables["continuous.csv"]
    assert header[:5] == ["bundle", "variable", "scope", "status", "reason"]
    assert len(rows) == 2 * (1 + 3 + 1)
    ki67 = next(r for r in rows if r["bundle"] == "erm" and r["variable"] == "ki67_index" and r["scope"] == "pooled")
    assert float(ki67["spearman"]) == metrics["results"]["erm"]["continuous"]["ki67_index"]["spearman"]

    _, rows = tables["site_invariance.csv"]
    assert [float(r["site_classifier_balanced_accuracy"]) for r in rows] == [
        metrics["results"][b]["site_invariance"]["site_classifier_balanced_accuracy"] for b in ("erm", "dro")]
    _, rows = tables["site_invariance_coordinates.csv"]
    assert len(rows) == 2 * 30
    assert rows[0]["case_id"] == "case-000" and rows[0]["colour_value"] == ""  # case 0: colour value None
    assert float(rows[1]["tsne_y"]) == metrics["results"]["erm"]["site_invariance"]["tsne_2d"][1][1]

    header, rows = tables["comparison.csv"]
    assert header[:6] == ["a", "b", "kind", "name", "status", "reason"]
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("marker", "mgmt"), ("marker", "idh1"), ("marker", NOT_EVALUABLE_MARKER), ("test", "wilcoxon"),
        ("test", "t_test"), ("summary", "mean AUC"), ("summary", "c-index")]
    mgmt = metrics["comparison"][0]["markers"]["mgmt"]
    assert float(rows[0]["difference"]) == mgmt["difference"] and float(rows[0]["value_a"]) == mgmt["auc_a"]
    assert rows[3]["reason"] == WILCOXON_REASON and float(rows[4]["p_value"]) == 0.0456

    header, rows = tables["data_efficiency.csv"]
    assert header[:8] == ["bundle", "marker", "setting_kind", "setting", "mean", "sd", "n_runs", "status"]
    assert len(rows) == 2 * (2 * (3 + 4) + 1)
    point = next(r for r in rows if r["bundle"] == "dro" and r["marker"] == "idh1" and r["setting_kind"] == "fraction"
                 and r["setting"] == "0.5")
    expected = metrics["results"]["dro"]["data_efficiency"]["idh1"]["fraction"]["0.5"]
    assert (float(point["mean"]), float(point["sd"]), int(point["n_runs"])) == (
        expected["mean"], expected["sd"], expected["n_runs"])

    _, rows = tables["cam_localisation.csv"]
    assert [(r["bundle"], r["head"], r["status"]) for r in rows] == [
        ("erm", "mgmt", "ok"), ("erm", "idh1", "ok"), ("erm", "survival", "ok"), ("dro", "", "not evaluable")]
    assert float(rows[1]["mass_in_tumour"]) == 0.61 and rows[3]["reason"] == CAM_REASON


def test_only_tables_with_content_are_written(tmp_path):
    minimal = make_metrics()
    minimal["results"] = {"erm": {"markers": minimal["results"]["erm"]["markers"]}}
    minimal["comparison"] = []
    paths = write_tables(minimal, tmp_path)
    assert [p.name for p in paths] == ["markers.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["markers.csv"]
    assert write_tables({}, tmp_path / "none") == [] and not (tmp_path / "none").exists()


def test_callers_backend_is_left_alone(metrics, tmp_path):
    """The report draws on Agg canvases: a caller that chose another backend keeps it and pyplot stays unloaded."""
    small = {**metrics, "bundles": metrics["bundles"][:1], "comparison": [],
             "results": {"erm": {"markers": metrics["results"]["erm"]["markers"],
                                 "survival": metrics["results"]["erm"]["survival"]}}}
    source = tmp_path / "metrics.json"
    source.write_text(json.dumps(small), encoding="utf-8")
    script = (
        "import json, sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from neuroradfm.evaluate.report import render_report\n"
        f"page = render_report(json.load(open({str(source)!r})))\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert page.count('data:image/png;base64,') == 3\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_large_report_stays_small():
    """200 cases, 2 bundles, all 10 markers: the page must stay well under 5 MB."""
    large = make_metrics(n_cases=200, markers=MARKER_KEYS)
    text = render_report(large)
    assert len(text.encode("utf-8")) < 5 * 1024 * 1024
    assert _parse(text).sections == dict(SECTIONS)
    # 2 per section kind per bundle + data efficiency for the 9 evaluable markers
    assert len(_parse(text).images) == 8 + 9


@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_page_renders_in_headless_chromium(page, tmp_path):
    target = tmp_path / "report.html"
    target.write_text(page, encoding="utf-8")
    dom = run_chromium(target, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _parse(dom.stdout)
    assert rendered.sections == dict(SECTIONS)
    assert len(rendered.images) == 10

    shot = tmp_path / "shot.png"
    result = run_chromium(target, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1400,2000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50
