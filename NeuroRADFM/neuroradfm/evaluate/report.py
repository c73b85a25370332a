"""The evaluation report: one offline HTML page and CSV tables, made from metrics.json alone.

Made from the dict alone so that a saved metrics.json can be re-rendered anywhere (no images, embeddings or bundles
needed) and the page shows exactly what the JSON holds. The page loads nothing: figures are matplotlib PNGs embedded
as data: URIs, the CSS is inline and a Content-Security-Policy forbids any fetch or script, so it opens the same on
an air-gapped workstation. Every string taken from the metrics (case ids, sites, bundle names, reasons) is
HTML-escaped. Figures use matplotlib's object API with the Agg canvas (never pyplot), so a caller's backend is
left alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import numbers
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuroradfm.markers import MARKER_KEYS, marker

OK = "ok"
NOT_EVALUABLE = "not evaluable"
DPI = 90
"""Figure resolution: enough to read on screen while a 200-case, 2-bundle, 10-marker page stays ~1 MB."""

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("markers", "Molecular markers"),
    ("continuous", "Continuous markers"),
    ("survival", "Survival"),
    ("site-invariance", "Site invariance"),
    ("comparison", "Bundle comparison"),
    ("data-efficiency", "Data efficiency"),
    ("cam-localisation", "Grad-CAM localisation"),
    ("definitions", "Definitions"),
)
"""(id, heading) of every section of the page, in page order."""

CONTINUOUS_NAMES = {"ki67_index": "Ki-67 index (%)", "tp53_expression": "TP53 expression (IHC %)"}
BUNDLE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LOW_COLOUR, HIGH_COLOUR = "#1f77b4", "#d62728"

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


# ----------------------------------------------------------------------------------------------- formatting
def _e(value: object) -> str:
    """Escaped text of any value from the metrics (None -> empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _f(value: object, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _p(value: object) -> str:
    return f"{float(value):.3g}" if _is_number(value) else "n/a"  # type: ignore[arg-type]


def _i(value: object) -> str:
    return str(int(value)) if _is_number(value) else "n/a"  # type: ignore[call-overload]


def _ci_pair(ci: object) -> tuple[Any, Any]:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return ci[0], ci[1]
    return None, None


def _ci(ci: object) -> str:
    low, high = _ci_pair(ci)
    if _is_number(low) and _is_number(high):
        return f"[{_f(low)}, {_f(high)}]"
    return "[CI n/a]"


def _with_ci(value: object, ci: object) -> str:
    return f"{_f(value)} {_ci(ci)}" if _is_number(value) else "n/a"


def _plain(value: object) -> str:
    """Escaped text of a setting: lists joined, dicts as key: value, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "; ".join(f"{_e(k)}: {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "none"
    return _e(value)


def _ok(entry: object) -> bool:
    """A computed entry: a dict whose status is 'ok' (entries without a status, e.g. a pooled block, count as ok)."""
    return isinstance(entry, dict) and entry.get("status", OK) == OK


def _reason(entry: object) -> str:
    if not isinstance(entry, dict):
        return "not in metrics.json"
    return str(entry.get("reason") or "no reason given")


def _ne(entry: object) -> str:
    """'not evaluable (reason)' (or the entry's own status) as escaped, marked-up text: never a blank cell."""
    status = entry.get("status") if isinstance(entry, dict) else None
    status = status if status and status != OK else NOT_EVALUABLE
    return f'<span class="ne">{_e(status)} ({_e(_reason(entry))})</span>'


def _marker_name(key: str) -> str:
    try:
        return marker(key).label
    except KeyError:
        return key


def _marker_cell(key: str) -> str:
    name = _marker_name(key)
    return _e(key) if name == key else f'{_e(name)} <span class="muted">({_e(key)})</span>'


def _sort_keys(keys: Iterable[str]) -> list[str]:
    """Setting keys ('1', '10', '0.25') in numeric order; others after, as given."""
    def key(text: str) -> tuple[int, float, str]:
        try:
            return 0, float(text), ""
        except ValueError:
            return 1, 0.0, text
    return sorted(keys, key=key)


def _marker_order(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [k for k in MARKER_KEYS if k in keys] + [k for k in keys if k not in MARKER_KEYS]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; ``header`` is plain text (escaped here), row cells are HTML already. A row shorter than the
    header has its last cell spanning the rest (a 'not evaluable (reason)' row)."""
    width = len(header)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for index, cell in enumerate(row):
            span = width - index if index == len(row) - 1 and len(row) < width else 1
            attrs = f' colspan="{span}"' if span > 1 else ""
            if index >= numeric_from and span == 1 and 'class="ne"' not in cell:
                attrs += ' class="num"'
            out.append(f"<td{attrs}>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _key_value_table(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _absent(text: str) -> str:
    return f'<p class="ne">{text}</p>'


# ------------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global backend change."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _mpl(text: object, limit: int = 40) -> str:
    """Metrics text for a figure: '$' escaped (no mathtext from a site name), long names shortened."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _img(figure: Figure, alt: str, caption: str = "") -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _draw(draw: Callable[[], Figure], alt: str, caption: str = "") -> str:
    """A figure, or a sentence saying why it could not be drawn: a malformed block must not lose the whole page."""
    try:
        return _img(draw(), alt, caption)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        return _absent(f"Figure not drawn ({_e(alt)}): {_e(error)}")


def _reliability_figure(panels: list[tuple[str, dict]]) -> Figure:
    columns = min(5, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _figure(2.3 * columns, 2.35 * rows + 0.2)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.set_axis_off()
            continue
        key, pooled = panels[index]
        table = pooled["reliability"]
        counts = np.asarray(table.get("count") or [1] * len(table["mean_predicted"]), float)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
        ax.plot(table["mean_predicted"], table["fraction_positive"], "-", color="#2b5d8a", lw=1)
        ax.scatter(table["mean_predicted"], table["fraction_positive"], s=12 + 60 * counts / max(counts.max(), 1),
                   color="#2b5d8a", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(f"{_mpl(key, 22)}  ECE {_f(pooled.get('ece'))}", fontsize=9)
        ax.tick_params(labelsize=7)
        if index % columns == 0:
            ax.set_ylabel("observed fraction", fontsize=8)
        if index // columns == rows - 1 or index + columns >= len(panels):
            ax.set_xlabel("mean predicted", fontsize=8)
    return figure


def _km_figure(km: dict) -> Figure:
    figure = _figure(7.6, 4.8)
    grid = figure.add_gridspec(2, 1, height_ratios=[4.2, 1])
    ax = figure.add_subplot(grid[0])
    table = figure.add_subplot(grid[1])
    longest = 0.0
    for group, colour in (("low", LOW_COLOUR), ("high", HIGH_COLOUR)):
        curve = km.get(group) or {}
        times = [float(t) for t in curve.get("times") or []]
        survival = [float(s) for s in curve.get("survival") or []]
        if len(times) != len(survival):
            raise ValueError(f"km {group}: {len(times)} times but {len(survival)} survival values")
        if not times:
            continue
        if times[0] > 0:
            times, survival = [0.0, *times], [1.0, *survival]
        ax.step(times, survival, where="post", color=colour, lw=1.6, label=f"{group} predicted risk")
        longest = max(longest, times[-1])
    at_risk = km.get("at_risk") or {}
    ticks = [float(t) for t in at_risk.get("times") or []]
    longest = max([longest, *ticks]) or 1.0
    ax.set_xlim(0, longest * 1.03)
    if ticks:
        ax.set_xticks(ticks, [_i(t) for t in ticks])  # the at-risk counts sit under these ticks
    ax.set_ylim(0, 1.03)
    ax.set_ylabel("overall survival")
    ax.set_xlabel("days")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    table.set_xlim(ax.get_xlim())
    table.set_ylim(-0.6, 1.6)
    for row, (group, colour) in enumerate((("high", HIGH_COLOUR), ("low", LOW_COLOUR))):
        for t, count in zip(ticks, at_risk.get(group) or []):
            table.text(t, row, _i(count), ha="center", va="center", fontsize=8, color=colour)
    table.set_yticks([0, 1], ["high", "low"], fontsize=8)
    table.set_xticks([])
    table.set_title("number at risk", fontsize=8, loc="left")
    for spine in table.spines.values():
        spine.set_visible(False)
    table.tick_params(length=0, pad=14)
    return figure


def _horizon_title(key: str) -> str:
    try:
        days = float(key)
    except ValueError:
        return _mpl(key)
    years = days / 365.0
    if abs(years - round(years)) < 1e-6 and years >= 1:
        return f"{round(years)} year{'s' if round(years) != 1 else ''} ({days:g} days)"
    return f"{days:g} days"


def _calibration_figure(calibration: dict) -> Figure:
    keys = _sort_keys(calibration)
    figure = _figure(3.4 * len(keys), 3.5)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        entry = calibration[key]
        ax.set_title(_horizon_title(key), fontsize=9)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("observed", fontsize=8)
        if not _ok(entry):
            ax.text(0.5, 0.5, "not evaluable:\n" + textwrap.fill(_mpl(_reason(entry), 120), 30),
                    ha="center", va="center", fontsize=7, color="#8a5a00", transform=ax.transAxes)
            continue
        groups = [g for g in entry.get("groups") or [] if _is_number(g.get("predicted"))
                  and _is_number(g.get("observed"))]
        x = np.array([g["predicted"] for g in groups], float)
        y = np.array([g["observed"] for g in groups], float)
        low = np.array([_ci_pair(g.get("observed_ci"))[0] for g in groups], dtype=object)
        high = np.array([_ci_pair(g.get("observed_ci"))[1] for g in groups], dtype=object)
        has = np.array([_is_number(a) and _is_number(b) for a, b in zip(low, high)], bool)
        if has.any():
            errors = np.array([[max(y[i] - float(low[i]), 0.0) for i in np.flatnonzero(has)],
                               [max(float(high[i]) - y[i], 0.0) for i in np.flatnonzero(has)]])
            ax.errorbar(x[has], y[has], yerr=errors, fmt="none", ecolor="#2b5d8a", capsize=3, lw=1)
        ax.plot(x, y, "o-", color="#2b5d8a", ms=5, lw=1)
        for g, xi, yi in zip(groups, x, y):
            if _is_number(g.get("n")):
                ax.annotate(f"n={int(g['n'])}", (xi, yi), textcoords="offset points", xytext=(5, -10), fontsize=6)
    return figure


def _site_colours(sites: Sequence[str]) -> dict[str, Any]:
    names = list(dict.fromkeys(sites))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(index % cmap.N) for index, name in enumerate(names)}


def _scatter_figure(block: dict, sites: list[str] | None, colour_name: str) -> Figure:
    layouts = [(name, block.get(key)) for name, key in (("PCA", "pca_2d"), ("t-SNE", "tsne_2d"))
               if isinstance(block.get(key), list) and block.get(key)]
    figure = _figure(10.5, 4.0 * len(layouts))
    axes = figure.subplots(len(layouts), 2, squeeze=False)
    values = block.get("colour_values")
    for (name, coords), row in zip(layouts, axes):
        xy = np.array([[np.nan, np.nan] if c is None else c for c in coords], float)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"{name} coordinates are not (N, 2)")
        by_site, by_marker = row
        if sites is not None and len(sites) == len(xy):
            colours = _site_colours(sites)
            for site, colour in colours.items():
                members = np.array([s == site for s in sites])
                by_site.scatter(xy[members, 0], xy[members, 1], s=14, color=colour, label=_mpl(site, 24),
                                alpha=0.85, edgecolors="none")
            if len(colours) <= 20:
                by_site.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
                               title="site", title_fontsize=7)
            by_site.set_title(f"{name}, coloured by site", fontsize=9)
        else:
            by_site.scatter(xy[:, 0], xy[:, 1], s=14, color="#7f7f7f", edgecolors="none")
            by_site.set_title(f"{name} (sites of the cases not listed)", fontsize=9)
        if isinstance(values, list) and len(values) == len(xy):
            numeric = np.array([v if _is_number(v) else np.nan for v in values], float)
            known = ~np.isnan(numeric)
            by_marker.scatter(xy[~known, 0], xy[~known, 1], s=10, color="#cccccc", label="unknown",
                              edgecolors="none")
            if set(numeric[known].tolist()) <= {0.0, 1.0}:
                for value, label, colour in ((0.0, "negative (0)", LOW_COLOUR), (1.0, "positive (1)", HIGH_COLOUR)):
                    members = numeric == value
                    by_marker.scatter(xy[members, 0], xy[members, 1], s=14, color=colour, label=label,
                                      alpha=0.85, edgecolors="none")
                by_marker.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
                                 title=_mpl(colour_name, 20), title_fontsize=7)
            else:
                points = by_marker.scatter(xy[known, 0], xy[known, 1], s=14, c=numeric[known], cmap="viridis",
                                           edgecolors="none")
                figure.colorbar(points, ax=by_marker, shrink=0.8)
            by_marker.set_title(f"{name}, coloured by {_mpl(colour_name, 30)}", fontsize=9)
        else:
            by_marker.set_axis_off()
            by_marker.set_title(f"{name}: no colour marker values", fontsize=9)
        for ax in row:
            ax.tick_params(labelsize=7)
    return figure


def _efficiency_figure(curves: list[tuple[str, dict]]) -> Figure:
    """AUC vs labelled cases per class (left) and vs training fraction (right), mean +- sd, a line per bundle."""
    figure = _figure(10.0, 3.3)
    axes = figure.subplots(1, 2)
    for ax, kind, xlabel in ((axes[0], "per_class", "labelled cases per class"),
                             (axes[1], "fraction", "fraction of training data")):
        spans = []
        for index, (label, entry) in enumerate(curves):
            block = entry.get(kind) or {}
            points = [(float(k), block[k]) for k in _sort_keys(block)
                      if _is_number(_as_float(k)) and _ok(block[k]) and _is_number(block[k].get("mean"))]
            if not points:
                continue
            x = np.array([p[0] for p in points])
            mean = np.array([p[1]["mean"] for p in points], float)
            sd = np.array([p[1].get("sd") if _is_number(p[1].get("sd")) else 0.0 for p in points], float)
            colour = BUNDLE_COLOURS[index % len(BUNDLE_COLOURS)]
            ax.plot(x, mean, "o-", color=colour, ms=4, lw=1.4, label=_mpl(label, 24))
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)
            spans.extend(x.tolist())
        ax.axhline(0.5, ls=":", lw=0.8, color="#999999")
        if spans and kind == "per_class" and min(spans) > 0 and max(spans) / min(spans) >= 10:
            ax.set_xscale("log")
            ax.set_xticks(sorted(set(spans)), [f"{v:g}" for v in sorted(set(spans))])
            ax.minorticks_off()
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("AUC (mean ± sd)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if spans:
            ax.legend(fontsize=7, loc="lower right")
    return figure


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ sections
def _bundles(metrics: dict) -> list[tuple[str, dict]]:
    """(label, bundle entry) in metrics order; result labels without a bundle entry are appended."""
    out = [(str(b.get("label")), b) for b in metrics.get("bundles") or [] if isinstance(b, dict)]
    known = {label for label, _ in out}
    out += [(label, {"label": label}) for label in (metrics.get("results") or {}) if label not in known]
    return out


def _result(metrics: dict, label: str, section: str) -> Any:
    return ((metrics.get("results") or {}).get(label) or {}).get(section)


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
        ("Not evaluable", "A number that could not be computed (e.g. one class only in a site); the reason names "
                          "the column, marker or site and the counts."),
    ]


def _definitions(metrics: dict) -> str:
    items = definitions((metrics.get("settings") or {}).get("n_boot"))
    return '<dl class="defs">' + "".join(f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in items) + "</dl>"


SECTION_BUILDERS: dict[str, Callable[[dict], str]] = {
    "summary": _summary, "markers": _markers, "continuous": _continuous, "survival": _survival,
    "site-invariance": _site_invariance, "comparison": _comparison, "data-efficiency": _data_efficiency,
    "cam-localisation": _cam, "definitions": _definitions,
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


# ------------------------------------------------------------------------------------------------ CSV tables
MARKERS_HEADER = ["bundle", "marker", "scope", "status", "reason", "n", "n_pos", "n_neg", "auc", "auc_ci_low",
                  "auc_ci_high", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece", "threshold_mean"]
CONTINUOUS_HEADER = ["bundle", "variable", "scope", "status", "reason", "n", "spearman", "spearman_ci_low",
                     "spearman_ci_high", "p_value"]
SURVIVAL_HEADER = ["bundle", "scope", "status", "reason", "subgroup", "n", "events", "c_index", "c_index_ci_low",
                   "c_index_ci_high", "logrank_p"]
CALIBRATION_HEADER = ["bundle", "horizon_days", "status", "reason", "group", "predicted", "observed",
                      "observed_ci_low", "observed_ci_high", "n"]
SITE_INVARIANCE_HEADER = ["bundle", "status", "reason", "silhouette_pca", "pca_components",
                          "site_classifier_balanced_accuracy", "chance", "colour_marker"]
COORDINATES_HEADER = ["bundle", "case_id", "site", "pca_x", "pca_y", "tsne_x", "tsne_y", "colour_value"]
COMPARISON_HEADER = ["a", "b", "kind", "name", "status", "reason", "n", "value_a", "value_b", "difference",
                     "difference_ci_low", "difference_ci_high", "statistic", "p_value", "n_markers"]
DATA_EFFICIENCY_HEADER = ["bundle", "marker", "setting_kind", "setting", "mean", "sd", "n_runs", "status", "reason"]
CAM_HEADER = ["bundle", "status", "reason", "dilation_mm", "n_cases", "head", "peak_in_tumour", "mass_in_tumour",
              "n"]

Row = dict[str, Any]


def _status(entry: object) -> dict[str, Any]:
    if _ok(entry):
        return {"status": OK, "reason": None}
    return {"status": (entry.get("status") if isinstance(entry, dict) else None) or NOT_EVALUABLE,
            "reason": _reason(entry)}


def _marker_numbers(entry: dict) -> Row:
    low, high = _ci_pair(entry.get("auc_ci"))
    return {**{k: entry.get(k) for k in ("n", "n_pos", "n_neg", "auc", "balanced_accuracy", "sensitivity",
                                         "specificity", "brier", "ece", "threshold_mean")},
            "auc_ci_low": low, "auc_ci_high": high}


def _marker_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "markers")
        if not isinstance(block, dict):
            continue
        for key in _marker_order(block):
            entry = block[key]
            base = {"bundle": label, "marker": key}
            if not _ok(entry):
                rows.append({**base, "scope": "pooled", **_status(entry)})
                continue
            pooled = entry.get("pooled")
            rows.append({**base, "scope": "pooled", **_status(pooled),
                         **(_marker_numbers(pooled) if _ok(pooled) else {})})
            for site, site_entry in (entry.get("sites") or {}).items():
                rows.append({**base, "scope": site, **_status(site_entry),
                             **(_marker_numbers(site_entry) if _ok(site_entry) else {})})
    return rows


def _continuous_numbers(entry: dict) -> Row:
    low, high = _ci_pair(entry.get("spearman_ci"))
    return {"n": entry.get("n"), "spearman": entry.get("spearman"), "spearman_ci_low": low, "spearman_ci_high": high,
            "p_value": entry.get("p_value")}


def _continuous_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "continuous")
        if not isinstance(block, dict) or ("status" in block and not _ok(block)):
            if isinstance(block, dict):
                rows.append({"bundle": label, "scope": "pooled", **_status(block)})
            continue
        for key, entry in block.items():
            base = {"bundle": label, "variable": key}
            rows.append({**base, "scope": "pooled", **_status(entry), **(_continuous_numbers(entry) if _ok(entry)
                                                                         else {})})
            if _ok(entry):
                for site, site_entry in (entry.get("sites") or {}).items():
                    rows.append({**base, "scope": site, **_status(site_entry),
                                 **(_continuous_numbers(site_entry) if _ok(site_entry) else {})})
    return rows


def _survival_rows(metrics: dict) -> tuple[list[Row], list[Row]]:
    rows, calibration_rows = [], []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "survival")
        if not isinstance(block, dict) or not block:
            continue
        if not _ok(block):
            rows.append({"bundle": label, "scope": "pooled", **_status(block)})
            continue
        pooled = block.get("pooled") or {}
        low, high = _ci_pair(pooled.get("c_index_ci"))
        rows.append({"bundle": label, "scope": "pooled", **_status(pooled), "subgroup": block.get("subgroup"),
                     "n": pooled.get("n", block.get("n")), "events": pooled.get("events", block.get("events")),
                     "c_index": pooled.get("c_index"), "c_index_ci_low": low, "c_index_ci_high": high,
                     "logrank_p": block.get("logrank_p")})
        for site, entry in (block.get("sites") or {}).items():
            row = {"bundle": label, "scope": site, **_status(entry), "subgroup": block.get("subgroup")}
            if _ok(entry):
                low, high = _ci_pair(entry.get("c_index_ci"))
                row.update(n=entry.get("n"), events=entry.get("events"), c_index=entry.get("c_index"),
                           c_index_ci_low=low, c_index_ci_high=high)
            rows.append(row)
        for horizon, entry in (block.get("calibration") or {}).items():
            base = {"bundle": label, "horizon_days": horizon}
            if not _ok(entry):
                calibration_rows.append({**base, **_status(entry)})
                continue
            for index, group in enumerate(entry.get("groups") or []):
                low, high = _ci_pair(group.get("observed_ci"))
                calibration_rows.append({**base, **_status(group if "status" in group else entry), "group": index + 1,
                                         "predicted": group.get("predicted"), "observed": group.get("observed"),
                                         "observed_ci_low": low, "observed_ci_high": high, "n": group.get("n")})
    return rows, calibration_rows


