"""The Teaching section's scene glue (NeuroRADFMLib.teaching) on a real vtkMRMLScene: a pack case in a 2x2 layout
with its answers hidden, revealed (the model's map over each sequence, the planted tumour's outlines) and hidden
again, removed without a trace; bad packs refused with read_pack's own message and the scene left as it was."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

import slicer  # noqa: E402

from neuroradfm.errors import InputError  # noqa: E402
from neuroradfm.teach.build import build_pack  # noqa: E402
from neuroradfm.teach.pack import PACK_FILE, PACK_VERSION, read_pack  # noqa: E402
from NeuroRADFMLib.results import HEAT_COLOR_NAME, load_results  # noqa: E402
from NeuroRADFMLib.scene_io import SceneIOError, ijk_to_ras, matrix_to_array, read_volume  # noqa: E402
from NeuroRADFMLib.teaching import LAYOUT, layout_views, load_exercise, rows_text, slice_composite  # noqa: E402

VIEW_NODE_CLASSES = {"vtkMRMLLayoutNode", "vtkMRMLViewNode", "vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode"}


@pytest.fixture(scope="module")
def pack_folder(tiny_bundle, tmp_path_factory) -> Path:
    """A one-case pack by the pack builder; seed 2's case keeps an enhancing rim (label 3) at 4 mm."""
    return build_pack(tmp_path_factory.mktemp("pack") / "pack", cases=1, seed=2, spacing_mm=4.0, model=tiny_bundle,
                      device="cpu")


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def shown(scene, views) -> list[tuple]:
    """(background name, foreground name, label name) of each view."""
    names = []
    for view in views:
        composite = slice_composite(scene, view)
        names.append(tuple(scene.GetNodeByID(i).GetName() if i else None for i in (
            composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID())))
    return names


def test_a_case_loads_in_2x2_with_its_answers_hidden_then_revealed_and_hidden_again(scene, pack_folder):
    exercise = load_exercise(scene, pack_folder, 1)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == LAYOUT == slicer.vtkMRMLLayoutNode.SlicerLayoutTwoOverTwoView
    assert exercise.views == ["Red", "Slice4", "Green", "Yellow"]
    sequences = ["Case 1 T1", "Case 1 T1ce", "Case 1 T2", "Case 1 FLAIR"]
    assert [node.GetName() for node in exercise.sequences.values()] == sequences
    assert exercise.reference.GetName() == "Case 1 T1ce"
    hidden = [(name, None, None) for name in sequences]
    assert shown(scene, exercise.views) == hidden
    assert all(slice_composite(scene, view).GetLinkedControl() for view in exercise.views)
    tumour_display = exercise.tumour.GetDisplayNode()
    assert not tumour_display.GetVisibility()
    assert not exercise.results.segmentation.GetDisplayNode().GetVisibility()
    assert exercise.revealed == set()
    assert {node.GetName() for node in exercise.nodes} >= {
        *sequences, "Case 1 NeuroRADFM results", "Case 1 planted tumour"}
    results = exercise.results
    markers = exercise.case.model["markers"]
    assert [key for key, _ in exercise.heads()] == results.heads == [*markers, "survival_risk"]
    assert all(label == markers[key]["label"] for key, label in exercise.heads()[:-1])  # no calls in the labels
    for node in [*results.heatmaps.values(), *results.labelmaps.values()]:  # on the reference grid, exactly
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(exercise.reference))

    rows = exercise.reveal("model", opacity=0.4)
    head = results.heads[0]
    assert shown(scene, exercise.views) == [(name, f"Case 1 heatmap {head}", None) for name in sequences]
    assert all(slice_composite(scene, v).GetForegroundOpacity() == pytest.approx(0.4) for v in exercise.views)
    assert not tumour_display.GetVisibility() and exercise.revealed == {"model"}
    assert [row.item for row in rows[:len(markers)]] == [m["label"] for m in markers.values()]
    assert rows[0].answer.startswith(markers[head]["call"])
    assert rows[len(markers)].item == "Overall survival" and rows[-1].item == "Out of distribution"

    other = results.heads[1]
    exercise.reveal("model", head=other)  # the head selector: the opacity stays
    assert shown(scene, exercise.views)[0] == (sequences[0], f"Case 1 heatmap {other}", None)
    assert slice_composite(scene, "Red").GetForegroundOpacity() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no map of 'nonsense'"):
        exercise.reveal("model", head="nonsense")

    truth = exercise.reveal("truth")
    assert tumour_display.GetVisibility() and tumour_display.GetVisibility2DOutline()
    assert not tumour_display.GetVisibility2DFill()
    assert exercise.revealed == {"model", "truth"}
    planted = exercise.case.truth
    assert [(r.item, r.answer) for r in truth[:4]] == [
        ("Hemisphere", planted["hemisphere"]), ("Lobe", planted["lobe"]),
        ("Enhancing", "yes" if planted["enhancing"] else "no"), ("Subtype", planted["subtype"])]
    by_label = {row.item: row for row in truth[4:]}
    assert len(by_label) == len(planted["markers"])
    for key, value in planted["markers"].items():
        row = by_label[markers[key]["label"]]
        assert row.model == markers[key]["call"] and row.agrees == markers[key]["agrees"]
        assert row.agrees == (markers[key]["positive"] == bool(value)) and row.why == planted["reasons"][key]
    text = rows_text(truth)
    assert "agrees" in text or "DISAGREES" in text

    exercise.hide()
    assert shown(scene, exercise.views) == hidden
    assert not tumour_display.GetVisibility() and exercise.revealed == set()


