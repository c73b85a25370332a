"""NeuroRADFMLib on a real vtkMRMLScene (PyPI slicer-core): volume nodes -> files -> predict -> nodes back.

Geometry is checked exactly: every result node carries the reference (T1ce) node's IJK-to-RAS matrix,
also for an oblique, anisotropic acquisition.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

import slicer  # noqa: E402
import slicer.util  # noqa: E402

from neuroradfm import SEQUENCES  # noqa: E402
from neuroradfm.markers import marker  # noqa: E402
from neuroradfm.outputs import LEVEL_COLORS, quantise  # noqa: E402
from NeuroRADFMLib.prediction import PredictionJob  # noqa: E402
from NeuroRADFMLib.results import SURVIVAL_HEAD, TABLE_COLUMNS, load_results, segmentation_geometry, show_head  # noqa: E402
from NeuroRADFMLib.scene_io import SceneIOError, ijk_to_ras, read_volume  # noqa: E402
from NeuroRADFMLib.sequences import assign_sequences, input_volumes  # noqa: E402

FILE_KEYS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def load_case_nodes(scene, folder: Path) -> list:
    """The four sequences of a phantom case folder as volume nodes named after their files."""
    nodes = []
    for path in sorted(folder.glob("*.nii.gz")):
        if path.name.endswith("-seg.nii.gz"):
            continue
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name[: -len(".nii.gz")])
        read_volume(path, node)
        node.CreateDefaultDisplayNodes()
        nodes.append(node)
    return nodes


def result_node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def assert_results(results, scene, reference) -> None:
    summary = results.summary
    markers = summary["markers"]
    heads = [m["key"] for m in markers] + [SURVIVAL_HEAD]
    assert results.heads == heads

    table = results.table
    assert table.IsA("vtkMRMLTableNode")
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(TABLE_COLUMNS)
    assert table.GetNumberOfRows() == len(markers) + 1
    vtk_table = table.GetTable()
    for row, m in enumerate(markers):
        assert vtk_table.GetValueByName(row, "Output").ToString() == m["key"]
        probability = vtk_table.GetValueByName(row, "Probability").ToDouble()
        threshold = vtk_table.GetValueByName(row, "Threshold").ToDouble()
        assert probability == pytest.approx(m["probability"], abs=1e-12) and 0.0 <= probability <= 1.0
        info = marker(m["key"])
        call = vtk_table.GetValueByName(row, "Call").ToString()
        assert call == (info.positive if probability >= threshold else info.negative)
        assert vtk_table.GetValueByName(row, "OOD flag").ToString() == ("yes" if summary["ood"]["flag"] else "no")
    last = len(markers)
    assert vtk_table.GetValueByName(last, "Output").ToString() == SURVIVAL_HEAD
    group = vtk_table.GetValueByName(last, "Risk group").ToString()
    assert group in ("high", "low")
    score = vtk_table.GetValueByName(last, "Risk score").ToDouble()
    median = vtk_table.GetValueByName(last, "Threshold").ToDouble()
    assert group == ("high" if score > median else "low")

    reference_matrix = ijk_to_ras(reference)
    peaks = []
    for key in heads:
        heat, labels = results.heatmaps[key], results.labelmaps[key]
        assert heat.GetClassName() == "vtkMRMLScalarVolumeNode"
        assert labels.GetClassName() == "vtkMRMLLabelMapVolumeNode"
        for node in (heat, labels):
            np.testing.assert_array_equal(ijk_to_ras(node), reference_matrix)
            assert node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
            assert node.GetScene() is scene
        values = slicer.util.arrayFromVolume(heat)
        assert 0.0 <= values.min() and values.max() <= 1.0 + 1e-6
        peaks.append(values.max())
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labels), quantise(values))
        assert labels.GetDisplayNode().GetColorNode() is results.level_colors
        assert heat.GetDisplayNode().GetColorNode().GetName() == "NeuroRADFM heat"
    assert max(peaks) > 0.5  # maps are scaled to their peak (an all-zero map is possible for a head)

    colors = results.level_colors
    assert colors.IsA("vtkMRMLColorTableNode")
    assert [colors.GetColorName(i) for i in range(colors.GetNumberOfColors())] == [c[1] for c in LEVEL_COLORS]

    segmentation = results.segmentation.GetSegmentation()
    assert results.segmentation.IsA("vtkMRMLSegmentationNode")
    assert segmentation.GetNumberOfSegments() == len(heads)
    assert [segmentation.GetNthSegment(i).GetName() for i in range(len(heads))] == heads
    for key in heads:
        matrix, extent = segmentation_geometry(results.segmentation, key)
        np.testing.assert_allclose(matrix, reference_matrix, rtol=0, atol=1e-9)
        dims = reference.GetImageData().GetDimensions()
        assert extent == (0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)


def test_nodes_to_files_to_predict_to_nodes_on_an_oblique_anisotropic_reference(scene, tiny_bundle,
                                                                                  native_case_dir, tmp_path):
    nodes = load_case_nodes(scene, native_case_dir)
    assignment = assign_sequences(input_volumes(scene))
    assert assignment.missing() == [] and not assignment.ambiguous
    for sequence in SEQUENCES:
        assert assignment.assigned[sequence].GetName().endswith("-" + FILE_KEYS[sequence])
    reference = assignment.assigned["t1ce"]
    matrix = ijk_to_ras(reference)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    assert np.abs(matrix[:3, :3] / spacing - np.diag(np.sign(np.diag(matrix[:3, :3])))).max() > 0.05  # oblique
    assert spacing.max() / spacing.min() > 2  # anisotropic

    before = result_node_ids(scene)
    work = tmp_path / "work"
    work.mkdir()
    results = PredictionJob(assignment.assigned, tiny_bundle, device="cpu", work_dir=work).run(scene, timeout=300)
    assert_results(results, scene, reference)
    added = result_node_ids(scene) - before
    assert {n.GetID() for n in results.nodes()} <= added
    assert list(work.iterdir()) == []  # temporary inputs and outputs removed
    assert len(nodes) == 4 and input_volumes(scene) == nodes  # results are never offered as inputs

    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    assert show_head(results, "idh1", scene) == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == reference.GetID()
        assert composite.GetForegroundVolumeID() == results.heatmaps["idh1"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    display = results.segmentation.GetDisplayNode()
    assert display.GetSegmentVisibility("idh1") and not display.GetSegmentVisibility("mgmt")
    show_head(results, SURVIVAL_HEAD, scene, layer="labels")
    assert composites[0].GetLabelVolumeID() == results.labelmaps[SURVIVAL_HEAD].GetID()
    assert composites[0].GetForegroundVolumeID() is None
    with pytest.raises(KeyError, match="no map for 'nonsense'"):
        show_head(results, "nonsense", scene)


@pytest.fixture(scope="module")
def cli_output(tiny_bundle, phantom_cohort, tmp_path_factory):
    """One BraTS-style phantom case predicted by the CLI (the folder the module reads)."""
    from neuroradfm.cli import main

    folder = phantom_cohort.parent / "BraTS-PHN-00000-000"
    out = tmp_path_factory.mktemp("cli")
    assert main(["predict", str(folder), "--model", str(tiny_bundle), "--out", str(out), "--device", "cpu",
                 "--progress", "none", "--no-overview"]) == 0
    return out / "BraTS-PHN-00000-000", folder


def test_output_folder_to_nodes(scene, cli_output):
    out, folder = cli_output
    nodes = {n.GetName().rsplit("-", 1)[1]: n for n in load_case_nodes(scene, folder)}
    reference = nodes["t1c"]
    results = load_results(scene, out, reference, name="P0")
    assert_results(results, scene, reference)
    assert results.table.GetName() == "P0 NeuroRADFM results"
    assert results.table.GetAttribute("NeuroRADFM.model") == "tiny-test-bundle"


def test_a_broken_output_folder_adds_nothing_and_names_the_file(scene, cli_output, tmp_path):
    out, folder = cli_output
    reference = {n.GetName().rsplit("-", 1)[1]: n for n in load_case_nodes(scene, folder)}["t1c"]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "labels_tert.nrrd").unlink()
    before = result_node_ids(scene)
    with pytest.raises(SceneIOError, match="labels_tert.nrrd: could not be read"):
        load_results(scene, broken, reference)
    assert result_node_ids(scene) == before

    # a map on another grid than the reference volume is refused, not silently moved
    other = {n.GetName().rsplit("-", 1)[1]: n for n in load_case_nodes(scene, folder)}["t2w"]
    matrix = ijk_to_ras(other)
    matrix[0, 3] += 1.0
    from NeuroRADFMLib.scene_io import array_to_matrix

    other.SetIJKToRASMatrix(array_to_matrix(matrix))
    before = result_node_ids(scene)
    with pytest.raises(SceneIOError, match=r"heatmap_\w+\.nrrd: grid differs from the reference volume"):
        load_results(scene, out, other)
    assert result_node_ids(scene) == before