def _site_invariance_rows(metrics: dict) -> tuple[list[Row], list[Row]]:
    data = metrics.get("data") or {}
    case_ids, case_sites = data.get("case_ids") or [], data.get("case_sites") or []
    rows, coordinates = [], []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "site_invariance")
        if not isinstance(block, dict) or not block:
            continue
        row = {"bundle": label, **_status(block)}
        if _ok(block):
            row.update({k: block.get(k) for k in SITE_INVARIANCE_HEADER[3:]})
        # the maps are there also when a single site leaves the site numbers not evaluable
        pca, tsne = block.get("pca_2d") or [], block.get("tsne_2d") or []
        colours = block.get("colour_values") or []
        for index in range(max(len(pca), len(tsne))):
            p = pca[index] if index < len(pca) and pca[index] else [None, None]
            t = tsne[index] if index < len(tsne) and tsne[index] else [None, None]
            coordinates.append({
                "bundle": label, "case_id": case_ids[index] if index < len(case_ids) else None,
                "site": case_sites[index] if index < len(case_sites) else None,
                "pca_x": p[0], "pca_y": p[1], "tsne_x": t[0], "tsne_y": t[1],
                "colour_value": colours[index] if index < len(colours) else None})
        rows.append(row)
    return rows, coordinates


def _comparison_rows(metrics: dict) -> list[Row]:
    rows = []
    for pair in metrics.get("comparison") or []:
        base = {"a": pair.get("a"), "b": pair.get("b")}
        for key in _marker_order(pair.get("markers") or {}):
            entry = pair["markers"][key]
            row = {**base, "kind": "marker", "name": key, **_status(entry)}
            if _ok(entry):
                low, high = _ci_pair(entry.get("ci"))
                row.update(n=entry.get("n"), value_a=entry.get("auc_a"), value_b=entry.get("auc_b"),
                           difference=entry.get("difference"), difference_ci_low=low, difference_ci_high=high)
            rows.append(row)
        for test in ("wilcoxon", "t_test"):
            entry = pair.get(test)
            if entry is None:
                continue
            row = {**base, "kind": "test", "name": test, **_status(entry)}
            if _ok(entry):
                row.update(statistic=entry.get("statistic"), p_value=entry.get("p_value"),
                           n_markers=entry.get("n_markers"))
            rows.append(row)
        for metric, values in (pair.get("summary") or {}).items():
            values = values or {}
            rows.append({**base, "kind": "summary", "name": metric, "status": OK, "value_a": values.get("a"),
                         "value_b": values.get("b")})
    return rows


