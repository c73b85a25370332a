"""Prediction for one case: preprocess, one forward pass, every head, every head's Grad-CAM.

Maps are made on the model grid and carried back through the preprocessing's inverse
transform onto the reference sequence's original grid (see neuroradfm.outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuroradfm import SEQUENCES, subsets
from neuroradfm.cam import LAST_BLOCK, cams_at, encode_for_cam, normalise, upsample
from neuroradfm.errors import BundleError
from neuroradfm.io.case import Case
from neuroradfm.markers import marker
from neuroradfm.models.bundle import Bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.models.heads import Heads
from neuroradfm.preprocess import Preprocessed, preprocess_case, usable_sequences
from neuroradfm.progress import Progress, null_progress, sub_progress

SURVIVAL_HEAD = "survival_risk"


def describe_cams(layer: str, referenced: bool) -> str:
    """How the maps were made, for predictions.json and the Slicer table."""
    where = "the encoder's last block (layer4)" if layer == LAST_BLOCK else f"the encoder's {layer}"
    return (f"Grad-CAM at {where}, for the predicted call"
            + (", against the training cohort's mean activation" if referenced else ""))


def map_weights(heads: Heads, logits: np.ndarray, risk: float | None) -> tuple[list[str], np.ndarray]:
    """Each head's key and the weights (on the raw embedding) its map is taken with, for the predicted call: a
    marker's weights when it calls positive and negated when negative; the Cox weights when the risk lies above the
    cohort median and negated below. ``logits``: the markers' logits of one case; ``risk``: its Cox risk."""
    weights, _ = heads.marker_weights()
    keys, rows = [], []
    for head, w, logit in zip(heads.markers, weights, logits):
        keys.append(head.key)
        rows.append(w if 1.0 / (1.0 + np.exp(-logit)) >= head.threshold else -w)
    if heads.cox is not None and risk is not None:
        cox_w, _ = heads.cox_weights()
        keys.append(SURVIVAL_HEAD)
        rows.append(cox_w if risk > heads.cox.median_risk else -cox_w)
    return keys, np.stack(rows)


@dataclass
class MarkerPrediction:
    key: str
    label: str
    probability: float
    threshold: float
    positive: bool
    call: str
    subset_auc: float | None = None
    """The marker's held-out AUC for the sequences this case had (bundle card ``subset_reliability``); None when
    the card has no figure for that subset."""


@dataclass
class SurvivalPrediction:
    risk_score: float
    risk_group: str
    median_risk: float
    survival_1y: float
    survival_2y: float


