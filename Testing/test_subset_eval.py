"""Subset AUCs (all-four heads applied to fewer sequences) on synthetic embeddings whose answers are known: a subset
identical to the all-four embeddings scores exactly their AUC, a subset of pure noise about 0.5, a marker that
cannot be evaluated None; and the evaluate path's own probe gives the same all-four AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.markers_eval import evaluate_markers
from neuroradfm.evaluate.subset_eval import mean_auc, subset_aucs
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.subsets import ALL_FOUR

N, D = 120, 8
NO_FLAIR = ("t1", "t1ce", "t2")
T1CE = ("t1ce",)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Many tiny logistic fits: BLAS threads only spin on them."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _cohort() -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """mgmt planted in feature 0, idh1 in feature 1, egfr of one class only, every other marker unknown."""
    rng = np.random.default_rng(0)
    full = rng.normal(size=(N, D))
    labels = np.full((N, len(MARKER_KEYS)), np.nan)
    labels[:, MARKER_KEYS.index("mgmt")] = (full[:, 0] + 0.5 * rng.normal(size=N) > 0)
    labels[:, MARKER_KEYS.index("idh1")] = (full[:, 1] + 0.5 * rng.normal(size=N) > 0)
    labels[:, MARKER_KEYS.index("egfr")] = 0.0
    splits = list(StratifiedKFold(4, shuffle=True, random_state=0).split(full, labels[:, 0]))
    return full, labels, splits


def test_identical_subset_noise_subset_and_unevaluable_markers():
    full, labels, splits = _cohort()
    noise = np.random.default_rng(1).normal(size=full.shape)
    result = subset_aucs(full, {NO_FLAIR: full.copy(), T1CE: noise}, labels, splits, c={"mgmt": 0.1, "idh1": 0.1})
    assert set(result) == {ALL_FOUR, NO_FLAIR, T1CE}  # the all-four row comes from ``full``
    assert result[NO_FLAIR] == result[ALL_FOUR]
    for key in ("mgmt", "idh1"):
        assert result[ALL_FOUR][key] > 0.8
        assert abs(result[T1CE][key] - 0.5) < 0.15
    for row in result.values():
        assert row["egfr"] is None  # one class
        assert row["tp53"] is None  # no labels
    assert mean_auc(result[ALL_FOUR]) == pytest.approx(np.mean([result[ALL_FOUR]["mgmt"], result[ALL_FOUR]["idh1"]]))
    assert mean_auc({"mgmt": None}) is None


def test_all_four_matches_evaluate_markers_and_pooled_sklearn_auc():
    """With the penalty searched as evaluate does, the all-four AUC is evaluate's pooled marker AUC."""
    full, labels, splits = _cohort()
    mgmt = labels[:, MARKER_KEYS.index("mgmt")]
    ids = [f"case-{i}" for i in range(N)]
    data = EvalData(case_ids=ids, subjects=ids, sites=["A"] * N, labels={"mgmt": mgmt}, continuous={},
                    os_days=None, os_event=None, subgroup=np.ones(N, bool), subgroup_label="all cases")
    reference, oof = evaluate_markers(full, data, splits, n_boot=10)
    result = subset_aucs(full, {}, labels, splits, subjects=ids)
    assert result[ALL_FOUR]["mgmt"] == pytest.approx(reference["mgmt"]["pooled"]["auc"])
    assert result[ALL_FOUR]["mgmt"] == pytest.approx(roc_auc_score(mgmt, oof["mgmt"]))


def test_shape_mismatch_is_an_error():
    full, labels, splits = _cohort()
    with pytest.raises(ValueError, match="shape"):
        subset_aucs(full, {T1CE: full[:, :3]}, labels, splits)
    with pytest.raises(ValueError, match="columns"):
        subset_aucs(full, {}, labels[:, :2], splits)
