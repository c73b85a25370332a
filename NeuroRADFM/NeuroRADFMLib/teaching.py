"""A teaching-pack case (``neuroradfm teach``) in the scene: four sequences in a 2x2 layout, answers hidden until
revealed.

A student first reads the images alone, so the model's maps and table and the planted tumour are loaded but shown
nowhere: no slice view refers to them and the segmentations' display is off. ``reveal("model")`` puts a head's heat
map over each sequence and returns the model's calls; ``reveal("truth")`` outlines the planted tumour (necrotic core,
edema, enhancing, cavity) and returns the planted answers with where the model agrees. ``hide()`` covers them again
and ``remove()`` takes every node the case added out of the scene.

The pack is checked by the core's ``read_pack`` before the scene is touched; its message (an InputError) reaches the
caller unchanged. A case that fails half-way leaves nothing behind.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from neuroradfm import SEQUENCE_LABELS, SEQUENCES
from neuroradfm.markers import MARKER_KEYS, marker
from neuroradfm.teach.pack import Pack, PackCase, read_pack
from NeuroRADFMLib.results import HEATMAP_OPACITY, SURVIVAL_HEAD, CaseResults, load_results
from NeuroRADFMLib.scene_io import SceneIOError, adopt_geometry, read_volume

LAYOUT = slicer.vtkMRMLLayoutNode.SlicerLayoutTwoOverTwoView
"""Four axial slice views, 2x2 (Red, Slice4 over Green, Yellow): one per sequence, no 3D view."""
LAYOUT_VIEWS = ("Red", "Slice4", "Green", "Yellow")
"""The layout's slice views in reading order, when the layout node has no description of it (a bare scene)."""
TUMOUR_SEGMENTS = {1: ("necrotic core", (0.90, 0.80, 0.20)), 2: ("edema", (0.30, 0.80, 0.30)),
                   3: ("enhancing", (0.95, 0.25, 0.20)), 4: ("cavity", (0.30, 0.50, 1.00))}
"""BraTS labels of the planted tumour (neuroradfm.phantom.render): segment name and colour."""
REVEALS = ("model", "truth")


@dataclass(frozen=True)
class AnswerRow:
    """One line of a revealed answer: the item, its answer, and (for the truth) the model's call beside it."""

    item: str
    answer: str
    model: str = ""
    agrees: bool | None = None
    why: str = ""

    def text(self) -> str:
        parts = [f"{self.item}: {self.answer}"]
        if self.model:
            verdict = "" if self.agrees is None else (" - agrees" if self.agrees else " - DISAGREES")
            parts.append(f"model: {self.model}{verdict}")
        if self.why:
            parts.append(f"why: {self.why}")
        return "; ".join(parts)


def rows_text(rows: list[AnswerRow]) -> str:
    return "\n".join(row.text() for row in rows)


def case_label(case: PackCase) -> str:
    """What the case selector shows: number, grade, difficulty (nothing of the answers)."""
    return f"Case {case.number}: {case.difficulty}"


def _marker_label(key: str, model: dict[str, Any]) -> str:
    entry = (model.get("markers") or {}).get(key) or {}
    return str(entry.get("label") or (marker(key).label if key in MARKER_KEYS else key))


def _status(key: str, value: Any) -> str:
    if key in MARKER_KEYS:
        return marker(key).positive if value else marker(key).negative
    return "positive" if value else "negative"


def model_rows(case: PackCase) -> list[AnswerRow]:
    """The model's calls as the pack recorded them (its ``model`` entry), then survival and the OOD flag."""
    rows = [AnswerRow(str(m.get("label", key)), f"{m['call']} (probability {float(m['probability']):.2f})")
            for key, m in (case.model.get("markers") or {}).items()]
    survival = case.model.get("survival")
    if survival:
        rows.append(AnswerRow("Overall survival", f"{survival['risk_group']} risk "
                                                  f"(score {float(survival['risk_score']):+.2f})"))
    ood = case.model.get("ood")
    if ood:
        rows.append(AnswerRow("Out of distribution", "yes: do not trust the calls" if ood.get("flag") else "no"))
    return rows


def truth_rows(case: PackCase) -> list[AnswerRow]:
    """The planted answers (the pack's ``truth``), each marker with the model's call and whether it agrees."""
    truth = case.truth
    rows = [AnswerRow("Hemisphere", str(truth.get("hemisphere", ""))), AnswerRow("Lobe", str(truth.get("lobe", ""))),
            AnswerRow("Enhancing", "yes" if truth.get("enhancing") else "no"),
            AnswerRow("Subtype", str(truth.get("subtype", "")))]
    calls = case.model.get("markers") or {}
    reasons = truth.get("reasons") or {}
    for key, value in (truth.get("markers") or {}).items():
        called = calls.get(key) or {}
        agrees = called.get("agrees")
        rows.append(AnswerRow(_marker_label(key, case.model), _status(key, value), str(called.get("call", "")),
                              None if agrees is None else bool(agrees), str(reasons.get(key, ""))))
    return rows


