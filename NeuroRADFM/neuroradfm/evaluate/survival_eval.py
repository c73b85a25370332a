"""Held-out survival performance of frozen embeddings: the Cox head of ``fit-heads`` refitted on every outer
training fold and judged on the cases it never saw.

Why refit instead of reading a bundle's Cox head: a bundle's head was fitted on (part of) the same cohort, so its
c-index there is optimistic. Each outer fold standardises its training rows, fits ``neuroradfm.survival.fit_cox``
(PCA + penalised lifelines Cox, exactly as ``fit-heads``) and scores its test cases; the out-of-fold risks are
pooled for the c-index, the Kaplan-Meier curves of the training-median split, the log-rank test and the
calibration of predicted survival probabilities.
"""

from __future__ import annotations

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index

from neuroradfm.evaluate.data import EvalData, Folds
from neuroradfm.evaluate.statistics import bootstrap_ci, safe
from neuroradfm.models.heads import CoxHead
from neuroradfm.probes import fit_scaling
from neuroradfm.survival import fit_cox

HEAD_FOLDS = 5
"""Inner folds of ``fit_cox`` (its own cross-validated metrics): the value ``fit-heads`` uses."""
MIN_SCOPE_CASES = 5
"""Cases with an out-of-fold risk a c-index (pooled or of one site) needs at the least."""
MIN_SCOPE_EVENTS = 2
AT_RISK_STEP_DAYS = 365
CALIBRATION_DAYS = (365, 730)
CALIBRATION_GROUPS = 3


def _not_evaluable(reason: str) -> dict:
    return {"status": "not evaluable", "reason": reason}


def _c_index(days: np.ndarray, risk: np.ndarray, events: np.ndarray) -> float:
    """Harrell's c-index (higher risk should mean shorter survival). A resample without a comparable pair is a
    ValueError, so the bootstrap skips it."""
    try:
        return float(concordance_index(days, -risk, events))
    except ZeroDivisionError as error:
        raise ValueError(str(error)) from error


def _c_index_entry(days: np.ndarray, risk: np.ndarray, events: np.ndarray, scope: str, n_boot: int,
                   seed: int) -> dict:
    n, observed = len(days), int(events.sum())
    if n < MIN_SCOPE_CASES or observed < MIN_SCOPE_EVENTS:
        return _not_evaluable(f"survival in {scope}: {n} cases with a held-out risk and {observed} events (need at "
                              f"least {MIN_SCOPE_CASES} cases and {MIN_SCOPE_EVENTS} events)")
    try:
        value = _c_index(days, risk, events)
    except ValueError as error:
        return _not_evaluable(f"survival in {scope}: {error} ({n} cases, {observed} events)")
    low, high = bootstrap_ci(_c_index, [days, risk, events], n_boot, seed)
    return {"status": "ok", "n": n, "events": observed, "c_index": safe(value),
            "c_index_ci": [low, high] if low is not None else None}


def _km(days: np.ndarray, events: np.ndarray) -> KaplanMeierFitter:
    return KaplanMeierFitter().fit(days, events)


def _at_risk(fitter: KaplanMeierFitter | None, ticks: np.ndarray) -> list[int]:
    """Numbers at risk as lifelines' ``add_at_risk_counts`` shows them: at each tick, the at-risk count of the last
    event-table row at or before it less that row's removals (cases whose follow-up ends at a tick are no longer
    counted at it)."""
    if fitter is None:
        return [0] * len(ticks)
    table = fitter.event_table
    remaining = (table["at_risk"] - table["removed"]).to_numpy()
    times = table.index.to_numpy(np.float64)
    counts = []
    for tick in ticks:
        before = np.flatnonzero(times <= tick)
        counts.append(int(remaining[before[-1]]) if len(before) else 0)
    return counts


def _km_section(days: np.ndarray, events: np.ndarray, high: np.ndarray) -> tuple[dict, float | None]:
    """Kaplan-Meier step functions of the low and high risk groups, numbers at risk every year and the log-rank p."""
    groups = {"low": ~high, "high": high}
    empty = [name for name, members in groups.items() if not members.any()]
    if empty:
        return _not_evaluable(f"survival: the {' and '.join(empty)} risk group is empty "
                              f"({int(high.sum())} high / {int((~high).sum())} low)"), None
    fitters = {name: _km(days[members], events[members]) for name, members in groups.items()}
    section: dict = {"status": "ok"}
    for name, fitter in fitters.items():
        curve = fitter.survival_function_
        section[name] = {"times": [float(t) for t in curve.index.to_numpy(np.float64)],
                         "survival": [float(s) for s in curve.iloc[:, 0].to_numpy(np.float64)],
                         "n": int(groups[name].sum()), "events": int(events[groups[name]].sum())}
    ticks = np.arange(0.0, float(days.max()) + 1e-9, AT_RISK_STEP_DAYS)
    section["at_risk"] = {"times": [int(t) for t in ticks],
                          **{name: _at_risk(fitter, ticks) for name, fitter in fitters.items()}}
    test = logrank_test(days[high], days[~high], events[high], events[~high])
    return section, safe(test.p_value)


def _observed_at(fitter: KaplanMeierFitter, t: float) -> tuple[float, list[float | None]]:
    """Kaplan-Meier S(t) and its pointwise 95% interval (lifelines' exponential Greenwood) at ``t``."""
    interval = fitter.confidence_interval_survival_function_
    row = interval.loc[:t].iloc[-1]
    return float(fitter.predict(t)), [safe(row.iloc[0]), safe(row.iloc[1])]


