"""Auto-fill of the four inputs from volume node names and DICOM SeriesDescription (the core's rules)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

import slicer  # noqa: E402
import slicer.util  # noqa: E402

from NeuroRADFMLib.sequences import (  # noqa: E402
    CONTRAST_AGENT_TAG,
    RESULT_ATTRIBUTE,
    SERIES_DESCRIPTION_TAG,
    assign_sequences,
    classify_node,
    input_volumes,
)


class DicomDatabase:
    """The two calls of ctkDICOMDatabase the module uses, over a dict {uid: {tag: value}}."""

    def __init__(self, instances: dict[str, dict[str, str]]) -> None:
        self.instances = instances

    def instanceValue(self, uid: str, tag: str) -> str:  # noqa: N802 (ctkDICOMDatabase's name)
        return self.instances.get(uid, {}).get(tag, "")


def volume(scene, name: str, uid: str | None = None, label: bool = False):
    node = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), np.int16), np.eye(4), name,
                                          "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode")
    if uid:
        node.SetAttribute("DICOM.instanceUIDs", f"{uid} {uid}.2")
    return node


def test_node_names_follow_the_core_rules(scene):
    named = {"3: AX T1 SE": "t1", "7: AX T1 SE POST GAD": "t1ce", "5: AX T2 TSE": "t2",
             "6: AX T2 FLAIR": "flair", "sT1W_3D_TFE +C": "t1ce", "BraTS-GLI-00002-000-t2f": "flair",
             "4: DWI b1000": None, "2: 3-plane localizer": None, "9: T2* GRE": None}
    for name, expected in named.items():
        assert classify_node(volume(scene, name)) == expected, name


def test_assignment_from_dicom_series_description_and_contrast_agent(scene):
    database = DicomDatabase({
        "1.1": {SERIES_DESCRIPTION_TAG: "t1_mprage_sag"},
        "1.2": {SERIES_DESCRIPTION_TAG: "t1_mprage_sag", CONTRAST_AGENT_TAG: "Gadovist"},
        "1.3": {SERIES_DESCRIPTION_TAG: "t2_tse_tra"},
        "1.4": {SERIES_DESCRIPTION_TAG: "t2_tirm_tra_dark-fluid"},
    })
    nodes = {uid: volume(scene, f"Series {uid}", uid) for uid in database.instances}
    volume(scene, "AX FLAIR tumour mask", label=True)  # label maps are never inputs
    result_volume = volume(scene, "heatmap t1 post")
    result_volume.SetAttribute(RESULT_ATTRIBUTE, "1")  # neither are this extension's results
    candidates = input_volumes(scene)
    assert candidates == list(nodes.values())
    assert assign_sequences(candidates).missing() == ["t1", "t1ce", "t2", "flair"]  # names alone say nothing
    assignment = assign_sequences(candidates, database)
    assert assignment.assigned == {"t1": nodes["1.1"], "t1ce": nodes["1.2"], "t2": nodes["1.3"],
                                   "flair": nodes["1.4"]}


def test_two_candidates_are_left_to_the_user(scene):
    first, second = volume(scene, "AX T2"), volume(scene, "COR T2 TSE")
    flair = volume(scene, "FLAIR")
    assignment = assign_sequences(input_volumes(scene))
    assert assignment.ambiguous == {"t2": [first, second]}
    assert assignment.assigned == {"flair": flair}
    assert assignment.missing() == ["t1", "t1ce", "t2"]
