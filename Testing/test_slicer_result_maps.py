"""Slicer's loader (NeuroRADFMLib.results) on a real vtkMRMLScene for each ``--maps`` setting: 8-bit heat maps shown
as the fractions 0..1 they stand for, a result without heat maps, one without any maps, and float heat maps of an
earlier version."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

import slicer.util  # noqa: E402

from neuroradfm.io import load_case  # noqa: E402
from neuroradfm.map_files import read_heatmap  # noqa: E402
from neuroradfm.models.bundle import load_bundle  # noqa: E402
from neuroradfm.outputs import quantise, write_outputs  # noqa: E402
from neuroradfm.predict import predict_case  # noqa: E402
from NeuroRADFMLib.results import load_results, show_head  # noqa: E402
from NeuroRADFMLib.scene_io import SceneIOError, ijk_to_ras, read_volume  # noqa: E402

CASE = "BraTS-PHN-00003-000"


@pytest.fixture(scope="module")
def folders(phantom_cohort, tiny_bundle, tmp_path_factory):
    """One case written with each --maps setting, and the T1ce file (the reference) it was predicted from."""
    case = load_case(phantom_cohort.parent / CASE)
    prediction = predict_case(case, load_bundle(tiny_bundle), device="cpu")
    out = tmp_path_factory.mktemp("maps")
    written = {maps: write_outputs(prediction, out / maps, overview=False, maps=maps)
               for maps in ("all", "labels", "none")}
    return written, next((phantom_cohort.parent / CASE).glob("*-t1c.nii.gz"))


def _reference(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "t1c")
    read_volume(path, node)
    node.CreateDefaultDisplayNodes()
    return node


def _nodes(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_heat_maps_load_as_the_fractions_of_the_peak_they_stand_for(scene, folders):
    written, t1c = folders
    reference = _reference(scene, t1c)
    results = load_results(scene, written["all"], reference)
    keys = [m["key"] for m in results.summary["markers"]] + ["survival_risk"]
    assert results.heads == keys and set(results.heatmaps) == set(results.labelmaps) == set(keys)
    for key in keys:
        node = results.heatmaps[key]
        values = slicer.util.arrayFromVolume(node)
        assert values.dtype == np.float32
        expected = sitk.GetArrayFromImage(read_heatmap(written["all"] / f"heatmap_{key}.nrrd"))
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-7)  # level / 255, as the header says
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(reference))
        display = node.GetDisplayNode()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))  # unchanged: 0..1
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(results.labelmaps[key]), quantise(values))
    assert max(slicer.util.arrayFromVolume(n).max() for n in results.heatmaps.values()) > 0.85


def test_a_result_without_heat_maps_shows_its_label_maps(scene, folders):
    written, t1c = folders
    reference = _reference(scene, t1c)
    results = load_results(scene, written["labels"], reference, name="L")
    keys = [m["key"] for m in results.summary["markers"]] + ["survival_risk"]
    assert results.heatmaps == {} and list(results.labelmaps) == keys and results.heads == keys
    assert results.segmentation.GetSegmentation().GetNumberOfSegments() == len(keys)
    assert all(node is not None and node.GetScene() is scene for node in results.nodes())
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    assert show_head(results, "idh1", scene) == 1  # the heat map layer asked for, the label map shown
    assert composite.GetLabelVolumeID() == results.labelmaps["idh1"].GetID()
    assert composite.GetForegroundVolumeID() is None

    broken = written["labels"].parent / "labels-broken"
    shutil.copytree(written["labels"], broken)
    (broken / "labels_mgmt.nrrd").unlink()  # a map predictions.json lists must be there
    before = _nodes(scene)
    with pytest.raises(SceneIOError, match="labels_mgmt.nrrd: could not be read"):
        load_results(scene, broken, reference)
    assert _nodes(scene) == before


def test_a_result_without_maps_loads_its_table_only(scene, folders):
    written, t1c = folders
    reference = _reference(scene, t1c)
    before = _nodes(scene)
    results = load_results(scene, written["none"], reference, name="N")
    assert results.heads == [] and results.heatmaps == {} and results.labelmaps == {}
    assert results.segmentation is None and results.level_colors is None
    assert results.table.GetNumberOfRows() == len(results.summary["markers"]) + 1
    assert _nodes(scene) - before == {results.table.GetID()}
    with pytest.raises(KeyError, match="no map for 'idh1'; the results have no maps"):
        show_head(results, "idh1", scene)


def test_float_heat_maps_of_an_earlier_version_load_as_they_are(scene, folders, tmp_path):
    written, t1c = folders
    old = tmp_path / "old"
    shutil.copytree(written["all"], old)
    fractions = read_heatmap(old / "heatmap_idh1.nrrd")  # float32, no scale in the header: as written before
    sitk.WriteImage(fractions, str(old / "heatmap_idh1.nrrd"), useCompression=True)
    summary = json.loads((old / "predictions.json").read_text())
    del summary["maps"]  # written before --maps: every map is there
    (old / "predictions.json").write_text(json.dumps(summary))
    results = load_results(scene, old, _reference(scene, t1c))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(results.heatmaps["idh1"]),
                                  sitk.GetArrayFromImage(fractions))
