"""How much of the acquisition site an embedding carries: a foundation model's features should describe the tumour,
not the scanner, so cases of different sites ought to mix.

Two numbers (both from scikit-learn) and two maps: the silhouette of the site grouping on the leading principal
components (near 0 or below: sites overlap; towards 1: sites form their own clusters), the cross-validated balanced
accuracy of a linear classifier that predicts the site (at chance: nothing linear tells the sites apart), and 2-D
PCA and t-SNE coordinates of every case for the report's scatter plots. The classifier's folds keep a subject's scans
together: a follow-up scan in training would identify its twin's site by the patient, not by the scanner.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import balanced_accuracy_score, silhouette_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.statistics import safe
from neuroradfm.folds import GROUP_COLUMN, class_folds, repeated
from neuroradfm.probes import fit_scaling


def _points(coordinates: np.ndarray) -> list[list[float | None]]:
    """(N, k) coordinates as [[x, y], ...]; a missing second axis (a single component) is 0."""
    if coordinates.shape[1] < 2:
        coordinates = np.hstack([coordinates, np.zeros((len(coordinates), 2 - coordinates.shape[1]))])
    return [[safe(x), safe(y)] for x, y in coordinates[:, :2]]


def _colour_values(data: EvalData, colour_marker: str | None) -> tuple[list | None, str | None]:
    """The colour marker's value of every case (None where unknown), or None and why when the marker is absent."""
    if colour_marker is None:
        return None, None
    values = data.labels.get(colour_marker, data.continuous.get(colour_marker))
    if values is None:
        return None, f"colour marker {colour_marker!r}: no such column in the manifest"
    out = []
    for value in np.asarray(values, np.float64):
        number = safe(value)
        out.append(int(number) if number is not None and number.is_integer() else number)
    return out, None


def _site_problem(sites: list[str]) -> str | None:
    counts = Counter(sites)
    if len(counts) < 2:
        return (f"site invariance: one site only ({', '.join(f'{s}: {n} cases' for s, n in counts.items())}); "
                f"needs at least 2")
    single = sorted(site for site, n in counts.items() if n < 2)
    if single:
        return f"site invariance: a single case in {', '.join(single)} (each site needs at least 2 cases)"
    return None


def site_invariance(features: np.ndarray, data: EvalData, *, seed: int = 0, colour_marker: str | None = None,
                    pca_components: int = 10, folds: int = 5) -> dict:
    """``results[label]["site_invariance"]``: silhouette by site on the first principal components of the
    standardised features, the cross-validated balanced accuracy of a class-balanced logistic site classifier
    (lower: more site-invariant; ``chance`` = 1 / number of sites), 2-D PCA and t-SNE maps per case.

    With one site, or a site of a single case (or, when a subject has several cases, of a single subject), the two
    site numbers are None and the entry is "not evaluable" with the reason; the maps are still given.
    """
    x = np.asarray(features, np.float64)
    n, d = x.shape
    sites = [str(s) for s in data.sites]
    n_sites = len(set(sites))
    colours, colour_reason = _colour_values(data, colour_marker)
    result: dict = {"status": "ok", "n": n, "sites": dict(sorted(Counter(sites).items())),
                    "silhouette_pca": None, "pca_components": None,
                    "site_classifier_balanced_accuracy": None, "chance": safe(1.0 / n_sites) if n_sites else None,
                    "pca_2d": None, "tsne_2d": None, "colour_marker": colour_marker, "colour_values": colours}
    if colour_reason:
        result["colour_reason"] = colour_reason
    if n < 3:
        return {**result, "status": "not evaluable", "reason": f"site invariance: {n} cases, need at least 3"}

    mean, scale = fit_scaling(x)
    standardised = (x - mean) / scale
    components = int(min(pca_components, n - 1, d))
    scores = PCA(n_components=components, random_state=seed).fit_transform(standardised)
    result["pca_components"] = components
    result["pca_2d"] = _points(scores)
    tsne = TSNE(n_components=2, random_state=seed, perplexity=min(30.0, (n - 1) / 3))
    result["tsne_2d"] = _points(tsne.fit_transform(standardised))

    problem = _site_problem(sites)
    if problem:
        return {**result, "status": "not evaluable", "reason": problem}
    labels = np.asarray(sites, dtype=object)
    try:
        cv = class_folds(labels, folds, seed, data.subjects)
    except ValueError as error:  # a site of a single subject: no grouped fold can hold it out
        return {**result, "status": "not evaluable", "reason": f"site invariance: {error}"}
    result["silhouette_pca"] = safe(silhouette_score(scores, labels))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    predicted = cross_val_predict(classifier, x, labels, cv=cv)
    result["site_classifier_balanced_accuracy"] = safe(balanced_accuracy_score(labels, predicted))
    result["site_classifier_folds"] = len(cv)
    if repeated(data.subjects):
        result["site_classifier_grouped_by"] = GROUP_COLUMN
    return result
