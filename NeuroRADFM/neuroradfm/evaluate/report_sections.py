"""The report's "Sequence subsets" and "Robustness to image artifacts" sections, from metrics.json alone (as every
other section): the blocks ``sequence_subsets`` (``subset_eval.subset_section``) and ``robustness``
(``robustness.robustness_sweep``, drawn with its own ``robustness_figure``)."""

from __future__ import annotations

from neuroradfm import subsets
from neuroradfm.evaluate.report_figures import _draw
from neuroradfm.evaluate.report_format import (
    _absent,
    _bundles,
    _e,
    _f,
    _i,
    _is_number,
    _marker_name,
    _marker_order,
    _ne,
    _note,
    _ok,
    _plain,
    _result,
    _table,
)
from neuroradfm.evaluate.robustness_plot import robustness_figure


def _signed(value: object) -> str:
    return f"{float(value):+.3f}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _subset_label(sequences: object) -> str:
    try:
        return subsets.label(sequences)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return str(sequences)


def _strength(value: object) -> str:
    return f"{float(value):g}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _auc_cell(auc: object, delta: object, reference: bool) -> str:
    if not _is_number(auc):
        return '<span class="ne">n/a</span>'
    return _f(auc) if reference else f'{_f(auc)} <span class="muted">({_signed(delta)})</span>'


def _bundle_blocks(metrics: dict, section: str) -> list[tuple[str, object]]:
    """(label, block) of the bundles that have the section (feature sets of manifest columns have no images)."""
    return [(label, _result(metrics, label, section)) for label, bundle in _bundles(metrics)
            if bundle.get("kind") != "columns" and _result(metrics, label, section) is not None]


def subsets_section(metrics: dict) -> str:
    """Per bundle: one row per sequence subset (all four first), one column per marker and the mean, each AUC with
    its difference to the all-four row."""
    blocks = _bundle_blocks(metrics, "sequence_subsets")
    if not blocks:
        return _absent("Not computed (evaluate --subsets none, or no bundle).")
    out = [_note("Marker probes fitted on the all-four embeddings of each outer training fold (as the shipped "
                 "heads), applied to the held-out cases with only the subset's sequences (the others zero, as "
                 "preprocessing leaves a missing sequence): the same cases and folds as the marker table. In "
                 "brackets: the difference to all four.")]
    for label, block in blocks:
        out.append(f"<h3>Bundle {_e(label)}</h3>")
        if not isinstance(block, dict) or not _ok(block):
            out.append(_absent(_ne(block)))
            continue
        trained = _plain([_subset_label(s) for s in block.get("trained_for") or []])
        left = block.get("left_out") or 0
        out.append(_note(f"{_i(block.get('cases'))} cases with all four sequences"
                         + (f"; {_i(left)} left out ({_e(block.get('left_out_reason'))})" if left else "")
                         + f"; mode {_e(block.get('mode'))}; the bundle was trained for: {trained}."))
        keys = _marker_order(block.get("markers") or [])
        rows = []
        for row in block.get("subsets") or []:
            reference = list(row.get("sequences") or []) == ["t1", "t1ce", "t2", "flair"]
            auc, delta = row.get("auc") or {}, row.get("delta_auc") or {}
            rows.append([_e(row.get("label")), "yes" if row.get("trained") else "no",
                         *(_auc_cell(auc.get(k), delta.get(k), reference) for k in keys),
                         _auc_cell(row.get("mean_auc"), row.get("mean_delta_auc"), reference)])
        out.append(_table(["subset", "trained for", *(_marker_name(k) for k in keys), "mean"], rows, numeric_from=2))
    return "".join(out)


def robustness_section(metrics: dict) -> str:
    """Per bundle: the sweep's figure (one panel per metric, one line per artifact family) and its table."""
    blocks = _bundle_blocks(metrics, "robustness")
    if not blocks:
        return _absent("Not computed: run evaluate with --robustness.")
    out = []
    for label, block in blocks:
        out.append(f"<h3>Bundle {_e(label)}</h3>")
        if not isinstance(block, dict) or not _ok(block):
            out.append(_absent(_ne(block)))
            continue
        clean = block.get("clean") or {}
        out.append(_note(
            f"{_i(len(block.get('case_ids') or []))} of {_i(block.get('cases_in_evaluation'))} cases; artifacts "
            f"applied to {_e(block.get('applied_to'))}; the bundle's own heads, nothing refitted. Clean: mean marker "
            f"AUC {_f(clean.get('mean_auc'))}, c-index {_f(clean.get('c_index'))}, mean OOD distance "
            f"{_f(clean.get('ood_mean'), 1)} (threshold {_f(clean.get('ood_threshold'), 1)}), mean cosine between "
            f"two different clean cases {_f(clean.get('cosine_between_cases'))}."))
        out.append(_draw(lambda b=block: robustness_figure(b), f"robustness to image artifacts, bundle {label}",
                         "One panel per metric against the artifact level (0 = none), one line per family."))
        rows = [[_e(r.get("family")), _i(r.get("level")), _strength(r.get("strength")),
                 _signed(r.get("mean_delta_auc")), _signed(r.get("delta_c_index")),
                 f"{_f(r.get('cosine_mean'))} / {_f(r.get('cosine_min'))}",
                 _f(r.get("ood_mean"), 1), _f(r.get("ood_flagged"), 2), _f(r.get("ood_above_clean"), 2)]
                for r in block.get("rows") or [] if r.get("level") != 0]
        out.append(_table(["family", "level", "strength", "mean ΔAUC", "Δ c-index", "cosine to clean (mean / min)",
                           "OOD distance (mean)", "OOD flagged", "OOD above clean"], rows, numeric_from=1))
        strongest = [r for r in block.get("rows") or [] if r.get("level") == max(block["settings"]["levels"])]
        keys = _marker_order(clean.get("auc") or {})
        if keys and strongest and strongest[0].get("level"):
            out.append(f"<h4>ΔAUC per marker at level {_i(strongest[0]['level'])}</h4>")
            out.append(_table(["marker", "clean AUC", *(str(r.get("family")) for r in strongest)],
                              [[_e(_marker_name(k)), _f(clean["auc"].get(k)),
                                *(_signed((r.get("delta_auc") or {}).get(k)) for r in strongest)] for k in keys]))
        reasons = block.get("not_evaluable") or {}
        if reasons:
            out.append(_note("Not evaluable: " + "; ".join(_e(r) for r in reasons.values()) + "."))
    return "".join(out)
