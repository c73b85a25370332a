"""Which of T1 / T1ce / T2 / FLAIR a series is, from its name.

One rule set for DICOM SeriesDescription / ProtocolName, file names and Slicer node names.
Order matters: FLAIR is tested before T2 (FLAIR names contain "T2"), and T1ce needs a T1 token
plus a contrast token (or a DICOM ContrastBolusAgent).
"""

from __future__ import annotations

import re

# Series that are never one of the four structural inputs.
_SKIP = re.compile(
    r"\b(loc|localizer|localiser|scout|survey|3pl|3 pl|cal|calibration|ref|adc|dwi|diff|diffusion|dti|b0|b1000|"
    r"trace|perf|perfusion|dsc|dce|dyn|dynamic|swi|swan|t2 ?star|tof|mra|angio|mip|mpr|sub|subtraction|"
    r"seg|mask|label|labels|map|asl|cbf|cbv|fa|md|bold|fmri|mrs|spectro)\b")
_EXACT = {  # dataset naming conventions (BraTS 2021/2023, Kaggle BIDS-style, UPENN, LUMIERE)
    "t1n": "t1", "t1": "t1", "t1w": "t1", "t1c": "t1ce", "t1ce": "t1ce", "t1gd": "t1ce", "t1wce": "t1ce",
    "ct1": "t1ce", "t2": "t2", "t2w": "t2", "t2f": "flair", "flair": "flair", "t2flair": "flair",
}
_FLAIR = re.compile(r"(flair|\bt2f\b|\btirm\b|dark ?fluid)")
_T1 = re.compile(r"(\bt1[a-z]*\b|mprage|mp rage|\bspgr\b|\bbravo\b|\btfl\b|\bvibe\b|\bfspgr\b|\bct1\b)")
_T2 = re.compile(r"(\bt2[a-z]*\b)")
_CONTRAST = re.compile(r"(\bpost\b|\bgad\b|\bgado\b|\bgd\b|\+ ?c\b|\bc ?\+|\bcontrast\b|\bce\b|\bkm\b|\bt1c\b|"
                       r"\bt1ce\b|\bt1gd\b|\bt1wce\b|\bct1\b|enhanced|\+gd)")
_PRE = re.compile(r"\b(pre|precontrast|nativ|native)\b")


def _normalise(text: str) -> str:
    text = text.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return re.sub(r"[_\-./()\[\],:;]+", " ", text).strip()


def classify_series(description: str, contrast_agent: str = "") -> str | None:
    """``t1``, ``t1ce``, ``t2``, ``flair`` or None (not a structural input, or unknown)."""
    text = _normalise(description)
    if not text:
        return None
    *rest, last = text.split()
    if last in _EXACT and not any(t in _EXACT or _FLAIR.search(t) for t in rest):
        return _EXACT[last]  # dataset naming such as "BraTS-GLI-00000-000-t1c" or "UPENN-GBM-00001_11_T1GD"
    if "t2*" in text or _SKIP.search(text):
        return None
    contrast = bool(contrast_agent.strip()) or bool(_CONTRAST.search(text))
    if _PRE.search(text):
        contrast = False
    if _FLAIR.search(text):
        return ("t1ce" if contrast else "t1") if _T1.search(text) else "flair"
    if _T1.search(text):
        return "t1ce" if contrast else "t1"
    if _T2.search(text):
        return "t2"
    return None
