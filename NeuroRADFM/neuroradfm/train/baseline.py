"""Supervised training of a complete bundle: the supervised stand-in, or the fine-tuning of a pretrained encoder.

1. The encoder (freshly initialised, or an encoder bundle from ``neuroradfm pretrain`` given as ``init``) is
   trained SUPERVISED on split A of the cohort: multi-label cross-entropy on the
   markers through a temporary linear layer (unknown labels masked out) plus, optionally
   (``tumour_weight`` > 0, cohort with tumour masks), an auxiliary target: the tumour fraction of
   each cell of the last feature map, predicted by a 1x1x1 convolution, meant to keep the feature
   map spatially tied to the lesion, which is what Grad-CAM reads. Without ``init`` this is a stand-in
   for self-supervised pretraining and the card says so; with it, the card records the pretraining.
   ``dro`` (default "erm": off) trains the encoder with Group-DRO (neuroradfm.dro) on each case's marker loss,
   over the groups of ``group_column``: a manifest column, or several joined by commas, whose combinations are
   the groups (Sagawa et al.'s spurious attribute x label, e.g. ``scanner_artifact,idh1``); the marker probes of
   step 2 are then fitted group-balanced (every group the same total weight). ``markers`` limits the encoder's loss
   to some markers (one marker: each case's loss, and so each group's, is that marker's alone).
2. The encoder is frozen; embeddings of split B (cases the encoder never saw) are used to fit
   the bundle's heads: feature scaling, one logistic probe per marker, a Cox model, OOD stats.
   Their metrics are cross-validated on split B.

Small cohorts: split B takes ``probe_fraction`` of every site's cases (rounded, but at least one and never all),
and the heads need at least MIN_HEAD_CASES of them for their 5-fold cross-validation: 12 usable cases of one site
at the default 0.4 (``min_training_cases``). Fewer cases, a site of a single case, or a split B in which no marker
and no survival has enough labels is an InputError before preprocessing when the manifest shows it, and again
after it when cases that failed to load leave too few.
"""

from __future__ import annotations

import datetime
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import neuroradfm
from neuroradfm import CAM_LAYERS
from neuroradfm.dro import GroupDRO
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.folds import GROUP_COLUMN, repeated
from neuroradfm.io import CaseEntry, read_manifest
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.metrics import MetricsLog
from neuroradfm.models.bundle import BUNDLE_FILES, Bundle, load_bundle, save_bundle
from neuroradfm.models.encoder import (
    ARCHITECTURES,
    NORMS,
    Encoder,
    EncoderConfig,
    resolve_device,
    with_availability_mask,
)
from neuroradfm.models.heads import Heads
from neuroradfm.output_paths import check_destination, check_destinations
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.probes import fit_marker_probe, fit_ood, fit_scaling, marker_problem
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.ssl.augment import degrade
from neuroradfm.survival import fit_cox, survival_problem
from neuroradfm.train.cohort import PreparedCohort, _number, file_hash, prepare_cohort, require_cases
from neuroradfm.train.data import group_labels
from neuroradfm.train.sequence_subsets import subset_reliability, trained_subsets

DEFAULT_CAM_LAYER = "layer2"
"""Where new bundles take their Grad-CAM maps: finer cells than the last block and still head-specific
(measured on the demo bundle, bench/RESULTS.md)."""

HEAD_FOLDS = 5
"""Folds of the heads' cross-validation (marker probes, Cox, the OOD threshold)."""
MIN_HEAD_CASES = HEAD_FOLDS
"""Cases the heads are fitted on, at the least: every cross-validation fold holds one out."""


