"""Prediction for one case or a batch of cases: preprocess, one forward pass, every head, every head's Grad-CAM.

Maps are made on the model grid and carried back through the preprocessing's inverse
transform onto the reference sequence's original grid (see neuroradfm.outputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuroradfm import SEQUENCES, subsets
from neuroradfm.cam import LAST_BLOCK, cams_at, encode_for_cam, normalise, upsample
from neuroradfm.errors import BundleError, SettingsError
from neuroradfm.io.case import Case
from neuroradfm.markers import marker
from neuroradfm.models.bundle import Bundle
from neuroradfm.models.encoder import resolve_device
from neuroradfm.models.heads import Heads
from neuroradfm.preprocess import Preprocessed, prepare_case
from neuroradfm.progress import Progress, null_progress, sub_progress

SURVIVAL_HEAD = "survival_risk"


def describe_cams(layer: str, referenced: bool) -> str:
    """How the maps were made, for predictions.json and the Slicer table."""
    where = "the encoder's last block (layer4)" if layer == LAST_BLOCK else f"the encoder's {layer}"
    return (f"Grad-CAM at {where}, for the predicted call"
            + (", against the training cohort's mean activation" if referenced else ""))


def map_keys(heads: Heads) -> list[str]:
    """The heads that get a map, in ``map_weights`` order: every marker, then survival when the bundle has Cox."""
    return [head.key for head in heads.markers] + ([SURVIVAL_HEAD] if heads.cox is not None else [])


def map_signs(heads: Heads, logits: np.ndarray, risk: float | None) -> np.ndarray:
    """(M,) +1 or -1 per head of ``map_keys``: +1 for a marker that calls positive and for a Cox risk above the
    cohort median, -1 otherwise, so that each map shows what drove the call that was made."""
    signs = [1.0 if 1.0 / (1.0 + np.exp(-logit)) >= head.threshold else -1.0
             for head, logit in zip(heads.markers, logits)]
    if heads.cox is not None and risk is not None:
        signs.append(1.0 if risk > heads.cox.median_risk else -1.0)
    return np.asarray(signs)


def unsigned_map_weights(heads: Heads) -> np.ndarray:
    """(M, D) every mapped head's weights on the raw embedding, in ``map_keys`` order."""
    rows = [*heads.marker_weights()[0]]
    if heads.cox is not None:
        rows.append(heads.cox_weights()[0])
    return np.stack(rows) if rows else np.zeros((0, len(heads.feature_mean)))


def map_weights(heads: Heads, logits: np.ndarray, risk: float | None) -> tuple[list[str], np.ndarray]:
    """Each head's key and the weights (on the raw embedding) its map is taken with, for the predicted call: a
    marker's weights when it calls positive and negated when negative; the Cox weights when the risk lies above the
    cohort median and negated below. ``logits``: the markers' logits of one case; ``risk``: its Cox risk."""
    signs = map_signs(heads, logits, risk)
    keys = map_keys(heads)[:len(signs)]
    return keys, unsigned_map_weights(heads)[:len(signs)] * signs[:, None]


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
    precision: str = "float32"
    """What the encoder's layers ran in (``Inference.precision``)."""

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
            "inference": {"precision": self.precision},
        }


def predict_case(case: Case, bundle: Bundle, device: str = "auto", progress: Progress = null_progress,
                 cam_layer: str | None = None, allow_missing: bool = False, precision: str = "auto") -> Prediction:
    """Run every head of ``bundle`` on ``case``; all maps come from one forward pass (and, below the last
    block, one batched backward pass).

    ``cam_layer`` overrides the bundle's Grad-CAM layer; at a layer other than the bundle's, the maps are
    plain Grad-CAM (the bundle stores its cohort reference for its own layer only). ``allow_missing``: an empty
    or constant sequence is left out (the bundle must take the subset that remains) instead of an error.
    ``precision``: see ``inference_settings``.
    """
    bundle.require_heads()
    prepared = prepare_case(case, bundle, sub_progress(progress, 0.0, 0.8), allow_missing)
    return predict_prepared(case.case_id, prepared, bundle, device, progress, cam_layer, precision)


def predict_prepared(case_id: str, prepared: Preprocessed, bundle: Bundle, device: str = "auto",
                     progress: Progress = null_progress, cam_layer: str | None = None, precision: str = "auto",
                     channels_last: bool | None = None) -> Prediction:
    """The model half of ``predict_case``: one forward pass, every head, every head's map. The batch of one of
    ``predict_prepared_batch``; its per-case error (a BundleError) is raised."""
    (result,) = predict_prepared_batch([(case_id, prepared)], bundle, device, progress, cam_layer, precision,
                                       channels_last)
    if isinstance(result, Exception):
        raise result
    return result


PRECISIONS = ("auto", "float32", "bfloat16", "float16")
"""``--precision`` choices (also listed in cli.py, which must not import torch)."""


