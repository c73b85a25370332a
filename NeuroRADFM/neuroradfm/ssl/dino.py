"""DINO (Caron et al. 2021): self-distillation; the student matches the EMA teacher's centred, sharpened
distribution over prototypes of the other view. Two global views (no multi-crop local views).

Centring subtracts an EMA of the teacher's mean output so that no prototype takes every sample; what is left
is what tells the samples apart. In a cohort that shares one anatomy, a LayerNorm head passes on mostly what
every case shares, the centre removes it, and the rest is too small against the teacher's temperature: the
teacher goes uniform and the student follows (the uniform collapse). The head's hidden layer therefore uses
BatchNorm by default (DINO's ``use_bn_in_head``), which keeps the cases' differences at unit scale. DINO also
needs views on which the untrained teacher's outputs for one case agree more than for two cases; with small
feature maps, crop offsets and flips along every axis break that (measured: docs/PRETRAINING.md).
``dino_centering="sinkhorn"`` uses DINOv2's Sinkhorn-Knopp centring instead: the batch's sharpened teacher
outputs are rescaled so that every prototype receives an equal share of the batch. ``dino_koleo`` > 0 adds
DINOv2's KoLeo term (Sablayrolles et al. 2019) on the student's embeddings, which spreads a batch's cases
apart."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from neuroradfm.ssl.base import MethodSettings, SSLMethod, ema_momentum, ema_update, frozen_copy, mlp

DINO_CENTERINGS = ("ema", "sinkhorn")
"""How the teacher's output is centred (``MethodSettings.dino_centering``)."""


def sinkhorn_knopp(scores: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """(N, K) teacher logits (already divided by the temperature) -> (N, K) targets whose rows sum to 1 and whose
    columns each sum to N / K (DINOv2's teacher centring). Over this batch only: one process with k
    micro-batches and k processes then compute the same targets."""
    q = torch.exp(scores.float() - scores.max()).t()  # (K, N)
    k, n = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t()


def koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, D) embeddings -> (N,) KoLeo terms -log(distance to the nearest other row), rows L2-normalised
    (DINOv2's ``KoLeoLoss``, per sample so that Group-DRO can weight it). Zeros for a batch of one."""
    if z.shape[0] < 2:
        return z.new_zeros(z.shape[0])
    x = F.normalize(z.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised linear layer onto ``out_dim`` prototypes."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, norm: str) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, norm)
        self.last = weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(z), dim=-1))


class DINO(SSLMethod):
    name = "dino"

    def __init__(self, encoder, settings: MethodSettings) -> None:
        super().__init__(encoder, settings)
        if settings.dino_centering not in DINO_CENTERINGS:
            raise ValueError(f"unknown DINO centring {settings.dino_centering!r}; choose one of "
                             f"{', '.join(DINO_CENTERINGS)}")
        self.head = DINOHead(encoder.embedding_dim, settings.hidden_dim, settings.dino_bottleneck,
                             settings.dino_out_dim, settings.dino_head_norm)
        self.teacher = frozen_copy(nn.ModuleDict({"encoder": encoder, "head": self.head}))
        self.register_buffer("center", torch.zeros(1, settings.dino_out_dim))
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._terms: torch.Tensor | None = None
        self._terms_count = 0

    def teacher_temperature(self) -> float:
        s = self.settings
        if s.dino_teacher_temp_warmup <= 0 or self.fraction >= s.dino_teacher_temp_warmup:
            return s.dino_teacher_temp
        t = self.fraction / s.dino_teacher_temp_warmup
        return s.dino_warmup_teacher_temp + t * (s.dino_teacher_temp - s.dino_warmup_teacher_temp)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = batch["view1"].shape[0]
        x = torch.cat([batch["view1"], batch["view2"]])
        z = self.encoder(x)[1]
        student = F.log_softmax(self.head(z) / self.settings.dino_student_temp, dim=-1)
        with torch.no_grad():
            out = self.teacher["head"](self.teacher["encoder"](x)[1])
            sinkhorn = self.settings.dino_centering == "sinkhorn"
            teacher = sinkhorn_knopp(out / self.teacher_temperature()) if sinkhorn else \
                F.softmax((out - self.center) / self.teacher_temperature(), dim=-1)
        # the EMA centre follows the batches trained on (not DRO's no-grad first pass)
        if torch.is_grad_enabled() and not sinkhorn:
            batch_sum = out.sum(dim=0, keepdim=True).detach()
            self._sum = batch_sum if self._sum is None else self._sum + batch_sum
            self._count += out.shape[0]
        loss12 = -(teacher[:n] * student[n:]).sum(dim=-1)
        loss21 = -(teacher[n:] * student[:n]).sum(dim=-1)
        loss = (loss12 + loss21) / 2
        spread = (koleo(z[:n]) + koleo(z[n:])) / 2 if self.settings.dino_koleo > 0 else torch.zeros_like(loss)
        if torch.is_grad_enabled():
            self._log_terms(loss.detach(), teacher, student.detach(), out.shape[-1], spread.detach())
        return loss + self.settings.dino_koleo * spread

    @torch.no_grad()
    def _log_terms(self, loss: torch.Tensor, teacher: torch.Tensor, log_student: torch.Tensor, k: int,
                   spread: torch.Tensor) -> None:
        # cross-entropy = H(teacher) + KL(teacher || student) (Caron et al., fig. 7). The centre and the
        # temperature warm-up move H(teacher), so the raw loss need not fall. Collapse shows as H(teacher) ->
        # log K with a uniform student (cross-entropy = log K whatever the teacher), or H(teacher) -> 0 with
        # one prototype for every sample (entropy of the batch-mean teacher -> 0).
        n = loss.shape[0]
        entropy = -(teacher * teacher.clamp(min=1e-30).log()).sum(dim=-1)
        h = (entropy[:n] + entropy[n:]) / 2  # each sample's two teacher targets
        student_entropy = -(log_student.exp() * log_student).sum(dim=-1)
        mean_teacher = teacher.mean(dim=0)
        terms = torch.stack([loss.sum(), h.sum(), (loss - h).sum(),
                             -(mean_teacher * mean_teacher.clamp(min=1e-30).log()).sum() * n,
                             (student_entropy[:n] + student_entropy[n:]).sum() / 2, spread.sum()])
        self._terms = terms if self._terms is None else self._terms + terms
        self._terms_count += n
        self._temperature = self.teacher_temperature()
        self._log_k = math.log(k)

    def pop_diagnostics(self) -> dict[str, float]:
        if self._terms is None:
            return {}
        ce, h, kl, h_mean, h_student, spread = (self._terms / self._terms_count).tolist()
        self._terms, self._terms_count = None, 0
        return {"cross_entropy": ce, "teacher_entropy": h, "kl": kl, "batch_teacher_entropy": h_mean,
                "student_entropy": h_student, "log_k": self._log_k, "teacher_temperature": self._temperature,
                **({"koleo": spread} if self.settings.dino_koleo > 0 else {})}

    def after_step(self, fraction: float) -> None:
        student = nn.ModuleDict({"encoder": self.encoder, "head": self.head})
        ema_update(self.teacher, student, ema_momentum(self.settings.ema_momentum, fraction))
        if self._sum is None:
            return
        totals = self.reduce(torch.cat([self._sum.flatten().double(),
                                        torch.tensor([float(self._count)], dtype=torch.float64,
                                                     device=self._sum.device)]))
        mean = (totals[:-1] / totals[-1]).to(self.center.dtype).view_as(self.center)
        m = self.settings.dino_center_momentum
        self.center.mul_(m).add_(mean, alpha=1 - m)
        self._sum, self._count = None, 0
