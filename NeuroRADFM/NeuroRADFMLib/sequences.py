"""Which loaded volume is T1, T1ce, T2 or FLAIR: the core's rules (``neuroradfm.io.classify_series``), reused.

A volume loaded from DICOM keeps its instance UIDs in the node attribute ``DICOM.instanceUIDs``;
with Slicer's DICOM database at hand its SeriesDescription and ContrastBolusAgent are read and
tested first, then the node name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neuroradfm import SEQUENCES

SERIES_DESCRIPTION_TAG = "0008,103E"
PROTOCOL_NAME_TAG = "0018,1030"
CONTRAST_AGENT_TAG = "0018,0010"
RESULT_ATTRIBUTE = "NeuroRADFM.result"
"""Set on every node this extension creates, so that results are never offered as inputs."""


@dataclass
class SequenceAssignment:
    assigned: dict[str, Any] = field(default_factory=dict)
    """sequence -> the one volume node classified as it."""
    ambiguous: dict[str, list[Any]] = field(default_factory=dict)
    """sequence -> every node classified as it, when there is more than one (left for the user)."""

    def missing(self) -> list[str]:
        return [s for s in SEQUENCES if s not in self.assigned]


def _dicom_values(node, dicom_database) -> tuple[list[str], str]:
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or dicom_database is None:
        return [], ""
    texts = [dicom_database.instanceValue(uids[0], tag) or "" for tag in (SERIES_DESCRIPTION_TAG, PROTOCOL_NAME_TAG)]
    agent = dicom_database.instanceValue(uids[0], CONTRAST_AGENT_TAG) or ""
    return [t for t in texts if t.strip()], agent


def classify_node(node, dicom_database=None) -> str | None:
    """``t1``, ``t1ce``, ``t2``, ``flair`` or None, from DICOM SeriesDescription / ProtocolName, then the name."""
    from neuroradfm.io.sequence_names import classify_series  # neuroradfm.io needs the core's packages (pandas)

    texts, agent = _dicom_values(node, dicom_database)
    for text in [*texts, node.GetName() or ""]:
        found = classify_series(text, agent)
        if found is not None:
            return found
    return None


def input_volumes(scene) -> list:
    """Scalar volumes of the scene that can be inputs (no label maps, no results of this extension)."""
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(RESULT_ATTRIBUTE):
            continue
        nodes.append(node)
    return nodes


def assign_sequences(nodes, dicom_database=None) -> SequenceAssignment:
    """Assign each sequence the one node classified as it; two candidates for one sequence are left ambiguous."""
    candidates: dict[str, list] = {s: [] for s in SEQUENCES}
    for node in nodes:
        sequence = classify_node(node, dicom_database)
        if sequence is not None:
            candidates[sequence].append(node)
    result = SequenceAssignment()
    for sequence, found in candidates.items():
        if len(found) == 1:
            result.assigned[sequence] = found[0]
        elif len(found) > 1:
            result.ambiguous[sequence] = found
    return result
