"""Smaller per-case outputs (issue 18): heat maps as 8-bit levels of their peak with the scale in the NRRD header,
label maps and contours derived from the map as written, ``--maps all|labels|none``, and files written by threads
that still leave a complete result or nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from neuroradfm import outputs
from neuroradfm.batch import predict_cases
from neuroradfm.cli import main
from neuroradfm.errors import OutputError, SettingsError
from neuroradfm.io import load_case
from neuroradfm.map_files import HEAT_STEPS, MEANING_KEY, PEAK_KEY, SCALE_KEY, fraction_per_level, read_heatmap
from neuroradfm.models.bundle import load_bundle
from neuroradfm.outputs import (
    COLOR_TABLE,
    LABEL_OF_LEVEL,
    OVERVIEW,
    RESULT_MARKER,
    SEGMENTATION,
    quantise,
    write_outputs,
)
from neuroradfm.predict import predict_case

CASE = "BraTS-PHN-00002-000"
TABLES = {RESULT_MARKER, "predictions.csv"}


@pytest.fixture(scope="module")
def prediction(phantom_cohort, tiny_bundle):
    return predict_case(load_case(phantom_cohort.parent / CASE), load_bundle(tiny_bundle), device="cpu")


def _names(folder) -> set[str]:
    return {path.name for path in folder.iterdir()}


def _map_files(keys, heat: bool) -> set[str]:
    return ({f"heatmap_{k}.nrrd" for k in keys} if heat else set()) | {f"labels_{k}.nrrd" for k in keys} | {
        COLOR_TABLE, SEGMENTATION}


def test_heat_maps_are_8_bit_levels_of_the_peak_read_back_within_half_a_step(prediction, tmp_path):
    folder = write_outputs(prediction, tmp_path / "all", overview=False)
    keys = list(prediction.cams)
    assert _names(folder) == TABLES | _map_files(keys, heat=True)
    reference = prediction.preprocessed.reference
    segmentation = slicerio.read_segmentation(str(folder / SEGMENTATION))
    assert [s["name"] for s in segmentation["segments"]] == keys
    voxels = segmentation["voxels"]  # (layer, I, J, K): one layer per head, hot regions overlap
    assert voxels.shape == (len(keys), *reference.GetSize())
    hot_somewhere = 0
    for layer, key in enumerate(keys):
        path = folder / f"heatmap_{key}.nrrd"
        heat = sitk.ReadImage(str(path))
        assert heat.GetPixelID() == sitk.sitkUInt8
        assert heat.GetSize() == reference.GetSize() and heat.GetOrigin() == pytest.approx(reference.GetOrigin())
        assert float(heat.GetMetaData(SCALE_KEY)) == 1 / HEAT_STEPS == fraction_per_level(path)
        assert float(heat.GetMetaData(PEAK_KEY)) == pytest.approx(prediction.cam_scales[key], rel=1e-12)
        assert SCALE_KEY in heat.GetMetaData(MEANING_KEY)
        levels = sitk.GetArrayFromImage(heat)
        fractions = sitk.GetArrayFromImage(read_heatmap(path))
        assert fractions.dtype == np.float32
        np.testing.assert_allclose(fractions, levels / HEAT_STEPS, rtol=0, atol=1e-7)
        carried = sitk.GetArrayFromImage(prediction.preprocessed.to_reference(prediction.cams[key].astype(np.float32)))
        np.testing.assert_allclose(fractions, carried, rtol=0, atol=0.5 / HEAT_STEPS + 1e-6)  # within 1/510
        assert levels.max() > 0.85 * HEAT_STEPS  # the peak survives the resampling

        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"labels_{key}.nrrd")))
        np.testing.assert_array_equal(labels, quantise(fractions))  # the levels of the map as written
        np.testing.assert_array_equal(labels, LABEL_OF_LEVEL[levels])
        hot = voxels[layer].transpose(2, 1, 0) > 0
        np.testing.assert_array_equal(hot, labels >= 2)  # the contour: map >= 0.5 of its peak, as written
        hot_somewhere += int(hot.any())
    assert hot_somewhere > 0

    summary = json.loads((folder / RESULT_MARKER).read_text())
    assert summary["maps"]["written"] == "all" and SCALE_KEY in summary["maps"]["heatmap_values"]
    assert set(summary["maps"]["files"]) == _map_files(keys, heat=True)


def test_a_float_heat_map_of_an_earlier_version_reads_as_it_is(tmp_path):
    array = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / "heatmap_old.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    assert fraction_per_level(path) is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_heatmap(path)), array)


def test_maps_labels_and_none_write_only_what_they_say(prediction, tmp_path):
    keys = list(prediction.cams)
    full = write_outputs(prediction, tmp_path / "all", overview=False)
    labels_only = write_outputs(prediction, tmp_path / "labels", overview=False, maps="labels")
    assert _names(labels_only) == TABLES | _map_files(keys, heat=False)
    for key in keys:  # the same label maps as with the heat maps
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(labels_only / f"labels_{key}.nrrd"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(full / f"labels_{key}.nrrd"))))
    summary = json.loads((labels_only / RESULT_MARKER).read_text())
    assert summary["maps"]["written"] == "labels" and summary["maps"]["heatmap_values"] is None
    assert set(summary["maps"]["files"]) == _map_files(keys, heat=False)

    numbers = write_outputs(prediction, tmp_path / "none", maps="none")
    assert _names(numbers) == TABLES | {OVERVIEW}
    assert json.loads((numbers / RESULT_MARKER).read_text())["maps"] == {"written": "none", "files": [],
                                                                         "heatmap_values": None}
    assert _names(write_outputs(prediction, tmp_path / "bare", overview=False, maps="none")) == TABLES
    # a result of one kind replaces one of another as a whole
    write_outputs(prediction, full, overview=False, maps="labels")
    assert _names(full) == TABLES | _map_files(keys, heat=False)
    with pytest.raises(SettingsError, match="--maps: 'heat' is not one of all, labels, none"):
        write_outputs(prediction, tmp_path / "wrong", maps="heat")
    assert not (tmp_path / "wrong").exists()


def test_a_writer_thread_that_fails_leaves_nothing_and_names_the_file(prediction, tmp_path, monkeypatch):
    folder = tmp_path / "out" / "P1"
    real_write = sitk.WriteImage
    failing = f"labels_{list(prediction.cams)[-1]}.nrrd"

    def write(image, path, *args, **kwargs):
        if str(path).endswith(failing):
            raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute:\nFile could not be written")
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(outputs.sitk, "WriteImage", write)
    with pytest.raises(OutputError, match=rf"out/P1/{failing}: could not be written \(File could not be written\)"):
        write_outputs(prediction, folder)
    assert list((tmp_path / "out").iterdir()) == []  # no result, no staging folder
    monkeypatch.undo()

    def interrupted(*args):
        raise KeyboardInterrupt  # as Ctrl-C while the first head is written

    monkeypatch.setattr(outputs, "_write_head", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(prediction, folder)
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_and_batch_take_maps(phantom_cohort, tiny_bundle, tmp_path, capsys):
    case = phantom_cohort.parent / CASE
    out = tmp_path / "out"
    assert main(["predict", str(case), "--model", str(tiny_bundle), "--out", str(out), "--device", "cpu",
                 "--progress", "none", "--no-overview", "--maps", "labels"]) == 0
    heads = len(load_bundle(tiny_bundle).heads.markers) + 1  # and the survival risk
    assert not list((out / CASE).glob("heatmap_*.nrrd")) and len(list((out / CASE).glob("labels_*.nrrd"))) == heads
    with pytest.raises(SystemExit) as usage:
        main(["predict", str(case), "--out", str(out), "--maps", "heat"])
    assert usage.value.code == 2 and "invalid choice: 'heat'" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="--maps"):  # refused before any case is read or written
        predict_cases([(CASE, lambda: load_case(case))], load_bundle(tiny_bundle), tmp_path / "batch", maps="heat")
    assert not (tmp_path / "batch").exists()