def _calibration_at(t: float, predicted: np.ndarray, days: np.ndarray, events: np.ndarray) -> dict:
    """Cases in tertiles of predicted S(t) (lowest first): mean predicted vs Kaplan-Meier observed S(t).

    A group whose Kaplan-Meier curve stops above 0 before ``t`` (its longest follow-up is censored) says nothing
    about S(t): not evaluable. One that reached 0 (everyone died) observes S(t) = 0."""
    if len(predicted) < CALIBRATION_GROUPS:
        return _not_evaluable(f"calibration at {t:g} days: {len(predicted)} cases with a held-out risk, need "
                              f"{CALIBRATION_GROUPS}")
    order = np.argsort(predicted, kind="stable")
    groups = []
    for number, members in enumerate(np.array_split(order, CALIBRATION_GROUPS), start=1):
        entry: dict = {"predicted": safe(predicted[members].mean()), "n": int(len(members))}
        fitter = _km(days[members], events[members])
        follow_up = float(days[members].max())
        if follow_up < t and float(fitter.predict(follow_up)) > 0:
            groups.append({"status": "not evaluable", **entry,
                           "reason": f"calibration at {t:g} days, group {number} of {CALIBRATION_GROUPS} "
                                     f"({len(members)} cases): follow-up ends (censored) at {follow_up:g} days"})
            continue
        observed, ci = _observed_at(fitter, t)
        groups.append({"status": "ok", **entry, "observed": safe(observed), "observed_ci": ci})
    if all(group["status"] != "ok" for group in groups):
        return _not_evaluable("; ".join(group["reason"] for group in groups))
    return {"status": "ok", "groups": groups}


def evaluate_survival(features: np.ndarray, data: EvalData, folds: Folds, *, seed: int = 0,
                      n_boot: int = 1000) -> tuple[dict, np.ndarray]:
    """``results[label]["survival"]`` and the (N,) out-of-fold risk (NaN for cases no fold tested).

    Cases: the survival subgroup with known days and event. Each outer fold standardises its training rows, fits
    the Cox head of ``fit-heads`` on its training cases and gives its test cases risk = x @ coef - offset; high
    risk means above the fold's TRAINING median risk. A fold that cannot be fitted is skipped and listed.
    """
    n_all = len(data)
    risk_out = np.full(n_all, np.nan)
    if data.os_days is None or data.os_event is None:
        return _not_evaluable("survival: no os_days/os_event columns"), risk_out
    features = np.asarray(features, np.float64)
    days = np.asarray(data.os_days, np.float64)
    events = np.asarray(data.os_event, np.float64)
    subjects = np.asarray(data.subjects)  # fit_cox's own folds keep a subject's scans together
    cases = np.asarray(data.subgroup, bool) & ~np.isnan(days) & ~np.isnan(events)
    n_cases, n_events = int(cases.sum()), int(events[cases].sum())
    header = {"subgroup": data.subgroup_label, "n": n_cases, "events": n_events}
    if n_cases == 0:
        return {**_not_evaluable(f"survival: no case of {data.subgroup_label} has both os_days and os_event"),
                **header}, risk_out

    high_out = np.zeros(n_all, bool)
    survival_out = {t: np.full(n_all, np.nan) for t in CALIBRATION_DAYS}
    folds_not_evaluable = []
    for number, (train, test) in enumerate(folds, start=1):
        train, test = np.asarray(train, int), np.asarray(test, int)
        test = test[cases[test]]
        if len(test) == 0:
            continue
        mean, scale = fit_scaling(features[train])
        fit_rows = train[cases[train]]
        try:
            head: CoxHead = fit_cox((features[fit_rows] - mean) / scale, days[fit_rows], events[fit_rows],
                                    folds=HEAD_FOLDS, seed=seed, subjects=subjects[fit_rows])
        except ValueError as error:
            folds_not_evaluable.append(f"fold {number}: {error}")
            continue
        risk = (features[test] - mean) / scale @ head.coef - head.offset
        risk_out[test] = risk
        high_out[test] = risk > head.median_risk
        for t in CALIBRATION_DAYS:
            survival_out[t][test] = [head.survival_at(r, t) for r in risk]

    tested = ~np.isnan(risk_out)
    if not tested.any():
        reason = "; ".join(folds_not_evaluable) or "no case of the survival analysis is in a test fold"
        return {**_not_evaluable(f"survival: no fold could be evaluated: {reason}"), **header,
                "folds_not_evaluable": folds_not_evaluable}, risk_out

    t_days, t_events, t_risk, t_high = days[tested], events[tested].astype(int), risk_out[tested], high_out[tested]
    pooled = _c_index_entry(t_days, t_risk, t_events, "all tested cases", n_boot, seed)
    if pooled["status"] != "ok":
        return {**_not_evaluable(pooled["reason"]), **header, "folds_not_evaluable": folds_not_evaluable}, risk_out
    tested_sites = np.asarray(data.sites, dtype=object)[tested]
    sites = {site: _c_index_entry(t_days[tested_sites == site], t_risk[tested_sites == site],
                                  t_events[tested_sites == site], f"site {site}", n_boot, seed)
             for site in sorted(set(tested_sites.tolist()))}
    km, logrank_p = _km_section(t_days, t_events, t_high)
    calibration = {str(t): _calibration_at(t, survival_out[t][tested], t_days, t_events) for t in CALIBRATION_DAYS}
    return {"status": "ok", **header, "n_tested": int(tested.sum()), "pooled": pooled, "sites": sites,
            "logrank_p": logrank_p, "km": km, "calibration": calibration,
            "folds_not_evaluable": folds_not_evaluable}, risk_out
