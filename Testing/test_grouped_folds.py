"""Inner cross-validation of the heads grouped by subject: a patient's follow-up scans never straddle a fold.

Without repeated subjects the folds (and every number built on them) must be exactly those of the plain
StratifiedKFold / KFold; with them, no subject is in the training and the held-out part of one fold, and the
optimism that near-identical follow-up scans bring to the cross-validated metrics is gone.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.markers_eval import _ridge, evaluate_continuous, evaluate_markers
from neuroradfm.evaluate.site_eval import site_invariance
from neuroradfm.folds import case_folds, class_folds, repeated
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.probes import choose_c, fit_marker_probe, fit_ood, marker_problem
from neuroradfm.survival import fit_cox
from neuroradfm.train.baseline import fit_heads, head_problems, heads_cv
from neuroradfm.train.cohort import PreparedCohort


def follow_ups(seed: int, subjects: int = 40, scans: int = 3, d: int = 30,
               jitter: float = 0.05) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pure-noise features, each subject's scans near-identical, a random label per subject shared by its scans."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(subjects, d))
    x = np.repeat(base, scans, axis=0) + jitter * rng.normal(size=(subjects * scans, d))
    y = np.repeat((np.arange(subjects) % 2).astype(float)[rng.permutation(subjects)], scans)
    return x, y, np.repeat([f"s{i}" for i in range(subjects)], scans).tolist()


def same_splits(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) and np.array_equal(r, s) for (p, r), (q, s) in zip(a, b))


def assert_no_subject_straddles(splits: list, subjects: list[str]) -> None:
    groups = np.asarray(subjects)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


def test_without_repeated_subjects_the_folds_are_the_plain_splitters():
    rng = np.random.default_rng(0)
    y = (rng.random(37) < 0.3).astype(int)
    singletons = [f"c{i}" for i in range(37)]
    old = list(StratifiedKFold(n_splits=min(5, int(np.bincount(y).min())), shuffle=True, random_state=7)
               .split(np.zeros(37), y))
    assert not repeated(None) and not repeated(singletons)
    assert same_splits(class_folds(y, 5, 7), old) and same_splits(class_folds(y, 5, 7, singletons), old)
    old = list(KFold(n_splits=5, shuffle=True, random_state=7).split(np.zeros(37)))
    assert same_splits(case_folds(37, 5, 7), old) and same_splits(case_folds(37, 5, 7, singletons), old)


def test_grouped_class_folds_keep_subjects_together_and_hold_out_every_class():
    x, y, subjects = follow_ups(1, subjects=24)
    splits = class_folds(y, 5, 3, subjects)
    assert same_splits(splits, list(StratifiedGroupKFold(5, shuffle=True, random_state=3).split(x, y, subjects)))
    assert_no_subject_straddles(splits, subjects)
    assert all(set(y[test]) == {0.0, 1.0} for _, test in splits)
    # 3 positive subjects (9 positive scans): at most 3 folds, not min(5, 9)
    y = np.array([1.0 if s in ("s0", "s1", "s2") else 0.0 for s in subjects])
    splits = class_folds(y, 5, 3, subjects)
    assert len(splits) == 3
    assert_no_subject_straddles(splits, subjects)


def test_grouped_case_folds_keep_subjects_together_and_are_capped_by_subjects():
    _, _, subjects = follow_ups(2, subjects=12)
    splits = case_folds(len(subjects), 5, 4, subjects)
    assert same_splits(splits, list(GroupKFold(5, shuffle=True, random_state=4).split(subjects, groups=subjects)))
    assert_no_subject_straddles(splits, subjects)
    three = [s for s in subjects if s in ("s0", "s1", "s2")]
    assert len(case_folds(len(three), 5, 4, three)) == 3
    with pytest.raises(ValueError, match="at least 2 subjects"):
        case_folds(3, 5, 0, ["p", "p", "p"])


def test_a_class_in_one_subject_only_is_refused_with_its_reason():
    x, _, subjects = follow_ups(3, subjects=10)
    y = np.array([1.0 if s == "s0" else 0.0 for s in subjects])  # 3 positive scans, one patient
    assert marker_problem(y, "idh") is None  # case counts alone would allow it
    problem = marker_problem(y, "idh", subjects)
    assert problem is not None and "subjects" in problem and "subject_id" in problem
    with pytest.raises(ValueError, match="positive and 2 negative subjects"):
        fit_marker_probe(x, y, "idh", subjects=subjects)
    with pytest.raises(ValueError, match="subjects per class"):
        class_folds(y, 5, 0, subjects)


def test_singleton_subjects_give_exactly_the_old_numbers():
    x, y, _ = follow_ups(4, subjects=60, scans=1, d=8)
    x[:, 0] += y  # some signal
    y[:3] = np.nan
    singletons = [f"c{i}" for i in range(len(y))]
    plain = fit_marker_probe(x, y, "idh", seed=2)
    assert fit_marker_probe(x, y, "idh", seed=2, subjects=singletons).metrics == plain.metrics
    known = ~np.isnan(y)
    old_cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=2)  # the splitter of the old code
    assert plain.metrics["c"] == choose_c(x[known], y[known].astype(int), old_cv)
    assert "n_subjects" not in plain.metrics
    days = np.random.default_rng(4).uniform(100, 1000, len(y))
    events = (np.arange(len(y)) % 3 != 0).astype(float)
    cox = fit_cox(x, days, events, seed=2)
    assert fit_cox(x, days, events, seed=2, subjects=singletons).metrics == cox.metrics
    assert fit_ood(x, seed=2, subjects=singletons).threshold == fit_ood(x, seed=2).threshold


def test_follow_up_scans_inflate_the_ungrouped_probe_auc_but_not_the_grouped_one():
    x, y, subjects = follow_ups(0)
    leaky = fit_marker_probe(x, y, "idh", seed=0)
    grouped = fit_marker_probe(x, y, "idh", seed=0, subjects=subjects)
    assert leaky.metrics["cv_auc"] > 0.9  # a held-out scan's twin was in training: memorised, not predicted
    assert grouped.metrics["cv_auc"] < 0.75  # pure noise: near chance once a subject's scans stay together
    assert grouped.metrics["n_subjects"] == 40


def test_follow_up_scans_shrink_the_ungrouped_ood_threshold():
    rng = np.random.default_rng(0)
    x, _, subjects = follow_ups(0, d=10, jitter=0.1)
    new = rng.normal(size=(200, 10))  # new patients from the training distribution
    leaky, grouped = fit_ood(x, 95.0), fit_ood(x, 95.0, subjects=subjects)
    assert grouped.threshold > leaky.threshold
    flagged = [np.mean([head.distance(row) > head.threshold for row in new]) for head in (leaky, grouped)]
    assert flagged[0] > 2 * flagged[1]


def test_site_classifier_folds_grouped_by_subject():
    x, _, subjects = follow_ups(0, subjects=30)
    sites = [("A", "B", "C")[int(s[1:]) % 3] for s in subjects]  # no site signal in the features
    ids = [f"c{i}" for i in range(len(x))]

    def run(groups: list[str]) -> dict:
        data = EvalData(ids, groups, sites, {}, {}, None, None, np.ones(len(ids), bool), "all")
        return site_invariance(x, data, seed=0)

    leaky, grouped = run(ids), run(subjects)
    assert leaky["site_classifier_balanced_accuracy"] > 0.9 and "site_classifier_grouped_by" not in leaky
    assert grouped["site_classifier_balanced_accuracy"] < 0.6  # chance is 1/3
    assert grouped["site_classifier_grouped_by"] == "subject_id"


def test_evaluate_markers_skips_a_fold_whose_positives_are_one_subject():
    x, _, subjects = follow_ups(5, subjects=12, d=6)
    y = np.array([1.0 if s in ("s0", "s1") else 0.0 for s in subjects])
    ids = [f"c{i}" for i in range(len(x))]
    data = EvalData(ids, subjects, ["A"] * len(ids), {"idh": y}, {}, None, None, np.ones(len(ids), bool), "all")
    groups = np.asarray(subjects)
    test_1 = np.flatnonzero(np.isin(groups, ["s0", "s2", "s3", "s4", "s5", "s6"]))  # training keeps s1 alone
    test_2 = np.flatnonzero(~np.isin(groups, ["s0", "s2", "s3", "s4", "s5", "s6"]))
    folds = [(test_2, test_1), (test_1, test_2)]
    results, _ = evaluate_markers(x, data, folds, n_boot=10)
    skipped = results["idh"]["folds_not_evaluable"] if results["idh"]["status"] == "ok" else [results["idh"]["reason"]]
    assert all("subjects" in reason for reason in skipped) and len(skipped) >= 1


def test_continuous_ridge_alpha_is_chosen_on_grouped_folds():
    x, _, subjects = follow_ups(7, subjects=20, d=6)
    value = x[:, 0] * 10 + 30
    ids = [f"c{i}" for i in range(len(x))]
    folds = list(GroupKFold(3).split(x, groups=subjects))

    def run(groups: list[str]) -> dict:
        data = EvalData(ids, groups, ["A"] * len(ids), {}, {"ki67_index": value}, None, None,
                        np.ones(len(ids), bool), "all")
        return evaluate_continuous(x, data, folds, n_boot=10)["ki67_index"]

    assert _ridge(np.asarray(ids), 0).cv is None  # efficient leave-one-out, as before
    assert_no_subject_straddles(_ridge(np.asarray(subjects), 0).cv, subjects)
    grouped, plain = run(subjects), run(ids)
    assert grouped["status"] == "ok" and grouped["spearman"] > 0.9
    assert plain["status"] == "ok" and plain["spearman"] > 0.9


def _cohort(subjects: list[str], y: np.ndarray) -> PreparedCohort:
    n = len(y)
    labels = np.full((n, len(MARKER_KEYS)), np.nan)
    labels[:, 0] = y
    return PreparedCohort([f"c{i}" for i in range(n)], ["A"] * n, np.zeros((n, 0), np.float16), labels,
                          np.full(n, np.nan), np.full(n, np.nan), subjects=subjects)


def test_fit_heads_groups_by_subject_and_the_card_says_so():
    x, y, subjects = follow_ups(6, subjects=20, scans=2, d=8)
    heads, skipped = fit_heads(x, _cohort(subjects, y))
    assert heads.markers[0].metrics["n_subjects"] == 20 and "survival" in skipped
    assert heads_cv(_cohort(subjects, y)) == {"heads_cv": {"folds": 5, "grouped_by": "subject_id", "subjects": 20}}
    singletons = [f"c{i}" for i in range(len(y))]
    plain, _ = fit_heads(x, _cohort([], y))
    same, _ = fit_heads(x, _cohort(singletons, y))
    assert heads_cv(_cohort(singletons, y)) == {} and same.markers[0].metrics == plain.markers[0].metrics
    assert same.ood.threshold == plain.ood.threshold
    one_positive_subject = np.array([1.0 if s == "s0" else 0.0 for s in subjects])
    assert "subjects" in head_problems(_cohort(subjects, one_positive_subject))[MARKER_KEYS[0]]