@dataclass
class BaselineSettings:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("resnet10", widen_factor=0.5,
                                                                         conv1_stride=2, no_max_pool=True))
    preprocessing: PreprocessSettings = field(default_factory=lambda: PreprocessSettings(size=(96, 96, 96)))
    epochs: int = 12
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    tumour_weight: float = 0.0
    """Weight of the auxiliary tumour-occupancy loss (0: off; ignored without tumour masks)."""
    lesion_pooling: bool = False
    """Marker loss on the feature map averaged over the tumour instead of the whole grid (needs masks)."""
    background_weight: float = 0.0
    """Weight of the background-consistency loss: outside the tumour, features should not vary between
    cases (0: off; needs masks)."""
    cam_layer: str = DEFAULT_CAM_LAYER
    """Encoder stage the bundle's Grad-CAM maps are taken at (neuroradfm.cam)."""
    sequence_dropout: float = 0.0
    """Probability that each sequence of a training sample is zeroed (never all of a case's): the bundle then takes
    any non-empty subset (neuroradfm.subsets). 0: all four only, and every case must have them."""
    artifact_augment: float = 0.0
    """Probability that a training sample gets a random artifact of neuroradfm.artifacts (family, level 1-4)."""
    probe_fraction: float = 0.4
    seed: int = 0
    split_seed: int | None = None
    """Seed of the split into A (encoder) and B (heads); None: ``seed``. Fix it to compare training seeds on the
    same held-out cases."""
    device: str = "auto"
    dro: str = "erm"
    """erm (plain mean of the marker losses) | exponentiated (Sagawa et al.'s q update) | worst-group (hard mode)."""
    group_column: str = "site"
    """The Group-DRO groups: a manifest column, or several joined by commas (their combinations)."""
    eta_q: float = 0.01
    """Step size of Group-DRO's q update."""
    markers: tuple[str, ...] = ()
    """The markers the encoder is trained on (empty: all of MARKER_KEYS); the heads are fitted for every marker. One
    marker makes each case's loss (and Group-DRO's group losses) that marker's alone."""

    def __post_init__(self) -> None:
        """Settings that cannot work are refused here, before any case is read (exit status 2 through the CLI)."""
        check_encoder_config(self.encoder)
        if self.dro not in DRO_CHOICES:
            raise SettingsError("--dro", f"unknown Group-DRO mode {self.dro!r}; choose one of {', '.join(DRO_CHOICES)}")
        if not self.eta_q >= 0:
            raise SettingsError("--eta-q", f"must be 0 or more, got {self.eta_q}")
        unknown = [key for key in self.markers if key not in MARKER_KEYS]
        if unknown or len(set(self.markers)) != len(self.markers):
            raise SettingsError("--markers", f"marker keys, each once, among {', '.join(MARKER_KEYS)}; got "
                                             f"{', '.join(self.markers)}")
        if not group_columns(self.group_column):
            raise SettingsError("--group-column", f"needs a manifest column (or several, comma-separated), got "
                                                  f"{self.group_column!r}")
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                raise SettingsError(flag, f"must be at least 1, got {value}")
        if not self.learning_rate > 0:
            raise SettingsError("--lr", f"the learning rate must be positive, got {self.learning_rate}")
        for flag, value in (("--sequence-dropout", self.sequence_dropout),
                            ("--artifact-augment", self.artifact_augment)):
            if not 0 <= value < 1:
                raise SettingsError(flag, f"a probability from 0 up to (not including) 1, got {value}")
        for flag, value in (("weight_decay", self.weight_decay), ("--tumour-weight", self.tumour_weight),
                            ("--background-weight", self.background_weight)):
            if not value >= 0:
                raise SettingsError(flag, f"must be 0 or more, got {value}")
        if not 0 < self.probe_fraction < 1:
            raise SettingsError("probe_fraction", f"the share of each site's cases held out to fit the heads must "
                                                  f"lie between 0 and 1 (exclusive), got {self.probe_fraction}")
        if self.cam_layer not in CAM_LAYERS:
            raise SettingsError("--cam-layer", f"unknown Grad-CAM layer {self.cam_layer!r}; choose one of "
                                               f"{', '.join(CAM_LAYERS)}")


DRO_CHOICES = ("erm", "exponentiated", "worst-group")


def group_columns(spec: str) -> list[str]:
    """The manifest columns of ``--group-column`` (comma-separated)."""
    return [column.strip() for column in spec.split(",") if column.strip()]


