"""Held-out survival and site-invariance sections of ``neuroradfm evaluate`` on small synthetic cohorts whose answer
is planted: a proportional-hazards survival driven by feature 0, and embeddings shifted by site."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.site_eval import site_invariance
from neuroradfm.evaluate.survival_eval import evaluate_survival
from neuroradfm.probes import fit_scaling
from neuroradfm.survival import fit_cox

N, D, N_BOOT = 80, 8, 50
SITES = [f"site-{'ABCD'[i % 4]}" for i in range(N)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One OpenMP/BLAS thread: t-SNE's Barnes-Hut gradient slows down many-fold on a shared, oversubscribed CPU."""
    with threadpool_limits(limits=1):
        yield


def make_data(days: np.ndarray | None, events: np.ndarray | None, *, sites: list[str] = SITES,
              subgroup: np.ndarray | None = None, labels: dict | None = None) -> EvalData:
    n = len(sites)
    ids = [f"case-{i}" for i in range(n)]
    return EvalData(case_ids=ids, subjects=ids, sites=list(sites), labels=labels or {}, continuous={},
                    os_days=days, os_event=events,
                    subgroup=np.ones(n, bool) if subgroup is None else subgroup,
                    subgroup_label="all cases" if subgroup is None else "idh1 == 0 (IDH-wildtype)")


