"""Bundle format, prediction, outputs on the reference grid, batch isolation and the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from neuroradfm.cli import main
from neuroradfm.errors import BundleError
from neuroradfm.io import load_case, read_manifest
from neuroradfm.map_files import SCALE_KEY, read_heatmap
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.models.bundle import CARD, WEIGHTS, content_hash, load_bundle, read_card
from neuroradfm.outputs import COLOR_TABLE, SEGMENTATION, quantise, write_outputs
from neuroradfm.predict import SURVIVAL_HEAD, predict_case


def _same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 0.0) -> None:
    """Equal grids; ``atol`` allows for the last digit of NRRD's decimal text (about 1e-16)."""
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=atol)


def test_bundle_card_and_weights(tiny_bundle):
    card = read_card(tiny_bundle)
    assert card["format_version"] == 1 and card["content_hash"].startswith("sha256:")
    assert card["architecture"]["arch"] == "resnet10" and card["preprocessing"]["size"] == [48, 48, 48]
    bundle = load_bundle(tiny_bundle)
    assert bundle.encoder.embedding_dim == len(card["heads"]["feature_mean"]) == 64
    assert bundle.heads.cox is not None and bundle.heads.ood is not None
    assert card["heads"]["cam_reference"] == "heads.cam.reference" and card["heads"]["cam_layer"] == "layer2"
    assert bundle.heads.cam_layer == "layer2"
    assert bundle.heads.cam_reference.shape == (16, 12, 12, 12)  # layer2's activation on a 48^3 grid
    assert {m.key for m in bundle.heads.markers} <= set(MARKER_KEYS)
    assert card["training"]["cases_encoder"] + card["training"]["cases_heads"] == 16
    assert not any(p.suffix in (".pt", ".pkl", ".pth") for p in tiny_bundle.iterdir())
    umask = os.umask(0)
    os.umask(umask)
    for item in tiny_bundle.iterdir():  # readable like any file the user writes (safetensors makes 0600 files)
        assert stat.S_IMODE(item.stat().st_mode) == 0o666 & ~umask, item.name


def test_bundle_errors_name_the_file(tiny_bundle, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, tampered)
    card = json.loads((tampered / CARD).read_text())
    card["heads"]["markers"][0]["threshold"] = 0.01
    (tampered / CARD).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="content hash does not match") as error:
        load_bundle(tampered)
    assert str(tampered) in str(error.value)

    future = tmp_path / "future"
    shutil.copytree(tiny_bundle, future)
    card = json.loads((future / CARD).read_text())
    card["format_version"] = 99
    (future / CARD).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="unknown bundle version 99"):
        load_bundle(future)

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_bundle, truncated)
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="content hash"):
        load_bundle(truncated)

    with pytest.raises(BundleError, match="card.json is missing"):
        load_bundle(tmp_path)


def test_bundle_with_an_unknown_cam_layer_is_refused(tiny_bundle, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_bundle, foreign)
    card = json.loads((foreign / CARD).read_text())
    card["heads"]["cam_layer"] = "layer9"
    card.pop("content_hash")
    card["content_hash"] = content_hash(card, foreign / WEIGHTS)  # a consistent bundle, from elsewhere
    (foreign / CARD).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="unknown Grad-CAM layer 'layer9'") as error:
        load_bundle(foreign)
    assert str(foreign) in str(error.value)


def test_cam_layer_override_gives_plain_maps_at_that_layer(tiny_bundle, phantom_cohort, tmp_path):
    bundle = load_bundle(tiny_bundle)
    entry = read_manifest(phantom_cohort)[0]
    own = predict_case(entry.load(), bundle, device="cpu")
    last = predict_case(entry.load(), bundle, device="cpu", cam_layer="layer4")
    assert own.cam_layer == "layer2" and "mean activation" in own.cam_method
    assert last.cam_layer == "layer4" and "last block" in last.cam_method and "mean" not in last.cam_method
    # the same network whatever the layer: the same predictions (below the last block the later blocks run on a copy
    # per head, a batch the convolutions round differently: float32 rounding, about 3e-6 relative), different maps
    np.testing.assert_allclose(own.embedding, last.embedding, rtol=2e-5, atol=1e-9)
    assert [m.probability for m in own.markers] == pytest.approx([m.probability for m in last.markers])
    assert any(not np.allclose(own.cams[k], last.cams[k], atol=1e-3) for k in own.cams)
    out = tmp_path / "out"
    assert main(["predict", str(entry.paths["t1"].parent), "--model", str(tiny_bundle), "--out", str(out),
                 "--progress", "none", "--no-overview", "--device", "cpu", "--cam-layer", "layer3"]) == 0
    (written,) = out.glob("*/predictions.json")
    summary = json.loads(written.read_text())
    assert summary["cam"]["layer"] == "layer3" and "mean activation" not in summary["cam"]["method"]
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(entry.paths["t1"].parent), "--out", str(out), "--cam-layer", "layer5"])
    assert usage.value.code == 2


