"""What the trainers do about sequence subsets: which subsets a new bundle is trained for, and the held-out AUC of
each subset that the card keeps (``subset_reliability``). Which cases a training takes: neuroradfm.train.cohort."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neuroradfm import SEQUENCES
from neuroradfm.folds import case_folds
from neuroradfm.models.encoder import Encoder
from neuroradfm.models.heads import Heads
from neuroradfm.subsets import ALL_FOUR, EVALUATED_SUBSETS, Subset, all_subsets, keep_only
from neuroradfm.train.cohort import PreparedCohort

RELIABILITY_FOLDS = 5


def trained_subsets(sequence_dropout: float) -> list[Subset]:
    """Every non-empty subset after training with sequence dropout; all four only without it."""
    return all_subsets() if sequence_dropout > 0 else [ALL_FOUR]


def subset_reliability(encoder: Encoder, cohort: PreparedCohort, embeddings: np.ndarray, heads: Heads,
                       subsets: Sequence[Subset], device: torch.device, seed: int, where: str) -> dict[str, Any] | None:
    """The card's ``subset_reliability``: each marker's cross-validated AUC on ``cohort`` (held out from the
    encoder's training) for every subset of EVALUATED_SUBSETS the bundle takes, the probe of each fold fitted on the
    other folds' all-four embeddings and applied to the held-out cases with only the subset's sequences, as the
    bundle's heads are applied to such a case (``embeddings``: the cohort's, as they are). Only the cohort's cases
    with all four sequences count. None when
    there are no marker probes or too few complete cases."""
    from neuroradfm.evaluate.subset_eval import mean_auc, subset_aucs
    from neuroradfm.train.baseline import embed

    complete = np.flatnonzero([bool(np.asarray(x).reshape(len(SEQUENCES), -1).any(axis=1).all())
                               for x in cohort.inputs])
    evaluated = [s for s in EVALUATED_SUBSETS if s in subsets]
    if not heads.markers or len(complete) < RELIABILITY_FOLDS:
        return None
    inputs = cohort.inputs[complete]
    full = embeddings[complete]
    by_subset = {s: full if s == ALL_FOUR else embed(encoder, keep_only(inputs, s), device)[0] for s in evaluated}
    subjects = None if not cohort.subjects else [cohort.subjects[i] for i in complete]
    splits = case_folds(len(complete), RELIABILITY_FOLDS, seed, subjects)
    penalties = {m.key: float(m.metrics["c"]) for m in heads.markers if "c" in m.metrics}
    aucs = subset_aucs(full, by_subset, cohort.labels[complete], splits, seed=seed, c=penalties)
    keys = {m.key for m in heads.markers}
    rows = []
    for subset in evaluated:
        auc = {k: v for k, v in aucs[subset].items() if k in keys}
        rows.append({"sequences": list(subset), "mean_auc": mean_auc(auc), "auc": auc})
    return {"method": f"{RELIABILITY_FOLDS}-fold cross-validation on {where}: the probes of each fold fitted on the "
                      "other folds' all-four embeddings, applied to the held-out cases with only the subset's "
                      "sequences (the others zero)", "cases": int(len(complete)), "subsets": rows}
