"""What the shortcut lesson measures on its held-out cases, for each model: the same numbers for both.

Per case: the lesson marker's probability and call (``predict_prepared_batch``, the predict path), where the
marker's Grad-CAM map (the map of the call made) peaks and how much of its mass lies on the artifact's place and on
the tumour (both grown by DILATION_MM, as ``evaluate`` counts a peak beside the tumour as on it), and the embedding.
Summaries: accuracy and AUC per site and per site x marker group (the worst group is the shortcut's victim), the
counterfactual (the same patient's probability with the artifact swapped to the other site), and the site
silhouette of the embeddings (``evaluate.site_eval``) with the silhouette of artifact / no artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score, silhouette_score

from neuroradfm.evaluate.cam_localisation import tumour_ball
from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.embeddings import DILATION_MM
from neuroradfm.evaluate.site_eval import site_invariance
from neuroradfm.models.bundle import Bundle
from neuroradfm.phantom.render import physical_coordinates
from neuroradfm.phantom.sites import scanner_artifact_profile
from neuroradfm.predict import Prediction, predict_prepared_batch
from neuroradfm.preprocess import Preprocessed

BATCH = 8
PEAK_PLACES = ("artifact", "tumour", "elsewhere")


@dataclass
class HeldOutCase:
    """One held-out case of one version, preprocessed once for both models (they share the model grid)."""

    case_id: str
    site: str
    version: str
    truth: int
    artifact: bool
    prepared: Preprocessed
    seg: sitk.Image


@dataclass
class CaseResult:
    case_id: str
    site: str
    version: str
    model: str
    truth: int
    artifact: bool
    probability: float
    threshold: float
    call: int
    peak: str
    """Where the marker's map peaks: PEAK_PLACES (a peak on both counts as on the tumour)."""
    mass_artifact: float
    mass_tumour: float
    embedding: np.ndarray = field(repr=False)
    prediction: Prediction | None = field(default=None, repr=False)


def artifact_region(grid: sitk.Image, ball: np.ndarray | None) -> np.ndarray:
    """(K, J, I) bool: where the scanner artifact lies on the model grid (its half-maximum ball, grown by ``ball``)."""
    inside = scanner_artifact_profile(physical_coordinates(grid)) > 0.5
    return inside if ball is None else binary_dilation(inside, structure=ball)


def _place(cam: np.ndarray, brain: np.ndarray, artifact: np.ndarray, tumour: np.ndarray) -> tuple[str, float, float]:
    inside = np.where(brain, cam, 0.0)
    total = float(inside.sum())
    if total <= 0:
        return "elsewhere", 0.0, 0.0
    peak = np.unravel_index(int(np.argmax(inside)), inside.shape)
    place = "tumour" if tumour[peak] else "artifact" if artifact[peak] else "elsewhere"
    return place, float(inside[artifact].sum() / total), float(inside[tumour].sum() / total)


def measure(model: str, bundle: Bundle, cases: Sequence[HeldOutCase], marker: str, device: str = "auto",
            keep_predictions: Sequence[str] = ()) -> list[CaseResult]:
    """Every case through ``bundle`` (predict path, batches of BATCH): the lesson marker's numbers and map.
    ``keep_predictions``: "case_id/version" keys whose Prediction is kept (for the viewer pages)."""
    ball = tumour_ball(DILATION_MM / bundle.preprocessing.spacing_mm)
    results: list[CaseResult] = []
    artifact = None
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        predictions = predict_prepared_batch([(c.case_id, c.prepared) for c in batch], bundle, device)
        for case, prediction in zip(batch, predictions):
            if isinstance(prediction, Exception):
                raise prediction
            if artifact is None:
                artifact = artifact_region(case.prepared.grid, ball)
            head = next(m for m in prediction.markers if m.key == marker)
            tumour = binary_dilation(case.prepared.to_model_grid(case.seg) > 0, structure=ball) if ball is not None \
                else case.prepared.to_model_grid(case.seg) > 0
            place, on_artifact, on_tumour = _place(prediction.cams[marker], case.prepared.mask, artifact, tumour)
            kept = f"{case.case_id}/{case.version}" in keep_predictions
            results.append(CaseResult(case.case_id, case.site, case.version, model, case.truth, case.artifact,
                                      head.probability, head.threshold, int(head.positive), place, on_artifact,
                                      on_tumour, prediction.embedding, prediction if kept else None))
    return results