def _data_efficiency_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "data_efficiency")
        if not isinstance(block, dict) or not block:
            continue
        if "status" in block and not _ok(block):
            rows.append({"bundle": label, **_status(block)})
            continue
        for key in _marker_order(block):
            entry = block[key]
            if not _ok(entry):
                rows.append({"bundle": label, "marker": key, **_status(entry)})
                continue
            for kind in ("per_class", "fraction"):
                for setting in _sort_keys(entry.get(kind) or {}):
                    point = entry[kind][setting]
                    rows.append({"bundle": label, "marker": key, "setting_kind": kind, "setting": setting,
                                 **_status(point), **({k: point.get(k) for k in ("mean", "sd", "n_runs")}
                                                      if _ok(point) else {})})
    return rows


def _cam_rows(metrics: dict) -> list[Row]:
    rows = []
    for label, _ in _bundles(metrics):
        block = _result(metrics, label, "cam_localisation")
        if not isinstance(block, dict) or not block:
            continue
        if not _ok(block):
            rows.append({"bundle": label, **_status(block)})
            continue
        for head, entry in (block.get("heads") or {}).items():
            rows.append({"bundle": label, **_status(entry), "dilation_mm": block.get("dilation_mm"),
                         "n_cases": block.get("n_cases"), "head": head,
                         **({k: entry.get(k) for k in ("peak_in_tumour", "mass_in_tumour", "n")} if _ok(entry)
                            else {})})
    return rows