def planted_survival(seed: int, *, beta: float, admin_censor: float = 2500.0) -> tuple[np.ndarray, ...]:
    """Exponential proportional hazards on feature 0 (hazard ratio e^beta per sd), uniform censoring, integer days;
    a few follow-ups put exactly on an at-risk tick to pin its convention."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    event_time = rng.exponential(700.0 / np.exp(beta * x[:, 0]))
    censor_time = np.minimum(rng.uniform(300.0, 3000.0, N), admin_censor)
    days = np.ceil(np.minimum(event_time, censor_time))
    events = (event_time <= censor_time).astype(float)
    if admin_censor > 730:
        days[:3] = [365.0, 730.0, 365.0]
    return x, days, events


def kfold() -> list[tuple[np.ndarray, np.ndarray]]:
    return list(KFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(N)))


def step(times: list[float], survival: list[float], t: float) -> float:
    return survival[int(np.searchsorted(times, t, side="right")) - 1]


@pytest.fixture(scope="module")
def planted():
    x, days, events = planted_survival(1, beta=1.5)
    folds = kfold()
    result, risk = evaluate_survival(x, make_data(days, events), folds, seed=0, n_boot=N_BOOT)
    # The same heads by hand: what every fold's high-risk group and predicted survival must be.
    high = np.zeros(N, bool)
    predicted = {365: np.zeros(N), 730: np.zeros(N)}
    expected_risk = np.zeros(N)
    for train, test in folds:
        mean, scale = fit_scaling(x[train])
        head = fit_cox((x[train] - mean) / scale, days[train], events[train], seed=0)
        expected_risk[test] = (x[test] - mean) / scale @ head.coef - head.offset
        high[test] = expected_risk[test] > head.median_risk
        for t in predicted:
            predicted[t][test] = [head.survival_at(r, t) for r in expected_risk[test]]
    return {"x": x, "days": days, "events": events, "result": result, "risk": risk, "high": high,
            "expected_risk": expected_risk, "predicted": predicted}


def test_planted_survival_c_index(planted):
    result, risk, days, events = planted["result"], planted["risk"], planted["days"], planted["events"]
    assert result["status"] == "ok" and result["subgroup"] == "all cases"
    assert result["n"] == N and result["events"] == int(events.sum()) and result["n_tested"] == N
    assert result["folds_not_evaluable"] == []
    np.testing.assert_allclose(risk, planted["expected_risk"], rtol=1e-9, atol=1e-9)
    pooled = result["pooled"]
    assert pooled["c_index"] == pytest.approx(concordance_index(days, -risk, events))
    assert pooled["c_index"] > 0.65
    low, high = pooled["c_index_ci"]
    assert low <= pooled["c_index"] <= high and high - low < 0.3
    assert sorted(result["sites"]) == ["site-A", "site-B", "site-C", "site-D"]
    sites = np.array(SITES)
    for site, entry in result["sites"].items():
        members = sites == site
        assert entry["status"] == "ok" and entry["n"] == members.sum()
        assert entry["c_index"] == pytest.approx(concordance_index(days[members], -risk[members], events[members]))
    json.dumps(result, allow_nan=False)


def test_planted_km_logrank_and_at_risk(planted):
    result, days, events, high = planted["result"], planted["days"], planted["events"], planted["high"]
    km = result["km"]
    assert km["status"] == "ok"
    assert km["high"]["n"] == high.sum() and km["low"]["n"] == (~high).sum()
    for group in ("low", "high"):
        survival = np.array(km[group]["survival"])
        assert km[group]["times"][0] == 0.0 and survival[0] == 1.0 and np.all(np.diff(survival) <= 0)
    grid = np.arange(30.0, min(km["low"]["times"][-1], km["high"]["times"][-1]), 30.0)
    gaps = [step(km["low"]["times"], km["low"]["survival"], t) - step(km["high"]["times"], km["high"]["survival"], t)
            for t in grid]
    assert min(gaps) >= 0 and np.mean(gaps) > 0.1  # the high-risk curve lies below the low-risk one
    expected_p = logrank_test(days[high], days[~high], events[high], events[~high]).p_value
    assert result["logrank_p"] == pytest.approx(expected_p) and result["logrank_p"] < 0.05
    ticks = list(range(0, int(days.max()) + 1, 365))
    assert km["at_risk"]["times"] == ticks
    # lifelines' convention (add_at_risk_counts): a follow-up ending exactly at a tick no longer counts at it.
    assert km["at_risk"]["high"] == [int(np.sum(days[high] > t)) for t in ticks]
    assert km["at_risk"]["low"] == [int(np.sum(days[~high] > t)) for t in ticks]


def test_planted_calibration(planted):
    calibration = planted["result"]["calibration"]
    assert sorted(calibration) == ["365", "730"]
    for t, entry in calibration.items():
        assert entry["status"] == "ok" and len(entry["groups"]) == 3
        groups = entry["groups"]
        predicted = [g["predicted"] for g in groups]
        assert all(0 < p < 1 for p in predicted) and predicted == sorted(predicted)
        assert [g["n"] for g in groups] == [27, 27, 26]
        # The tertiles by hand from the same heads: mean predicted survival of each third.
        by_hand = np.sort(planted["predicted"][int(t)])
        np.testing.assert_allclose(predicted, [chunk.mean() for chunk in np.array_split(by_hand, 3)], rtol=1e-9)
        for g in groups:
            assert g["status"] == "ok" and 0 <= g["observed"] <= 1
            if g["observed_ci"][0] is not None:
                assert g["observed_ci"][0] <= g["observed"] <= g["observed_ci"][1]
        assert groups[0]["observed"] < groups[2]["observed"]  # planted: predicted low survival dies sooner


def test_noise_features_give_chance_c_index_and_short_follow_up_not_evaluable():
    x, days, events = planted_survival(2, beta=0.0, admin_censor=600.0)
    result, risk = evaluate_survival(x, make_data(days, events), kfold(), seed=0, n_boot=N_BOOT)
    assert result["status"] == "ok"
    assert abs(result["pooled"]["c_index"] - 0.5) < 0.12
    assert result["calibration"]["365"]["status"] == "ok"
    late = result["calibration"]["730"]
    assert late["status"] == "not evaluable" and "follow-up ends (censored) at 600 days" in late["reason"]
    assert result["km"]["at_risk"]["times"] == [0, 365]
    json.dumps(result, allow_nan=False)


def test_subgroup_and_unknown_survival_exclude_cases():
    x, days, events = planted_survival(3, beta=1.5)
    subgroup = np.arange(N) % 3 != 0
    days[[1, 2]] = np.nan
    events[4] = np.nan
    cases = subgroup & ~np.isnan(days) & ~np.isnan(events)
    result, risk = evaluate_survival(x, make_data(days, events, subgroup=subgroup), kfold(), n_boot=N_BOOT)
    assert result["status"] == "ok" and result["subgroup"] == "idh1 == 0 (IDH-wildtype)"
    assert result["n"] == cases.sum() == result["pooled"]["n"]
    assert result["events"] == int(events[cases].sum())
    assert np.all(np.isnan(risk[~cases])) and np.all(np.isfinite(risk[cases]))
    assert sum(g["n"] for g in result["calibration"]["365"]["groups"]) == cases.sum()


def test_fold_without_enough_training_cases_is_listed_and_skipped():
    x, days, events = planted_survival(4, beta=1.5)
    folds = [(np.arange(8), np.arange(70, 80)), (np.arange(60), np.arange(60, 70))]
    result, risk = evaluate_survival(x, make_data(days, events), folds, n_boot=N_BOOT)
    assert len(result["folds_not_evaluable"]) == 1
    assert result["folds_not_evaluable"][0].startswith("fold 1: survival: need at least 10 cases")
    assert np.all(np.isnan(risk[70:])) and np.all(np.isfinite(risk[60:70])) and np.all(np.isnan(risk[:60]))
    assert result["n_tested"] == 10 == result["pooled"]["n"]
    # 10 tested cases over 4 sites: no site has 5, so every site is not evaluable with its counts.
    for site, entry in result["sites"].items():
        assert entry["status"] == "not evaluable" and f"site {site}" in entry["reason"]
        assert "cases with a held-out risk" in entry["reason"]


def test_missing_survival_columns_not_evaluable():
    result, risk = evaluate_survival(np.zeros((N, D)), make_data(None, None), kfold(), n_boot=N_BOOT)
    assert result == {"status": "not evaluable", "reason": "survival: no os_days/os_event columns"}
    assert risk.shape == (N,) and np.all(np.isnan(risk))


def site_embeddings(seed: int, offset: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shifts = rng.normal(size=(4, 16)) * offset
    return rng.normal(size=(N, 16)) + shifts[np.arange(N) % 4]


def test_strong_site_offset_is_detected():
    idh = np.where(np.arange(N) % 2 == 0, 1.0, 0.0)
    idh[5] = np.nan
    data = make_data(None, None, labels={"idh1": idh})
    result = site_invariance(site_embeddings(0, 3.0), data, seed=0, colour_marker="idh1")
    assert result["status"] == "ok"
    assert result["silhouette_pca"] > 0.3
    assert result["site_classifier_balanced_accuracy"] > 0.95
    assert result["chance"] == 0.25 and result["pca_components"] == 10 and result["site_classifier_folds"] == 5
    assert len(result["pca_2d"]) == N and len(result["tsne_2d"]) == N
    assert all(len(point) == 2 and all(isinstance(v, float) for v in point) for point in result["tsne_2d"])
    assert result["colour_marker"] == "idh1" and result["colour_values"][5] is None
    assert result["colour_values"][:4] == [1, 0, 1, 0]
    json.dumps(result, allow_nan=False)


def test_site_free_embeddings_are_near_chance():
    result = site_invariance(site_embeddings(1, 0.0), make_data(None, None), seed=0)
    assert result["status"] == "ok"
    assert result["site_classifier_balanced_accuracy"] < 0.25 + 0.15
    assert abs(result["silhouette_pca"]) < 0.1
    assert result["colour_values"] is None


def test_single_site_or_single_case_site_not_evaluable_but_mapped():
    x = site_embeddings(2, 1.0)
    one_site = site_invariance(x, make_data(None, None, sites=["site-A"] * N))
    assert one_site["status"] == "not evaluable" and "one site only (site-A: 80 cases)" in one_site["reason"]
    assert one_site["silhouette_pca"] is None and one_site["site_classifier_balanced_accuracy"] is None
    assert len(one_site["pca_2d"]) == N and len(one_site["tsne_2d"]) == N
    lonely = site_invariance(x, make_data(None, None, sites=["site-A"] * (N - 1) + ["site-B"]), colour_marker="mgmt")
    assert lonely["status"] == "not evaluable" and "a single case in site-B" in lonely["reason"]
    assert lonely["colour_values"] is None and "mgmt" in lonely["colour_reason"]
    json.dumps(one_site, allow_nan=False)
    json.dumps(lonely, allow_nan=False)