def test_prediction_outputs_on_an_oblique_anisotropic_native_case(tiny_bundle, native_case_dir, tmp_path):
    case = load_case(native_case_dir)
    reference = case.t1ce
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    assert not np.allclose(np.abs(direction), np.eye(3), atol=1e-3)  # oblique
    assert len(set(np.round(reference.GetSpacing(), 3))) > 1  # anisotropic
    bundle = load_bundle(tiny_bundle)
    prediction = predict_case(case, bundle, device="cpu")
    assert prediction.preprocessed.steps["brain_extraction"].startswith("done: deepbet")
    assert prediction.preprocessed.steps["template_registration"].startswith("done")
    assert prediction.preprocessed.steps["coregister"].startswith("done")
    keys = [m.key for m in bundle.heads.markers] + [SURVIVAL_HEAD]
    assert list(prediction.cams) == keys
    for m in prediction.markers:
        assert 0 <= m.probability <= 1 and m.positive == (m.probability >= m.threshold)
    for cam in prediction.cams.values():
        assert cam.shape == (48, 48, 48) and cam.max() == pytest.approx(1.0) and cam.min() >= 0

    _same_geometry(prediction.preprocessed.to_reference(prediction.cams["idh1"]), reference)  # exactly
    folder = write_outputs(prediction, tmp_path / "out" / case.case_id)
    for key in keys:
        heat = sitk.ReadImage(str(folder / f"heatmap_{key}.nrrd"))
        labels = sitk.ReadImage(str(folder / f"labels_{key}.nrrd"))
        _same_geometry(heat, reference, atol=1e-12)
        _same_geometry(labels, reference, atol=1e-12)
        assert heat.GetPixelID() == sitk.sitkUInt8 and float(heat.GetMetaData(SCALE_KEY)) == 1 / 255
        assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2, 3}
        carried = sitk.GetArrayFromImage(prediction.preprocessed.to_reference(prediction.cams[key].astype(np.float32)))
        # the map, carried as is, in 8-bit steps of 1/255 of its peak (map_files.HEAT_STEPS): at most half a step off
        fractions = sitk.GetArrayFromImage(read_heatmap(folder / f"heatmap_{key}.nrrd"))
        np.testing.assert_allclose(fractions, carried, rtol=0, atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), quantise(fractions))
        assert carried.max() > 0.85  # the peak survives resampling onto 5 mm slices (cells of 8 mm on the model grid)
    segmentation = slicerio.read_segmentation(str(folder / SEGMENTATION))
    assert [s["name"] for s in segmentation["segments"]] == keys
    assert np.allclose(segmentation["ijkToLPS"][:3, 3], reference.GetOrigin())
    assert (folder / COLOR_TABLE).read_text().splitlines()[2:] == [
        "0 background 0 0 0 0", "1 low 255 255 0 255", "2 moderate 255 128 0 255", "3 high 220 0 0 255"]
    summary = json.loads((folder / "predictions.json").read_text())
    assert summary["case_id"] == case.case_id and len(summary["markers"]) == len(bundle.heads.markers)
    assert summary["survival"]["risk_group"] in ("low", "high")
    assert summary["cam"]["layer"] == "layer2" and "layer2" in summary["cam"]["method"]
    assert summary["cam"]["method"].endswith("against the training cohort's mean activation")
    assert summary["cam"]["empty"] == sorted(k for k, peak in summary["cam"]["peak_values"].items() if peak <= 0)
    with open(folder / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["output"] for r in rows] == keys
    assert (folder / "overview.png").stat().st_size > 10_000
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_batch_isolates_a_failing_case_and_leaves_nothing_half_written(tiny_bundle, phantom_cohort, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(phantom_cohort.parent, cohort)
    broken = read_manifest(cohort / "manifest.csv")[1]
    broken.paths["flair"].write_bytes(broken.paths["flair"].read_bytes()[:200])  # truncated file
    out = tmp_path / "out"
    code = main(["predict", str(cohort / "manifest.csv"), "--model", str(tiny_bundle), "--out", str(out),
                 "--progress", "none", "--no-overview", "--device", "cpu"])
    assert code == 1
    assert not (out / broken.case_id).exists()
    assert len([p for p in out.iterdir() if p.is_dir()]) == 15
    with open(out / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert failures[0]["case_id"] == broken.case_id and "truncated" in failures[0]["error"]
    assert str(broken.paths["flair"]) in failures[0]["error"]
    with open(out / "predictions.csv", newline="") as handle:
        assert len({r["case_id"] for r in csv.DictReader(handle)}) == 15
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_reports_bad_input_with_exit_status_2(tiny_bundle, tmp_path, capsys):
    code = main(["predict", str(tmp_path / "nowhere"), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"),
                 "--progress", "none"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_cli_info_prints_card_summary(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "tiny-test-bundle" and "c_index" in summary["survival"]
