"""Out-of-fold marker and continuous probes, data efficiency and bundle comparison on small synthetic cohorts whose
signal is planted, so that every number can be checked against scikit-learn/scipy or by hand."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import spearmanr, ttest_rel, wilcoxon
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from neuroradfm.evaluate.compare import compare_bundles
from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.efficiency import data_efficiency
from neuroradfm.evaluate.markers_eval import evaluate_continuous, evaluate_markers
from neuroradfm.evaluate.statistics import expected_calibration_error, reliability

N, D, N_BOOT = 72, 10, 50
UNTESTED = np.arange(68, 72)
"""Cases in no test set (a split column's "train" rows): always training, never predicted."""


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Hundreds of tiny logistic fits: BLAS threads only spin on them (about 6x the CPU time on a busy machine)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _cohort() -> tuple[EvalData, np.ndarray, np.ndarray]:
    """72 cases at 3 sites: mgmt planted in feature 0, atrx in feature 1, egfr in feature 2 (one positive at site-C),
    idh1 pure noise; ki67_index planted in feature 0 (only 3 known values at site-C). Also a noise bundle."""
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(N, D))
    noise = rng.normal(size=(N, D))
    sites = [f"site-{'ABC'[i % 3]}" for i in range(N)]
    site_c = np.array([s == "site-C" for s in sites])

    def planted(column: int) -> np.ndarray:
        return (signal[:, column] + 0.4 * rng.normal(size=N) > 0).astype(float)

    mgmt = planted(0)
    mgmt[[0, 5, 10, 15]] = np.nan
    egfr = planted(2)
    egfr[site_c] = 0.0
    egfr[np.flatnonzero(site_c)[0]] = 1.0
    ki67 = 10 + 5 * signal[:, 0] + rng.normal(size=N)
    ki67[np.flatnonzero(site_c)[3:]] = np.nan
    ids = [f"case-{i}" for i in range(N)]
    data = EvalData(case_ids=ids, subjects=ids, sites=sites,
                    labels={"mgmt": mgmt, "idh1": rng.integers(0, 2, N).astype(float), "egfr": egfr,
                            "atrx": planted(1)},
                    continuous={"ki67_index": ki67}, os_days=None, os_event=None,
                    subgroup=np.ones(N, bool), subgroup_label="all cases")
    return data, signal, noise


def _folds(data: EvalData) -> list[tuple[np.ndarray, np.ndarray]]:
    """5 folds stratified by site over the first 68 cases; UNTESTED always trains."""
    cases = np.arange(68)
    split = StratifiedKFold(5, shuffle=True, random_state=0).split(cases, np.asarray(data.sites)[cases])
    return [(np.concatenate([cases[train], UNTESTED]), cases[test]) for train, test in split]


@pytest.fixture(scope="module")
def cohort():
    data, signal, noise = _cohort()
    folds = _folds(data)
    results, oof = evaluate_markers(signal, data, folds, seed=0, n_boot=N_BOOT)
    noise_results, noise_oof = evaluate_markers(noise, data, folds, seed=0, n_boot=N_BOOT)
    return {"data": data, "signal": signal, "noise": noise, "folds": folds, "results": results, "oof": oof,
            "noise_results": noise_results, "noise_oof": noise_oof}


def _tested(cohort, key):
    labels = cohort["data"].labels[key]
    prob = cohort["oof"][key]
    keep = ~np.isnan(prob)
    return labels[keep], prob[keep], np.asarray(cohort["data"].sites)[keep]