def _auc(truth: np.ndarray, probability: np.ndarray) -> float | None:
    return float(roc_auc_score(truth, probability)) if len(set(truth.tolist())) == 2 else None


def accuracy_table(results: Sequence[CaseResult]) -> dict:
    """Accuracy (and AUC) over all cases, per site and per site x marker group; the worst group's accuracy."""
    truth = np.array([r.truth for r in results])
    calls = np.array([r.call for r in results])
    probability = np.array([r.probability for r in results])
    sites = np.array([r.site for r in results])
    table: dict = {"n": len(results), "accuracy": float((calls == truth).mean()), "auc": _auc(truth, probability),
                   "sites": {}, "groups": {}}
    for site in sorted(set(sites.tolist())):
        at = sites == site
        table["sites"][site] = {"n": int(at.sum()), "accuracy": float((calls[at] == truth[at]).mean()),
                                "auc": _auc(truth[at], probability[at])}
        for value in (0, 1):
            group = at & (truth == value)
            if group.any():
                table["groups"][f"{site}, {'positive' if value else 'negative'}"] = {
                    "n": int(group.sum()), "accuracy": float((calls[group] == value).mean())}
    table["worst_group_accuracy"] = min(g["accuracy"] for g in table["groups"].values())
    return table


def cam_table(results: Sequence[CaseResult]) -> dict:
    """Where the marker's maps point, over the cases whose images have the artifact and over those without."""
    out = {}
    for label, chosen in (("with_artifact", [r for r in results if r.artifact]),
                          ("without_artifact", [r for r in results if not r.artifact])):
        if chosen:
            out[label] = {"n": len(chosen),
                          **{f"peak_on_{place}": float(np.mean([r.peak == place for r in chosen]))
                             for place in PEAK_PLACES},
                          "mass_on_artifact": float(np.mean([r.mass_artifact for r in chosen])),
                          "mass_on_tumour": float(np.mean([r.mass_tumour for r in chosen]))}
    return out


def counterfactual_table(factual: Sequence[CaseResult], swapped: Sequence[CaseResult]) -> dict:
    """Per site: the mean change of the marker's probability when the artifact is swapped (site-D's removed,
    site-C's added), its largest change, and the calls that flip."""
    by_case = {r.case_id: r for r in swapped}
    out: dict = {}
    for site in sorted({r.site for r in factual}):
        pairs = [(r, by_case[r.case_id]) for r in factual if r.site == site and r.case_id in by_case]
        change = np.array([b.probability - a.probability for a, b in pairs])
        out[site] = {"n": len(pairs), "artifact": "added" if not pairs[0][0].artifact else "removed",
                     "mean_change": float(change.mean()), "largest_change": float(change[np.argmax(np.abs(change))]),
                     "calls_flipped": int(sum(a.call != b.call for a, b in pairs))}
    return out


def silhouettes(factual: Sequence[CaseResult], swapped: Sequence[CaseResult], seed: int = 0) -> dict:
    """The site silhouette of the as-acquired embeddings (``site_invariance``, with its site classifier), and the
    silhouette of artifact / no artifact over both versions (the same patients with and without it: nothing but the
    artifact separates those groups), on the leading principal components as ``site_invariance`` computes it."""
    data = EvalData([r.case_id for r in factual], [r.case_id for r in factual], [r.site for r in factual], {}, {},
                    None, None, np.ones(len(factual), bool), "all")
    sites = site_invariance(np.stack([r.embedding for r in factual]), data, seed=seed)
    both = [*factual, *swapped]
    features = np.stack([r.embedding for r in both])
    standardised = (features - features.mean(axis=0)) / np.where(features.std(axis=0) > 1e-8, features.std(axis=0), 1)
    scores = PCA(n_components=min(10, len(both) - 1, features.shape[1]), random_state=seed).fit_transform(standardised)
    return {"site_silhouette": sites["silhouette_pca"],
            "site_classifier_balanced_accuracy": sites["site_classifier_balanced_accuracy"],
            "artifact_silhouette": float(silhouette_score(scores, [r.artifact for r in both])),
            "pca_2d": sites["pca_2d"], "sites": [r.site for r in factual]}
