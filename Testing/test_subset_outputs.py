"""Outputs say what was used (issue 17): predictions.json, the CSV tables, the overview title and the Slicer table
name the sequences a case had and quote the bundle card's held-out AUC for that subset."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from neuroradfm import SEQUENCES  # noqa: E402
from neuroradfm.batch import predict_cases  # noqa: E402
from neuroradfm.io import load_case, read_manifest  # noqa: E402
from neuroradfm.models.bundle import load_bundle  # noqa: E402
from neuroradfm.outputs import write_outputs  # noqa: E402
from neuroradfm.overview import title  # noqa: E402
from neuroradfm.predict import SURVIVAL_HEAD, predict_case  # noqa: E402

SHORT = ("t1ce", "flair")
NOTE = "T1ce + FLAIR: held-out mean marker AUC 0.71 (all four: 0.78) over 40 cases"


def _card_auc(bundle) -> dict[str, float | None]:
    """A made-up held-out AUC per marker for T1ce + FLAIR; the last marker not evaluated (null in the card)."""
    keys = [head.key for head in bundle.heads.markers]
    return {**{key: round(0.6 + 0.01 * i, 2) for i, key in enumerate(keys[:-1])}, keys[-1]: None}


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """The tiny bundle, its card saying it takes T1ce + FLAIR and what it scored on them."""
    loaded = load_bundle(tiny_bundle)
    loaded.card["sequence_subsets"] = [list(SEQUENCES), list(SHORT)]
    loaded.card["subset_reliability"] = {
        "method": "split B", "cases": 40,
        "subsets": [{"sequences": list(SEQUENCES), "mean_auc": 0.78, "auc": {}},
                    {"sequences": list(SHORT), "mean_auc": 0.71, "auc": _card_auc(loaded)}]}
    return loaded


@pytest.fixture(scope="module")
def entry(phantom_cohort):
    return read_manifest(phantom_cohort)[0]


def _short_case(entry):
    return load_case({k: entry.paths[k] for k in SHORT}, case_id="short-protocol")


@pytest.fixture(scope="module")
def cohort_run(bundle, entry, tmp_path_factory):
    """A batch of two cases, all four sequences and T1ce + FLAIR only, with the overview figures."""
    out = tmp_path_factory.mktemp("subset-outputs")
    cases = [("full", lambda: load_case({k: entry.paths[k] for k in SEQUENCES}, case_id="full")),
             ("short-protocol", lambda: _short_case(entry))]
    result = predict_cases(cases, bundle, out, device="cpu", keep_predictions=True)
    assert not result.failures
    return out, result


def test_predictions_json_names_the_sequences_and_quotes_the_card(cohort_run, bundle):
    out, _ = cohort_run
    summary = json.loads((out / "short-protocol" / "predictions.json").read_text(encoding="utf-8"))
    sequences = summary["sequences"]
    assert sequences["used"] == ["t1ce", "flair"] and sequences["missing"] == ["t1", "t2"]
    reliability = sequences["reliability"]
    assert reliability["evaluated"] and reliability["label"] == "T1ce + FLAIR"
    assert reliability["mean_auc"] == 0.71 and reliability["all_four_mean_auc"] == 0.78
    assert reliability["note"] == NOTE
    expected = _card_auc(bundle)
    assert {m["key"]: m["subset_auc"] for m in summary["markers"]} == expected
    assert summary["markers"][-1]["subset_auc"] is None  # a marker the card has no figure for

    full = json.loads((out / "full" / "predictions.json").read_text(encoding="utf-8"))["sequences"]
    assert full["used"] == list(SEQUENCES) and full["missing"] == []
    assert full["reliability"]["note"] == "all four: held-out mean marker AUC 0.78 over 40 cases"


def test_the_case_and_cohort_csv_carry_sequences_and_subset_auc(cohort_run, bundle):
    out, _ = cohort_run
    expected = _card_auc(bundle)
    with open(out / "short-protocol" / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["sequences"] for r in rows} == {"t1ce+flair"} and {r["missing_sequences"] for r in rows} == {"t1+t2"}
    assert {r["reliability"] for r in rows} == {NOTE}
    for row in rows:
        wanted = None if row["output"] == SURVIVAL_HEAD else expected[row["output"]]
        assert row["subset_auc"] == ("" if wanted is None else f"{wanted:.4f}")
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        cohort = list(csv.DictReader(handle))
    assert {(r["case_id"], r["sequences"]) for r in cohort} == {("full", "t1+t1ce+t2+flair"),
                                                               ("short-protocol", "t1ce+flair")}


def test_the_overview_title_names_the_sequences_and_the_figure(cohort_run):
    out, result = cohort_run
    text = title(result.predictions["short-protocol"])
    assert ("Sequences: T1ce + FLAIR (no T1, T2) — held-out mean marker AUC 0.71 (all four: 0.78) over 40 cases"
            in text.splitlines())
    assert "Sequences: T1 + T1ce + T2 + FLAIR (all four) — held-out mean marker AUC 0.78 over 40 cases" in title(
        result.predictions["full"])
    assert (out / "short-protocol" / "overview.png").stat().st_size > 10_000


def test_the_slicer_table_shows_the_sequences_and_subset_auc(scene, cohort_run, bundle, entry):
    from NeuroRADFMLib.results import TABLE_COLUMNS, load_results, table_rows
    from NeuroRADFMLib.scene_io import read_volume

    out, _ = cohort_run
    reference = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "t1ce")
    read_volume(entry.paths["t1ce"], reference)
    results = load_results(scene, out / "short-protocol", reference, name="S")
    table = results.table.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    assert TABLE_COLUMNS[:9] == ("Output", "Label", "Probability", "Threshold", "Call", "Risk score", "Risk group",
                                 "OOD distance", "OOD flag")  # the columns from before stay where they were
    expected = _card_auc(bundle)
    for row in range(table.GetNumberOfRows()):
        key = table.GetValueByName(row, "Output").ToString()
        assert table.GetValueByName(row, "Sequences").ToString() == "T1ce + FLAIR (no T1, T2)"
        assert table.GetValueByName(row, "Reliability").ToString() == NOTE
        auc = table.GetValueByName(row, "Subset AUC").ToDouble()
        if expected.get(key) is None:
            assert auc != auc  # NaN: no figure (the survival row, the marker the card leaves out)
        else:
            assert auc == pytest.approx(expected[key])
    assert results.table.GetAttribute("NeuroRADFM.sequences") == "t1ce+flair"
    assert results.reliability_note == NOTE
    # predictions.json from before subsets existed: the new cells are empty, nothing fails
    old = json.loads((out / "short-protocol" / "predictions.json").read_text(encoding="utf-8"))
    del old["sequences"]
    for m in old["markers"]:
        del m["subset_auc"]
    assert {(r["Sequences"], r["Reliability"]) for r in table_rows(old)} == {("", "")}


def test_a_card_without_held_out_figures_says_so(bundle, entry, tmp_path):
    bare = load_bundle(bundle.path)
    bare.card["sequence_subsets"] = [list(SEQUENCES), list(SHORT)]
    bare.card.pop("subset_reliability", None)
    prediction = predict_case(_short_case(entry), bare, device="cpu")
    folder = write_outputs(prediction, tmp_path / "bare", overview=False)
    summary = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    reliability = summary["sequences"]["reliability"]
    assert not reliability["evaluated"] and reliability["mean_auc"] is None
    assert reliability["note"] == "T1ce + FLAIR: no held-out figures for this subset in the bundle card"
    assert all(m["subset_auc"] is None for m in summary["markers"])
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["subset_auc"] for r in rows} == {""} and {r["sequences"] for r in rows} == {"t1ce+flair"}
    assert "Sequences: T1ce + FLAIR (no T1, T2) — no held-out figures for this subset in the bundle card" in title(
        prediction)
