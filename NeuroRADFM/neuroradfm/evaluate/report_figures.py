"""The evaluation report's figures: matplotlib's object API on the Agg canvas (never pyplot, so a caller's backend
is left alone), embedded in the page as PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neuroradfm.evaluate.report_format import (
    BUNDLE_COLOURS,
    DPI,
    HIGH_COLOUR,
    LOW_COLOUR,
    _absent,
    _ci_pair,
    _e,
    _f,
    _i,
    _is_number,
    _ok,
    _reason,
    _sort_keys,
)


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

