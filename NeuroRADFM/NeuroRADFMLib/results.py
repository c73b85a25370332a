"""A core output folder (``neuroradfm predict``) -> nodes in the scene, all on the reference volume's grid.

- a table node: marker, label, probability, threshold, call, OOD distance and flag; the survival row with
  risk score and group (risk threshold = the training median); on every row the sequences the case had, the
  marker's held-out AUC for that subset and the bundle card's reliability note
- per head (each marker and ``survival_risk``): a heatmap scalar volume with a heat color map and a
  quantised label map with the color table read from ``heatmap_levels.ctbl``
- a segmentation node from ``contours.seg.nrrd`` (one segment per head)

A heat map file holds 8-bit levels with the scale in its header (neuroradfm.map_files); its node holds the
fractions 0..1 of the map's peak, as the file meant them, so the display and the Data Probe read as before.
A result written with ``--maps labels`` (no heat maps) or ``--maps none`` (no maps) loads what it has:
predictions.json says which maps were written, and only those must be there.
Every volume is read through a storage node, checked against the reference grid and then given the
reference's exact IJK-to-RAS matrix. When anything fails, the nodes added so far are removed again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import vtk

from neuroradfm import subsets
from neuroradfm.map_files import fraction_per_level
from NeuroRADFMLib.scene_io import SceneIOError, adopt_geometry, matrix_to_array, read_volume
from NeuroRADFMLib.sequences import RESULT_ATTRIBUTE

SURVIVAL_HEAD = "survival_risk"
COLOR_TABLE_FILE = "heatmap_levels.ctbl"
SEGMENTATION_FILE = "contours.seg.nrrd"
PREDICTIONS_FILE = "predictions.json"
HEAT_COLOR_NAME = "NeuroRADFM heat"
TABLE_COLUMNS = ("Output", "Label", "Probability", "Threshold", "Call", "Risk score", "Risk group",
                 "OOD distance", "OOD flag", "Sequences", "Subset AUC", "Reliability")
NUMERIC_COLUMNS = {"Probability", "Threshold", "Risk score", "OOD distance", "Subset AUC"}
HEATMAP_OPACITY = 0.5


@dataclass
class CaseResults:
    case_id: str
    reference: Any
    table: Any
    heatmaps: dict[str, Any] = field(default_factory=dict)
    labelmaps: dict[str, Any] = field(default_factory=dict)
    level_colors: Any = None
    segmentation: Any = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        """The outputs that have a map to show (heat map or label map), in the table's order."""
        return [*self.heatmaps, *(key for key in self.labelmaps if key not in self.heatmaps)]

    def nodes(self) -> list:
        return [node for node in (self.table, *self.heatmaps.values(), *self.labelmaps.values(), self.level_colors,
                                  self.segmentation) if node is not None]

    @property
    def reliability_note(self) -> str:
        """The card's note on the sequences this case had ("" for results written before subsets existed)."""
        return str(((self.summary.get("sequences") or {}).get("reliability") or {}).get("note", ""))

    def head_label(self, key: str) -> str:
        for marker in self.summary.get("markers", []):
            if marker["key"] == key:
                return f"{marker['label']}: {marker['call']} ({marker['probability']:.2f})"
        survival = self.summary.get("survival")
        if key == SURVIVAL_HEAD and survival:
            return f"Overall survival: {survival['risk_group']} risk ({survival['risk_score']:+.2f})"
        return key


def _new(scene, class_name: str, name: str, added: list):
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetAttribute(RESULT_ATTRIBUTE, "1")
    added.append(node)
    return node


def _number(value) -> float:
    return math.nan if value is None or value == "" else float(value)


