"""`neuroradfm evaluate` with the sequence-subset table and the opt-in robustness section: both computed on the
evaluation's own cases and folds, written to metrics.json, CSV tables and the report page."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from neuroradfm.cli import main
from neuroradfm.evaluate.embeddings import bundle_folder, embed_subsets
from neuroradfm.evaluate.report import render_report
from neuroradfm.evaluate.run import EvaluateSettings, evaluate
from neuroradfm.evaluate.subset_eval import chosen_subsets, restrict_folds, subset_section
from neuroradfm.io import read_manifest
from neuroradfm.models.bundle import load_bundle
from neuroradfm.subsets import ALL_FOUR, EVALUATED_SUBSETS, keep_only, label
from neuroradfm.train.cohort import cache_cohort

FAST = dict(n_boot=20, efficiency_seeds=0, folds=3, device="cpu")
FAMILIES, LEVELS, CASES = ("noise", "gamma"), (2, 4), 8


@pytest.fixture(scope="module")
def evaluation(phantom_cohort, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("subsets") / "eval"
    settings = EvaluateSettings(subsets="all", robustness=True, robustness_families=FAMILIES,
                                robustness_levels=LEVELS, robustness_cases=CASES, **FAST)
    report = evaluate(phantom_cohort, [tiny_bundle], out, settings, labels=["tiny"])
    return out, report, json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))


def _csv(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_subset_table_uses_the_marker_tables_cases_and_folds(evaluation, tiny_bundle):
    out, report, metrics = evaluation
    result = metrics["results"]["tiny"]
    block = result["sequence_subsets"]
    assert block["status"] == "ok" and block["mode"] == "all" and block["cases"] == 16 and block["left_out"] == 0
    assert [r["label"] for r in block["subsets"]] == [label(s) for s in EVALUATED_SUBSETS]
    trained = load_bundle(tiny_bundle).sequence_subsets
    assert [r["trained"] for r in block["subsets"]] == [s in trained for s in EVALUATED_SUBSETS]
    first = block["subsets"][0]
    assert first["sequences"] == list(ALL_FOUR) and first["mean_delta_auc"] == 0.0
    for key, entry in result["markers"].items():  # all four: the very numbers of the marker table
        pooled = entry.get("pooled") or {}
        expected = pooled.get("auc") if entry["status"] == "ok" and pooled.get("status") == "ok" else None
        assert first["auc"].get(key) == pytest.approx(expected), key
    for row in block["subsets"][1:]:
        for key, value in row["auc"].items():
            if value is not None and first["auc"][key] is not None:
                assert row["delta_auc"][key] == pytest.approx(value - first["auc"][key])
    rows = _csv(report.parent / "sequence_subsets.csv")
    assert [r["subset"] for r in rows] == [label(s) for s in EVALUATED_SUBSETS]
    assert rows[1]["sequences"] == "t1ce+t2+flair" and {"auc_idh1", "delta_auc_idh1"} <= set(rows[0])
    # the subset embeddings are cached beside the all-four ones: a rerun encodes nothing again
    cached = list(bundle_folder(out / "cache", load_bundle(tiny_bundle)).glob("*.t1ce-flair.npz"))
    assert len(cached) == 16


def test_robustness_section_runs_the_sweep_on_the_drawn_cases(evaluation):
    _, report, metrics = evaluation
    block = metrics["results"]["tiny"]["robustness"]
    assert block["status"] == "ok" and block["cases_in_evaluation"] == 16 and len(block["case_ids"]) == CASES
    assert [(r["family"], r["level"]) for r in block["rows"]] == [(f, lv) for f in FAMILIES for lv in (0, *LEVELS)]
    assert metrics["settings"]["robustness"] == {"families": list(FAMILIES), "levels": [0, *LEVELS], "cases": CASES}
    assert len(_csv(report.parent / "robustness.csv")) == len(FAMILIES) * 3
    assert len(_csv(report.parent / "robustness_cases.csv")) == CASES * len(FAMILIES) * 3


def test_report_page_shows_both_sections(evaluation):
    _, report, metrics = evaluation
    page = report.read_text(encoding="utf-8")
    assert page == render_report(metrics)

    def section(sid: str) -> str:
        start = page.index(f'<section id="{sid}">')
        return page[start:page.index("</section>", start)]

    subsets = section("sequence-subsets")
    assert "no T2" in subsets and "T1ce + FLAIR" in subsets and "16 cases with all four sequences" in subsets
    robustness = section("robustness")
    assert robustness.count("data:image/png;base64,") == 1 and "gamma" in robustness
    assert "Not computed" in render_report({**metrics, "results": {"tiny": {}}}).split('id="robustness"')[1]


def test_auto_skips_a_bundle_trained_for_all_four_only_and_none_skips_the_section(evaluation, phantom_cohort,
                                                                                 tiny_bundle):
    out, _, _ = evaluation
    bundle = load_bundle(tiny_bundle)
    if bundle.sequence_subsets != [ALL_FOUR]:
        pytest.skip("the tiny bundle was trained with sequence dropout")
    report = evaluate(phantom_cohort, [tiny_bundle], out, EvaluateSettings(**FAST), labels=["tiny"])
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    block = metrics["results"]["tiny"]["sequence_subsets"]
    assert block["status"] == "not computed" and "--subsets all" in block["reason"]
    assert "robustness" not in metrics["results"]["tiny"] and metrics["settings"]["robustness"] is None
    report = evaluate(phantom_cohort, [tiny_bundle], out, EvaluateSettings(subsets="none", **FAST), labels=["tiny"])
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert "sequence_subsets" not in metrics["results"]["tiny"]


def test_a_case_lacking_a_sequence_is_left_out_and_counted(phantom_cohort, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    entries = read_manifest(phantom_cohort)[:4]
    cohort = cache_cohort(entries, bundle.preprocessing, tmp_path)
    cases = [np.asarray(cohort.channels(i)) for i in range(4)]
    cases[1] = keep_only(cases[1], ("t1ce", "flair"))
    cases[2] = None  # its input could not be read back
    embedded, complete = embed_subsets(bundle, entries, cases, tmp_path, torch.device("cpu"), [("t1ce",)])
    assert complete.tolist() == [True, False, False, True]
    assert np.isnan(embedded[("t1ce",)][1]).all() and np.isfinite(embedded[("t1ce",)][[0, 3]]).all()

    rng = np.random.default_rng(0)
    full = rng.normal(size=(12, 4))
    labels = {"mgmt": (full[:, 0] > 0).astype(float)}
    folds = [(np.arange(12)[np.arange(12) % 3 != k], np.arange(12)[np.arange(12) % 3 == k]) for k in range(3)]
    complete = np.ones(12, bool)
    complete[[0, 5]] = False
    block = subset_section(full, {("t1ce",): full}, complete, labels, folds, mode="all", trained_for=[ALL_FOUR],
                           subjects=[str(i) for i in range(12)])
    assert block["cases"] == 10 and block["left_out"] == 2 and "left out" in block["left_out_reason"]
    assert [r["trained"] for r in block["subsets"]] == [True, False]


def test_subset_modes_and_fold_restriction():
    assert chosen_subsets("none", [ALL_FOUR]) == []
    assert chosen_subsets("auto", [ALL_FOUR]) == [ALL_FOUR]
    assert chosen_subsets("auto", [ALL_FOUR, ("t1ce",), ("t1", "t2")]) == [ALL_FOUR, ("t1ce",)]
    assert chosen_subsets("all", [ALL_FOUR]) == list(EVALUATED_SUBSETS)
    folds = [(np.array([0, 1, 2]), np.array([3, 4])), (np.array([3, 4]), np.array([0, 1, 2]))]
    restricted = restrict_folds(folds, np.array([1, 2, 4]))
    assert [(t.tolist(), h.tolist()) for t, h in restricted] == [([0, 1], [2]), ([2], [0, 1])]


def test_command_line_options(phantom_cohort, tiny_bundle, tmp_path, capsys):
    base = ["evaluate", "--manifest", str(phantom_cohort), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"),
            "--progress", "none", "--device", "cpu"]
    assert main([*base, "--robustness", "--robustness-families", "noise,blurr"]) == 2
    assert "--robustness-families: unknown artifact family blurr" in capsys.readouterr().err
    assert main([*base, "--robustness", "--robustness-levels", "2,x"]) == 2
    assert "--robustness-levels" in capsys.readouterr().err
    assert main([*base, "--robustness-levels", "7"]) == 2
    assert "--robustness-levels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
