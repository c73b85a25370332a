"""The robustness sweep's tables and figure, from its result dict alone: what ``write_robustness`` writes and the
evaluation report draws, kept apart from the sweep so that a report renders without torch or MONAI."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SUMMARY_HEADER = ["family", "level", "strength", "n", "mean_auc", "mean_delta_auc", "c_index", "delta_c_index",
                  "cosine_mean", "cosine_min", "ood_mean", "ood_median", "ood_flagged", "ood_above_clean"]
CASES_HEADER = ["case_id", "family", "level", "strength", "cosine", "ood_distance", "risk"]


PANELS = (("mean_delta_auc", "mean change in marker AUC"), ("delta_c_index", "change in survival c-index"),
          ("cosine_mean", "mean cosine to the clean embedding"), ("ood_mean", "mean OOD distance"),
          ("ood_flagged", "share of cases flagged OOD"))


def robustness_figure(result: dict[str, Any]) -> Figure:
    """One panel per metric (level on the x axis), one line per family: matplotlib's object API on an Agg canvas
    (no pyplot, a caller's backend untouched)."""
    figure = Figure(figsize=(13, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3).ravel()
    families = list(result["families"])
    for axis, (key, title) in zip(axes, PANELS):
        for name in families:
            rows = [r for r in result["rows"] if r["family"] == name]
            values = [np.nan if r[key] is None else r[key] for r in rows]
            axis.plot([r["level"] for r in rows], values, marker="o", label=name)
        if key == "ood_mean" and result["clean"]["ood_threshold"] is not None:
            axis.axhline(result["clean"]["ood_threshold"], color="black", linestyle="--", linewidth=1,
                         label="OOD threshold")
        if key == "cosine_mean" and result["clean"]["cosine_between_cases"] is not None:
            axis.axhline(result["clean"]["cosine_between_cases"], color="grey", linestyle=":", linewidth=1,
                         label="two different clean cases")
        if key in ("mean_delta_auc", "delta_c_index"):
            axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_title(title)
        axis.set_xlabel("artifact level (0 = none)")
        axis.set_xticks(sorted({r["level"] for r in result["rows"]}))
        axis.grid(alpha=0.3)
    handles, labels = axes[3].get_legend_handles_labels()
    extra = axes[2].get_legend_handles_labels()
    axes[5].axis("off")
    axes[5].legend(handles + extra[0][len(families):], labels + extra[1][len(families):], loc="center",
                   title=f"{result['bundle']['name']}, {len(result['case_ids'])} cases")
    return figure