def sequences_text(sequences: dict[str, Any]) -> str:
    """A predictions.json ``sequences`` record as "T1ce + FLAIR (no T1, T2)"; "" when there is none (results
    written before subsets existed)."""
    return subsets.describe(sequences["used"]) if sequences.get("used") else ""


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The results table as rows (one per marker, then survival), from a predictions.json summary; every row
    says which sequences the calls rest on, since a cohort table mixes cases with different subsets."""
    ood = summary.get("ood") or {}
    sequences = summary.get("sequences") or {}
    shared = {"OOD distance": _number(ood.get("distance")), "OOD flag": "yes" if ood.get("flag") else "no",
              "Sequences": sequences_text(sequences),
              "Reliability": str((sequences.get("reliability") or {}).get("note", ""))}
    rows = []
    for m in summary.get("markers", []):
        rows.append({"Output": m["key"], "Label": m["label"], "Probability": m["probability"],
                     "Threshold": m["threshold"], "Call": m["call"], "Risk score": math.nan, "Risk group": "",
                     "Subset AUC": _number(m.get("subset_auc")), **shared})
    survival = summary.get("survival")
    if survival:
        rows.append({"Output": SURVIVAL_HEAD, "Label": "Overall survival (Cox)", "Probability": math.nan,
                     "Threshold": survival["median_risk"], "Call": f"{survival['risk_group']} risk",
                     "Risk score": survival["risk_score"], "Risk group": survival["risk_group"], **shared})
    return rows


def fill_table(table, rows: list[dict[str, Any]], columns: tuple[str, ...] = TABLE_COLUMNS,
               numeric: set[str] = NUMERIC_COLUMNS) -> None:
    """Replace a table node's content with ``rows`` (numeric columns as doubles, the others as text)."""
    vtk_table = table.GetTable()
    was_modifying = table.StartModify()
    vtk_table.Initialize()
    for name in columns:
        array = vtk.vtkDoubleArray() if name in numeric else vtk.vtkStringArray()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            value = row.get(name, math.nan if name in numeric else "")
            array.SetValue(index, float(value) if name in numeric else str(value))
        vtk_table.AddColumn(array)
    table.Modified()
    table.EndModify(was_modifying)


def heat_color_node(scene, added: list | None = None):
    """One shared heat color table (black -> red -> yellow -> white, transparent at 0), created on first use."""
    found = scene.GetFirstNodeByName(HEAT_COLOR_NAME)
    if found is not None and found.IsA("vtkMRMLColorTableNode"):
        return found
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEAT_COLOR_NAME)
    if added is not None:
        added.append(node)
    node.SetTypeToUser()
    node.SetAttribute(RESULT_ATTRIBUTE, "1")
    count = 256
    node.SetNumberOfColors(count)
    for i in range(count):
        t = i / (count - 1)
        r, g, b = min(1.0, 3 * t), min(1.0, max(0.0, 3 * t - 1)), min(1.0, max(0.0, 3 * t - 2))
        node.SetColor(i, f"{t:.3f}", r, g, b, 0.0 if i == 0 else 1.0)
    return node


def _display(scene, node, class_name: str, color_node, added: list):
    display = scene.AddNewNodeByClass(class_name)
    added.append(display)
    display.SetAndObserveColorNodeID(color_node.GetID())
    node.SetAndObserveDisplayNodeID(display.GetID())
    return display


def _read_level_colors(scene, path: Path, name: str, added: list):
    node = _new(scene, "vtkMRMLColorTableNode", name, added)
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(str(path))
    if not path.is_file() or not storage.ReadData(node) or node.GetNumberOfColors() == 0:
        raise SceneIOError(f"{path}: could not be read as a color table")
    node.SetName(scene.GenerateUniqueName(name))  # reading sets the name from the file
    return node


def _read_segmentation(scene, path: Path, reference, name: str, added: list):
    node = _new(scene, "vtkMRMLSegmentationNode", name, added)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not path.is_file() or not storage.ReadData(node):
        raise SceneIOError(f"{path}: could not be read as a segmentation")
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    node.CreateDefaultDisplayNodes()
    added.append(node.GetDisplayNode())
    return node


def _as_fractions(node, path: Path) -> None:
    """A heat map read as 8-bit levels -> float fractions 0..1 of its peak (the header's scale); a float map written
    before 8-bit maps (no scale in its header) stays as it is."""
    try:
        scale = fraction_per_level(path)
    except Exception as error:  # noqa: BLE001 - pynrrd's errors name no file: say which one
        raise SceneIOError(f"{path}: its header could not be read ({error})") from error
    if scale is None:
        return
    shift_scale = vtk.vtkImageShiftScale()
    shift_scale.SetInputData(node.GetImageData())
    shift_scale.SetScale(scale)
    shift_scale.SetOutputScalarTypeToFloat()
    shift_scale.Update()
    node.SetAndObserveImageData(shift_scale.GetOutput())


def written_maps(summary: dict[str, Any]) -> str:
    """Which maps a result holds (``--maps``: all, labels or none); all for results written before the option."""
    return str((summary.get("maps") or {}).get("written", "all"))


