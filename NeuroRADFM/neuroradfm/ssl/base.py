"""Shared pieces of the SSL methods: settings, MLP heads, EMA teachers, cross-rank hooks, the registry."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from neuroradfm.models.encoder import Encoder

Gather = Callable[[torch.Tensor], torch.Tensor]
"""Concatenates a (detached) tensor over ranks along dim 0 (identity in one process)."""
Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over ranks (identity in one process)."""


@dataclass(frozen=True)
class MethodSettings:
    hidden_dim: int = 1024
    """Hidden width of the projector / predictor MLPs."""
    proj_dim: int = 256
    """Output width of BYOL / MoCo projectors."""
    ema_momentum: float = 0.996
    """EMA teacher momentum at the start; it follows a cosine to 1 over training (BYOL, DINO, MoCo v3)."""
    moco_temperature: float = 0.2
    dino_out_dim: int = 4096
    dino_bottleneck: int = 256
    dino_student_temp: float = 0.1
    dino_teacher_temp: float = 0.07
    dino_warmup_teacher_temp: float = 0.04
    dino_teacher_temp_warmup: float = 0.3
    """Fraction of training over which the teacher temperature rises linearly to its final value."""
    dino_center_momentum: float = 0.9
    dino_centering: str = "ema"
    """How DINO's teacher avoids collapse: "ema" (DINO: subtract an EMA of the batch-mean output) or "sinkhorn"
    (DINOv2, SwAV: Sinkhorn-Knopp equipartition of the batch's teacher outputs over the prototypes)."""
    dino_koleo: float = 0.0
    """Weight of DINOv2's KoLeo term on the student's embeddings (each view's local batch; 0: off)."""
    dino_head_norm: str = "batch"
    """Normalisation of the DINO head's hidden layer: "batch" (DINO's ``use_bn_in_head``) or "layer". With
    LayerNorm the head passes on what every case of a cohort shares, the centre removes it, and what is left
    between cases is too small against the teacher's temperature: the uniform collapse (docs/PRETRAINING.md)."""
    mae_mask_ratio: float = 0.6
    mae_patch: int = 0
    """Masked cube size in voxels; 0 = the encoder's total stride (one feature-map cell per patch)."""
    mae_decoder_dim: int = 128
    mae_mask_per_sequence: bool = False
    """Mask each sequence's cubes independently (a cube hidden in T2 may be visible in T1 and FLAIR), so the
    encoder also learns to predict one sequence from the others; False: the same cubes in all four."""

    def to_dict(self) -> dict:
        return asdict(self)


HEAD_NORMS = ("layer", "batch")
"""Normalisation of an MLP head's hidden layer (``mlp``)."""


def mlp(in_dim: int, hidden: int, out_dim: int, norm: str = "layer") -> nn.Sequential:
    """Linear - norm - GELU - Linear. LayerNorm by default: 3D batches are small (1-4 per GPU) and a per-sample
    head keeps each sample's loss independent of its batch-mates. BatchNorm (DINO's ``use_bn_in_head``)
    standardises each hidden unit over the batch, which removes what every sample shares and leaves their
    differences at unit scale (per process and micro-batch, like the encoder's BatchNorm)."""
    if norm not in HEAD_NORMS:
        raise ValueError(f"unknown head normalisation {norm!r}; choose one of {', '.join(HEAD_NORMS)}")
    layer = nn.LayerNorm(hidden) if norm == "layer" else nn.BatchNorm1d(hidden)
    return nn.Sequential(nn.Linear(in_dim, hidden), layer, nn.GELU(), nn.Linear(hidden, out_dim))


def ema_momentum(base: float, fraction: float) -> float:
    """BYOL's cosine schedule: base at the start, 1 at the end."""
    fraction = min(max(fraction, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * fraction) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


class SSLMethod(nn.Module):
    """Base class. ``batch`` holds ``view1``, ``view2`` (B, 4, D, H, W) and, for MAE, ``mask`` (B, 1, D, H, W)."""

    name = "base"

    def __init__(self, encoder: Encoder, settings: MethodSettings) -> None:
        super().__init__()
        self.encoder = encoder
        self.settings = settings
        self.gather: Gather = lambda t: t
        self.reduce: Reduce = lambda t: t
        self.rank = 0
        self.fraction = 0.0
        """How far training is (0..1); set by the trainer before each step (schedules)."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, fraction: float) -> None:
        """Called once after every optimizer step with the training fraction reached."""

    def pop_diagnostics(self) -> dict[str, float]:
        """Method-specific terms of the loss seen since the last call (the trainer logs them every step as
        ``diagnostics``; this process's samples only); empty by default."""
        return {}


class PredictorTargetMethod(SSLMethod):
    """BYOL and MoCo v3 share this: an online encoder + projector + predictor and an EMA target copy of the
    encoder + projector; they differ only in the loss between the online predictions and the targets."""

    def __init__(self, encoder: Encoder, settings: MethodSettings) -> None:
        super().__init__(encoder, settings)
        dim = encoder.embedding_dim
        self.projector = mlp(dim, settings.hidden_dim, settings.proj_dim)
        self.predictor = mlp(settings.proj_dim, settings.hidden_dim, settings.proj_dim)
        self.target = frozen_copy(nn.ModuleDict({"encoder": encoder, "projector": self.projector}))

    def predictions_and_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(p1, p2, t1, t2): online predictions and target projections of view 1 and view 2."""
        n = batch["view1"].shape[0]
        x = torch.cat([batch["view1"], batch["view2"]])
        p = self.predictor(self.projector(self.encoder(x)[1]))
        with torch.no_grad():
            t = self.target["projector"](self.target["encoder"](x)[1])
        return p[:n], p[n:], t[:n], t[n:]

    def after_step(self, fraction: float) -> None:
        student = nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})
        ema_update(self.target, student, ema_momentum(self.settings.ema_momentum, fraction))


def build_method(name: str, encoder: Encoder, settings: MethodSettings | None = None,
                 crop_size: int | None = None) -> SSLMethod:
    from neuroradfm.ssl.byol import BYOL
    from neuroradfm.ssl.dino import DINO
    from neuroradfm.ssl.mae import MAE
    from neuroradfm.ssl.moco import MoCoV3

    settings = settings or MethodSettings()
    classes = {"byol": BYOL, "dino": DINO, "mae": MAE, "moco": MoCoV3}
    if name not in classes:
        raise ValueError(f"unknown SSL method {name!r}; choose one of {', '.join(METHODS)}")
    if name == "mae":
        return MAE(encoder, settings, crop_size)
    return classes[name](encoder, settings)


METHODS = ("byol", "dino", "mae", "moco")
