"""The shortcut lesson: the phantom's scanner artifact, supervised Group-DRO in train-baseline, the lesson pack end to
end on a tiny rebuild, the shipped pair, and bad input refused before anything is written."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_SETTINGS
from neuroradfm.cli import main
from neuroradfm.dro import GroupDRO
from neuroradfm.errors import BundleError, InputError, SettingsError
from neuroradfm.io import read_manifest
from neuroradfm.io.case import Case
from neuroradfm.metrics import read_metrics
from neuroradfm.models.bundle import load_bundle, save_bundle
from neuroradfm.models.encoder import Encoder
from neuroradfm.phantom import PhantomOptions, draw_case, generate_cohort
from neuroradfm.phantom.render import physical_coordinates
from neuroradfm.phantom.sites import SCANNER_ARTIFACT_CENTRE_LPS, SCANNER_ARTIFACT_RADIUS_MM
from neuroradfm.preprocess import PreprocessSettings, preprocess_case
from neuroradfm.teach.lesson import LESSON_FILE, lesson_bundles, load_pair, run_lesson
from neuroradfm.teach.lesson_design import LessonDesign
from neuroradfm.train.baseline import train_baseline

ON_B = PhantomOptions(scanner_artifact=("site-B",))


def _arrays(case) -> dict[str, np.ndarray]:
    return {key: sitk.GetArrayFromImage(image).astype(np.int32) for key, image in case.images.items()}


def test_the_scanner_artifact_is_at_its_site_only_at_its_place_and_changes_no_other_draw():
    site_a, site_b = (draw_case(i, 5, n_sites=2, spacing=4.0) for i in (0, 1))
    with_a, with_b = (draw_case(i, 5, n_sites=2, spacing=4.0, options=ON_B) for i in (0, 1))
    for key, array in _arrays(site_a).items():  # site-A: untouched, voxel for voxel
        assert np.array_equal(array, _arrays(with_a)[key])
    assert with_a.row["scanner_artifact"] == 0 and with_b.row["scanner_artifact"] == 1
    assert "scanner_artifact" not in site_b.row
    assert {k: v for k, v in with_b.row.items() if k != "scanner_artifact"} == site_b.row  # the same patient
    assert np.array_equal(sitk.GetArrayFromImage(with_b.seg), sitk.GetArrayFromImage(site_b.seg))
    coords = physical_coordinates(with_b.images["t1"])
    distance = np.linalg.norm(coords - np.asarray(SCANNER_ARTIFACT_CENTRE_LPS, np.float32), axis=-1)
    inside = distance < SCANNER_ARTIFACT_RADIUS_MM - 4
    for key, array in _arrays(with_b).items():  # brighter at the hot spot in every sequence, equal far from it
        plain = _arrays(site_b)[key]
        assert array[inside].mean() > 1.6 * plain[inside].mean(), key
        far = distance > SCANNER_ARTIFACT_RADIUS_MM + 12  # past the edge, the site's blur and slice profile
        assert np.abs(array[far] - plain[far]).max() <= 1, key  # rounding to int16 at most
    # it survives preprocessing (N4 on, z-scored inside the brain): ~1 standard deviation brighter there
    settings = PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=True)
    prepared = {name: preprocess_case(Case("x", **case.images, seg=case.seg), settings)
                for name, case in (("on", with_b), ("off", site_b))}
    model_coords = physical_coordinates(prepared["on"].grid)
    spot = np.linalg.norm(model_coords - np.asarray(SCANNER_ARTIFACT_CENTRE_LPS, np.float32), axis=-1) < 8
    change = prepared["on"].channels[:, spot] - prepared["off"].channels[:, spot]
    assert (change.mean(axis=1) > 0.7).all()


def test_the_artifact_option_is_recorded_only_when_on_and_all_gives_every_site(tmp_path):
    manifest = generate_cohort(tmp_path / "on", n=2, sites=2, seed=5, spacing=6.0, options=ON_B)
    record = json.loads((manifest.parent / "phantom.json").read_text())["scanner_artifact"]
    assert record["sites"] == ["site-B"] and record["centre_lps_mm"] == list(SCANNER_ARTIFACT_CENTRE_LPS)
    assert [int(e.clinical["scanner_artifact"]) for e in read_manifest(manifest)] == [0, 1]
    plain = generate_cohort(tmp_path / "off", n=2, sites=2, seed=5, spacing=6.0)
    assert "scanner_artifact" not in json.loads((plain.parent / "phantom.json").read_text())
    assert "scanner_artifact" not in read_manifest(plain)[0].clinical
    assert main(["phantom", "--n", "2", "--sites", "2", "--seed", "5", "--spacing", "6", "--scanner-artifact", "all",
                 "--out", str(tmp_path / "all"), "--progress", "none"]) == 0
    assert [int(e.clinical["scanner_artifact"]) for e in read_manifest(tmp_path / "all" / "manifest.csv")] == [1, 1]
    assert main(["phantom", "--n", "2", "--sites", "2", "--seed", "5", "--spacing", "6", "--scanner-artifact", "none",
                 "--out", str(tmp_path / "none"), "--progress", "none"]) == 0
    for name in ("clinical.csv", "manifest.csv", "phantom.json"):  # "none" is the option off, byte for byte
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "off" / name).read_bytes()


@pytest.mark.parametrize("value, message", [("site-Q", "no site site-Q"), ("all,site-A", "give it alone")])
def test_a_bad_artifact_site_is_refused_before_anything_is_written(value, message, tmp_path, capsys):
    assert main(["phantom", "--n", "2", "--sites", "2", "--scanner-artifact", value, "--out", str(tmp_path / "x"),
                 "--progress", "none"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_group_dro_in_train_baseline_moves_q_and_the_card_says_so(phantom_cohort, tmp_path):
    settings = replace(TINY_SETTINGS, dro="exponentiated", group_column="site,idh1", eta_q=2.0, epochs=3,
                       batch_size=2, markers=("idh1",))
    path = train_baseline(phantom_cohort, tmp_path / "dro", settings, card={"name": "tiny-dro"},
                          metrics_path=tmp_path / "metrics.jsonl")
    training = load_bundle(path).card["training"]  # a complete bundle: it loads, with its heads
    assert training["dro"] == "exponentiated" and training["group_column"] == "site,idh1"
    assert set(training["groups"]) <= {f"site={s}, idh1={v}" for s in ("site-A", "site-B") for v in (0, 1)}
    assert "Group-DRO (exponentiated) over the groups of site,idh1" in training["method"]
    assert "on idh1 only" in training["method"] and training["settings"]["eta_q"] == 2.0
    q = training["q_final"]
    assert sum(q.values()) == pytest.approx(1.0) and max(q.values()) > 1.0 / len(q) + 0.01
    # the card's q is Sagawa's update replayed on the logged group losses: q_g grows with exp(eta * sum of L_g)
    replay = GroupDRO(list(q), "exponentiated", eta_q=2.0)
    total = dict.fromkeys(q, 0.0)
    for row in read_metrics(tmp_path / "metrics.jsonl"):
        losses = [row["group_losses"][g] for g in q]
        replay.step(torch.tensor([v or 0.0 for v in losses], dtype=torch.float64),
                    torch.tensor([0.0 if v is None else 1.0 for v in losses], dtype=torch.float64))
        recent = dict(zip(q, replay.recent.tolist()))
        for g in q:  # what the update used: the most recent loss, the mean of the others' before a group is seen
            seen = [v for v in recent.values() if not np.isnan(v)]
            total[g] += recent[g] if not np.isnan(recent[g]) else np.mean(seen)
    assert replay.q.tolist() == pytest.approx(list(q.values()), abs=1e-9)
    assert max(q, key=q.get) == max(total, key=total.get)  # q went to the group with the highest loss
    assert load_bundle(path).require_heads().markers


def test_a_bad_group_column_is_refused_before_any_case_is_read(phantom_cohort, tmp_path):
    settings = replace(TINY_SETTINGS, dro="exponentiated", group_column="site,scanner")
    with pytest.raises(InputError, match="group column 'scanner' is not in the manifest"):
        train_baseline(phantom_cohort, tmp_path / "x", settings, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "x").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(SettingsError, match="--dro"):
        replace(TINY_SETTINGS, dro="sometimes")
    with pytest.raises(SettingsError, match="--markers"):
        replace(TINY_SETTINGS, markers=("idh2",))


TINY = LessonDesign(train_per_site=12, test_per_group=1, spacing_mm=6.0, viewer_cases=1,
                    training=("--arch", "resnet10", "--widen", "0.125", "--size", "32", "--spacing", "6", "--no-n4",
                              "--epochs", "1", "--seed", "0"))


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    out = tmp_path_factory.mktemp("lesson") / "pack"
    return run_lesson(out, rebuild=True, device="cpu", design=TINY)


def test_a_tiny_rebuild_writes_the_whole_lesson(lesson):
    record = json.loads((lesson / LESSON_FILE).read_text())
    assert record["rebuilt"] and set(record["models"]) == {"erm", "group-dro"}
    for model, about in record["models"].items():
        bundle = load_bundle(lesson / about["folder"])
        assert "SYNTHETIC-DATA DEMONSTRATION" in bundle.card["intended_use"]
        assert about["rebuild_command"].startswith("neuroradfm train-baseline --manifest cohorts/training/")
        assert ("--dro exponentiated --group-column scanner_artifact,mgmt" in about["rebuild_command"]) == (
            model == "group-dro")
    assert record["models"]["group-dro"]["training"]["q_final"] is not None
    assert not (lesson / "cache").exists()
    for version in ("as-acquired", "artifact-swapped"):
        entries = read_manifest(lesson / "cohorts" / f"held-out-{version}" / "manifest.csv")
        assert [int(e.clinical["scanner_artifact"]) for e in entries].count(1) == 2
    with open(lesson / "cases.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2 * 2  # 4 held-out patients x 2 versions x 2 models
    for model in ("erm", "group-dro"):
        results = record["results"][model]
        accuracy = results["accuracy"]["as-acquired"]
        assert accuracy["n"] == 4 and 0 <= accuracy["accuracy"] <= 1 and set(accuracy["sites"]) == {"site-C", "site-D"}
        mine = [r for r in rows if r["model"] == model and r["version"] == "as-acquired"]
        assert accuracy["accuracy"] == pytest.approx(np.mean([r["call"] == r["truth"] for r in mine]))
        change = results["counterfactual"]["site-C"]["mean_change"]
        swapped = {r["case_id"]: float(r["probability"]) for r in rows
                   if r["model"] == model and r["version"] == "artifact-swapped"}
        assert change == pytest.approx(np.mean([swapped[r["case_id"]] - float(r["probability"]) for r in mine
                                                if r["site"] == "site-C"]), abs=1e-3)
        cams = results["grad_cam"]["as-acquired"]
        assert all(0 <= v <= 1 for part in cams.values() for k, v in part.items() if k != "n")
        assert np.isfinite(results["embeddings"]["artifact_silhouette"])
    notes = (lesson / "notes.html").read_text()
    assert "ERM" in notes and "Group-DRO" in notes and "What this run showed" in notes
    assert "At this scale Group-DRO" in notes or "did not take the artifact shortcut" in notes  # a verdict, measured
    assert "src=\"http" not in notes and notes.count("data:image/png;base64,") == len(record["figures"]) == 5
    for figure in record["figures"]:
        assert (lesson / figure).read_bytes()[:4] == b"\x89PNG"
    assert record["viewer_pages"] == ["viewer/case-01.html"] and (lesson / "viewer" / "case-01.html").stat().st_size


def test_the_shipped_pair_loads_and_says_what_it_is():
    paths = lesson_bundles()
    bundles = load_pair(paths, LessonDesign().marker)
    for model, bundle in bundles.items():
        assert (paths[model] / "weights.safetensors").stat().st_size < 5_500_000
        assert "SYNTHETIC-DATA DEMONSTRATION" in bundle.card["intended_use"]
        assert bundle.card["rebuild_command"].startswith("neuroradfm train-baseline")
        assert (bundle.card["training"].get("dro") == "exponentiated") == (model == "group-dro")


def _encoder_only(folder: Path) -> Path:
    """A bundle without heads: what the lesson must refuse (untrained weights, never used as a model)."""
    return save_bundle(folder, Encoder(TINY_SETTINGS.encoder), None, TINY_SETTINGS.preprocessing,
                       {"name": "encoder-only", "intended_use": "tests only"})


def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys):
    pair = tmp_path / "pair"
    for model in ("erm", "group-dro"):
        _encoder_only(pair / model)
    with pytest.raises(BundleError, match="encoder-only bundle has no heads"):
        run_lesson(tmp_path / "out", models=pair)
    assert not (tmp_path / "out").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("a user's file")
    assert main(["lesson", "--out", str(busy), "--models", str(pair), "--progress", "none"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    with pytest.raises(SettingsError, match="conflicts with --rebuild"):
        run_lesson(tmp_path / "out", rebuild=True, models=pair)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["busy", "pair"]
