"""Self-supervised pretraining of the encoder with Group-DRO: resumable, and unchanged under ``torchrun``.

One optimizer step = one GLOBAL batch of ``batch_size`` cases, split over ranks (DistributedSampler) and,
on each rank, over ``accumulate`` micro-batches. Each micro-batch gives per-sample losses; Group-DRO turns
them into per-sample weights w_i from the GLOBAL batch's per-group sums and counts (all-reduced), and each
rank back-propagates sum_i w_i l_i (times the world size, which DDP's gradient averaging divides out).
So 1 process x accumulate k and k processes x accumulate 1 compute the same step.

With DRO on and accumulate = 1, q is updated from the step's own losses before the backward pass, as in
Sagawa et al. With accumulate > 1 the group losses of the whole step are needed before any micro-batch's
backward: a first pass without gradients computes them (BatchNorm running statistics are restored after it),
which costs about one extra forward pass per step.

Small cohorts: an epoch is the usable cases in whole global batches (the remainder is dropped), so a manifest
with fewer cases than ``batch_size`` is refused before preprocessing, and again after it when cases that failed
to load leave too few. A cohort of one case with ``batch_size`` 1 does train (every step sees that case; MoCo,
which contrasts the cases of a micro-batch, needs two). Every case needs a value in the group column (an empty
cell is refused before preprocessing); a group named in ``groups`` that has no case is kept with q but never drawn.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import neuroradfm
from neuroradfm.atomic import atomic_file
from neuroradfm.dro import MODES, GroupDRO
from neuroradfm.errors import InputError, NeuroRADFMError, SettingsError
from neuroradfm.io import read_manifest
from neuroradfm.metrics import MetricsLog, read_metrics
from neuroradfm.models.bundle import BUNDLE_FILES, save_bundle
from neuroradfm.models.encoder import Encoder, EncoderConfig
from neuroradfm.output_paths import check_destination, check_destinations
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.ssl import METHODS, MethodSettings, build_method
from neuroradfm.ssl.augment import FLIPS, sample_seed
from neuroradfm.ssl.base import HEAD_NORMS
from neuroradfm.ssl.dino import DINO_CENTERINGS
from neuroradfm.ssl.mae import mask_spec
from neuroradfm.train import distributed
from neuroradfm.train.baseline import check_encoder_config
from neuroradfm.train.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from neuroradfm.train.cohort import cache_cohort, file_hash, require_cases
from neuroradfm.train.data import PretrainDataset, epoch_order, group_labels, make_sampler, steps_per_epoch
from neuroradfm.train.sequence_subsets import trained_subsets


class TrainingError(NeuroRADFMError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass
class PretrainSettings:
    method: str = "byol"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """Default: resnet50 as in the paper."""
    preprocessing: PreprocessSettings = field(default_factory=lambda: PreprocessSettings(spacing_mm=2.0,
                                                                                         size=(128, 128, 128)))
    """Default: the paper's 2 mm, 128^3 model grid."""
    crop_size: int = 96
    """Side of the random crops the views are made of (voxels of the model grid)."""
    method_settings: MethodSettings = field(default_factory=MethodSettings)
    augment_strength: float = 1.0
    """Scale of the views' affine and intensity augmentation (0: crops and flips only)."""
    flips: str = "all"
    """Axes the views are flipped along: "all", "lr" (left-right only) or "none" (neuroradfm.ssl.augment)."""
    sequence_dropout: float = 0.0
    """Probability that each sequence of a view is zeroed, each view on its own (never all of a case's): the
    encoder then takes any non-empty subset and learns one embedding whatever subset it gets; MAE reconstructs the
    dropped sequences too. 0: all four only, and every case must have them."""
    artifact_augment: float = 0.0
    """Probability that a case gets a random artifact (neuroradfm.artifacts, level 1-4) before its views."""
    epochs: int = 100
    max_steps: int = 0
    """If > 0, training (and its schedule) ends after this many optimizer steps."""
    batch_size: int = 8
    """GLOBAL batch per optimizer step (over all ranks and micro-batches)."""
    accumulate: int = 1
    """Micro-batches per step on each rank (gradient accumulation)."""
    learning_rate: float = 1e-5
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    """Linear warm-up over this fraction of the steps, then cosine decay to 0."""
    dro: str = "erm"
    """erm | exponentiated (Sagawa et al.) | worst-group (the reference code's hard mode)."""
    group_column: str = "site"
    groups: tuple[str, ...] | None = None
    eta_q: float = 0.01
    dro_adjustment: float = 0.0
    """Generalisation adjustment C (added to group g's loss as C / sqrt(n_g)); 0 = off."""
    group_balanced: bool = False
    dro_sampling: bool = False
    """Group-DRO draws each step's cases group by group in proportion to q (weighting them equally) instead of
    weighting the cases the sampler gives (neuroradfm.dro)."""
    amp: bool = True
    """Mixed precision (bfloat16 autocast) on CUDA; ignored on the CPU."""
    channels_last: bool = True
    """channels_last_3d memory format on CUDA; ignored on the CPU."""
    checkpoint_every: int = 100
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        """Settings that cannot work are a SettingsError naming the option, before any case is read."""
        if self.method not in METHODS:
            raise SettingsError("--method", f"unknown SSL method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.dro not in MODES:
            raise SettingsError("--dro-mode", f"unknown DRO mode {self.dro!r}; choose one of {', '.join(MODES)}")
        check_encoder_config(self.encoder)
        for flag, value in (("--batch-size", self.batch_size), ("--accumulate", self.accumulate),
                            ("--epochs", self.epochs), ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise SettingsError(flag, f"must be at least 1, got {value}")
        for flag, value in (("--max-steps", self.max_steps), ("--workers", self.num_workers)):
            if value < 0:
                raise SettingsError(flag, f"must be 0 or more, got {value}")
        if self.crop_size < 8:
            raise SettingsError("--crop", f"the crop size must be at least 8, got {self.crop_size}")
        if not self.learning_rate > 0:
            raise SettingsError("--lr", f"the learning rate must be positive, got {self.learning_rate}")
        for flag, value in (("--weight-decay", self.weight_decay), ("--augment-strength", self.augment_strength),
                            ("--eta-q", self.eta_q), ("--dro-adjustment", self.dro_adjustment)):
            if not value >= 0:
                raise SettingsError(flag, f"must be 0 or more, got {value}")
        for flag, value in (("--sequence-dropout", self.sequence_dropout),
                            ("--artifact-augment", self.artifact_augment)):
            if not 0 <= value < 1:
                raise SettingsError(flag, f"a probability from 0 up to (not including) 1, got {value}")
        if self.sequence_dropout > 0 and not self.encoder.availability_mask:
            self.encoder = replace(self.encoder, availability_mask=True)
        if not 0 <= self.warmup_fraction <= 1:
            raise SettingsError("--warmup", f"the warm-up fraction must lie in 0..1, got {self.warmup_fraction}")
        if self.dro_sampling and (self.group_balanced or self.dro == "erm"):
            raise SettingsError("--dro-sampling", "--dro-sampling draws the cases from Group-DRO's q: it needs --dro "
                                                  "and cannot be combined with --group-balanced")
        if self.flips not in FLIPS:
            raise SettingsError("--flips", f"unknown flips {self.flips!r}; choose one of {', '.join(FLIPS)}")
        if self.crop_size > min(self.preprocessing.size):
            raise SettingsError("--crop", f"crop size {self.crop_size} exceeds the model grid "
                                          f"{self.preprocessing.size}")
        self._check_method()

    def _check_method(self) -> None:
        """What the chosen SSL method needs of the settings (else it fails only once the cohort is prepared)."""
        ms = self.method_settings
        for flag, value in (("--hidden-dim", ms.hidden_dim), ("--proj-dim", ms.proj_dim),
                            ("--dino-out-dim", ms.dino_out_dim)):
            if value < 1:
                raise SettingsError(flag, f"must be at least 1, got {value}")
        if not 0 <= ms.ema_momentum <= 1:
            raise SettingsError("--ema", f"the EMA momentum must lie in 0..1, got {ms.ema_momentum}")
        if ms.dino_centering not in DINO_CENTERINGS:
            raise SettingsError("--dino-centering", f"unknown DINO centring {ms.dino_centering!r}; choose one of "
                                                    f"{', '.join(DINO_CENTERINGS)}")
        if ms.dino_head_norm not in HEAD_NORMS:
            raise SettingsError("--dino-head-norm", f"unknown head normalisation {ms.dino_head_norm!r}; choose one "
                                                    f"of {', '.join(HEAD_NORMS)}")
        if self.method == "moco" and self.batch_size < 2 * self.accumulate:
            raise SettingsError("--batch-size", f"MoCo contrasts each case with the other cases of its micro-batch "
                                                f"(batch size / accumulate = {self.batch_size / self.accumulate:g}): "
                                                "it needs at least 2, or its loss is 0 and nothing is learnt")
        if self.method == "mae":
            # encoder_stride's formula (neuroradfm.ssl.mae), from the settings: no network is built yet
            stride = self.encoder.conv1_stride * (1 if self.encoder.no_max_pool else 2) * 8
            if self.crop_size % stride:
                raise SettingsError("--crop", f"MAE needs a crop size divisible by the encoder's total stride "
                                              f"{stride}, got {self.crop_size}")
            if not 0 < ms.mae_mask_ratio < 1:
                raise SettingsError("--mask-ratio", f"the masked fraction must lie between 0 and 1 (exclusive), "
                                                    f"got {ms.mae_mask_ratio}")
            if ms.mae_patch < 0:
                raise SettingsError("--mask-patch", f"must be 0 (the encoder's stride) or more, got {ms.mae_patch}")

    # settings that define the run: a resume must match them (device, workers and checkpoint cadence may change)
    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("device", "num_workers", "checkpoint_every"):
            data.pop(key)
        return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))



