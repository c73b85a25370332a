"""The pretraining data path: manifest -> groups -> cached, memory-mapped cases -> two-view samples.

Each sample is a dict: ``view1``, ``view2`` (4, c, c, c) float32, ``mask`` (1 or 4, c, c, c) for MAE, ``target``
(view1 before sequence dropout, when there is dropout), ``group``
(the integer group id, carried with every sample for Group-DRO) and ``index`` (the case). Views and masks
come from a seed of (run seed, epoch, case index), so they are the same whichever worker, rank or resumed
process draws them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from neuroradfm.errors import InputError
from neuroradfm.io import CaseEntry
from neuroradfm.ssl.augment import TwoViews, degrade, sample_seed
from neuroradfm.ssl.mae import random_mask
from neuroradfm.subsets import drop_sequences
from neuroradfm.train.cohort import CachedCohort


def group_labels(entries: Sequence[CaseEntry], column: str, manifest: str | Path,
                 groups: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
    """(group names, one group id per entry) from a manifest column (``site`` or any clinical column).

    A column that does not exist, an empty cell, or a label not among ``groups`` (when the user named them)
    is an InputError naming the manifest and the column.
    """
    labels = []
    for entry in entries:
        if column == "site":
            value = entry.site
        elif column in entry.clinical:
            value = entry.clinical[column]
        else:
            raise InputError(manifest, f"group column {column!r} is not in the manifest "
                                       f"(columns besides case_id and the images: site, "
                                       f"{', '.join(sorted(entry.clinical)) or 'none'})")
        if value is None or str(value).strip() == "":
            raise InputError(manifest, f"case {entry.case_id} has no value in group column {column!r}")
        labels.append(str(value))
    if groups is None:
        names = sorted(set(labels))
    else:
        names = list(groups)
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise InputError(manifest, f"group column {column!r} holds label(s) {', '.join(unknown)} that are not "
                                       f"among the groups given ({', '.join(names)})")
    index = {name: i for i, name in enumerate(names)}
    return names, [index[label] for label in labels]


class PretrainDataset(Dataset):
    """Cached cases (memory-mapped) -> augmented two-view samples with their group id."""

    def __init__(self, cohort: CachedCohort, group_ids: Sequence[int], crop_size: int, seed: int,
                 mask_patch: int = 0, mask_ratio: float = 0.0, strength: float = 1.0, mask_channels: int = 1,
                 flips: str = "all", sequence_dropout: float = 0.0, artifact_augment: float = 0.0) -> None:
        if len(group_ids) != len(cohort.entries):
            raise ValueError("one group id per case")
        self.cohort = cohort
        self.group_ids = list(group_ids)
        self.views = TwoViews(crop_size, strength, flips)
        self.crop_size = crop_size
        self.seed = seed
        self.mask_patch = mask_patch
        self.mask_ratio = mask_ratio
        self.mask_channels = mask_channels
        self.sequence_dropout = sequence_dropout
        self.artifact_augment = artifact_augment
        self.epoch = 0
        """Set before each epoch's loader is created (workers copy the dataset when an iterator starts)."""

    def __len__(self) -> int:
        return len(self.group_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = np.asarray(self.cohort.channels(index), dtype=np.float32)
        seed = sample_seed(self.seed, self.epoch, index)
        rng = np.random.default_rng(sample_seed(seed, 3))
        image = degrade(image, rng, artifact_probability=self.artifact_augment)
        present = image.reshape(len(image), -1).any(axis=1)
        view1, view2 = self.views(image, seed)
        missing = torch.from_numpy(~present)
        view1[missing], view2[missing] = 0, 0  # intensity shifts must not make a missing sequence appear
        sample = {"group": torch.tensor(self.group_ids[index]), "index": torch.tensor(index)}
        if self.sequence_dropout > 0:
            sample["target"] = view1.clone()  # what MAE reconstructs: the sequences dropped from view1 too
            for view in (view1, view2):
                view[~torch.from_numpy(drop_sequences(present, self.sequence_dropout, rng))] = 0
        sample.update(view1=view1, view2=view2)
        if self.mask_patch:
            rng = np.random.default_rng(sample_seed(seed, 2))
            sample["mask"] = random_mask((self.crop_size,) * 3, self.mask_patch, self.mask_ratio, rng,
                                         self.mask_channels)
        return sample


class GroupBalancedSampler(Sampler[int]):
    """Draws cases with replacement so that every group is equally likely, sharded over ranks like
    DistributedSampler (same ``set_epoch`` contract: the same draw on every rank for one epoch)."""

    def __init__(self, group_ids: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        ids = np.asarray(group_ids)
        counts = np.bincount(ids)
        self.weights = torch.as_tensor(1.0 / counts[ids], dtype=torch.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = len(ids) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        draw = torch.multinomial(self.weights, total, replacement=True, generator=generator).tolist()
        return iter(draw[self.rank:total:self.num_replicas])


def make_sampler(dataset: PretrainDataset, num_replicas: int, rank: int, seed: int,
                 group_balanced: bool) -> DistributedSampler | GroupBalancedSampler:
    """DistributedSampler (also in one process: one code path) or the group-balanced sampler."""
    if group_balanced:
        return GroupBalancedSampler(dataset.group_ids, num_replicas, rank, seed)
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                              drop_last=True)


def epoch_order(sampler: DistributedSampler | GroupBalancedSampler, epoch: int, skip: int = 0) -> list[int]:
    """This rank's case indices for ``epoch``, the first ``skip`` left out (a resumed epoch)."""
    sampler.set_epoch(epoch)
    return list(sampler)[skip:]


def steps_per_epoch(sampler_length: int, local_batch: int) -> int:
    return math.floor(sampler_length / local_batch)