def _cell(value: object) -> object:
    """A CSV cell: None -> empty, floats in full precision (repr), everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return value


def write_tables(metrics: dict, folder: Path) -> list[Path]:
    """The numbers of metrics.json as UTF-8 CSV files in ``folder`` (created); only tables with rows are written.
    Returns the paths written."""
    folder = Path(folder)
    survival, calibration = _survival_rows(metrics)
    site_invariance, coordinates = _site_invariance_rows(metrics)
    tables = [
        ("markers.csv", MARKERS_HEADER, _marker_rows(metrics)),
        ("continuous.csv", CONTINUOUS_HEADER, _continuous_rows(metrics)),
        ("survival.csv", SURVIVAL_HEADER, survival),
        ("survival_calibration.csv", CALIBRATION_HEADER, calibration),
        ("site_invariance.csv", SITE_INVARIANCE_HEADER, site_invariance),
        ("site_invariance_coordinates.csv", COORDINATES_HEADER, coordinates),
        ("comparison.csv", COMPARISON_HEADER, _comparison_rows(metrics)),
        ("data_efficiency.csv", DATA_EFFICIENCY_HEADER, _data_efficiency_rows(metrics)),
        ("cam_localisation.csv", CAM_HEADER, _cam_rows(metrics)),
    ]
    written = []
    for name, header, rows in tables:
        if not rows:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="", extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in header})
        written.append(path)
    return written
