"""A teaching case's answers: the planted truth (from the phantom's own records) and the model's calls beside it.

The truth comes from what the generator planted, never from reading the images: ``clinical.csv`` (markers, subtype,
every trait, the tumour's volumes), ``phantom.json`` (the side of the brain, judged in template space). Why each
marker shows is the trait it moves (docs/PHANTOM.md, *Biology*), quoted with this case's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from neuroradfm.map_files import read_heatmap
from neuroradfm.markers import MARKER_KEYS, marker
from neuroradfm.outputs import HOT_LEVEL

ENHANCING_GAIN = 0.4
"""A rim gain (trait ``enhancement``) from which the T1ce enhancement is plain to see: glioblastomas (0.7+) and
Ki-67-high IDH-mutant tumours (0.4) lie above it, the others (0.1) below."""
ON_TUMOUR = 0.5
"""A map "points at the tumour" when at least this share of its hot region (>= HOT_LEVEL of its peak) lies in it."""

_TRAITS: dict[str, tuple[str, str]] = {
    "idh1": ("region", "location: IDH-mutant tumours sit in frontal white matter, wild-type ones temporo-parietal; "
                       "wild-type (glioblastoma) also means necrosis and strong enhancement"),
    "codel_1p19q": ("calcifications", "dark calcification spots (8 when codeleted)"),
    "mgmt": ("edema_mm", "edema reach, 4 mm shorter when methylated"),
    "egfr": ("edema_mm", "edema reach, 9 mm longer when amplified (and a core 3 mm larger)"),
    "atrx": ("flair_mismatch", "FLAIR/T2 ratio of the solid tumour, halved when ATRX is lost (T2-FLAIR mismatch)"),
    "tp53": ("necrosis_offset", "eccentric necrosis, 0.35 x the radius off-centre when mutant"),
    "cdkn2ab": ("lobulation", "an irregular, lobulated margin (and more necrosis) when deleted"),
    "tert": ("t1_core", "T1 signal of the solid tumour, darker (0.35 against 0.55) when mutant"),
    "ki67_high": ("rim_mm", "a thicker enhancing rim (5 against 2.5 mm) and stronger enhancement when high"),
    "tp53_expr_high": ("texture", "fine texture inside the tumour, stronger when expression is high"),
}


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def truth(row: Mapping[str, str], draws: Mapping[str, Any]) -> dict[str, Any]:
    """The planted answers of one phantom case (``row``: its clinical.csv row; ``draws``: its phantom.json entry)."""
    side = draws.get("mass_effect", {}).get("side")
    if side is None:  # the one-template anatomy records no draws: LPS x > 0 is the patient's left
        side = "left" if _number(row.get("tumour_x")) > 0 else "right"
    region = row.get("trait_region", "")
    enhancement = _number(row.get("trait_enhancement"))
    markers = {key: int(float(row[key])) for key in MARKER_KEYS if row.get(key) not in (None, "")}
    reasons = {}
    for key in markers:
        trait, why = _TRAITS[key]
        value = row.get(f"trait_{trait}", "")
        shown = value.replace("temporoparietal", "temporo-parietal") if trait == "region" else f"{_number(value):.2f}"
        reasons[key] = f"{why}; here {trait.replace('_', ' ')} = {shown}"
    return {
        "hemisphere": side,
        "lobe": "frontal" if region == "frontal" else "temporo-parietal",
        "enhancing": bool(enhancement >= ENHANCING_GAIN),
        "enhancement": round(enhancement, 2),
        "necrotic": bool(_number(row.get("trait_necrosis")) >= 0.2),
        "subtype": row.get("subtype", ""),
        "markers": markers,
        "reasons": reasons,
        "volumes_ml": {name: _number(row.get(f"{name}_ml")) for name in ("necrotic_core", "edema", "enhancing")},
        "traits": {key[len("trait_"):]: value for key, value in row.items() if key.startswith("trait_")},
        "age": row.get("age", ""),
        "os_days": row.get("os_days", ""),
        "os_event": row.get("os_event", ""),
    }


def map_on_tumour(heatmap: sitk.Image, tumour: sitk.Image) -> float | None:
    """Share of the map's hot region (>= HOT_LEVEL of its peak) inside the planted tumour (any label); None for an
    empty map. Both on the reference grid (predict writes maps there; the phantom's label map is on it)."""
    heat = sitk.GetArrayViewFromImage(heatmap)
    hot = heat >= HOT_LEVEL * float(heat.max()) if heat.max() > 0 else None
    if hot is None or not hot.any():
        return None
    inside = sitk.GetArrayViewFromImage(tumour) > 0
    if inside.shape != hot.shape:
        raise ValueError(f"heat map grid {hot.shape[::-1]} is not the tumour's {inside.shape[::-1]}")
    return float(np.count_nonzero(hot & inside) / np.count_nonzero(hot))


def model_answers(predictions: Mapping[str, Any], results: Path, tumour: sitk.Image,
                  planted: Mapping[str, int]) -> dict[str, Any]:
    """The model's calls (predictions.json), whether each agrees with the planted status, and whether each written
    heat map points at the tumour."""
    rows = {}
    for entry in predictions.get("markers", []):
        key = entry["key"]
        row = {"label": entry.get("label", marker(key).label if key in MARKER_KEYS else key),
               "probability": float(entry["probability"]), "threshold": float(entry["threshold"]),
               "call": entry["call"], "positive": bool(entry["positive"])}
        if key in planted:
            row["agrees"] = bool(entry["positive"]) == bool(planted[key])
        rows[key] = row
    maps = {}
    for key in [*rows, "survival_risk"]:
        path = results / f"heatmap_{key}.nrrd"
        if path.is_file():
            share = map_on_tumour(read_heatmap(path), tumour)
            maps[key] = {"file": path.name, "on_tumour": None if share is None else round(share, 3)}
    agreeing = [row["agrees"] for row in rows.values() if "agrees" in row]
    return {
        "bundle": predictions.get("model", {}).get("name", ""),
        "markers": rows,
        "survival": predictions.get("survival"),
        "ood": predictions.get("ood"),
        "maps": maps,
        "agreement": {"markers": sum(agreeing), "of": len(agreeing),
                      "maps_on_tumour": sum(1 for m in maps.values() if (m["on_tumour"] or 0) >= ON_TUMOUR),
                      "maps": len(maps)},
    }