@dataclass
class Prediction:
    case_id: str
    markers: list[MarkerPrediction]
    survival: SurvivalPrediction | None
    ood_distance: float | None
    ood_threshold: float | None
    embedding: np.ndarray
    cams: dict[str, np.ndarray]
    """Head key -> map on the model grid (K, J, I), 0..1, for the head's call (see cam_scales)."""
    cam_scales: dict[str, float]
    preprocessed: Preprocessed
    bundle: dict[str, Any] = field(default_factory=dict)
    cam_method: str = ""
    cam_layer: str = LAST_BLOCK
    reliability: dict[str, Any] = field(default_factory=dict)
    """What the bundle card says of the sequences this case had (``neuroradfm.subsets.reliability``)."""

    @property
    def ood_flag(self) -> bool:
        if self.ood_distance is None or self.ood_threshold is None:
            return False
        return self.ood_distance > self.ood_threshold

    def sequences(self) -> dict[str, Any]:
        """Which sequences the prediction used and what the card says of that subset: a reader must know
        when a call rests on fewer than all four."""
        used = [s for s in SEQUENCES if s in self.preprocessed.available]
        return {"used": used, "missing": [s for s in SEQUENCES if s not in used],
                "reliability": self.reliability or subsets.reliability({}, used)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready predictions (no arrays)."""
        return {
            "case_id": self.case_id,
            "markers": [vars(m) for m in self.markers],
            "survival": None if self.survival is None else vars(self.survival),
            "ood": {"distance": self.ood_distance, "threshold": self.ood_threshold, "flag": self.ood_flag},
            "cam": {"method": self.cam_method, "layer": self.cam_layer, "peak_values": self.cam_scales,
                    "empty": sorted(key for key, peak in self.cam_scales.items() if peak <= 0)},
            "preprocessing": self.preprocessed.steps,
            "model": self.bundle,
            "sequences": self.sequences(),
        }


def prepare_case(case: Case, bundle: Bundle, progress: Progress = null_progress,
                 allow_missing: bool = False) -> Preprocessed:
    """The CPU half of a prediction (no torch): the bundle must take the case's sequences, then preprocessing onto
    the model grid. Cohort mode runs it in worker processes while the model works on earlier cases."""
    bundle.require_subset(usable_sequences(case, allow_missing)[0], case.case_id)
    return preprocess_case(case, bundle.preprocessing, progress=progress, allow_missing=allow_missing)


def predict_case(case: Case, bundle: Bundle, device: str = "auto", progress: Progress = null_progress,
                 cam_layer: str | None = None, allow_missing: bool = False) -> Prediction:
    """Run every head of ``bundle`` on ``case``; all maps come from one forward pass (and, below the last
    block, one batched backward pass).

    ``cam_layer`` overrides the bundle's Grad-CAM layer; at a layer other than the bundle's, the maps are
    plain Grad-CAM (the bundle stores its cohort reference for its own layer only). ``allow_missing``: an empty
    or constant sequence is left out (the bundle must take the subset that remains) instead of an error.
    """
    bundle.require_heads()
    prepared = prepare_case(case, bundle, sub_progress(progress, 0.0, 0.8), allow_missing)
    return predict_prepared(case.case_id, prepared, bundle, device, progress, cam_layer)


def predict_prepared(case_id: str, prepared: Preprocessed, bundle: Bundle, device: str = "auto",
                     progress: Progress = null_progress, cam_layer: str | None = None) -> Prediction:
    """The model half of ``predict_case``: one forward pass, every head, every head's map."""
    heads = bundle.require_heads()
    layer = cam_layer or heads.cam_layer
    progress("encode", 0.8, "forward pass")
    torch_device = resolve_device(device)
    encoder = bundle.encoder.to(torch_device).eval()
    x = torch.from_numpy(prepared.channels[None]).to(torch_device)
    activation, z = encode_for_cam(encoder, x, layer)
    embedding = z[0].detach().double().cpu().numpy()

    if not np.isfinite(embedding).all():
        raise BundleError(bundle.path, f"the encoder gives non-finite features for {case_id}")
    with np.errstate(all="ignore"):  # an overflow shows as inf/NaN, refused below with the bundle named
        weights, biases = heads.marker_weights()
        logits = weights @ embedding + biases
        cox_w, cox_b = heads.cox_weights() if heads.cox is not None else (None, 0.0)
        risk = None if cox_w is None else float(cox_w @ embedding + cox_b)
        ood_distance = heads.ood.distance(heads.standardise(embedding)) if heads.ood is not None else None
    if not np.isfinite([*logits, *(v for v in (risk, ood_distance) if v is not None)]).all():
        raise BundleError(bundle.path, f"its heads give non-finite values for {case_id} (probe, Cox or OOD "
                                       "numbers in the card overflow): its predictions cannot be trusted")
    reliability = subsets.reliability(bundle.card, prepared.available)
    markers = []
    for head, logit in zip(heads.markers, logits):
        probability = float(1.0 / (1.0 + np.exp(-logit)))
        positive = probability >= head.threshold
        info = marker(head.key)
        markers.append(MarkerPrediction(head.key, info.label, probability, head.threshold, bool(positive),
                                        info.positive if positive else info.negative,
                                        reliability["auc"].get(head.key)))

    survival = None
    if heads.cox is not None and risk is not None:
        high = risk > heads.cox.median_risk
        survival = SurvivalPrediction(risk, "high" if high else "low", heads.cox.median_risk,
                                      heads.cox.survival_at(risk, 365.25), heads.cox.survival_at(risk, 730.5))

    progress("cam", 0.9, "Grad-CAM maps")
    keys, signed = map_weights(heads, logits, risk)
    w = torch.as_tensor(signed, dtype=torch.float32, device=torch_device)
    reference = None
    if heads.cam_reference is not None and layer == heads.cam_layer:
        reference = torch.as_tensor(heads.cam_reference)
    cells = cams_at(layer, activation, z, w, reference)
    with torch.no_grad():
        maps = upsample(cells, prepared.mask.shape)[0].cpu().numpy()
    cams, scales = {}, {}
    for key, volume in zip(keys, maps):
        cams[key], scales[key] = normalise(volume, prepared.mask)
    progress("predict", 1.0, "done")
    return Prediction(case_id=case_id, markers=markers, survival=survival, ood_distance=ood_distance,
                      ood_threshold=None if heads.ood is None else heads.ood.threshold, embedding=embedding,
                      cams=cams, cam_scales=scales, preprocessed=prepared,
                      cam_method=describe_cams(layer, reference is not None), cam_layer=layer, reliability=reliability,
                      bundle={"name": bundle.name, "content_hash": bundle.card.get("content_hash"),
                              "intended_use": bundle.card.get("intended_use")})
