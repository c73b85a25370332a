"""Which of T1 / T1ce / T2 / FLAIR a series is, from its name.

One rule set for DICOM SeriesDescription / ProtocolName, file names and Slicer node names.
Order matters: non-structural series are skipped first, FLAIR is tested before T2 (FLAIR
names contain "T2"), and T1ce needs a T1 token plus a contrast token (or a DICOM
ContrastBolusAgent). Rules follow radifox and nimb (see docs/DATASETS.md section 5).
"""

from __future__ import annotations

import re

# Series that are never one of the four structural inputs (localizers, calibrations, diffusion,
# perfusion, susceptibility, angiography, maps, subtractions, reformats, STIR, proton density).
_SKIP = re.compile(
    r"\b(loc|localizer|localiser|scout|survey|3pl|3 pl|3 plane|scanogram|smartbrain|cal|calibration|ref|"
    r"adc|dwi|dw|diff|diffusion|dti|b0|b1000|trace|tracew|perf|perfusion|dsc|dce|dyn|dynamic|"
    r"swi|swan|medic|merge|hemo|t2 ?star|t2star|tof|mra|angio|mip|minip|sub|subtraction|subtract|"
    r"seg|segmentation|mask|label|labels|map|mapping|asl|cbf|cbv|fa|md|bold|fmri|mrs|spectro|"
    r"stir|pd|pdw|proton density|reformat|projection)\b"
    r"|\bmpr (tra|cor|sag|ax|axial|coronal|sagittal)$|^mpr\b")
# A whole name that is a dataset's sequence label (BraTS 2021/2023, Kaggle BIDS-style, UPENN, LUMIERE).
_EXACT = {
    "t1n": "t1", "t1": "t1", "t1w": "t1", "t1c": "t1ce", "t1ce": "t1ce", "t1gd": "t1ce", "t1wce": "t1ce",
    "ct1": "t1ce", "t2": "t2", "t2w": "t2", "t2f": "flair", "flair": "flair", "t2flair": "flair",
}
_FLAIR = re.compile(r"(flair|\bt2f\b|\btirm\b|dark ?fluid|\bda fl\b|\bdafl\b)")
# Philips prefixes SENSE scans with "s" (sT1W_3D_TFE); GE calls its 3D T1 BRAVO / (F)SPGR.
_T1 = re.compile(r"(\bs?t1[a-z]*\b|mprage|mp rage|\bspgr\b|\bfspgr\b|\bbravo\b|\btfl\b|\bvibe\b|\bct1\b)")
_T2 = re.compile(r"\bs?t2[a-z]*\b")
_T2_GRADIENT_ECHO = re.compile(r"\b(gre|ffe|fl2d|fl3d|fe)\b")  # "T2 GRE" / "T2_FFE" are T2*-weighted
_CONTRAST = re.compile(
    r"(\bpost\b|\bpostcontrast\b|\bpostgad\b|\bpstc\b|\bgad\b|\bgado\b|\bgadolinium\b|\bgd\b|\+ ?c\b|\bc ?\+|"
    r"\+ ?gd\b|\bcontrast\b|\bce\b|\bkm\b|\bt1c\b|\bt1ce\b|\bt1gd\b|\bt1wce\b|\bct1\b|\benhanced\b)")
_PRE = re.compile(r"(\bpre\b|\bprecontrast\b|\bnativ\b|\bnative\b|\bw ?o\b|\bwithout\b|\bnon ?contrast\b|"
                  r"\bno contrast\b|\bplain\b)")
_NO_AGENT = {"", "none", "no", "n/a", "na", "0", "nil"}


def _normalise(text: str) -> str:
    text = text.strip().lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    text = re.sub(r"\b(sub|ses)-[a-z0-9]+[_-]?", " ", text)  # BIDS subject / session entities
    return re.sub(r"[\s_\-./()\[\],:;]+", " ", text).strip()


def has_contrast_agent(contrast_agent: str) -> bool:
    """A DICOM ContrastBolusAgent that names an agent (some sites write "NONE" or "No")."""
    return contrast_agent.strip().lower() not in _NO_AGENT


def names_a_non_input(description: str) -> bool:
    """True for names of series that are never an input (localizer, DWI/ADC, perfusion, SWI, reformat...)."""
    text = _normalise(description)
    return "t2*" in text or bool(_SKIP.search(text))


def classify_series(description: str, contrast_agent: str = "") -> str | None:
    """``t1``, ``t1ce``, ``t2``, ``flair`` or None (not a structural input, or unknown).

    ``description`` may be a DICOM SeriesDescription / ProtocolName, a file name or a volume
    node name; ``contrast_agent`` is DICOM ContrastBolusAgent (0018,0010), empty when unknown.
    """
    text = _normalise(description)
    if not text or names_a_non_input(text):
        return None
    *rest, last = text.split()
    contrast = has_contrast_agent(contrast_agent) or bool(_CONTRAST.search(text))
    if _PRE.search(text):
        contrast = False
    if last in _EXACT and not any(t in _EXACT or _FLAIR.search(t) or _CONTRAST.search(t) for t in rest):
        found = _EXACT[last]  # dataset naming such as "BraTS-GLI-00000-000-t1c" or "UPENN-GBM-00001_11_T1GD"
        return "t1ce" if found == "t1" and has_contrast_agent(contrast_agent) else found
    if _FLAIR.search(text):
        return ("t1ce" if contrast else "t1") if _T1.search(text) else "flair"  # T1-FLAIR is T1-weighted
    if _T1.search(text):
        return "t1ce" if contrast else "t1"
    if _T2.search(text):
        return None if _T2_GRADIENT_ECHO.search(text) else "t2"
    return None