def _to(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 5:
            value = value.contiguous(memory_format=torch.channels_last_3d)
        out[key] = value
    return out


def _split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    chunks = {k: torch.chunk(v, parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


def pretrain(manifest: str | Path, out: str | Path, settings: PretrainSettings | None = None,
             card: dict[str, Any] | None = None, progress: Progress = null_progress,
             cache_dir: str | Path | None = None, metrics_path: str | Path | None = None,
             checkpoint_path: str | Path | None = None, resume: bool = False,
             stop_after: int | None = None) -> Path:
    """Pretrain an encoder on a manifest's cases; writes an encoder-only bundle to ``out`` and returns it.

    ``checkpoint_path`` (default ``<out>.checkpoint.pt``) is written every ``checkpoint_every`` steps and
    at the end; ``resume`` continues from it exactly. ``stop_after`` ends the process after that many steps
    (as an interruption would) without writing the bundle: for tests.
    """
    settings = settings or PretrainSettings()
    manifest, out = Path(manifest), Path(out)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else out.with_name(out.name + ".checkpoint.pt")
    cache_dir = Path(cache_dir) if cache_dir else out.with_name(out.name + ".cache")
    ctx = distributed.setup(settings.device)
    try:
        return _run(manifest, out, settings, card or {}, progress if ctx.is_main else null_progress, cache_dir,
                    MetricsLog(metrics_path if ctx.is_main else None), checkpoint_path, resume, stop_after, ctx)
    finally:
        distributed.teardown(ctx)


def _run(manifest: Path, out: Path, settings: PretrainSettings, card: dict[str, Any], progress: Progress,
         cache_dir: Path, metrics: MetricsLog, checkpoint_path: Path, resume: bool, stop_after: int | None,
         ctx: distributed.Context) -> Path:
    fingerprint = settings.fingerprint()
    check_destination(out, BUNDLE_FILES, [manifest, cache_dir, metrics.path, checkpoint_path])
    check_destinations(files={"--metrics": metrics.path, "--checkpoint": checkpoint_path},
                       folders={"--cache": cache_dir})
    state = load_checkpoint(checkpoint_path, fingerprint) if resume else None  # fails before anything is written
    if not resume and checkpoint_path.exists():  # a fresh run must not silently destroy a resumable one
        raise InputError(checkpoint_path, "a checkpoint of an earlier run is here: continue it with --resume, or "
                                          "delete it (or choose another --checkpoint) to start afresh")
    entries = read_manifest(manifest, check_files=True)
    names, _ = group_labels(entries, settings.group_column, manifest, settings.groups)
    per_step = ctx.world_size * settings.accumulate
    if settings.batch_size % per_step:
        raise SettingsError("--batch-size", f"batch size {settings.batch_size} must be a multiple of world size x "
                                            f"accumulate ({ctx.world_size} x {settings.accumulate})")
    batch_rule = (f"one optimizer step takes a global batch of {settings.batch_size} cases (--batch-size); lower it "
                  "or add cases")
    require_cases(manifest, settings.batch_size, len(entries), {}, "pretraining", batch_rule)
    resumed_groups = None if state is None else list(state.get("dro", {}).get("groups", names))
    if resumed_groups is not None and resumed_groups != names:
        raise CheckpointError(checkpoint_path, f"the checkpoint's run had the groups {', '.join(resumed_groups)} in "
                                               f"column {settings.group_column!r}; the manifest now gives "
                                               f"{', '.join(names)}: resume with that run's manifest, or start afresh")
    subsets = trained_subsets(settings.sequence_dropout)
    # rank 0 preprocesses into the cache; the others then find every case there
    if ctx.is_main:
        cohort = cache_cohort(entries, settings.preprocessing, cache_dir, sub_progress(progress, 0.0, 0.1), subsets)
    ctx.barrier()
    if not ctx.is_main:
        cohort = cache_cohort(entries, settings.preprocessing, cache_dir, subsets=subsets)
    require_cases(manifest, settings.batch_size, len(entries), cohort.failures, "pretraining", batch_rule)
    _, group_ids = group_labels(cohort.entries, settings.group_column, manifest, names)
    sizes = [max(1, group_ids.count(g)) for g in range(len(names))]
    present = sorted({names[g] for g in group_ids})
    dro_mode = settings.dro
    if dro_mode != "erm" and len(present) < 2:
        warnings.warn(f"{manifest}: only one group ({present[0]!r}) in column {settings.group_column!r}; "
                      "Group-DRO degenerates to ERM", stacklevel=2)
        progress("warning", 0.1, f"one group only ({present[0]}): Group-DRO degenerates to ERM")
        dro_mode = "erm"

    local_batch = settings.batch_size // ctx.world_size
    torch.manual_seed(settings.seed)
    encoder = Encoder(settings.encoder)
    ms = settings.method_settings
    dataset = PretrainDataset(cohort, group_ids, settings.crop_size, settings.seed,
                              strength=settings.augment_strength, flips=settings.flips,
                              sequence_dropout=settings.sequence_dropout, artifact_augment=settings.artifact_augment,
                              **mask_spec(settings.method, encoder, ms))
    sampler = make_sampler(dataset, ctx.world_size, ctx.rank, settings.seed, settings.group_balanced)
    per_epoch = steps_per_epoch(len(sampler), local_batch)
    total = settings.epochs * per_epoch
    if settings.max_steps > 0:
        total = min(total, settings.max_steps)
    warmup = int(settings.warmup_fraction * total)

    device = ctx.device
    cuda = device.type == "cuda"
    model = build_method(settings.method, encoder, ms, settings.crop_size).to(device)
    if cuda and settings.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.gather, model.reduce, model.rank = ctx.all_gather, ctx.all_reduce, ctx.rank
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total, warmup))
    dro = GroupDRO(names, dro_mode, settings.eta_q, settings.dro_adjustment, sizes, ctx.all_reduce,
                   sampling=settings.dro_sampling)
    amp = cuda and settings.amp
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        try:
            dro.load_state_dict(state["dro"])
        except ValueError as error:  # the groups left after failing cases no longer match the checkpoint's
            raise CheckpointError(checkpoint_path, f"cannot resume this run's Group-DRO: {error}") from None
        set_rng_state(state["rng"])
        step = int(state["step"])
        if ctx.is_main and metrics.path is not None and metrics.path.is_file():
            # this run's steps up to the checkpoint; not a later stage's rows (a fine-tuning that followed)
            kept = [row for row in read_metrics(metrics.path)
                    if row.get("stage") == "pretrain" and row.get("step", 0) <= step]
            with atomic_file(metrics.path) as tmp:
                tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        progress("resume", 0.1, f"resumed at step {step}/{total} from {checkpoint_path}")
    net = DistributedDataParallel(model, device_ids=[device] if cuda else None) if ctx.distributed else model

    def save(at_step: int) -> None:
        if ctx.is_main:
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "step": at_step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "dro": dro.state_dict(),
                "rng": rng_state(), "world_size": ctx.world_size})
        ctx.barrier()

    train_progress = sub_progress(progress, 0.1, 0.97)
    history: list[float] = []
    last_good = step if state is not None else None
    while step < total:
        epoch, skip = divmod(step, per_epoch)
        if dro.sampling:  # one step at a time: its cases depend on the q of this step (same on every rank)
            dataset.epoch = step  # (views are seeded per step, so a case drawn again gets new views)
            drawn = dro.q_sampled_cases(group_ids, settings.batch_size, sample_seed(settings.seed, step, 3))
            order = drawn[ctx.rank::ctx.world_size]
        else:
            dataset.epoch = epoch
            order = epoch_order(sampler, epoch, skip * local_batch)
        loader = DataLoader(dataset, batch_size=local_batch, sampler=order, drop_last=True,
                            num_workers=0 if dro.sampling else settings.num_workers, pin_memory=cuda,
                            persistent_workers=False)
        for batch in loader:
            if step >= total:
                break
            model.train()
            model.fraction = step / total
            stats = _train_step(net, model, dro, batch, settings.accumulate, ctx, device, amp,
                                cuda and settings.channels_last)
            if not math.isfinite(stats.mean_loss) or not math.isfinite(stats.robust_loss):
                where = (f"the last good checkpoint {checkpoint_path} (step {last_good}) is kept"
                         if last_good is not None else "no checkpoint had been written yet")
                raise TrainingError(f"loss became {stats.mean_loss} at step {step + 1} (epoch {epoch + 1}; "
                                    f"per-group {dict(zip(names, stats.group_losses.tolist()))}): training "
                                    f"stopped; {where}. Lower the learning rate or check the inputs.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            model.after_step(step / total)
            diagnostics = model.pop_diagnostics()
            history.append(stats.mean_loss)
            group_losses = {n: (None if math.isnan(v) else v) for n, v in zip(names, stats.group_losses.tolist())}
            metrics(step, stage="pretrain", epoch=epoch + 1, loss=stats.mean_loss, robust_loss=stats.robust_loss,
                    group_losses=group_losses, group_counts=dict(zip(names, stats.counts.tolist())),
                    q=dict(zip(names, dro.q.tolist())), lr=scheduler.get_last_lr()[0],
                    **({"diagnostics": diagnostics} if diagnostics else {}))
            train_progress("pretrain", step / total, f"step {step}/{total} epoch {epoch + 1} "
                                                      f"loss {stats.mean_loss:.4f} robust {stats.robust_loss:.4f}")
            if step % settings.checkpoint_every == 0 or step == total:
                save(step)
                last_good = step
            if stop_after is not None and step >= stop_after:
                return checkpoint_path
    if last_good != step:
        save(step)
    if not ctx.is_main:
        ctx.barrier()
        return out
    full = {
        "name": "neuroradfm-pretrained-encoder",
        "description": f"Encoder pretrained self-supervised ({settings.method.upper()}"
                       f"{', Group-DRO ' + dro_mode if dro_mode != 'erm' else ', ERM'}); no heads yet "
                       "(neuroradfm fit-heads adds probes, Cox and OOD).",
        "intended_use": "Research use only.",
        "input": {"sequences": list(neuroradfm.SEQUENCES), "normalisation": "z-score inside the brain mask",
                  "space": "MNI152 2009a (nilearn)", "crop_size": settings.crop_size},
    }
    full.update(card)
    full["sequence_subsets"] = [list(subset) for subset in trained_subsets(settings.sequence_dropout)]
    full["training"] = {
        "method": f"self-supervised {settings.method}", "dro": dro_mode, "group_column": settings.group_column,
        "groups": names, "group_sizes": sizes, "q_final": dro.q.tolist(),
        "manifest": manifest.name, "manifest_hash": file_hash(manifest), "cases": len(cohort.entries),
        "failed_cases": cohort.failures, "steps": step, "steps_per_epoch": per_epoch, "world_size": ctx.world_size,
        "settings": _plain({k: v for k, v in asdict(settings).items() if k not in ("encoder", "preprocessing")}),
        "loss_first_steps": history[:10], "loss_last_steps": history[-10:],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"neuroradfm": neuroradfm.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    path = save_bundle(out, model.encoder.cpu().eval(), None, settings.preprocessing, full)
    ctx.barrier()
    progress("done", 1.0, str(path))
    return path


def _train_step(net, model, dro: GroupDRO, batch: dict[str, torch.Tensor], accumulate: int,
                ctx: distributed.Context, device: torch.device, amp: bool, channels_last: bool):
    """Forward / backward of one global step on this rank; returns the step's GroupStats (gradients are set)."""
    groups = batch["group"]
    inputs = {k: v for k, v in batch.items() if k not in ("group", "index")}
    micro = list(zip(_split(inputs, accumulate), torch.chunk(groups, accumulate)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def losses_of(module, part):
        with autocast:
            return module(_to(part, device, channels_last)).float()

    if accumulate == 1:
        losses = losses_of(net, micro[0][0])
        weights, stats = dro.step(*dro.group_totals(losses, groups))
        if math.isfinite(stats.robust_loss):
            dro.weighted(losses, groups, weights, ctx.world_size).backward()
        return stats
    if dro.active:  # first pass without gradients: the whole step's group losses, then q
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        with torch.no_grad():
            first = torch.cat([losses_of(model, part) for part, _ in micro])
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        weights, stats = dro.step(*dro.group_totals(first, groups))
        if not math.isfinite(stats.robust_loss):
            return stats
    else:  # ERM: the weights depend on the global count only
        count = ctx.all_reduce(torch.tensor([float(len(groups))], dtype=torch.float64))
        weights = torch.full((len(dro.groups),), 1.0 / float(count), dtype=torch.float64)
    collected = []
    for index, (part, part_groups) in enumerate(micro):
        sync = index == accumulate - 1 or not ctx.distributed
        with nullcontext() if sync else net.no_sync():
            losses = losses_of(net, part)
            collected.append(losses.detach())
            # always backward, NaN or not, so that every rank joins the same collectives; the trainer stops
            # before the optimizer step when the step's loss is not finite
            dro.weighted(losses, part_groups, weights, ctx.world_size).backward()
    if not dro.active:
        _, stats = dro.step(*dro.group_totals(torch.cat(collected), groups))
    return stats