def layout_views(scene) -> tuple[Any, list[str]]:
    """The layout node and the 2x2 layout's slice view names in reading order.

    In Slicer the layout node and its description exist; in a bare scene (the tests) a vtkMRMLLayoutLogic adds them
    as the application's layout manager does at start-up."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # "Axial" etc., as the application logic
        logic = slicer.vtkMRMLLayoutLogic()
        logic.SetMRMLScene(scene)
        layout = logic.GetLayoutNode()
    description = layout.GetLayoutDescription(LAYOUT) or ""
    views = [view.get("singletontag") for view in ElementTree.fromstring(description).iter("view")
             if view.get("class") == "vtkMRMLSliceNode"] if description else []
    return layout, views if len(views) == 4 else list(LAYOUT_VIEWS)


def slice_composite(scene, view: str) -> Any:
    """The composite node of slice view ``view`` (what it shows), found as Slicer's slice logic finds it; added the
    way the slice logic adds it where no view made one yet (a bare scene)."""
    slice_node = scene.GetSingletonNode(view, "vtkMRMLSliceNode")
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node) if slice_node is not None else None
    if composite is None:
        composite = scene.GetSingletonNode(view, "vtkMRMLSliceCompositeNode")
    if composite is None:
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)  # also its singleton tag
        composite = scene.AddNode(composite)
    return composite


def _read_tumour(scene, path: Path, reference, name: str):
    """The planted label map as a segmentation on the reference's grid, one named segment per label present."""
    label = slicer.vtkMRMLLabelMapVolumeNode()  # a carrier only: never added to the scene
    read_volume(path, label)
    adopt_geometry(label, reference, str(path))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, node):
        raise SceneIOError(f"{path}: could not be made into a segmentation")
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()
        segment_name, color = TUMOUR_SEGMENTS.get(value, (f"label {value}", (0.6, 0.6, 0.6)))
        segment.SetName(segment_name)
        segment.SetColor(*color)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetVisibility(False)
    display.SetVisibility2DFill(False)  # outlines: the images stay readable under the truth
    display.SetVisibility2DOutline(True)
    return node


@dataclass
class Exercise:
    """One pack case in the scene. ``nodes``: every node it added (removed by ``remove``)."""

    scene: Any
    pack: Pack
    case: PackCase
    sequences: dict[str, Any]
    reference: Any
    results: CaseResults
    tumour: Any
    nodes: list
    views: list[str] = field(default_factory=list)
    revealed: set[str] = field(default_factory=set)
    head: str = ""
    opacity: float = HEATMAP_OPACITY
    _previous: dict[str, Any] = field(default_factory=dict)

    def composites(self) -> list:
        return [slice_composite(self.scene, view) for view in self.views]

    def heads(self) -> list[tuple[str, str]]:
        """(key, label) of each map the model made; no calls in the labels: they are part of the answer."""
        return [(key, "Overall survival risk" if key == SURVIVAL_HEAD else _marker_label(key, self.case.model))
                for key in self.results.heads]

    def in_scene(self) -> bool:
        """False once the scene was closed or a node of the case was deleted by hand."""
        return all(node.GetScene() is self.scene for node in (*self.sequences.values(), self.tumour))

    def show_layout(self) -> None:
        """The 2x2 layout, one sequence per view (reading order T1, T1ce / T2, FLAIR), views linked; what the views
        showed before is kept for ``remove``."""
        layout, self.views = layout_views(self.scene)
        composites = self.composites()
        self._previous = {"arrangement": layout.GetViewArrangement(),
                          "views": [(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetLabelVolumeID(),
                                     c.GetForegroundOpacity(), c.GetLinkedControl()) for c in composites]}
        layout.SetViewArrangement(LAYOUT)
        shown = [self.sequences[key] for key in SEQUENCES if key in self.sequences]
        for index, composite in enumerate(composites):
            composite.SetBackgroundVolumeID(shown[index].GetID() if index < len(shown) else None)
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(1)  # scrolling one view scrolls all four

    def reveal(self, what: str, head: str | None = None, opacity: float | None = None) -> list[AnswerRow]:
        """``model``: head ``head``'s map over every view at ``opacity`` (default: the first head, 0.5) and the
        model's calls; ``truth``: the planted tumour's outlines and the planted answers beside the model's."""
        if what not in REVEALS:
            raise ValueError(f"reveal {what!r}: choose one of {', '.join(REVEALS)}")
        self.revealed.add(what)
        if what == "truth":
            self.tumour.GetDisplayNode().SetVisibility(True)
            return truth_rows(self.case)
        heads = self.results.heads
        if head is not None and head not in heads:
            raise ValueError(f"case {self.case.number} has no map of {head!r}; it has {', '.join(heads) or 'none'}")
        self.head = head or self.head or (heads[0] if heads else "")
        self.opacity = self.opacity if opacity is None else float(opacity)
        for composite in self.composites():
            if self.head in self.results.heatmaps:
                composite.SetForegroundVolumeID(self.results.heatmaps[self.head].GetID())
                composite.SetForegroundOpacity(self.opacity)
            elif self.head in self.results.labelmaps:  # a result written with --maps labels
                composite.SetLabelVolumeID(self.results.labelmaps[self.head].GetID())
                composite.SetLabelOpacity(self.opacity)
        return model_rows(self.case)

    def hide(self) -> None:
        """Cover the answers again (the sequences stay)."""
        for composite in self.composites():
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
        self.tumour.GetDisplayNode().SetVisibility(False)
        self.revealed.clear()

    def remove(self) -> None:
        """Every node the case added leaves the scene (a colour table that other results still use stays); the views
        show what they showed before."""
        remove_nodes(self.scene, self.nodes)
        if self._previous:
            layout, _ = layout_views(self.scene)
            for composite, (background, foreground, label, opacity, linked) in zip(self.composites(),
                                                                                   self._previous["views"]):
                composite.SetBackgroundVolumeID(background if self.scene.GetNodeByID(background or "") else None)
                composite.SetForegroundVolumeID(foreground if self.scene.GetNodeByID(foreground or "") else None)
                composite.SetLabelVolumeID(label if self.scene.GetNodeByID(label or "") else None)
                composite.SetForegroundOpacity(opacity)
                composite.SetLinkedControl(linked)
            layout.SetViewArrangement(self._previous["arrangement"])
        self.nodes = []


