"""MoCo v3 (Chen, Xie, He 2021): InfoNCE between a query (online + predictor) and the momentum encoder's keys
of the other view; the keys of the whole global batch (all ranks) are the negatives. No queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuroradfm.ssl.base import MethodSettings, SSLMethod, ema_momentum, ema_update, frozen_copy, mlp


class MoCoV3(SSLMethod):
    name = "moco"

    def __init__(self, encoder, settings: MethodSettings) -> None:
        super().__init__(encoder, settings)
        dim = encoder.embedding_dim
        self.projector = mlp(dim, settings.hidden_dim, settings.proj_dim)
        self.predictor = mlp(settings.proj_dim, settings.hidden_dim, settings.proj_dim)
        self.momentum = frozen_copy(nn.ModuleDict({"encoder": encoder, "projector": self.projector}))

    def _contrast(self, q: torch.Tensor, k_local: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=-1)
        keys = F.normalize(self.gather(k_local), dim=-1)
        logits = q @ keys.T / self.settings.moco_temperature
        labels = torch.arange(q.shape[0], device=q.device) + self.rank * q.shape[0]
        # 2 tau scaling as in MoCo v3
        return F.cross_entropy(logits, labels, reduction="none") * (2 * self.settings.moco_temperature)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = batch["view1"].shape[0]
        x = torch.cat([batch["view1"], batch["view2"]])
        q = self.predictor(self.projector(self.encoder(x)[1]))
        with torch.no_grad():
            k = self.momentum["projector"](self.momentum["encoder"](x)[1])
        return self._contrast(q[:n], k[n:]) + self._contrast(q[n:], k[:n])

    def after_step(self, fraction: float) -> None:
        student = nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})
        ema_update(self.momentum, student, ema_momentum(self.settings.ema_momentum, fraction))
