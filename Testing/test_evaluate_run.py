"""`neuroradfm evaluate`: clinical columns and their bad values, splits, the embedding cache, the whole run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroradfm.cli import main
from neuroradfm.errors import BundleError, InputError, SettingsError
from neuroradfm.evaluate.data import EvalData, eval_data
from neuroradfm.evaluate.embeddings import _read, bundle_folder, embed_cases
from neuroradfm.evaluate.run import EvaluateSettings, evaluate
from neuroradfm.evaluate.splits import make_split
from neuroradfm.io import CaseEntry, read_manifest
from neuroradfm.models.bundle import load_bundle, save_bundle

FAST = dict(n_boot=20, efficiency_seeds=1, folds=3, per_class=(1, 5), fractions=(0.5, 1.0), device="cpu")


def _entries(rows: list[dict]) -> list[CaseEntry]:
    return [CaseEntry(str(i), row.pop("site", "A"), {}, row) for i, row in enumerate(rows)]


def test_marker_values_other_than_0_1_are_named_with_their_cases_never_guessed():
    entries = _entries([{"mgmt": 1, "idh1": "pos"}, {"mgmt": 0, "idh1": "unknown"}, {"mgmt": None, "idh1": 1},
                        {"mgmt": 1, "idh1": "unknown"}])
    data, problems, _ = eval_data(entries)
    assert list(data.labels) == ["mgmt"]
    np.testing.assert_array_equal(data.labels["mgmt"], [1, 0, np.nan, 1])
    assert "'idh1'" in problems["idh1"] and "'unknown' (2 cases, e.g. 1)" in problems["idh1"]
    assert "'pos' (1 case, e.g. 0)" in problems["idh1"]


def test_survival_with_negative_or_text_days_or_a_bad_event_is_not_evaluable_with_the_values():
    data, problems, _ = eval_data(_entries([{"os_days": -3, "os_event": 1}, {"os_days": "abc", "os_event": 2},
                                            {"os_days": 100, "os_event": 0}]))
    assert data.os_days is None
    assert "os_days" in problems["survival"] and "-3 (1 case, e.g. 0)" in problems["survival"]
    assert "'abc'" in problems["survival"] and "os_event" in problems["survival"]
    assert "2 (1 case" in problems["survival"]
    _, problems, _ = eval_data(_entries([{"os_days": 5}]))
    assert "os_event" in problems["survival"]


def test_a_misspelled_column_is_pointed_at_and_absent_markers_are_noted():
    _, problems, notes = eval_data(_entries([{"MGMT": 1, "os_day": 3}, {"MGMT": 0, "os_day": 4}]))
    assert "similar: MGMT" in problems["mgmt"]
    assert "os_day" in problems["survival"]
    assert any("idh1" in note for note in notes)


def test_continuous_expression_is_binarised_at_the_cut_off_and_kept_continuous():
    entries = _entries([{"ki67_index": 5.0}, {"ki67_index": 25}, {"ki67_index": None}, {"ki67_index": 15}])
    data, problems, notes = eval_data(entries, cutoffs={"ki67_index": 12.0})
    np.testing.assert_array_equal(data.labels["ki67_high"], [0, 1, np.nan, 1])
    np.testing.assert_array_equal(data.continuous["ki67_index"], [5, 25, np.nan, 15])
    assert not problems and any("ki67_index >= 12" in note for note in notes)
    _, problems, _ = eval_data(_entries([{"ki67_index": -1}, {"ki67_index": 3}]))
    assert "ki67_index" in problems


def test_survival_subgroup_default_idh_wildtype_glioblastoma_all_and_a_query():
    rows = [{"idh1": 0, "subtype": "glioblastoma", "age": 70}, {"idh1": 0, "subtype": "astrocytoma", "age": 40},
            {"idh1": 1, "subtype": "glioblastoma", "age": 50}, {"idh1": None, "subtype": "glioblastoma", "age": 60}]
    data, _, _ = eval_data(_entries([dict(r) for r in rows]))
    np.testing.assert_array_equal(data.subgroup, [True, False, False, False])
    assert "glioblastoma" in data.subgroup_label
    data, _, _ = eval_data(_entries([dict(r) for r in rows]), subgroup="all")
    assert data.subgroup.all()
    data, _, _ = eval_data(_entries([dict(r) for r in rows]), subgroup="age >= 50 and subtype == 'glioblastoma'")
    np.testing.assert_array_equal(data.subgroup, [True, False, True, True])
    with pytest.raises(SettingsError, match="--subgroup.*agee"):
        eval_data(_entries([dict(r) for r in rows]), subgroup="agee > 3")


def _data(n: int, sites: list[str], subjects: list[str] | None = None) -> EvalData:
    ids = [f"c{i}" for i in range(n)]
    return EvalData(ids, subjects or ids, sites, {}, {}, None, None, np.ones(n, bool), "all cases")


def test_kfold_keeps_a_subjects_scans_together_and_covers_every_case_once():
    subjects = [f"s{i // 2}" for i in range(40)]  # two timepoints per subject
    sites = ["A" if i < 20 else "B" for i in range(40)]
    split = make_split(_data(40, sites, subjects), "kfold", folds=4, seed=3)
    tested = np.concatenate([test for _, test in split.folds])
    assert sorted(tested.tolist()) == list(range(40))
    for train, test in split.folds:
        assert not {subjects[i] for i in train} & {subjects[i] for i in test}
        assert {sites[i] for i in test} == {"A", "B"}
    again = make_split(_data(40, sites, subjects), "kfold", folds=4, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(split.folds, again.folds))
    assert split.summary(_data(40, sites, subjects))["group_column"] == "subject_id"
    with pytest.raises(InputError, match="at least 5 subjects"):
        make_split(_data(4, ["A"] * 4), "kfold", folds=5)


def test_leave_one_site_out_and_split_columns():
    sites = ["A"] * 5 + ["B"] * 4 + ["C"] * 3
    split = make_split(_data(12, sites), "site")
    assert split.test_names == ["A", "B", "C"]
    assert [len(test) for _, test in split.folds] == [5, 4, 3]
    with pytest.raises(InputError, match="at least 2 sites"):
        make_split(_data(3, ["A"] * 3), "site")
    with pytest.raises(InputError, match="different sites.*s0"):
        make_split(_data(3, ["A", "B", "B"], ["s0", "s0", "s1"]), "site")
    values = ["train"] * 8 + ["Test"] * 4
    split = make_split(_data(12, sites), "column", column="fold", column_values=values)
    assert split.folds[0][1].tolist() == [8, 9, 10, 11] and len(split.folds) == 1
    split = make_split(_data(12, sites), "column", column="fold", column_values=[i % 3 for i in range(12)])
    assert split.test_names == ["0", "1", "2"] and [len(t) for _, t in split.folds] == [4, 4, 4]
    with pytest.raises(InputError, match="only train"):
        make_split(_data(3, ["A"] * 3), "column", column="fold", column_values=["train"] * 3)
    with pytest.raises(InputError, match="empty for 1 case"):
        make_split(_data(3, ["A"] * 3), "column", column="fold", column_values=["train", None, "test"])
    with pytest.raises(InputError, match="s0"):
        make_split(_data(3, ["A"] * 3, ["s0", "s0", "s1"]), "column", column="fold",
                   column_values=["train", "test", "test"])


@pytest.fixture(scope="module")
def encoder_only(tiny_bundle, tmp_path_factory):
    bundle = load_bundle(tiny_bundle)
    card = {k: v for k, v in bundle.card.items() if k in ("name", "description", "intended_use", "input")}
    card["name"] = "tiny-encoder-only"
    return save_bundle(tmp_path_factory.mktemp("enc") / "encoder", bundle.encoder, None, bundle.preprocessing, card)


@pytest.fixture(scope="module")
def evaluation(phantom_cohort, tiny_bundle, encoder_only, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "eval"
    settings = EvaluateSettings(reference_columns=[["trait_*"]], **FAST)
    events = []
    report = evaluate(phantom_cohort, [tiny_bundle, encoder_only], out, settings, labels=["tiny", "encoder"],
                      progress=lambda stage, fraction, message="": events.append((stage, fraction)))
    return out, report, json.loads((report.parent / "metrics.json").read_text(encoding="utf-8")), events


def test_evaluation_writes_report_metrics_and_tables_for_every_bundle(evaluation, phantom_cohort):
    out, report, metrics, events = evaluation
    assert report == out / "report" / "report.html" and report.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["cache", "report"]
    assert {"markers.csv", "metrics.json", "report.html"} <= {p.name for p in report.parent.iterdir()}
    assert metrics["data"]["cases_used"] == len(read_manifest(phantom_cohort)) == 16
    assert metrics["split"]["kind"] == "kfold" and metrics["split"]["folds"] == 3 and metrics["seeds"]["split"] == 0
    labels = [b["label"] for b in metrics["bundles"]]
    assert labels == ["tiny", "encoder", "reference: trait_*"]
    assert metrics["bundles"][0]["content_hash"] == load_bundle(metrics["bundles"][0]["path"]).card["content_hash"]
    for label in labels:
        result = metrics["results"][label]
        assert set(result) >= {"markers", "survival", "site_invariance", "data_efficiency", "cam_localisation"}
        assert len(result["site_invariance"]["pca_2d"]) == 16
        for key, entry in result["markers"].items():  # every marker with a column is there: computed or explained
            assert entry["status"] == "ok" or entry["reason"], key
    assert metrics["results"]["tiny"]["cam_localisation"]["status"] == "ok"
    heads = metrics["results"]["tiny"]["cam_localisation"]["heads"]
    assert all(0 <= h["peak_in_tumour"] <= 1 and 0 <= h["mass_in_tumour"] <= 1 and h["n"] == 16 for h in heads.values())
    assert "encoder-only" in metrics["results"]["encoder"]["cam_localisation"]["reason"]
    assert "manifest columns" in metrics["results"]["reference: trait_*"]["cam_localisation"]["reason"]
    assert [(c["a"], c["b"]) for c in metrics["comparison"]] == [("tiny", "encoder"), ("tiny", "reference: trait_*"),
                                                                 ("encoder", "reference: trait_*")]
    # the planted traits are the ceiling: IDH is written in the tumour's region
    idh = metrics["results"]["reference: trait_*"]["markers"]["idh1"]
    assert idh["status"] == "ok" and idh["pooled"]["auc"] > 0.9
    assert events[-1] == ("done", 1.0) and all(0 <= f <= 1 for _, f in events)
    with open(report.parent / "markers.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["bundle"] for r in rows} == set(labels)


def test_a_rerun_reads_every_embedding_from_the_cache_and_gives_the_same_numbers(evaluation, phantom_cohort,
                                                                                 tiny_bundle):
    out, _, first, _ = evaluation
    report = evaluate(phantom_cohort, [tiny_bundle], out, EvaluateSettings(**FAST), labels=["tiny"])
    again = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert again["bundles"][0]["cached_cases"] == 16 and len(again["bundles"]) == 1
    assert again["results"]["tiny"] == first["results"]["tiny"]  # same cases, splits and seeds: the same numbers
    assert again["comparison"] == [] and sorted(p.name for p in out.iterdir()) == ["cache", "report"]


def test_a_cache_entry_of_another_bundle_is_never_read_back(evaluation, tiny_bundle, encoder_only, phantom_cohort):
    out, _, _, _ = evaluation
    tiny, encoder = load_bundle(tiny_bundle), load_bundle(encoder_only)
    files = sorted(bundle_folder(out / "cache", tiny).glob("*.npz"))
    assert len(files) == 16 and _read(files[0], tiny) is not None
    assert _read(files[0], encoder) is None  # same encoder weights, another bundle: not reused
    files[0].write_bytes(files[0].read_bytes()[:100])  # a damaged entry is recomputed, not trusted
    assert _read(files[0], tiny) is None
    result = embed_cases(tiny, read_manifest(phantom_cohort), out / "cache", torch.device("cpu"))
    assert result.cached == 15 and len(result.case_ids) == 16 and _read(files[0], tiny) is not None


def test_an_interrupted_extraction_resumes_from_the_cases_it_wrote(tiny_bundle, phantom_cohort, tmp_path):
    bundle = load_bundle(tiny_bundle)
    entries = read_manifest(phantom_cohort)[:6]
    seen = []

    def stop_after_first_batch(stage, fraction, message=""):
        seen.append(message)
        if len(seen) == 3:  # the second batch starts: the first batch's two cases are written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_cases(bundle, entries, tmp_path / "cache", torch.device("cpu"), stop_after_first_batch, batch_size=2)
    resumed = embed_cases(bundle, entries, tmp_path / "cache", torch.device("cpu"), batch_size=2)
    assert resumed.cached == 2 and resumed.case_ids == [e.case_id for e in entries]
    assert not list((tmp_path / "cache").rglob(".*partial*"))


def test_a_failing_case_is_reported_and_the_others_are_evaluated(phantom_cohort, tiny_bundle, tmp_path):
    rows = list(csv.DictReader(open(phantom_cohort, encoding="utf-8")))
    rows[0]["t1"] = "missing.nii.gz"
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (str(Path(phantom_cohort).parent / v) if k in ("t1", "t1ce", "t2", "flair", "seg")
                              and i > 0 else v) for k, v in row.items()} for i, row in enumerate(rows))
    report = evaluate(manifest, [tiny_bundle], tmp_path / "out", EvaluateSettings(**FAST),
                      cache_dir=tmp_path / "shared-cache")
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["data"]["cases_used"] == 15 and list(metrics["data"]["failed_cases"]) == [rows[0]["case_id"]]
    assert "missing.nii.gz" in metrics["data"]["failed_cases"][rows[0]["case_id"]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report"]  # the cache went where it was told


def test_bad_requests_are_refused_before_anything_is_written(phantom_cohort, tiny_bundle, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(SettingsError, match="notes.txt"):
        evaluate(phantom_cohort, [tiny_bundle], user, EvaluateSettings(**FAST))
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case_id,mgmt\nBraTS-PHN-00000-000,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="clinical.csv: 15 of the manifest's 16 cases have no row"):
        evaluate(phantom_cohort, [tiny_bundle], tmp_path / "a", EvaluateSettings(**FAST), clinical=clinical)
    clinical.write_text("case_id,mgmt\nx,1\nx,0\n", encoding="utf-8")
    with pytest.raises(InputError, match="appears twice"):
        evaluate(phantom_cohort, [tiny_bundle], tmp_path / "a", EvaluateSettings(**FAST), clinical=clinical)
    bundle = load_bundle(tiny_bundle)
    card = {k: v for k, v in bundle.card.items() if k in ("name", "description", "intended_use")}
    card["input"] = {"sequences": ["t1ce", "flair"]}
    other = save_bundle(tmp_path / "two-sequences", bundle.encoder, bundle.heads, bundle.preprocessing, card)
    with pytest.raises(BundleError, match="different input sequences"):
        evaluate(phantom_cohort, [tiny_bundle, other], tmp_path / "a", EvaluateSettings(**FAST))
    with pytest.raises(SettingsError, match="--split-column"):
        EvaluateSettings(split="column")
    with pytest.raises(SettingsError, match="os_days, os_event are evaluation targets"):
        evaluate(phantom_cohort, [tiny_bundle], tmp_path / "a", EvaluateSettings(reference_columns=[["os_*"]], **FAST))
    assert not (tmp_path / "a").exists()


def test_command_line_exit_status_and_message(phantom_cohort, tiny_bundle, tmp_path, capsys):
    code = main(["evaluate", "--manifest", str(tmp_path / "none.csv"), "--model", str(tiny_bundle), "--out",
                 str(tmp_path / "o"), "--progress", "none", "--device", "cpu"])
    assert code == 2 and "none.csv: manifest not found" in capsys.readouterr().err
    code = main(["evaluate", "--manifest", str(phantom_cohort), "--model", str(tiny_bundle), "--out",
                 str(tmp_path / "o"), "--cutoff", "ki67=5", "--progress", "none"])
    assert code == 2 and "--cutoff: unknown continuous column 'ki67'" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_reference_feature_sets_from_manifest_columns_and_the_site(tmp_path):
    from neuroradfm.evaluate.run import _reference_features

    entries = [CaseEntry("a", "S1", {}, {"age": 40, "grade": "IV"}), CaseEntry("b", "S2", {}, {"age": None,
                                                                                            "grade": "III"}),
               CaseEntry("c", "S1", {}, {"age": 60, "grade": "IV"})]
    features, columns = _reference_features(entries, ["site", "a*", "grade"], tmp_path / "m.csv")
    assert columns == ["age", "grade", "site"]
    np.testing.assert_array_equal(features, [[40, 0, 1, 1, 0], [50, 1, 0, 0, 1], [60, 0, 1, 1, 0]])
    with pytest.raises(InputError, match="no column matches"):
        _reference_features(entries, ["trait_*"], tmp_path / "m.csv")


def test_hostile_case_ids_keep_every_cache_file_inside_the_cache_folder(tiny_bundle, phantom_cohort, tmp_path):
    from dataclasses import replace

    bundle = load_bundle(tiny_bundle)
    entries = [replace(e, case_id=case_id) for e, case_id in
               zip(read_manifest(phantom_cohort)[:3], ["../../escape", "/abs/olute", "a\\..\\..\\b"])]
    cache = tmp_path / "inside" / "cache"
    result = embed_cases(bundle, entries, cache, torch.device("cpu"))
    assert result.case_ids == [e.case_id for e in entries]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(cache.resolve() in p.resolve().parents for p in written)
