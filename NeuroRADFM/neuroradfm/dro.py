"""Group-DRO (Sagawa et al. 2020, "Distributionally Robust Neural Networks") as a thin layer on per-sample losses.

Every SSL method returns one loss per sample; :class:`GroupDRO` turns a batch of them into the loss to
back-propagate. Each step:

1. per-group sums and counts of the batch (all-reduced over ranks under DDP, so every rank sees the
   global batch and computes the same q);
2. per-group mean losses L_g; a group absent from the batch takes its most recent measured loss (a group
   never seen yet, the mean of the others'), so that every group's q is updated at every step;
3. ``mode="exponentiated"`` (the paper): q_g <- q_g * exp(eta_q * (L_g + C / sqrt(n_g))), q normalised,
   where n_g is the group's size in the training set (the generalisation adjustment; C = 0 turns it off).
   Updating only the present groups (as the reference code does, with L_g = 0 for an absent group) would
   multiply a present group's q by exp(eta_q L_g) > 1 and an absent one's by 1: with small batches q then
   drifts toward the groups sampled most often (a minority site is absent from most batches), whatever
   their losses;
   ``mode="worst-group"`` (the NeuroRAD-FM reference code): q is one-hot on the present group with the
   largest adjusted loss;
   ``mode="erm"``: no reweighting, the plain mean over the batch;
4. the robust loss is q . L (ERM: the batch mean), written as per-sample weights w_i so that a batch split
   over ranks or micro-batches back-propagates exactly the same gradient: loss_local = sum_i w_i l_i.

``sampling=True`` is the other estimator of the same gradient: the trainer draws each step's cases group by
group in proportion to q (``q_sampled_cases``) and the samples are weighted equally; q is updated as above.
Weighting spends a step on the groups as they come and scales the few samples of a heavily weighted group
up; sampling spends the step's samples where q is, which is what a short run needs when the worst group's
loss is limited by how many of its samples the model sees (bench/RESULTS.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("erm", "exponentiated", "worst-group")

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over ranks in place and returns it (identity in one process)."""


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class GroupStats:
    """What one step saw: per-group mean losses (NaN where a group was absent), counts, the robust loss."""

    group_losses: torch.Tensor
    counts: torch.Tensor
    robust_loss: float
    mean_loss: float


