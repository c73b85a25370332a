"""Heads on the frozen embedding z: marker probes, a Cox risk score and an OOD distance.

All heads are linear in z after one shared standardisation s = (z - mean) / scale, which is
what makes Grad-CAM exact and cheap: for a linear head on a pooled embedding, the map is
sum_k (w_k / scale_k) F_k (see neuroradfm.cam).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MarkerHead:
    """Logistic probe: p = sigmoid(s . coef + intercept); call positive when p >= threshold."""

    key: str
    coef: np.ndarray
    intercept: float
    threshold: float = 0.5
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "coef": [float(v) for v in self.coef],
            "intercept": float(self.intercept),
            "threshold": float(self.threshold),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> MarkerHead:
        return cls(d["key"], np.asarray(d["coef"], np.float64), float(d["intercept"]), float(d["threshold"]),
                   dict(d.get("metrics", {})))


@dataclass
class CoxHead:
    """Cox proportional hazards on s: risk = s . coef - offset (log partial hazard, 0 = cohort average).

    ``baseline_times``/``baseline_survival`` is S0(t) at risk 0, so S(t | s) = S0(t) ** exp(risk).
    ``median_risk`` splits patients into the low / high risk group, as in the training cohort.
    """

    coef: np.ndarray
    offset: float
    baseline_times: np.ndarray
    baseline_survival: np.ndarray
    median_risk: float
    metrics: dict[str, float] = field(default_factory=dict)

    def survival_at(self, risk: float, days: float) -> float:
        index = np.searchsorted(self.baseline_times, days, side="right") - 1
        s0 = 1.0 if index < 0 else float(self.baseline_survival[index])
        return s0 ** float(np.exp(risk))

    def to_dict(self) -> dict:
        return {
            "coef": [float(v) for v in self.coef],
            "offset": float(self.offset),
            "baseline_times": [float(v) for v in self.baseline_times],
            "baseline_survival": [float(v) for v in self.baseline_survival],
            "median_risk": float(self.median_risk),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> CoxHead:
        return cls(np.asarray(d["coef"], np.float64), float(d["offset"]),
                   np.asarray(d["baseline_times"], np.float64), np.asarray(d["baseline_survival"], np.float64),
                   float(d["median_risk"]), dict(d.get("metrics", {})))


@dataclass
class OodHead:
    """Mahalanobis distance of s to the training cohort (shrunk covariance).

    ``threshold`` is a high percentile of the training cases' out-of-fold distances: above it the
    case looks unlike anything the heads were fitted on, and predictions deserve less trust.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float = 99.0

    def distance(self, s: np.ndarray) -> float:
        d = s - self.mean
        return float(np.sqrt(max(d @ self.precision @ d, 0.0)))


@dataclass
class Heads:
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    markers: list[MarkerHead]
    cox: CoxHead | None
    ood: OodHead | None
    cam_reference: np.ndarray | None = None
    """(C, d, h, w) mean activation at ``cam_layer`` of the cohort the heads were fitted on: the reference
    that Grad-CAM maps are taken against (see neuroradfm.cam). None: plain Grad-CAM."""
    cam_layer: str = "layer4"
    """Encoder stage the bundle's Grad-CAM maps are taken at (bundles before this setting: the last block)."""

    def standardise(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.feature_mean) / self.feature_scale

    def marker_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) weights and (M,) biases of every marker logit as a linear function of raw z (M may be 0: a bundle
        whose cohort had too few positives for every marker still predicts survival)."""
        if not self.markers:
            return np.zeros((0, len(self.feature_mean))), np.zeros(0)
        w = np.stack([m.coef for m in self.markers]) / self.feature_scale
        b = np.array([m.intercept for m in self.markers]) - w @ self.feature_mean
        return w, b

    def cox_weights(self) -> tuple[np.ndarray, float]:
        """Risk as a linear function of raw z: (D,) weights and a bias."""
        assert self.cox is not None
        w = self.cox.coef / self.feature_scale
        return w, float(-self.cox.offset - w @ self.feature_mean)
