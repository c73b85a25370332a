"""Probes, Cox and OOD heads fitted on embeddings with a planted signal."""

import numpy as np
import pytest
from lifelines import CoxPHFitter

from neuroradfm.models.heads import Heads
from neuroradfm.probes import fit_marker_probe, fit_ood, fit_scaling
from neuroradfm.survival import fit_cox


def _embeddings(n=120, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)


def test_probe_learns_planted_signal_and_picks_threshold_on_cv():
    z = _embeddings()
    mean, scale = fit_scaling(z)
    s = (z - mean) / scale
    labels = (s[:, 0] + 0.3 * np.random.default_rng(1).normal(size=len(s)) > 0).astype(float)
    labels[:5] = np.nan  # unknown labels are left out
    head = fit_marker_probe(s, labels, "idh1")
    assert head.metrics["cv_auc"] > 0.9 and head.metrics["n"] == len(s) - 5
    assert 0 < head.threshold < 1
    assert head.coef[0] == pytest.approx(np.abs(head.coef).max())


def test_probe_refuses_a_marker_with_one_class():
    s = _embeddings(30)
    with pytest.raises(ValueError, match="need at least 2 positive and 2 negative"):
        fit_marker_probe(s, np.zeros(30), "egfr")


def test_linear_weights_on_raw_embedding_equal_the_standardised_route():
    z = _embeddings()
    mean, scale = fit_scaling(z)
    s = (z - mean) / scale
    labels = (s[:, 2] > 0).astype(float)
    heads = Heads(mean, scale, [fit_marker_probe(s, labels, "mgmt")], None, None)
    w, b = heads.marker_weights()
    direct = s @ heads.markers[0].coef + heads.markers[0].intercept
    np.testing.assert_allclose(z @ w[0] + b[0], direct, rtol=1e-10, atol=1e-10)


def test_cox_head_matches_lifelines_and_ranks_survival():
    rng = np.random.default_rng(3)
    s = _embeddings(200, 12, seed=3)
    s = (s - s.mean(0)) / s.std(0)
    hazard = np.exp(0.9 * s[:, 0] - 0.6 * s[:, 1])
    days = rng.exponential(500 / hazard)
    censor = rng.uniform(200, 2000, size=len(days))
    events = (days <= censor).astype(float)
    days = np.minimum(days, censor)
    head = fit_cox(s, days, events, components=12, penalizer=0.01)
    risk = s @ head.coef - head.offset
    # With all components kept, the collapsed risk is lifelines' own log partial hazard.
    import pandas as pd
    from sklearn.decomposition import PCA

    pca = PCA(n_components=12, random_state=0).fit(s)
    frame = pd.DataFrame(pca.transform(s)).assign(days=days, event=events)
    reference = CoxPHFitter(penalizer=0.01).fit(frame, "days", "event").predict_log_partial_hazard(frame)
    np.testing.assert_allclose(risk, reference.to_numpy(), atol=1e-6)
    assert head.metrics["c_index"] > 0.7 and head.metrics["cv_c_index"] > 0.65
    assert head.metrics["logrank_p_median_split"] < 0.01
    assert np.all(np.diff(head.baseline_survival) <= 1e-12)
    assert head.survival_at(2.0, 1000) < head.survival_at(0.0, 1000) < head.survival_at(-2.0, 1000)
    assert head.survival_at(0.0, -1) == 1.0


def test_cox_needs_events():
    s = _embeddings(40, 4)
    with pytest.raises(ValueError, match="2 events"):
        fit_cox(s, np.full(40, 100.0), np.zeros(40))


def test_ood_threshold_flags_far_cases_only():
    s = _embeddings(300, 8, seed=5)
    mean, scale = fit_scaling(s)
    s = (s - mean) / scale
    head = fit_ood(s, percentile=99)
    inside = np.mean([head.distance(row) > head.threshold for row in s])
    assert inside <= 0.02
    assert head.distance(s.mean(0) + 10.0) > head.threshold


def test_ood_threshold_holds_for_new_cases_of_the_training_distribution():
    """Few cases, many features (the demo bundle's regime: 64 x 256): in-sample distances are far smaller
    than a new case's, so the threshold must come from out-of-fold distances."""
    rng = np.random.default_rng(7)
    mixing = rng.normal(size=(128, 128)) / np.sqrt(128) * np.linspace(3.0, 0.1, 128)
    train, fresh = rng.normal(size=(64, 128)) @ mixing, rng.normal(size=(500, 128)) @ mixing
    head = fit_ood(train, percentile=99)
    in_sample = np.percentile([head.distance(row) for row in train], 99)
    flagged = np.mean([head.distance(row) > head.threshold for row in fresh])
    assert np.mean([head.distance(row) > in_sample for row in fresh]) > 0.9  # what the old threshold did
    assert flagged <= 0.05
    assert head.distance(train.mean(0) + 3.0 * train.std(0)) > head.threshold


def test_probe_penalty_is_chosen_by_cross_validation_and_classes_are_balanced():
    from sklearn.linear_model import LogisticRegression

    from neuroradfm.probes import PROBE_CS

    z = _embeddings(n=90, d=12, seed=3)
    mean, scale = fit_scaling(z)
    s = (z - mean) / scale
    labels = (s[:, 1] + 0.5 * np.random.default_rng(4).normal(size=len(s)) > 1.0).astype(float)  # about 1 in 6
    head = fit_marker_probe(s, labels, "egfr")
    assert head.metrics["c"] in PROBE_CS
    balanced = LogisticRegression(C=head.metrics["c"], class_weight="balanced", max_iter=5000).fit(s, labels)
    np.testing.assert_allclose(head.coef, balanced.coef_[0], rtol=1e-6)
    fixed = fit_marker_probe(s, labels, "egfr", c=0.5)
    assert fixed.metrics["c"] == 0.5
