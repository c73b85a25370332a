"""Sequence subsets: which of T1, T1ce, T2 and FLAIR a case has, how a model input lacks the others, and what a
bundle's card says about each subset.

A missing sequence is a channel of zeros on the model grid (after z-scoring, zero is the brain's mean), and the
encoder reads the availability mask off its input (``neuroradfm.models.encoder``), so the same network takes every
subset. ``SEQUENCE_DROPOUT`` trainers zero sequences at random (``drop_sequences``) to teach it that.

The card keeps two records: ``sequence_subsets``, the subsets the bundle was trained for (all four only, unless it
was trained with sequence dropout: then every non-empty subset), and ``subset_reliability``, the held-out AUC of
each marker for the subsets a user is likely to have (EVALUATED_SUBSETS), which outputs quote next to a prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from neuroradfm import SEQUENCE_LABELS, SEQUENCES

Subset = tuple[str, ...]

ALL_FOUR: Subset = SEQUENCES

EVALUATED_SUBSETS: tuple[Subset, ...] = (
    ALL_FOUR,
    *(tuple(s for s in SEQUENCES if s != missing) for missing in SEQUENCES),
    ("t1ce", "flair"),
    ("t1ce",),
)
"""The subsets evaluated for every bundle (card ``subset_reliability``, the evaluation report): all four, each
single sequence missing, T1ce + FLAIR (a common short protocol) and T1ce alone."""


def canonical(sequences: Iterable[str]) -> Subset:
    """The subset in SEQUENCES order; an unknown name or an empty subset is a ValueError."""
    given = [str(s).strip().lower() for s in sequences]
    unknown = sorted(set(given) - set(SEQUENCES))
    if unknown:
        raise ValueError(f"unknown sequence(s) {', '.join(unknown)}; choose among {', '.join(SEQUENCES)}")
    subset = tuple(s for s in SEQUENCES if s in given)
    if not subset:
        raise ValueError("a subset needs at least one sequence")
    return subset


def all_subsets() -> list[Subset]:
    """Every non-empty subset of the four sequences (15), largest first."""
    return [c for n in range(len(SEQUENCES), 0, -1) for c in combinations(SEQUENCES, n)]


def label(subset: Sequence[str]) -> str:
    """How outputs and reports name a subset: "all four", "no T2", "T1ce + FLAIR"."""
    subset = canonical(subset)
    if subset == ALL_FOUR:
        return "all four"
    if len(subset) == len(SEQUENCES) - 1:
        return "no " + _name(next(s for s in SEQUENCES if s not in subset))
    return " + ".join(_name(s) for s in subset)


def describe(used: Sequence[str]) -> str:
    """The sequences a prediction used and those it lacked: "T1ce + FLAIR (no T1, T2)", "... (all four)"."""
    used = canonical(used)
    missing = ", ".join(_name(s) for s in SEQUENCES if s not in used)
    return " + ".join(_name(s) for s in used) + (f" (no {missing})" if missing else " (all four)")


def _name(sequence: str) -> str:
    return SEQUENCE_LABELS[sequence]


def channel_mask(subset: Sequence[str]) -> np.ndarray:
    """(4,) bool: True for the channels of ``subset``."""
    return np.array([s in subset for s in SEQUENCES])


def keep_only(inputs: np.ndarray, subset: Sequence[str]) -> np.ndarray:
    """A copy of model inputs ((4, K, J, I) or (N, 4, K, J, I)) with the channels outside ``subset`` zeroed: what
    preprocessing gives a case that lacks them."""
    out = np.array(inputs, copy=True)
    out[..., ~channel_mask(canonical(subset)), :, :, :] = 0
    return out


def drop_sequences(present: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Sequence dropout: (4,) bool of the channels to keep, each present channel dropped with ``probability`` but
    never all of them (when every present one would go, one of them, drawn at random, stays)."""
    present = np.asarray(present, bool)
    keep = present & (rng.random(len(present)) >= probability)
    if present.any() and not keep.any():
        keep[rng.choice(np.flatnonzero(present))] = True
    return keep


def reliability(card: dict[str, Any], subset: Sequence[str]) -> dict[str, Any]:
    """What the card says of ``subset``: ``{"sequences", "label", "evaluated", "mean_auc", "auc", "all_four_mean_auc",
    "note"}``; ``evaluated`` False (and no AUC) for a subset the card has no held-out figures for."""
    subset = canonical(subset)
    record = card.get("subset_reliability") or {}
    rows = {canonical(r["sequences"]): r for r in record.get("subsets", [])}
    row, full = rows.get(subset), rows.get(ALL_FOUR)
    out: dict[str, Any] = {"sequences": list(subset), "label": label(subset), "evaluated": row is not None,
                           "mean_auc": None if row is None else row.get("mean_auc"),
                           "auc": {} if row is None else dict(row.get("auc", {})),
                           "all_four_mean_auc": None if full is None else full.get("mean_auc")}
    if row is None or row.get("mean_auc") is None:
        out["note"] = f"{label(subset)}: no held-out figures for this subset in the bundle card"
    else:
        versus = "" if subset == ALL_FOUR or out["all_four_mean_auc"] is None else \
            f" (all four: {out['all_four_mean_auc']:.2f})"
        out["note"] = (f"{label(subset)}: held-out mean marker AUC {row['mean_auc']:.2f}{versus} "
                       f"over {record.get('cases', '?')} cases")
    return out
