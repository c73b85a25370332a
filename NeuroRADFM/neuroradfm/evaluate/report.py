"""The evaluation report: one offline HTML page, made from metrics.json alone (its figures: report_figures; the same
numbers as CSV tables: report_tables).

Made from the dict alone so that a saved metrics.json can be re-rendered anywhere (no images, embeddings or bundles
needed) and the page shows exactly what the JSON holds. The page loads nothing: figures are matplotlib PNGs embedded
as data: URIs, the CSS is inline and a Content-Security-Policy forbids any fetch or script, so it opens the same on
an air-gapped workstation. Every string taken from the metrics (case ids, sites, bundle names, reasons) is
HTML-escaped. Figures use matplotlib's object API with the Agg canvas (never pyplot), so a caller's backend is
left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from neuroradfm.evaluate.report_figures import (
    _calibration_figure,
    _draw,
    _efficiency_figure,
    _horizon_title,
    _km_figure,
    _reliability_figure,
    _scatter_figure,
)
from neuroradfm.evaluate.report_format import (
    CONTINUOUS_NAMES,
    _absent,
    _bundles,
    _e,
    _f,
    _i,
    _is_number,
    _key_value_table,
    _marker_cell,
    _marker_order,
    _ne,
    _note,
    _ok,
    _p,
    _plain,
    _result,
    _sort_keys,
    _table,
    _with_ci,
)
from neuroradfm.evaluate.report_sections import robustness_section, subsets_section

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("markers", "Molecular markers"),
    ("sequence-subsets", "Sequence subsets"),
    ("continuous", "Continuous markers"),
    ("survival", "Survival"),
    ("site-invariance", "Site invariance"),
    ("comparison", "Bundle comparison"),
    ("data-efficiency", "Data efficiency"),
    ("cam-localisation", "Grad-CAM localisation"),
    ("robustness", "Robustness to image artifacts"),
    ("definitions", "Definitions"),
)
"""(id, heading) of every section of the page, in page order."""

CSS = """
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;font-size:14px;color:#1a1a1a;background:#fff;margin:0}
main{max-width:1320px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}
h2{font-size:20px;border-bottom:2px solid #2b5d8a;padding-bottom:4px;margin-top:36px;color:#2b5d8a}
h3{font-size:16px;margin:22px 0 6px}
h4{font-size:14px;margin:14px 0 4px}
nav{background:#eef3f8;padding:6px 10px;border-radius:4px;margin:8px 0 0}
nav a{margin-right:14px;color:#2b5d8a;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #c8d0d8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef3f8;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
.ne{color:#8a5a00;font-style:italic}
.muted{color:#666;font-weight:normal}
.note{color:#444;margin:4px 0}
code{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
figure{margin:8px 0 14px}
figure img{max-width:100%;height:auto;border:1px solid #e2e6ea}
figcaption{font-size:12px;color:#555}
dl.defs dt{font-weight:600;margin-top:6px}
dl.defs dd{margin:0 0 0 18px}
.grid{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
"""




# ------------------------------------------------------------------------------------------------ sections
def _bundle_heading(label: str, bundle: dict) -> str:
    name = bundle.get("name")
    extra = f' <span class="muted">{_e(name)}</span>' if name and name != label else ""
    return f"<h3>Bundle {_e(label)}{extra}</h3>"


def _sites(metrics: dict, extra: Iterable[str] = ()) -> list[str]:
    listed = list((metrics.get("data") or {}).get("sites") or {})
    return listed + [s for s in dict.fromkeys(extra) if s not in listed]


def _summary(metrics: dict) -> str:
    data = metrics.get("data") or {}
    out = ["<h3>Data</h3>"]
    failed = data.get("failed_cases") or {}
    rows = [
        ("manifest", _e(data.get("manifest"))),
        ("manifest path", f"<code>{_e(data.get('manifest_path'))}</code>"),
        ("manifest hash", f"<code>{_e(data.get('manifest_hash'))}</code>"),
        ("cases used / in manifest", f"{_i(data.get('cases_used'))} / {_i(data.get('cases_in_manifest'))}"),
        ("subjects", _i(data.get("subjects"))),
        ("failed cases", str(len(failed))),
        ("marker columns", _plain(data.get("marker_columns"))),
    ]
    out.append(_key_value_table(rows))
    sites = data.get("sites") or {}
    if sites:
        out.append(_table(["site", "cases"], [[_e(s), _i(n)] for s, n in sites.items()]))
    if failed:
        opened = " open" if len(failed) <= 10 else ""
        out.append(f"<details{opened}><summary>{len(failed)} failed case{'s' if len(failed) != 1 else ''}"
                   "</summary>" + _table(["case", "reason"], [[_e(c), _e(r)] for c, r in failed.items()], 99)
                   + "</details>")
    notes = data.get("notes") or []
    if notes:
        out.append("<h4>Notes</h4><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")

    out.append("<h3>Bundles</h3>")
    bundles = [b for _, b in _bundles(metrics)]
    if bundles:
        out.append(_table(
            ["label", "name", "kind", "embedding dim", "heads", "content hash", "failed cases"],
            [[_e(b.get("label")), _e(b.get("name")), _e(b.get("kind")), _i(b.get("embedding_dim")),
              _e(b.get("heads")), f"<code>{_e(b.get('content_hash'))}</code>", str(len(b.get("failed_cases") or {}))]
             for b in bundles], numeric_from=99))
        for b in bundles:
            if b.get("failed_cases"):
                out.append(_note(f"Bundle {_e(b.get('label'))} failed on: " + "; ".join(
                    f"{_e(c)} ({_e(r)})" for c, r in b["failed_cases"].items())))
    else:
        out.append(_absent("No bundles in metrics.json."))

    split = metrics.get("split") or {}
    out.append("<h3>Split</h3>")
    if split:
        sizes = split.get("fold_sizes") or []
        rows = [("kind", _e(split.get("kind"))), ("description", _e(split.get("description"))),
                ("folds", _i(split.get("folds"))), ("seed", _e(split.get("seed"))),
                ("split column", _plain(split.get("column"))), ("group column", _plain(split.get("group_column"))),
                ("fold sizes (train / test)", ", ".join(f"{_i(t[0])} / {_i(t[1])}" for t in sizes
                                                        if isinstance(t, (list, tuple)) and len(t) == 2) or "n/a")]
        if split.get("test_sites"):
            rows.append(("test sites", _plain(split.get("test_sites"))))
        out.append(_key_value_table(rows))
    else:
        out.append(_absent("No split recorded in metrics.json."))
    out.append('<div class="grid">')
    for title, key in (("Seeds", "seeds"), ("Settings", "settings"), ("Software", "software")):
        block = metrics.get(key) or {}
        if block:
            out.append(f"<div><h3>{title}</h3>{_key_value_table((str(k), _plain(v)) for k, v in block.items())}"
                       "</div>")
    out.append("</div>")
    if metrics.get("command"):
        out.append(_note(f"Command: <code>{_e(metrics['command'])}</code>"))
    return "".join(out)


def _marker_row(key: str, entry: object) -> list[str]:
    pooled = entry.get("pooled") if _ok(entry) else entry  # type: ignore[union-attr]
    if not (_ok(entry) and _ok(pooled)):
        return [_marker_cell(key), _ne(pooled)]
    return [_marker_cell(key), _with_ci(pooled.get("auc"), pooled.get("auc_ci")), _f(pooled.get("balanced_accuracy")),
            _f(pooled.get("sensitivity")), _f(pooled.get("specificity")), _f(pooled.get("brier")),
            _f(pooled.get("ece")), f"{_i(pooled.get('n_pos'))} / {_i(pooled.get('n_neg'))}"]


def _site_cell(entry: object, value_key: str, ci_key: str, count: str) -> str:
    if entry is None:
        return '<span class="ne">not reported</span>'
    if not _ok(entry):
        return _ne(entry)
    return f'{_with_ci(entry.get(value_key), entry.get(ci_key))}<br><span class="muted">{count}</span>'


def _markers(metrics: dict) -> str:
    out = []
    for label, bundle in _bundles(metrics):
        out.append(_bundle_heading(label, bundle))
        block = _result(metrics, label, "markers")
        if isinstance(block, dict) and "status" in block and not _ok(block):
            out.append(_absent(_ne(block)))
            continue
        if not isinstance(block, dict) or not block:
            out.append(_absent("No marker results for this bundle (no marker column in the manifest)."))
            continue
        keys = _marker_order(block)
        out.append("<h4>Pooled over test folds</h4>")
        out.append(_table(["marker", "AUC [95% CI]", "balanced accuracy", "sensitivity", "specificity", "Brier",
                           "ECE", "n pos / neg"], [_marker_row(k, block[k]) for k in keys]))
        fold_notes = [(k, n) for k in keys if _ok(block[k]) for n in block[k].get("folds_not_evaluable") or []]
        if fold_notes:
            out.append("<p class=\"note\">Folds not evaluable:</p><ul>" + "".join(
                f'<li><span class="ne">{_e(k)}: {_e(n)}</span></li>' for k, n in fold_notes) + "</ul>")
        site_names = _sites(metrics, [s for k in keys if _ok(block[k]) for s in block[k].get("sites") or {}])
        if site_names:
            rows = []
            for k in keys:
                if not _ok(block[k]):
                    rows.append([_marker_cell(k), _ne(block[k])])
                    continue
                per_site = block[k].get("sites") or {}
                rows.append([_marker_cell(k), *(
                    _site_cell(per_site.get(s), "auc", "auc_ci",
                               f"n={_i((per_site.get(s) or {}).get('n'))} ({_i((per_site.get(s) or {}).get('n_pos'))}"
                               f"/{_i((per_site.get(s) or {}).get('n_neg'))})") for s in site_names)])
            out.append("<h4>AUC per site [95% CI]</h4>")
            out.append(_table(["marker", *site_names], rows))
        panels = [(k, block[k]["pooled"]) for k in keys if _ok(block[k]) and _ok(block[k].get("pooled"))
                  and isinstance(block[k]["pooled"].get("reliability"), dict)
                  and block[k]["pooled"]["reliability"].get("mean_predicted")]
        if panels:
            out.append(_draw(lambda p=panels: _reliability_figure(p), f"reliability diagrams, bundle {label}",
                             "Reliability diagrams (pooled test predictions, equal-width bins; point size = cases "
                             "in the bin; dashed = perfect calibration)."))
        else:
            out.append(_absent("No reliability diagram: no marker with pooled calibration data."))
    return "".join(out) or _absent("No bundles in metrics.json.")


def _continuous(metrics: dict) -> str:
    out = []
    for label, bundle in _bundles(metrics):
        out.append(_bundle_heading(label, bundle))
        block = _result(metrics, label, "continuous")
        if not isinstance(block, dict) or not block:
            out.append(_absent("Not computed: no continuous column (ki67_index, tp53_expression) in the manifest."))
            continue
        if "status" in block and not _ok(block):
            out.append(_absent(_ne(block)))
            continue
        keys = list(block)
        site_names = _sites(metrics, [s for k in keys if _ok(block[k]) for s in block[k].get("sites") or {}])
        rows = []
        for k in keys:
            name = _e(CONTINUOUS_NAMES.get(k, k))
            entry = block[k]
            if not _ok(entry):
                rows.append([name, _ne(entry)])
                continue
            per_site = entry.get("sites") or {}
            rows.append([name, _i(entry.get("n")), _with_ci(entry.get("spearman"), entry.get("spearman_ci")),
                         _p(entry.get("p_value")), *(
                             _site_cell(per_site.get(s), "spearman", "spearman_ci",
                                        f"n={_i((per_site.get(s) or {}).get('n'))}") for s in site_names)])
        out.append(_table(["variable", "n", "Spearman rho [95% CI]", "p", *site_names], rows))
    return "".join(out) or _absent("No bundles in metrics.json.")


def _survival(metrics: dict) -> str:
    out = []
    for label, bundle in _bundles(metrics):
        out.append(_bundle_heading(label, bundle))
        block = _result(metrics, label, "survival")
        if not isinstance(block, dict) or not block:
            out.append(_absent("Not computed: the manifest has no survival columns (os_days, os_event)."))
            continue
        if not _ok(block):
            out.append(_absent(_ne(block)))
            continue
        pooled = block.get("pooled") or {}
        out.append(_note(f"Subgroup: <b>{_e(block.get('subgroup'))}</b>; n = {_i(block.get('n'))}, events = "
                         f"{_i(block.get('events'))}; log-rank p (high vs low predicted risk) = "
                         f"{_p(block.get('logrank_p'))}."))
        rows = [["pooled", _i(pooled.get("n", block.get("n"))), _i(pooled.get("events", block.get("events"))),
                 _with_ci(pooled.get("c_index"), pooled.get("c_index_ci"))] if _ok(pooled)
                else ["pooled", _ne(pooled)]]
        for site, entry in (block.get("sites") or {}).items():
            rows.append([_e(site), _ne(entry)] if not _ok(entry) else
                        [_e(site), _i(entry.get("n")), _i(entry.get("events")),
                         _with_ci(entry.get("c_index"), entry.get("c_index_ci"))])
        out.append(_table(["scope", "n", "events", "c-index [95% CI]"], rows))
        km = block.get("km")
        if isinstance(km, dict) and (km.get("low") or km.get("high")):
            out.append(_draw(lambda k=km: _km_figure(k), f"Kaplan-Meier curves, bundle {label}",
                             "Kaplan–Meier overall survival of the cases with high and low predicted risk, "
                             "with the number at risk under the plot."))
            at_risk = km.get("at_risk") or {}
            times = at_risk.get("times") or []
            if times:
                out.append(_table(["at risk / days", *[_i(t) for t in times]],
                                  [[group, *[_i(c) for c in at_risk.get(group) or []]] for group in ("low", "high")]))
        elif isinstance(km, dict) and not _ok(km):
            out.append(_absent(f"Kaplan–Meier curves: {_ne(km)}"))
        else:
            out.append(_absent("No Kaplan–Meier data in metrics.json."))
        calibration = block.get("calibration")
        if isinstance(calibration, dict) and calibration:
            out.append(_draw(lambda c=calibration: _calibration_figure(c), f"survival calibration, bundle {label}",
                             "Calibration: predicted vs observed (Kaplan–Meier) probability per group of cases, "
                             "with 95% CI; dashed = perfect calibration."))
            for key in _sort_keys(calibration):
                if not _ok(calibration[key]):
                    out.append(_note(f"Calibration at {_e(_horizon_title(key))}: {_ne(calibration[key])}"))
        else:
            out.append(_absent("No calibration data in metrics.json."))
    return "".join(out) or _absent("No bundles in metrics.json.")


def _site_invariance(metrics: dict) -> str:
    out = []
    sites = (metrics.get("data") or {}).get("case_sites")
    for label, bundle in _bundles(metrics):
        out.append(_bundle_heading(label, bundle))
        block = _result(metrics, label, "site_invariance")
        if not isinstance(block, dict) or not block:
            out.append(_absent("Not computed for this bundle (no site-invariance block in metrics.json)."))
            continue
        if not _ok(block):
            out.append(_absent(_ne(block)))
        else:
            accuracy, chance = block.get("site_classifier_balanced_accuracy"), block.get("chance")
            above = (f"{float(accuracy) - float(chance):+.3f}" if _is_number(accuracy) and _is_number(chance)
                     else "n/a")
            out.append(_table(["silhouette by site (PCA)", "PCA components", "site-classifier balanced accuracy",
                               "chance", "above chance"],
                              [[_f(block.get("silhouette_pca")), _i(block.get("pca_components")), _f(accuracy),
                                _f(chance), above]], numeric_from=0))
        if block.get("pca_2d") or block.get("tsne_2d"):
            colour = str(block.get("colour_marker") or "colour marker")
            out.append(_draw(lambda b=block, c=colour: _scatter_figure(b, sites, c),
                             f"PCA and t-SNE of the embeddings, bundle {label}",
                             "Embeddings in 2-D (PCA, t-SNE), coloured by site (left) and by the colour marker "
                             "(right; grey = unknown)."))
        else:
            out.append(_absent("No 2-D coordinates in metrics.json."))
    return "".join(out) or _absent("No bundles in metrics.json.")


def _test_line(name: str, entry: object) -> str:
    if not _ok(entry):
        return _note(f"{name}: {_ne(entry)}")
    return _note(f"{name}: statistic {_f(entry.get('statistic'))}, p = {_p(entry.get('p_value'))}, "
                 f"n markers = {_i(entry.get('n_markers'))}")


def _summary_value(value: object) -> str:
    return _f(value) if _is_number(value) or value is None else _e(value)


def _comparison(metrics: dict) -> str:
    pairs = metrics.get("comparison")
    if not pairs:
        n = len(_bundles(metrics))
        return _absent("Only one bundle evaluated: nothing to compare." if n <= 1 else
                       "No comparison in metrics.json.")
    out = []
    for pair in pairs:
        a, b = pair.get("a"), pair.get("b")
        out.append(f"<h3>{_e(a)} vs {_e(b)}</h3>")
        if "status" in pair and not _ok(pair):
            out.append(_absent(_ne(pair)))
            continue
        block = pair.get("markers") or {}
        rows = []
        for key in _marker_order(block):
            entry = block[key]
            rows.append([_marker_cell(key), _ne(entry)] if not _ok(entry) else
                        [_marker_cell(key), _i(entry.get("n")), _f(entry.get("auc_a")), _f(entry.get("auc_b")),
                         _with_ci(entry.get("difference"), entry.get("ci"))])
        if rows:
            out.append(_table(["marker", "n", f"AUC {a}", f"AUC {b}", f"difference {a} − {b} [95% CI]"], rows))
        else:
            out.append(_absent("No per-marker comparison."))
        out.append(_test_line("Wilcoxon signed-rank test over markers", pair.get("wilcoxon")))
        out.append(_test_line("Paired t-test over markers", pair.get("t_test")))
        summary = pair.get("summary") or {}
        if summary:
            out.append(_table(["metric", str(a), str(b)],
                              [[_e(m), _summary_value((v or {}).get("a")), _summary_value((v or {}).get("b"))]
                               for m, v in summary.items()]))
    return "".join(out)


def _data_efficiency(metrics: dict) -> str:
    bundles = _bundles(metrics)
    blocks = {label: _result(metrics, label, "data_efficiency") for label, _ in bundles}
    blocks = {k: v for k, v in blocks.items() if isinstance(v, dict) and v}
    if not blocks:
        return _absent("Not computed: no data-efficiency results in metrics.json.")
    out = []
    for label, block in blocks.items():
        if "status" in block and not _ok(block):
            out.append(_note(f"Bundle {_e(label)}: {_ne(block)}"))
    keys = _marker_order(dict.fromkeys(k for b in blocks.values() if not ("status" in b and not _ok(b)) for k in b))
    for key in keys:
        out.append(f"<h3>{_marker_cell(key)}</h3>")
        curves = [(label, b[key]) for label, b in blocks.items() if isinstance(b.get(key), dict) and _ok(b[key])]
        for label, b in blocks.items():
            if key in b and not _ok(b[key]):
                out.append(_note(f"Bundle {_e(label)}: {_ne(b[key])}"))
        if curves:
            out.append(_draw(lambda c=curves: _efficiency_figure(c), f"data efficiency, {key}",
                             "Test AUC of probes trained on fewer labelled cases: mean ± sd over repeated draws."))
    return "".join(out)


def _cam(metrics: dict) -> str:
    rows = []
    for label, bundle in _bundles(metrics):
        block = _result(metrics, label, "cam_localisation")
        if not isinstance(block, dict) or not block:
            why = ("embedding columns have no heads" if bundle.get("kind") == "columns" or bundle.get("heads") is False
                   else "no Grad-CAM block in metrics.json")
            rows.append([_e(label), f'<span class="ne">not computed ({_e(why)})</span>'])
        elif not _ok(block):
            rows.append([_e(label), _ne(block)])
        else:
            heads = block.get("heads") or {}
            if not heads:
                rows.append([_e(label), '<span class="ne">no heads listed</span>'])
            for head, entry in heads.items():
                rows.append([_e(label), _marker_cell(head), _ne(entry)] if not _ok(entry) else
                            [_e(label), _marker_cell(head), _f(entry.get("peak_in_tumour")),
                             _f(entry.get("mass_in_tumour")), _i(entry.get("n")), _f(block.get("dilation_mm"), 1)])
    if not rows:
        return _absent("No bundles in metrics.json.")
    return _table(["bundle", "head", "peak in tumour (fraction)", "mass in tumour", "n", "dilation (mm)"], rows,
                  numeric_from=2)


def definitions(n_boot: object = None) -> list[tuple[str, str]]:
    """(term, plain-text definition) of every number in the report; the page and the docs share these lines."""
    draws = f"{int(n_boot)} " if _is_number(n_boot) else ""
    return [
        ("AUC", "Area under the ROC curve of the pooled out-of-fold probabilities: the chance that a random "
                "positive case scores above a random negative one (0.5 = chance)."),
        ("95% CI", f"Percentile interval over {draws}bootstrap resamples of the test cases; draws where the metric "
                   "cannot be computed are skipped, and no interval is given when fewer than half succeed."),
        ("Balanced accuracy", "Mean of sensitivity and specificity at the decision threshold chosen on each "
                              "training fold."),
        ("Sensitivity / specificity", "Fraction of positive / negative cases classified correctly at that "
                                      "threshold."),
        ("Brier score", "Mean squared difference between predicted probability and the 0/1 label (lower is "
                        "better)."),
        ("ECE", "Expected calibration error: over 10 equal-width probability bins, the case-weighted mean of "
                "|observed fraction positive − mean predicted probability|."),
        ("Reliability diagram", "Observed fraction of positives against mean predicted probability per bin."),
        ("Per-site AUC", "AUC of the pooled out-of-fold predictions restricted to one site's cases."),
        ("Spearman rho", "Rank correlation between the predicted score and the measured continuous value."),
        ("c-index", "Harrell's concordance index of the predicted risk with overall survival: the fraction of "
                    "comparable pairs in which the case with the higher risk dies first (0.5 = chance)."),
        ("Log-rank p", "Log-rank test between the Kaplan–Meier curves of the high and low predicted-risk groups."),
        ("Kaplan–Meier curves", "Survival estimates of the cases with high and low predicted risk; the number "
                                "at risk is the number of cases still followed at each time."),
        ("Survival calibration", "Cases grouped by predicted probability at the horizon (1 and 2 years); the "
                                 "observed probability of each group is its Kaplan–Meier estimate, with 95% CI."),
        ("Silhouette by site", "Mean silhouette of the embeddings (first PCA components) with the sites as "
                               "clusters: near 0 or below means the sites do not form separate clusters."),
        ("Site-classifier balanced accuracy", "Cross-validated balanced accuracy of a classifier predicting the "
                                              "site from the embedding; chance is 1 / number of sites. Near "
                                              "chance = site-invariant embedding."),
        ("PCA / t-SNE", "2-D projections of the embeddings (t-SNE with a fixed seed) for visual inspection only."),
        ("AUC difference", "AUC of bundle a minus bundle b on the same cases, CI from a paired bootstrap "
                           "(the same resampled cases for both)."),
        ("Wilcoxon / t-test", "Paired tests over markers of the per-marker AUCs of two bundles."),
        ("Data efficiency", "Test AUC of probes trained on k labelled cases per class or on a fraction of the "
                            "training cases, mean ± sd over repeated random draws."),
        ("Peak in tumour", "Fraction of cases whose Grad-CAM peak voxel lies inside the (dilated) tumour mask."),
        ("Mass in tumour", "Mean fraction of the Grad-CAM map's total mass that lies inside the (dilated) tumour "
                           "mask."),
        ("Sequence subsets", "Marker AUC when a case has fewer sequences: probes fitted on the all-four "
                             "embeddings of each training fold, applied to the held-out cases with the other "
                             "sequences zeroed; in brackets the difference to all four."),
        ("Robustness", "The bundle's own heads on artifact-corrupted copies of the cases (graded levels of each "
                       "family, 0 = none): change in marker AUC and c-index, cosine similarity of each embedding "
                       "to its clean embedding, and the OOD distance."),
        ("Not evaluable", "A number that could not be computed (e.g. one class only in a site); the reason names "
                          "the column, marker or site and the counts."),
    ]


def _definitions(metrics: dict) -> str:
    items = definitions((metrics.get("settings") or {}).get("n_boot"))
    return '<dl class="defs">' + "".join(f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in items) + "</dl>"


SECTION_BUILDERS: dict[str, Callable[[dict], str]] = {
    "summary": _summary, "markers": _markers, "continuous": _continuous, "survival": _survival,
    "site-invariance": _site_invariance, "comparison": _comparison, "data-efficiency": _data_efficiency,
    "cam-localisation": _cam, "sequence-subsets": subsets_section, "robustness": robustness_section,
    "definitions": _definitions,
}


def render_report(metrics: dict) -> str:
    """The whole report as one self-contained HTML page (str), from a metrics.json dict."""
    software = metrics.get("software") or {}
    version = software.get("neuroradfm") if isinstance(software, dict) else None
    header = (f"<h1>NeuroRAD-FM evaluation report</h1>"
              f'<p class="muted">Created {_e(metrics.get("created") or "n/a")}'
              + (f"; neuroradfm {_e(version)}" if version else "")
              + f"; format {_e(metrics.get('format'))} v{_e(metrics.get('format_version'))}</p>")
    nav = "<nav>" + "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS) + "</nav>"
    body = []
    for sid, title in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>{SECTION_BUILDERS[sid](metrics)}</section>')
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>NeuroRAD-FM evaluation report</title><style>{CSS}</style></head>"
            f"<body><main>{header}{nav}{''.join(body)}</main></body></html>\n")