def case_groups(entries: list[CaseEntry], spec: str, manifest: str | Path) -> tuple[list[str], dict[str, int]]:
    """(group names, case id -> group id) of ``spec``'s columns: one column's values as they are (site-A), several
    columns' combinations as "column=value" pairs (scanner_artifact=1, idh1=0). A missing column or an empty cell is an
    InputError naming the manifest and the column (``train.data.group_labels``)."""
    columns = group_columns(spec)
    per_column = [group_labels(entries, column, manifest) for column in columns]
    if len(columns) == 1:
        labels = [per_column[0][0][i] for i in per_column[0][1]]
    else:
        labels = [", ".join(f"{column}={names[ids[row]]}" for column, (names, ids) in zip(columns, per_column))
                  for row in range(len(entries))]
    names = sorted(set(labels))
    return names, {entry.case_id: names.index(label) for entry, label in zip(entries, labels)}


def check_encoder_config(config: EncoderConfig) -> None:
    """An architecture, normalisation and width the encoder can be built with (else a SettingsError naming the
    option), checked before the cohort is preprocessed rather than when the network is built after it."""
    if config.arch not in ARCHITECTURES:
        raise SettingsError("--arch", f"unknown encoder {config.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if config.norm not in NORMS:
        raise SettingsError("--norm", f"unknown normalisation {config.norm!r}; choose one of {', '.join(NORMS)}")
    if not config.widen_factor > 0:
        raise SettingsError("--widen", f"the channel width factor must be positive, got {config.widen_factor}")
    if config.conv1_stride < 1:
        raise SettingsError("--conv1-stride", f"must be at least 1, got {config.conv1_stride}")


def embed(encoder: Encoder, inputs: np.ndarray, device: torch.device, batch_size: int = 4,
          cam_layer: str = "layer4") -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings (N, C) of (N, 4, K, J, I) inputs with the encoder frozen, and the cohort's mean
    activation at ``cam_layer`` (C', d, h, w): the reference of the bundle's Grad-CAM maps."""
    encoder.eval()
    out, total = [], None
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[start:start + batch_size].astype(np.float32)).to(device)
            activation = encoder.layer_output(x, cam_layer)
            _, z = encoder.from_layer(activation, cam_layer)
            out.append(z.double().cpu().numpy())
            batch_sum = activation.double().sum(dim=0).cpu()
            total = batch_sum if total is None else total + batch_sum
    return np.concatenate(out), (total / len(inputs)).float().numpy()


def lesion_pool(features: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """(B, C) features averaged over the tumour, each cell weighted by its tumour fraction (B, 1, d, h, w)."""
    return (features * occupancy).sum(dim=(2, 3, 4)) / occupancy.sum(dim=(2, 3, 4)).clamp(min=1e-3)


def background_spread(features: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """How much tumour-free cells differ between the cases of a batch, relative to their size (scale-free).

    Outside the lesion the phantom's cases differ only by acquisition (site) and noise; features that
    stay the same there leave the lesion as the only place a head can read a case from, which is what
    keeps its Grad-CAM on the lesion. 0 when every case's background features are identical.
    """
    background = 1.0 - occupancy
    centre = (features * background).sum(dim=0, keepdim=True) / background.sum(dim=0, keepdim=True).clamp(min=1e-3)
    spread = ((features - centre.detach()) ** 2 * background).sum()
    return spread / ((features ** 2) * background).sum().clamp(min=1e-6)


def train_encoder(cohort: PreparedCohort, settings: BaselineSettings, device: torch.device,
                  progress: Progress = null_progress, metrics: MetricsLog | None = None,
                  encoder: Encoder | None = None, dro: GroupDRO | None = None,
                  group_ids: np.ndarray | None = None) -> tuple[Encoder, list[float]]:
    """Supervised multi-marker training of ``encoder`` (default: a new one); returns it and the per-epoch mean
    loss. ``dro`` with ``group_ids`` (one per case): each case's marker loss (the mean over its known markers) is
    reweighted by Group-DRO, which updates its q at every step; without it the loss is the mean over all known
    labels of the batch, as it always was."""
    metrics = metrics or MetricsLog(None)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    encoder = (encoder or Encoder(settings.encoder)).to(device)
    head = nn.Linear(encoder.embedding_dim, len(MARKER_KEYS)).to(device)
    occupancy = nn.Conv3d(encoder.embedding_dim, 1, kernel_size=1).to(device)
    use_tumour = cohort.tumour is not None and (settings.tumour_weight > 0 or settings.lesion_pooling
                                                 or settings.background_weight > 0)
    params = list(encoder.parameters()) + list(head.parameters()) + list(occupancy.parameters())
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = int(np.ceil(len(cohort.case_ids) / settings.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate,
                                                   total_steps=settings.epochs * steps_per_epoch)
    labels = torch.from_numpy(np.nan_to_num(cohort.labels, nan=0.0)).float()
    known = torch.from_numpy(~np.isnan(cohort.labels)).float()
    if settings.markers:  # the other markers' labels take no part in the loss
        known = known * torch.tensor([key in settings.markers for key in MARKER_KEYS], dtype=torch.float32)
    history = []
    for epoch in range(settings.epochs):
        encoder.train()
        order = rng.permutation(len(cohort.case_ids))
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            x = torch.from_numpy(np.stack([degrade(cohort.inputs[i].astype(np.float32), rng, settings.sequence_dropout,
                                                   settings.artifact_augment) for i in index]))
            tumour = torch.from_numpy(cohort.tumour[index]).float()[:, None] if use_tumour else None
            if rng.random() < 0.5:  # left-right flip: the phantom's traits do not depend on hemisphere
                x = torch.flip(x, dims=(4,))
                tumour = None if tumour is None else torch.flip(tumour, dims=(4,))
            features, z = encoder(x.to(device))
            target = None if tumour is None else nn.functional.adaptive_avg_pool3d(tumour.to(device),
                                                                                    features.shape[2:])
            logits = head(lesion_pool(features, target) if target is not None and settings.lesion_pooling else z)
            weight = known[index].to(device)
            per_label = nn.functional.binary_cross_entropy_with_logits(logits, labels[index].to(device),
                                                                       reduction="none") * weight
            if dro is not None and group_ids is not None:
                per_case = per_label.sum(dim=1) / weight.sum(dim=1).clamp(min=1)
                loss = dro.update(per_case, torch.from_numpy(group_ids[index]))
            else:
                loss = per_label.sum() / weight.sum().clamp(min=1)
            if target is not None and settings.tumour_weight > 0:
                loss = loss + settings.tumour_weight * nn.functional.binary_cross_entropy_with_logits(
                    occupancy(features), target)
            if target is not None and settings.background_weight > 0:
                loss = loss + settings.background_weight * background_spread(features, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            metrics(epoch * steps_per_epoch + step + 1, stage="train", epoch=epoch + 1, loss=losses[-1],
                    lr=schedule.get_last_lr()[0], **({} if dro is None else _dro_metrics(dro)))
            progress("train", (epoch + (step + 1) / steps_per_epoch) / settings.epochs,
                     f"epoch {epoch + 1}/{settings.epochs} loss {np.mean(losses):.3f}")
        history.append(float(np.mean(losses)))
    return encoder.eval(), history


def group_balanced(group_ids: list[int]) -> np.ndarray:
    """One weight per case, 1 / (its group's size), scaled to a mean of 1: every group weighs the same in total.
    Group-DRO's counterpart for the linear heads, which are fitted once on frozen embeddings: without it a probe
    fitted on the usual (biased) mix learns from the embedding whatever shortcut the encoder still carries."""
    ids = np.asarray(group_ids)
    weights = np.array([1.0 / np.count_nonzero(ids == g) for g in ids])
    return weights * len(ids) / weights.sum()


def _dro_metrics(dro: GroupDRO) -> dict[str, Any]:
    """One step's Group-DRO numbers for the metrics log: q and the group losses (None where a group was absent)."""
    losses = dro.last.group_losses.tolist()
    return {"q": dict(zip(dro.groups, dro.q.tolist())),
            "group_losses": {g: None if np.isnan(v) else v for g, v in zip(dro.groups, losses)}}


def fit_heads(embeddings: np.ndarray, cohort: PreparedCohort, seed: int = 0,
              cam_reference: np.ndarray | None = None, cam_layer: str = "layer4",
              sample_weight: np.ndarray | None = None) -> tuple[Heads, dict[str, str]]:
    """Every head on frozen embeddings; a marker or survival that cannot be fitted is skipped with a reason.
    ``sample_weight`` (one per case) weights the marker probes (``fit_marker_probe``); Cox and OOD are unweighted.

    Fewer than MIN_HEAD_CASES cases, or no marker nor survival that can be fitted, is an InputError: the
    trainers check their cohorts for both before any work (``check_heads_cohort``), this is the last guard.
    """
    if len(embeddings) < MIN_HEAD_CASES:
        raise InputError(None, f"the heads need at least {MIN_HEAD_CASES} cases for their {HEAD_FOLDS}-fold "
                               f"cross-validation, got {len(embeddings)}")
    mean, scale = fit_scaling(embeddings)
    standardised = (embeddings - mean) / scale
    subjects = cohort.subjects or None  # the folds keep a subject's scans together (neuroradfm.folds)
    skipped: dict[str, str] = {}
    markers = []
    for column, key in enumerate(MARKER_KEYS):
        try:
            markers.append(fit_marker_probe(standardised, cohort.labels[:, column], key, folds=HEAD_FOLDS,
                                            seed=seed, subjects=subjects, sample_weight=sample_weight))
        except ValueError as error:
            skipped[key] = str(error)
    try:
        cox = fit_cox(standardised, cohort.os_days, cohort.os_event, folds=HEAD_FOLDS, seed=seed, subjects=subjects)
    except ValueError as error:
        cox, skipped["survival"] = None, str(error)
    if not markers and cox is None:
        raise InputError(None, f"no marker probe and no survival model could be fitted on {len(embeddings)} cases: "
                               + "; ".join(skipped.values()))
    ood = fit_ood(standardised, folds=HEAD_FOLDS, subjects=subjects)
    return Heads(mean, scale, markers, cox, ood, cam_reference, cam_layer), skipped


def heads_cv(cohort: PreparedCohort) -> dict[str, Any]:
    """The card's record that the heads' cross-validation was grouped by subject (``{"heads_cv": ...}``), when a
    subject of ``cohort`` has several cases; empty otherwise, so cards of one case per subject are unchanged."""
    if not repeated(cohort.subjects):
        return {}
    return {"heads_cv": {"folds": HEAD_FOLDS, "grouped_by": GROUP_COLUMN, "subjects": len(set(cohort.subjects))}}


def manifest_cohort(entries: list[CaseEntry]) -> PreparedCohort:
    """A manifest's cases as a cohort without images (ids, sites, marker labels, survival; ``inputs`` has no
    voxels): what the checks of a training read before any case is preprocessed."""
    labels = np.array([[_number(e.clinical.get(key)) for key in MARKER_KEYS] for e in entries], np.float64)
    return PreparedCohort([e.case_id for e in entries], [str(e.site) for e in entries],
                          np.zeros((len(entries), 0), np.float16), labels.reshape(len(entries), len(MARKER_KEYS)),
                          np.array([_number(e.clinical.get("os_days")) for e in entries], np.float64),
                          np.array([_number(e.clinical.get("os_event")) for e in entries], np.float64),
                          subjects=[e.subject for e in entries])


def head_problems(cohort: PreparedCohort) -> dict[str, str]:
    """Why each head (a marker key, or "survival") cannot be fitted on ``cohort``'s targets: what ``fit_heads``
    will skip; empty when every head can be fitted."""
    subjects = cohort.subjects or None
    problems = {key: marker_problem(cohort.labels[:, column], key, subjects)
                for column, key in enumerate(MARKER_KEYS)}
    problems["survival"] = survival_problem(cohort.os_days, cohort.os_event, subjects)
    return {key: problem for key, problem in problems.items() if problem}


def _require_a_head(manifest: str | Path, cohort: PreparedCohort, which: str) -> None:
    """A marker probe or the survival model must be fittable: a bundle of no head predicts nothing."""
    problems = head_problems(cohort)
    if len(problems) == len(MARKER_KEYS) + 1:
        raise InputError(manifest, f"no marker probe and no survival model can be fitted on the {len(cohort.case_ids)} "
                                   f"{which}: " + "; ".join(problems.values()))


def check_heads_cohort(manifest: str | Path, cohort: PreparedCohort, given: int) -> None:
    """Refuse a cohort the heads of ``fit-heads`` cannot be fitted on: too few usable cases for their
    cross-validation, or not one marker or survival with enough labelled cases. Run on ``manifest_cohort`` before
    preprocessing and on the prepared cohort after it (when cases that failed to load may leave too few)."""
    require_cases(manifest, MIN_HEAD_CASES, given, cohort.failures, "fitting the heads",
                  f"the marker probes, the Cox model and the OOD threshold are cross-validated in {HEAD_FOLDS} folds")
    _require_a_head(manifest, cohort, "usable cases")


def _held_out(count: int, fraction: float) -> int:
    """How many of a site's ``count`` cases go to split B: ``fraction`` of them, rounded, but at least one and never
    all of them, so that both splits see every site of two cases or more."""
    return min(max(round(fraction * count), 1), count - 1)


def min_training_cases(probe_fraction: float) -> int:
    """The fewest cases (of one site) whose split B holds MIN_HEAD_CASES at ``probe_fraction`` (12 at the default
    0.4); the rest, at least one, train the encoder."""
    count = max(MIN_HEAD_CASES + 1, int((MIN_HEAD_CASES - 0.5) / probe_fraction))
    while _held_out(count, probe_fraction) < MIN_HEAD_CASES:
        count += 1
    return count


def _split(sites: list[str], fraction: float, seed: int,
           subjects: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split A (encoder) / B (heads), stratified by site so both see every site, and by subject: all scans of a
    patient (``subjects``; one case each when empty) go to the same split, so heads are never fitted on a
    follow-up of a patient the encoder was trained on. With one case per subject the split is case by case."""
    rng = np.random.default_rng(seed)
    subjects = subjects or [str(i) for i in range(len(sites))]
    a: list[int] = []
    b: list[int] = []
    placed: dict[str, list[int]] = {}
    for site in sorted(set(sites)):
        members = [i for i, s in enumerate(sites) if s == site]
        groups = list(dict.fromkeys(subjects[i] for i in members))  # the site's subjects, in manifest order
        n_b = _held_out(len(members), fraction)
        in_b = sum(1 for i in members if placed.get(subjects[i]) is b)
        new_in_b = []
        for position in rng.permutation(len(groups)):
            subject = groups[position]
            if subject not in placed:
                placed[subject] = b if in_b < n_b else a
                in_b += sum(1 for i in members if subjects[i] == subject) if placed[subject] is b else 0
                new_in_b += [subject] if placed[subject] is b else []
        if len(new_in_b) > 1 and all(placed[subjects[i]] is b for i in members):
            placed[new_in_b[-1]] = a  # large patients filled split B: the last one trains the encoder instead
        for i in members:
            placed[subjects[i]].append(i)
    return np.sort(np.array(a, int)), np.sort(np.array(b, int))


def _split_seed(settings: BaselineSettings) -> int:
    return settings.seed if settings.split_seed is None else settings.split_seed


def check_training_cohort(manifest: str | Path, cohort: PreparedCohort, given: int,
                          settings: BaselineSettings) -> None:
    """Refuse a cohort ``train_baseline`` cannot split into encoder cases (A) and held-out heads cases (B): too few
    usable cases, a site of one case (the split is stratified by site), a split B too small for the heads'
    cross-validation, or no marker or survival with enough labelled cases in B. Run on ``manifest_cohort``
    before preprocessing and on the prepared cohort after it."""
    fraction = settings.probe_fraction
    require_cases(manifest, min_training_cases(fraction), given, cohort.failures, "training a bundle",
                  f"a probe_fraction of {fraction} of every site's cases, at least {MIN_HEAD_CASES} in all, is held "
                  f"out to fit the heads and cross-validate them in {HEAD_FOLDS} folds; the rest train the encoder")
    counts = Counter(cohort.sites)
    single = [f"{site} ({cohort.case_ids[cohort.sites.index(site)]})" for site, n in sorted(counts.items()) if n == 1]
    if single:
        raise InputError(manifest, f"site(s) with a single usable case: {', '.join(single)}; the cases are split into "
                                   "encoder and heads cases site by site, so that both see every site, which needs at "
                                   "least 2 cases of each site: add cases of that site, or leave its case out")
    held = {site: _held_out(n, fraction) for site, n in sorted(counts.items())}
    if sum(held.values()) < MIN_HEAD_CASES:
        per_site = ", ".join(f"{site} {n} of {counts[site]}" for site, n in held.items())
        raise InputError(manifest, f"a probe_fraction of {fraction} of each site's cases holds out only "
                                   f"{sum(held.values())} cases for the heads ({per_site}); their {HEAD_FOLDS}-fold "
                                   f"cross-validation needs at least {MIN_HEAD_CASES}: add cases, or raise "
                                   "probe_fraction")
    _, split_b = _split(cohort.sites, fraction, _split_seed(settings), cohort.subjects)
    _require_a_head(manifest, cohort.subset(split_b), "cases held out for the heads (split B)")
    for key in settings.markers:
        problem = marker_problem(cohort.labels[:, MARKER_KEYS.index(key)], key)
        if problem:
            raise InputError(manifest, f"--markers: the encoder cannot be trained on it: {problem}")


def _lesion_terms(settings: BaselineSettings, have_masks: bool) -> str:
    """What the training used of the tumour masks, for the card."""
    terms = [text for on, text in ((settings.lesion_pooling, "marker loss on tumour-pooled features"),
                                   (settings.tumour_weight > 0, "an auxiliary tumour-occupancy target"),
                                   (settings.background_weight > 0, "a background-consistency loss"))
             if on and have_masks]
    return f" with {', '.join(terms)} from the segmentations" if terms else ""



def _pretraining(init: Bundle) -> dict[str, Any]:
    """What the card keeps of the encoder bundle the training started from."""
    training = init.card.get("training", {})
    keep = ("method", "dro", "group_column", "groups", "q_final", "manifest", "manifest_hash", "cases", "steps",
            "settings", "loss_first_steps", "loss_last_steps", "created")
    return {"encoder_bundle": init.name, "encoder_bundle_hash": init.card.get("content_hash"),
            "rebuild_command": init.card.get("rebuild_command"), **{k: training[k] for k in keep if k in training}}


def _method(settings: BaselineSettings, have_masks: bool, init: Bundle | None) -> str:
    lesion = _lesion_terms(settings, have_masks)
    if settings.markers and init is not None:
        lesion += f" on {', '.join(settings.markers)} only"
    if settings.dro != "erm":
        lesion += (f", Group-DRO ({settings.dro}) over the groups of {settings.group_column}, the marker probes "
                   "group-balanced")
    if init is None:
        trained = f"encoder on {', '.join(settings.markers)} only" if settings.markers else "multi-marker encoder"
        return (f"supervised {trained} (split A){lesion} + frozen-embedding heads (split B); "
                "stand-in for SSL + Group-DRO pretraining")
    pretraining = init.card.get("training", {})
    dro = pretraining.get("dro", "erm")
    sampled = " drawing the cases from q" if pretraining.get("settings", {}).get("dro_sampling") else ""
    how = f"{pretraining.get('method', 'unknown method')}, " + ("ERM" if dro == "erm" else f"Group-DRO {dro}{sampled}")
    return (f"encoder pretrained ({how}; see pretraining), fine-tuned supervised on the markers of split A{lesion}"
            " + frozen-embedding heads (split B)")


def train_baseline(manifest: str | Path, out: str | Path, settings: BaselineSettings | None = None,
                   card: dict[str, Any] | None = None, progress: Progress = null_progress,
                   cache_dir: str | Path | None = None, metrics_path: str | Path | None = None,
                   init: str | Path | None = None) -> Path:
    """Build a complete bundle from a manifest; returns the bundle folder.

    ``init``: an encoder bundle (``neuroradfm pretrain``) to fine-tune instead of a new encoder; its
    architecture and preprocessing replace those of ``settings``. ``cache_dir`` keeps the preprocessed cases
    for the next run (see neuroradfm.train.cohort); ``metrics_path`` receives one JSON line per training step
    (neuroradfm.metrics).
    """
    settings = settings or BaselineSettings()
    manifest = Path(manifest)
    check_destination(out, BUNDLE_FILES, [manifest, init, cache_dir, metrics_path])  # before hours of training
    check_destinations(files={"--metrics": metrics_path}, folders={"--cache": cache_dir})
    start = None if init is None else load_bundle(init)
    encoder = None
    if start is not None:
        encoder = with_availability_mask(start.encoder) if settings.sequence_dropout > 0 else start.encoder
        settings = replace(settings, encoder=encoder.config, preprocessing=start.preprocessing)
    elif settings.sequence_dropout > 0:
        settings = replace(settings, encoder=replace(settings.encoder, availability_mask=True))
    trained_for = trained_subsets(settings.sequence_dropout)
    device = resolve_device(settings.device)
    entries = read_manifest(manifest)
    check_training_cohort(manifest, manifest_cohort(entries), len(entries), settings)
    names, group_of = case_groups(entries, settings.group_column, manifest) if settings.dro != "erm" else ([], {})
    cohort = prepare_cohort(entries, settings.preprocessing, sub_progress(progress, 0.0, 0.25), cache_dir,
                            trained_for)
    check_training_cohort(manifest, cohort, len(entries), settings)  # cases that failed may have left too few
    split_a, split_b = _split(cohort.sites, settings.probe_fraction, _split_seed(settings), cohort.subjects)
    group_ids = np.array([group_of[cohort.case_ids[i]] for i in split_a], int) if names else None
    dro = None if group_ids is None else GroupDRO(names, settings.dro, settings.eta_q,
                                                   group_sizes=[max(1, int((group_ids == g).sum()))
                                                                for g in range(len(names))])
    encoder, history = train_encoder(cohort.subset(split_a), settings, device, sub_progress(progress, 0.25, 0.9),
                                     MetricsLog(metrics_path), encoder, dro, group_ids)
    progress("heads", 0.9, "fitting probes, Cox and OOD on held-out embeddings")
    probe_cohort = cohort.subset(split_b)
    embeddings, reference = embed(encoder, probe_cohort.inputs, device, cam_layer=settings.cam_layer)
    balanced = group_balanced([group_of[case] for case in probe_cohort.case_ids]) if names else None
    heads, skipped = fit_heads(embeddings, probe_cohort, settings.seed, reference, settings.cam_layer, balanced)
    progress("heads", 0.95, "held-out AUC of each sequence subset")
    reliability = subset_reliability(encoder, probe_cohort, embeddings, heads, trained_for, device, settings.seed,
                                     "split B (cases the encoder was not trained on)")
    full_card = {
        "name": "neuroradfm-baseline",
        "description": "Supervised baseline encoder with linear marker probes and a Cox survival head.",
        "intended_use": "Research use only.",
        "input": {"sequences": list(neuroradfm.SEQUENCES), "normalisation": "z-score inside the brain mask",
                  "space": "MNI152 2009a (nilearn)"},
    }
    full_card.update(card or {})
    full_card["sequence_subsets"] = [list(subset) for subset in trained_for]
    if reliability is not None:
        full_card["subset_reliability"] = reliability
    full_card["training"] = {
        "method": _method(settings, cohort.tumour is not None, start),
        "manifest": manifest.name, "manifest_hash": file_hash(manifest),
        "cases_encoder": len(split_a), "cases_heads": len(split_b), "failed_cases": cohort.failures,
        "heads_case_ids": [cohort.case_ids[i] for i in split_b],
        "sites": sorted(set(cohort.sites)), "skipped_heads": skipped, **heads_cv(probe_cohort),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("encoder", "preprocessing")},
        "loss_per_epoch": history,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"neuroradfm": neuroradfm.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    if dro is not None and group_ids is not None:
        full_card["training"].update({
            "dro": dro.mode, "group_column": settings.group_column, "groups": names,
            "group_sizes": [int((group_ids == g).sum()) for g in range(len(names))],
            "q_final": dict(zip(names, dro.q.tolist())),
            "heads_weighting": f"group-balanced marker probes: every group of {settings.group_column} the same total "
                               "weight in split B (Cox and OOD unweighted)"})
    if start is not None:
        full_card["training"]["pretraining"] = _pretraining(start)
    path = save_bundle(out, encoder.cpu(), heads, settings.preprocessing, full_card)
    progress("done", 1.0, str(path))
    return path