class GroupDRO:
    """Group weights q and their update; ``state_dict``/``load_state_dict`` for checkpoints."""

    def __init__(self, groups: Sequence[str], mode: str = "exponentiated", eta_q: float = 0.01,
                 adjustment: float = 0.0, group_sizes: Sequence[int] | None = None,
                 all_reduce: AllReduce = _identity, sampling: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown DRO mode {mode!r}; choose one of {', '.join(MODES)}")
        if not groups:
            raise ValueError("Group-DRO needs at least one group")
        if mode != "erm" and len(groups) < 2:
            warnings.warn(f"Group-DRO with a single group ({groups[0]!r}) is plain ERM; training as ERM",
                          stacklevel=2)
            mode = "erm"
        if eta_q < 0 or adjustment < 0:
            raise ValueError(f"eta_q and the adjustment C must be >= 0, got {eta_q}, {adjustment}")
        self.groups = list(groups)
        self.mode = mode
        self.eta_q = float(eta_q)
        self.adjustment = float(adjustment)
        sizes = torch.ones(len(groups), dtype=torch.float64) if group_sizes is None else \
            torch.as_tensor(group_sizes, dtype=torch.float64)
        if sizes.shape != (len(groups),) or bool((sizes <= 0).any()):
            raise ValueError(f"group sizes must be {len(groups)} positive counts, got {list(sizes.tolist())}")
        self.adjust = (self.adjustment / sizes.sqrt()) if self.adjustment > 0 else torch.zeros(len(groups),
                                                                                                dtype=torch.float64)
        self.q = torch.full((len(groups),), 1.0 / len(groups), dtype=torch.float64)
        self.recent = torch.full((len(groups),), math.nan, dtype=torch.float64)
        """Each group's most recent batch-mean loss (NaN until seen): the q update of absent groups."""
        self.all_reduce = all_reduce
        self.sampling = sampling and mode != "erm"
        """q decides which cases are drawn (the trainer's job), not how they are weighted."""

    @property
    def active(self) -> bool:
        """Whether the per-sample weights depend on q (not for ERM, nor when q chooses the samples)."""
        return self.mode != "erm" and not self.sampling

    def group_totals(self, losses: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group (sum, count) of detached per-sample losses, float64, on the CPU, NOT yet all-reduced."""
        g = len(self.groups)
        ids = group_ids.detach().to("cpu", torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= g):
            raise ValueError(f"group ids must lie in 0..{g - 1}, got {ids.tolist()}")
        values = losses.detach().to("cpu", torch.float64)
        sums = torch.zeros(g, dtype=torch.float64).index_add_(0, ids, values)
        counts = torch.zeros(g, dtype=torch.float64).index_add_(0, ids, torch.ones_like(values))
        return sums, counts

    def step(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, GroupStats]:
        """Update q from the step's per-group sums and counts (all-reduced here); returns the per-group
        weights of one sample's loss, w_g (so that loss = sum_i w_{g(i)} l_i) and the step's statistics."""
        totals = self.all_reduce(torch.cat([sums, counts]).clone())
        sums, counts = totals[:len(self.groups)], totals[len(self.groups):]
        present = counts > 0
        if not bool(present.any()):
            raise ValueError("empty batch: no sample in any group")
        means = torch.where(present, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        if self.mode == "exponentiated" and bool(torch.isfinite(means[present]).all()):
            # (a NaN loss is reported by the trainer; q stays as it was)
            self.recent = torch.where(present, means, self.recent)
            seen = torch.isfinite(self.recent)
            estimate = torch.where(seen, self.recent, self.recent[seen].mean())  # never seen: neutral
            self.q = torch.softmax(self.q.log() + self.eta_q * (estimate + self.adjust), dim=0)
        elif self.mode == "worst-group":
            adjusted = torch.where(present, means + self.adjust, torch.full_like(means, -math.inf))
            self.q = torch.zeros_like(self.q)
            self.q[int(torch.argmax(torch.nan_to_num(adjusted, nan=math.inf)))] = 1.0
        total = float(counts.sum())
        if not self.active:  # ERM, or cases drawn in proportion to q: every sample counts the same
            per_group_weight = torch.where(present, torch.full_like(counts, 1.0 / total), torch.zeros_like(counts))
            robust = float(sums.sum() / total)
        else:
            # groups absent from this batch contribute nothing; q is renormalised over the present ones
            q_present = torch.where(present, self.q, torch.zeros_like(self.q))
            q_present = q_present / q_present.sum()
            per_group_weight = torch.where(present, q_present / counts.clamp(min=1), torch.zeros_like(counts))
            robust = float((q_present * torch.nan_to_num(means, nan=0.0)).sum()) if bool(
                torch.isfinite(sums).all()) else float("nan")
        stats = GroupStats(means, counts, robust, float(sums.sum() / total))
        return per_group_weight, stats

    def update(self, per_sample_loss: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """One batch (the whole global batch in one process): update q, return the robust loss to back-propagate.

        Under DDP each rank calls this with its local batch; the returned loss is scaled so that DDP's
        gradient averaging yields the gradient of the global robust loss (see ``world_size``).
        """
        weights, self.last = self.step(*self.group_totals(per_sample_loss, group_ids))
        return self.weighted(per_sample_loss, group_ids, weights)

    @staticmethod
    def weighted(per_sample_loss: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        w = weights.to(per_sample_loss.device, per_sample_loss.dtype)[group_ids.to(per_sample_loss.device).long()]
        return (w * per_sample_loss).sum() * scale

    def q_sampled_cases(self, group_ids: Sequence[int], count: int, seed: int) -> list[int]:
        """``count`` case indices for one step: each a group drawn with probability q (over the groups that have
        cases), then one of that group's cases, uniformly; a function of (q, seed) only, so every rank draws
        the same global batch and a resumed run the same cases."""
        ids = np.asarray(group_ids)
        members = [np.flatnonzero(ids == g) for g in range(len(self.groups))]
        p = np.array([float(q) if len(m) else 0.0 for q, m in zip(self.q, members)])
        rng = np.random.default_rng(seed)
        drawn = rng.choice(len(p), size=count, p=p / p.sum())
        return [int(members[g][rng.integers(len(members[g]))]) for g in drawn]

    def state_dict(self) -> dict:
        return {"groups": list(self.groups), "mode": self.mode, "q": self.q.clone(), "recent": self.recent.clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["groups"]) != self.groups or state["mode"] != self.mode:
            raise ValueError(f"DRO state is for groups {state['groups']} in mode {state['mode']!r}, "
                             f"this run has {self.groups} in mode {self.mode!r}")
        self.q = state["q"].to(torch.float64).clone()
        if "recent" in state:  # (absent from checkpoints written before it existed)
            self.recent = state["recent"].to(torch.float64).clone()