def test_planted_marker_is_found_and_scored_like_sklearn(cohort):
    entry = cohort["results"]["mgmt"]
    pooled = entry["pooled"]
    y, p, sites = _tested(cohort, "mgmt")
    assert entry["status"] == "ok" and pooled["status"] == "ok" and entry["folds_not_evaluable"] == []
    assert pooled["auc"] > 0.85
    assert pooled["auc"] == pytest.approx(roc_auc_score(y, p))
    low, high = pooled["auc_ci"]
    assert low <= pooled["auc"] <= high
    assert (pooled["n"], pooled["n_pos"], pooled["n_neg"]) == (len(y), int(y.sum()), int((y == 0).sum()))
    assert pooled["n"] == 68 - 4  # 4 unknown labels, 4 untested cases
    assert pooled["brier"] == pytest.approx(brier_score_loss(y, p))
    assert pooled["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert pooled["reliability"] == reliability(y, p)
    assert sum(pooled["reliability"]["count"]) == pooled["n"]
    assert pooled["balanced_accuracy"] == pytest.approx((pooled["sensitivity"] + pooled["specificity"]) / 2)
    assert 0.0 < pooled["threshold_mean"] < 1.0
    assert sorted(entry["sites"]) == ["site-A", "site-B", "site-C"]
    for site, scope in entry["sites"].items():
        here = sites == site
        assert scope["n"] == int(here.sum())
        assert scope["auc"] == pytest.approx(roc_auc_score(y[here], p[here]))


def test_noise_marker_is_near_chance(cohort):
    assert abs(cohort["results"]["idh1"]["pooled"]["auc"] - 0.5) < 0.2
    assert cohort["noise_results"]["mgmt"]["pooled"]["auc"] < 0.75


def test_site_with_one_positive_is_not_evaluable_with_counts(cohort):
    entry = cohort["results"]["egfr"]
    y, _, sites = _tested(cohort, "egfr")
    c = y[sites == "site-C"]
    n_pos, n_neg = int(c.sum()), int((c == 0).sum())
    assert n_pos <= 1
    assert entry["sites"]["site-C"] == {"status": "not evaluable",
                                        "reason": f"egfr: site-C: {n_pos} positive / {n_neg} negative"}
    assert entry["sites"]["site-A"]["status"] == "ok" and entry["pooled"]["status"] == "ok"


def test_oof_probabilities_nan_exactly_where_untested_or_unknown(cohort):
    for key, labels in cohort["data"].labels.items():
        prob = cohort["oof"][key]
        expected = np.isnan(labels)
        expected[UNTESTED] = True
        assert prob.shape == (N,)
        np.testing.assert_array_equal(np.isnan(prob), expected)
        assert np.all((prob[~expected] > 0) & (prob[~expected] < 1))


def test_threshold_does_not_see_test_labels(cohort):
    """Flipping every test label of a single fold leaves the threshold (and probabilities) alone: AUC -> 1 - AUC."""
    data, signal = cohort["data"], cohort["signal"]
    one_fold = cohort["folds"][:1]
    test = one_fold[0][1]
    flipped = data.labels["atrx"].copy()
    flipped[test] = 1 - flipped[test]
    before, oof_before = evaluate_markers(signal, replace(data, labels={"atrx": data.labels["atrx"]}), one_fold,
                                          n_boot=10)
    after, oof_after = evaluate_markers(signal, replace(data, labels={"atrx": flipped}), one_fold, n_boot=10)
    assert after["atrx"]["pooled"]["threshold_mean"] == before["atrx"]["pooled"]["threshold_mean"]
    np.testing.assert_array_equal(oof_after["atrx"], oof_before["atrx"])
    assert after["atrx"]["pooled"]["auc"] == pytest.approx(1 - before["atrx"]["pooled"]["auc"])


def test_fold_with_too_few_training_positives_is_listed_and_its_cases_untested():
    rng = np.random.default_rng(1)
    n = 30
    features = rng.normal(size=(n, 4))
    rare = np.zeros(n)
    rare[[0, 1, 2, 10]] = 1  # fold 1 tests 3 of the 4 positives: its training keeps 1
    single = np.zeros(n)
    single[0] = 1
    data = EvalData([str(i) for i in range(n)], [str(i) for i in range(n)], ["s"] * n,
                    {"tert": rare, "cdkn2ab": single}, {}, None, None, np.ones(n, bool), "all cases")
    folds = [(np.arange(10, 30), np.arange(0, 10))]
    folds.append((np.r_[0:10, 20:30], np.arange(10, 20)))
    folds.append((np.arange(0, 20), np.arange(20, 30)))
    results, oof = evaluate_markers(features, data, folds, n_boot=10)
    tert = results["tert"]
    assert tert["status"] == "ok"
    assert tert["folds_not_evaluable"] == ["fold 1: training has 1 positive / 19 negative"]
    assert np.isnan(oof["tert"][:10]).all() and not np.isnan(oof["tert"][10:]).any()
    assert tert["pooled"] == {"status": "not evaluable", "reason": "tert: pooled: 1 positive / 19 negative"}
    assert results["cdkn2ab"]["status"] == "not evaluable"
    assert "fold 2: training has 1 positive / 19 negative" in results["cdkn2ab"]["reason"]
    assert np.isnan(oof["cdkn2ab"]).all()


def test_ece_and_reliability_hand_computed():
    y = np.array([0, 1, 1, 1, 0])
    p = np.array([0.12, 0.18, 0.85, 0.81, 0.35])
    # bins: [0.1, 0.2): 0.12, 0.18 -> mean 0.15, observed 0.5; [0.3, 0.4): 0.35 -> 0; [0.8, 0.9): 0.83 -> 1
    table = reliability(y, p)
    assert table["count"] == [2, 1, 2]
    np.testing.assert_allclose(table["mean_predicted"], [0.15, 0.35, 0.83])
    np.testing.assert_allclose(table["fraction_positive"], [0.5, 0.0, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.35 + 1 * 0.35 + 2 * 0.17) / 5)


def test_spearman_of_planted_continuous_target(cohort):
    results = evaluate_continuous(cohort["signal"], cohort["data"], cohort["folds"], n_boot=N_BOOT)
    ki67 = results["ki67_index"]
    assert ki67["status"] == "ok"
    known = ~np.isnan(cohort["data"].continuous["ki67_index"])
    known[UNTESTED] = False
    assert ki67["n"] == int(known.sum())
    assert ki67["spearman"] > 0.7 and ki67["p_value"] < 1e-3
    assert ki67["spearman_ci"][0] <= ki67["spearman"] <= ki67["spearman_ci"][1]
    assert ki67["sites"]["site-C"] == {"status": "not evaluable",
                                       "reason": "ki67_index: site-C: 3 tested cases with a known value (need 5)"}
    assert ki67["sites"]["site-A"]["status"] == "ok"
    noise = evaluate_continuous(cohort["noise"], cohort["data"], cohort["folds"], n_boot=N_BOOT)["ki67_index"]
    assert noise["spearman"] < ki67["spearman"] - 0.3


def test_spearman_matches_scipy_on_out_of_fold_predictions():
    """With a single fold the out-of-fold predictions are the ridge's test predictions, recomputed here."""
    from sklearn.linear_model import RidgeCV

    from neuroradfm.evaluate.markers_eval import RIDGE_ALPHAS
    from neuroradfm.probes import fit_scaling

    data, signal, _ = _cohort()
    data = replace(data, sites=["s"] * N)
    train, test = np.arange(0, 50), np.arange(50, 68)
    values = data.continuous["ki67_index"]
    result = evaluate_continuous(signal, data, [(train, test)], n_boot=10)["ki67_index"]
    mean, scale = fit_scaling(signal[train])
    known_train = train[~np.isnan(values[train])]
    known_test = test[~np.isnan(values[test])]
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit((signal[known_train] - mean) / scale, values[known_train])
    expected = spearmanr(values[known_test], model.predict((signal[known_test] - mean) / scale))
    assert result["spearman"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["alpha_mean"] == pytest.approx(model.alpha_)


def test_data_efficiency_grows_with_labels_and_reports_impossible_settings(cohort):
    data = replace(cohort["data"], labels={"mgmt": cohort["data"].labels["mgmt"]})
    cases = np.arange(N)
    folds = [(cases[train], cases[test])
             for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(cases, data.sites)]
    result = data_efficiency(cohort["signal"], data, folds, seeds=(0, 1), per_class=(1, 40),
                             fractions=(0.1, 1.0))["mgmt"]
    assert result["status"] == "ok" and result["folds_not_evaluable"] == []
    one, tenth, full = result["per_class"]["1"], result["fraction"]["0.1"], result["fraction"]["1.0"]
    assert one["n_runs"] == tenth["n_runs"] == full["n_runs"] == 3 * 2
    assert one["mean"] < full["mean"]
    assert full["mean"] > 0.85
    assert one["sd"] > 0 and full["sd"] >= 0
    assert set(result["fraction"]) == {"0.1", "1.0"}
    impossible = result["per_class"]["40"]
    assert impossible["status"] == "not evaluable"
    assert impossible["reason"].startswith("mgmt: per class 40: no run (fold 1: training has ")
    assert "fewer than 40 of a class" in impossible["reason"]


def test_data_efficiency_marker_without_test_positives_is_not_evaluable():
    rng = np.random.default_rng(2)
    n = 20
    labels = np.zeros(n)
    labels[:4] = 1
    data = EvalData([str(i) for i in range(n)], [str(i) for i in range(n)], ["s"] * n, {"tert": labels}, {},
                    None, None, np.ones(n, bool), "all cases")
    folds = [(np.arange(0, 10), np.arange(10, 20))]
    result = data_efficiency(rng.normal(size=(n, 3)), data, folds, seeds=(0,), per_class=(1,), fractions=(1.0,))
    assert result["tert"] == {"status": "not evaluable",
                              "reason": "tert: no fold could be evaluated (fold 1: test has 0 positive / 10 negative, "
                                        "no AUC)"}


def test_comparison_of_signal_and_noise_bundles(cohort):
    data = cohort["data"]
    result = compare_bundles("signal", cohort["oof"], "noise", cohort["noise_oof"], data, seed=0, n_boot=N_BOOT,
                             summary={"mean_auc": (0.8, 0.5), "ece": (0.1, float("nan"))})
    assert (result["a"], result["b"]) == ("signal", "noise")
    mgmt = result["markers"]["mgmt"]
    assert mgmt["status"] == "ok"
    assert mgmt["auc_a"] == pytest.approx(cohort["results"]["mgmt"]["pooled"]["auc"])
    assert mgmt["auc_b"] == pytest.approx(cohort["noise_results"]["mgmt"]["pooled"]["auc"])
    assert mgmt["difference"] == pytest.approx(mgmt["auc_a"] - mgmt["auc_b"])
    assert mgmt["difference"] > 0 and mgmt["ci"][0] > 0 and mgmt["ci"][0] <= mgmt["difference"] <= mgmt["ci"][1]
    ok = [key for key, entry in result["markers"].items() if entry["status"] == "ok"]
    assert ok == ["mgmt", "idh1", "egfr", "atrx"]
    a = [result["markers"][k]["auc_a"] for k in ok]
    b = [result["markers"][k]["auc_b"] for k in ok]
    expected_w, expected_t = wilcoxon(a, b), ttest_rel(a, b)
    assert result["wilcoxon"] == {"status": "ok", "statistic": pytest.approx(expected_w.statistic),
                                  "p_value": pytest.approx(expected_w.pvalue), "n_markers": 4}
    assert result["t_test"] == {"status": "ok", "statistic": pytest.approx(expected_t.statistic),
                                "p_value": pytest.approx(expected_t.pvalue), "n_markers": 4}
    assert result["summary"] == {"mean_auc": {"a": 0.8, "b": 0.5}, "ece": {"a": 0.1, "b": None}}


def test_comparison_degenerate_cases(cohort):
    data = cohort["data"]
    same = compare_bundles("x", cohort["oof"], "y", cohort["oof"], data, n_boot=10)
    assert same["markers"]["mgmt"]["difference"] == 0.0
    assert same["wilcoxon"] == {"status": "not evaluable", "reason": "all 4 per-marker AUC differences are zero"}
    assert same["t_test"]["status"] == "not evaluable"
    only_mgmt = {"mgmt": cohort["oof"]["mgmt"]}
    partial = compare_bundles("x", only_mgmt, "y", cohort["noise_oof"], data, n_boot=10)
    assert partial["markers"]["idh1"] == {"status": "not evaluable",
                                          "reason": "idh1: no out-of-fold predictions from x"}
    assert partial["wilcoxon"] == {"status": "not evaluable",
                                   "reason": "1 marker(s) evaluable for both bundles (need 2)"}
    assert partial["t_test"]["status"] == "not evaluable"
    assert partial["summary"] == {}


def test_everything_is_json_safe(cohort):
    data = cohort["data"]
    payload = {
        "markers": cohort["results"],
        "continuous": evaluate_continuous(cohort["noise"], data, cohort["folds"], n_boot=10),
        "data_efficiency": data_efficiency(cohort["noise"], replace(data, labels={"idh1": data.labels["idh1"]}),
                                           cohort["folds"][:2], seeds=(0,), per_class=(1, 2), fractions=()),
        "comparison": compare_bundles("a", cohort["oof"], "b", cohort["noise_oof"], data, n_boot=10),
    }
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["markers"]["mgmt"]["status"] == "ok"