def _used_elsewhere(scene, node, ours: set[str]) -> bool:
    """A colour table some display node outside ``ours`` uses (the shared heat colour map of other results)."""
    if not node.IsA("vtkMRMLColorNode"):
        return False
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLDisplayNode")):
        display = scene.GetNthNodeByClass(index, "vtkMRMLDisplayNode")
        if display.GetID() not in ours and display.GetColorNodeID() == node.GetID():
            return True
    return False


def remove_nodes(scene, nodes: list) -> None:
    """Remove ``nodes`` that are still in ``scene`` (node objects, not IDs: a closed scene may give their IDs to
    new nodes), last added first."""
    present = [node for node in nodes if node.GetScene() is scene]
    ours = {node.GetID() for node in present}
    for node in reversed(present):
        if node.GetScene() is scene and not _used_elsewhere(scene, node, ours):
            scene.RemoveNode(node)


def _added(scene, before: set[str]) -> list:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).GetID() not in before]


def open_pack(folder: str | Path) -> Pack:
    """The pack in ``folder``, checked (neuroradfm.teach.pack.read_pack: its InputError says what to do)."""
    return read_pack(folder)


def load_exercise(scene, pack: Pack | str | Path, number: int) -> Exercise:
    """Case ``number`` of the pack (a Pack or its folder) into ``scene``: the sequences as volumes named
    "Case <n> <sequence>", the model's results (NeuroRADFMLib.results) and the planted tumour on the reference grid
    (T1ce, or the first of T1, FLAIR, T2: where ``predict`` put the maps), all answers hidden, the sequences in a
    2x2 layout. Raises the pack's InputError or a SceneIOError; then the scene is as it was."""
    from neuroradfm.io.case import reference_key

    pack = pack if isinstance(pack, Pack) else read_pack(pack)
    case = pack.case(int(number))
    name = f"Case {case.number}"
    before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    try:
        sequences = {}
        for key in (s for s in SEQUENCES if s in case.sequences):
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                           scene.GenerateUniqueName(f"{name} {SEQUENCE_LABELS[key]}"))
            read_volume(pack.path(case.sequences[key]), node)
            node.CreateDefaultDisplayNodes()
            sequences[key] = node
        reference = sequences[reference_key(list(sequences))]
        results = load_results(scene, pack.path(case.results), reference, name=name)
        if results.segmentation is not None:  # the model's contours: not part of the exercise's display
            results.segmentation.GetDisplayNode().SetVisibility(False)
        tumour = _read_tumour(scene, pack.path(case.tumour), reference, f"{name} planted tumour")
    except Exception:
        remove_nodes(scene, _added(scene, before))
        raise
    added = _added(scene, before)
    exercise = Exercise(scene, pack, case, sequences, reference, results, tumour, added)
    try:
        exercise.show_layout()  # last: the views are the application's nodes, not the exercise's
    except Exception:
        remove_nodes(scene, added)
        raise
    return exercise