@dataclass(frozen=True)
class Inference:
    """How the encoder runs: where, under which autocast dtype (None: plain float32) and in which memory layout."""

    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    @property
    def precision(self) -> str:
        """What the encoder's layers ran in (predictions.json ``inference``; ``--resume`` compares it)."""
        return "float32" if self.autocast is None else str(self.autocast).removeprefix("torch.")

    @classmethod
    def choose(cls, device: torch.device, precision: str = "auto", channels_last: bool | None = None) -> Inference:
        """``precision`` on a resolved ``device``: see ``inference_settings``."""
        if precision not in PRECISIONS:
            raise SettingsError("--precision",
                                f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        cuda = device.type == "cuda"
        dtype = {"auto": torch.float16 if cuda else None, "float32": None,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
        return cls(device, dtype, cuda and dtype is not None if channels_last is None else channels_last)


def inference_settings(device: str = "auto", precision: str = "auto", channels_last: bool | None = None) -> Inference:
    """``precision``: "auto" is float16 autocast in channels-last layout on a CUDA GPU (tensor cores; the heads and
    maps stay float32) and exact float32 on the CPU, where reduced precision is slower; "float32" is exact
    everywhere (TF32 convolutions off); "bfloat16" and "float16" autocast in that dtype on any device.
    ``channels_last`` forces the memory layout (None: channels-last exactly when autocasting on CUDA)."""
    return Inference.choose(resolve_device(device), precision, channels_last)


@contextmanager
def _exact_float32(mode: Inference) -> Iterator[None]:
    """Plain float32 on a CUDA GPU means IEEE convolutions: cuDNN's default is TF32 (10-bit mantissa)."""
    if mode.device.type != "cuda" or mode.autocast is not None:
        yield
        return
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


@dataclass
class _Scores:
    """One case's numbers from its embedding, before the maps."""

    markers: list[MarkerPrediction]
    survival: SurvivalPrediction | None
    ood_distance: float | None
    signs: np.ndarray
    reliability: dict[str, Any]


def _scores(case_id: str, embedding: np.ndarray, prepared: Preprocessed, bundle: Bundle, heads: Heads) -> _Scores:
    """Every head on one case's embedding; a BundleError (naming the case) when anything is not finite."""
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
    return _Scores(markers, survival, ood_distance, map_signs(heads, logits, risk), reliability)


def predict_prepared_batch(items: Sequence[tuple[str, Preprocessed]], bundle: Bundle, device: str = "auto",
                           progress: Progress = null_progress, cam_layer: str | None = None,
                           precision: str = "auto", channels_last: bool | None = None) -> list[Prediction | Exception]:
    """``predict_prepared`` for several cases in one forward pass (and one batched backward for maps below the
    last block): (case_id, prepared) pairs in, one result per case out, in order.

    Failure isolation: a case whose embedding or heads are not finite gets its BundleError in its place in the
    list and the others their Prediction (the encoder runs each case of a batch independently: batch norm in
    eval mode, group norm per sample). Anything that fails the whole batch (out of GPU memory, a bad device or
    precision, cases on different grids) is raised: cohort callers then retry the cases one by one, so that
    only the case at fault fails. ``precision`` and ``channels_last``: see ``inference_settings``."""
    heads = bundle.require_heads()
    layer = cam_layer or heads.cam_layer
    mode = inference_settings(device, precision, channels_last)
    if not items:
        return []
    shapes = {prepared.channels.shape for _, prepared in items}
    if len(shapes) > 1:
        raise ValueError(f"the cases of one batch must be on one model grid; got shapes {sorted(shapes)}")
    progress("encode", 0.8, "forward pass" if len(items) == 1 else f"forward pass of {len(items)} cases")
    encoder = bundle.encoder.to(mode.device, memory_format=mode.memory_format).eval()
    x = torch.from_numpy(np.stack([prepared.channels for _, prepared in items]))
    x = x.to(mode.device, memory_format=mode.memory_format)
    scores: list[_Scores | BundleError] = []
    with _exact_float32(mode):
        copies = max(1, len(map_keys(heads)))
        activation, z = encode_for_cam(encoder, x, layer, copies, mode.autocast)
        embeddings = z[::copies].detach().double().cpu().numpy()
        for (case_id, prepared), embedding in zip(items, embeddings):
            try:
                scores.append(_scores(case_id, embedding, prepared, bundle, heads))
            except BundleError as error:
                scores.append(error)
        if all(isinstance(score, BundleError) for score in scores):
            return list(scores)

        progress("cam", 0.9, "Grad-CAM maps")
        keys = map_keys(heads)
        signs = np.stack([score.signs if isinstance(score, _Scores) else np.zeros(len(keys)) for score in scores])
        w = torch.as_tensor(unsigned_map_weights(heads), dtype=torch.float32, device=mode.device)
        reference = None
        if heads.cam_reference is not None and layer == heads.cam_layer:
            reference = torch.as_tensor(heads.cam_reference)
        raw = cams_at(layer, activation, z, w, reference, copies, rectify=False)
        with torch.no_grad():
            signed = F.relu(raw * torch.as_tensor(signs, dtype=raw.dtype, device=raw.device)[:, :, None, None, None])
            maps = upsample(signed, items[0][1].mask.shape).cpu().numpy()

    described = describe_cams(layer, reference is not None)
    about = {"name": bundle.name, "content_hash": bundle.card.get("content_hash"),
             "intended_use": bundle.card.get("intended_use")}
    results: list[Prediction | Exception] = []
    for (case_id, prepared), score, embedding, case_maps in zip(items, scores, embeddings, maps):
        if isinstance(score, BundleError):
            results.append(score)
            continue
        cams, scales = {}, {}
        for key, volume in zip(keys, case_maps):
            cams[key], scales[key] = normalise(volume, prepared.mask)
        results.append(Prediction(
            case_id=case_id, markers=score.markers, survival=score.survival, ood_distance=score.ood_distance,
            ood_threshold=None if heads.ood is None else heads.ood.threshold, embedding=embedding,
            cams=cams, cam_scales=scales, preprocessed=prepared, cam_method=described, cam_layer=layer,
            reliability=score.reliability, bundle=dict(about), precision=mode.precision))
    progress("predict", 1.0, "done")
    return results