def test_the_planted_tumour_is_a_segmentation_on_the_label_maps_grid(scene, pack_folder):
    exercise = load_exercise(scene, pack_folder, 1)
    image = sitk.ReadImage(str(exercise.pack.path(exercise.case.tumour)))
    labels = sitk.GetArrayFromImage(image)
    segmentation = exercise.tumour.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
             for i in range(segmentation.GetNumberOfSegments())}
    wanted = {1: "necrotic core", 2: "edema", 3: "enhancing", 4: "cavity"}
    assert set(names) == {wanted[v] for v in np.unique(labels) if v}
    assert "enhancing" in names

    # every segment's labelmap lies on the label map's grid (the reference's), and holds its voxels exactly
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    file_matrix = np.eye(4)
    file_matrix[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    file_matrix[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin())
    rebuilt = np.zeros_like(labels)
    for segment_id in names.values():
        piece = exercise.tumour.GetBinaryLabelmapInternalRepresentation(segment_id)
        matrix = vtk.vtkMatrix4x4()
        piece.GetImageToWorldMatrix(matrix)
        np.testing.assert_array_equal(matrix_to_array(matrix), ijk_to_ras(exercise.reference))
        np.testing.assert_allclose(matrix_to_array(matrix), file_matrix, atol=1e-4)
        i0, i1, j0, j1, k0, k1 = piece.GetExtent()
        values = vtk_to_numpy(piece.GetPointData().GetScalars()).reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
        value = segmentation.GetSegment(segment_id).GetLabelValue()
        rebuilt[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1][values == value] = value
    np.testing.assert_array_equal(rebuilt, labels)

    # a voxel of label 3, found by its RAS point, is inside the enhancing segment
    k, j, i = np.argwhere(labels == 3)[0]
    ras = lps_to_ras @ np.asarray(image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
    piece = exercise.tumour.GetBinaryLabelmapInternalRepresentation(names["enhancing"])
    world_to_image = vtk.vtkMatrix4x4()
    piece.GetWorldToImageMatrix(world_to_image)
    ijk = np.rint(matrix_to_array(world_to_image) @ [*ras, 1.0])[:3].astype(int)
    assert tuple(ijk) == (i, j, k)
    enhancing = segmentation.GetSegment(names["enhancing"]).GetLabelValue()
    assert piece.GetScalarComponentAsDouble(*ijk, 0) == enhancing


def test_remove_takes_out_every_node_the_case_added_and_restores_the_views(scene, pack_folder):
    layout, views = layout_views(scene)  # the views the application made at start-up, showing a volume of its own
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    own = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "own volume")
    read_volume(pack_folder / read_pack(pack_folder).case(1).sequences["t1ce"], own)
    slice_composite(scene, "Red").SetBackgroundVolumeID(own.GetID())
    before = node_ids(scene)
    exercise = load_exercise(scene, pack_folder, 1)
    exercise.reveal("model")
    exercise.reveal("truth")
    # results of a prediction loaded after the case share the heat colour table the case created
    other = load_results(scene, pack_folder / exercise.case.results, own, name="other")
    heat = scene.GetFirstNodeByName(HEAT_COLOR_NAME)
    assert heat in exercise.nodes
    exercise.remove()
    left = node_ids(scene) - before - {node.GetID() for node in other.nodes()}
    left -= {other.heatmaps[k].GetDisplayNode().GetID() for k in other.heatmaps}
    left -= {other.labelmaps[k].GetDisplayNode().GetID() for k in other.labelmaps}
    left -= {other.segmentation.GetDisplayNode().GetID()}
    assert {scene.GetNodeByID(i).GetClassName() for i in left - {heat.GetID()}} <= VIEW_NODE_CLASSES
    assert heat.GetScene() is scene  # still used by the other results
    assert not any(node.GetScene() for node in exercise.nodes if node is not heat)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    assert shown(scene, ["Red"]) == [("own volume", None, None)]

    alone = load_exercise(scene, pack_folder, 1)  # without other results, the heat colour table goes too
    for node in other.nodes():
        scene.RemoveNode(node)
    added = list(alone.nodes)
    alone.remove()
    assert added and not any(node.GetScene() for node in added)


def test_a_case_that_fails_half_way_leaves_nothing_behind(scene, pack_folder, tmp_path):
    broken = Path(shutil.copytree(pack_folder, tmp_path / "pack"))
    case = read_pack(broken).case(1)
    broken.joinpath(case.tumour).write_bytes(b"not an image")  # read last, after the sequences and the results
    before = node_ids(scene)
    with pytest.raises(SceneIOError, match="could not be read"):
        load_exercise(scene, broken, 1)
    assert node_ids(scene) == before == set()


def _break(pack: Path, how: str) -> None:
    card = json.loads((pack / PACK_FILE).read_text(encoding="utf-8"))
    entry = card["cases"][0]
    if how == "missing":
        (pack / entry["sequences"]["t2"]).unlink()
        return
    if how == "damaged":
        (pack / PACK_FILE).write_text(json.dumps(card)[:-40], encoding="utf-8")
        return
    if how == "version":
        card["pack_version"] = PACK_VERSION + 1
    if how == "outside":
        shutil.copy(pack / entry["sequences"]["t1"], pack.parent / "outside.nii.gz")
        entry["sequences"]["t1"] = "../outside.nii.gz"
    (pack / PACK_FILE).write_text(json.dumps(card), encoding="utf-8")


@pytest.mark.parametrize(("how", "says"), [("missing", "the pack is incomplete"), ("version", "format version"),
                                           ("damaged", "is not valid JSON"), ("outside", "lies outside the pack")])
def test_a_bad_pack_is_refused_with_read_packs_message_and_the_scene_unchanged(scene, pack_folder, tmp_path, how,
                                                                               says):
    broken = Path(shutil.copytree(pack_folder, tmp_path / "pack"))
    _break(broken, how)
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a volume of the user's")
    before = node_ids(scene)
    with pytest.raises(InputError) as refused:
        load_exercise(scene, broken, 1)
    with pytest.raises(InputError) as direct:
        read_pack(broken)
    assert str(refused.value) == str(direct.value) and says in str(refused.value)
    assert node_ids(scene) == before


def test_an_unknown_case_number_names_the_cases_there_are(scene, pack_folder):
    with pytest.raises(InputError, match=r"has no case 7 \(it has 1\)"):
        load_exercise(scene, pack_folder, 7)
    assert node_ids(scene) == set()


def test_remove_after_the_scene_was_closed_touches_nothing_new(scene, pack_folder):
    exercise = load_exercise(scene, pack_folder, 1)
    scene.Clear(0)  # File > Close Scene
    assert not exercise.in_scene()
    new = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded after closing")
    exercise.remove()
    assert new.GetScene() is scene