def load_results(scene, folder: str | Path, reference, name: str | None = None) -> CaseResults:
    """Add one case's outputs to ``scene`` on ``reference``'s exact grid; on any error nothing stays added.
    The maps predictions.json says were written must all be there; a result without (some) maps loads the rest."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / PREDICTIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SceneIOError(f"{folder / PREDICTIONS_FILE}: {error}") from error
    case_id = str(summary.get("case_id", folder.name))
    name = name or case_id
    heads = [m["key"] for m in summary.get("markers", [])] + ([SURVIVAL_HEAD] if summary.get("survival") else [])
    added: list = []
    try:
        table = _new(scene, "vtkMRMLTableNode", f"{name} NeuroRADFM results", added)
        fill_table(table, table_rows(summary))
        model = summary.get("model") or {}
        table.SetAttribute("NeuroRADFM.model", str(model.get("name", "")))
        table.SetAttribute("NeuroRADFM.intendedUse", str(model.get("intended_use", "")))
        sequences = summary.get("sequences") or {}
        table.SetAttribute("NeuroRADFM.sequences", "+".join(sequences.get("used", [])))
        table.SetAttribute("NeuroRADFM.reliability", str((sequences.get("reliability") or {}).get("note", "")))
        results = CaseResults(case_id, reference, table, summary=summary)
        maps = written_maps(summary)
        if maps == "none":
            return results
        results.level_colors = _read_level_colors(scene, folder / COLOR_TABLE_FILE, f"{name} heatmap levels", added)
        heat = heat_color_node(scene, added) if maps == "all" else None
        for key in heads:
            if heat is not None:
                path = folder / f"heatmap_{key}.nrrd"
                node = _new(scene, "vtkMRMLScalarVolumeNode", f"{name} heatmap {key}", added)
                read_volume(path, node)
                adopt_geometry(node, reference, str(path))
                _as_fractions(node, path)
                display = _display(scene, node, "vtkMRMLScalarVolumeDisplayNode", heat, added)
                display.AutoWindowLevelOff()
                display.SetWindowLevelMinMax(0.0, 1.0)
                results.heatmaps[key] = node

            path = folder / f"labels_{key}.nrrd"
            label = _new(scene, "vtkMRMLLabelMapVolumeNode", f"{name} levels {key}", added)
            read_volume(path, label)
            adopt_geometry(label, reference, str(path))
            _display(scene, label, "vtkMRMLLabelMapVolumeDisplayNode", results.level_colors, added)
            results.labelmaps[key] = label
        results.segmentation = _read_segmentation(scene, folder / SEGMENTATION_FILE, reference,
                                                  f"{name} contours", added)
        return results
    except Exception:
        for node in reversed(added):
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)
        raise


def segmentation_geometry(segmentation, segment_id: str):
    """(IJK-to-RAS as array, extent) of a segment's binary labelmap."""
    image = segmentation.GetBinaryLabelmapInternalRepresentation(segment_id)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix_to_array(matrix), tuple(image.GetExtent())


def show_head(results: CaseResults, key: str, scene=None, layer: str = "heatmap",
              opacity: float = HEATMAP_OPACITY) -> int:
    """Overlay head ``key``'s map on the reference volume in every slice view; returns the views updated.

    ``layer``: ``heatmap`` (continuous map as foreground) or ``labels`` (quantised levels as label layer; also
    what a result without heat maps shows). Only the head's contour segment stays visible.
    """
    if key not in results.heatmaps and key not in results.labelmaps:
        raise KeyError(f"no map for {key!r}; the results have {', '.join(results.heads) or 'no maps'}")
    if key not in results.heatmaps:
        layer = "labels"
    scene = scene or results.reference.GetScene()
    updated = 0
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(results.reference.GetID())
        if layer == "labels":
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(results.labelmaps[key].GetID())
            composite.SetLabelOpacity(opacity)
        else:
            composite.SetForegroundVolumeID(results.heatmaps[key].GetID())
            composite.SetForegroundOpacity(opacity)
            composite.SetLabelVolumeID(None)
        updated += 1
    segmentation = results.segmentation
    display = segmentation.GetDisplayNode() if segmentation is not None else None
    if display is not None:
        content = segmentation.GetSegmentation()
        for index in range(content.GetNumberOfSegments()):
            segment_id = content.GetNthSegmentID(index)
            display.SetSegmentVisibility(segment_id, segment_id == key)
    return updated
