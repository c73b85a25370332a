"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the other view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuroradfm.ssl.base import MethodSettings, SSLMethod, ema_momentum, ema_update, frozen_copy, mlp


class BYOL(SSLMethod):
    name = "byol"

    def __init__(self, encoder, settings: MethodSettings) -> None:
        super().__init__(encoder, settings)
        dim = encoder.embedding_dim
        self.projector = mlp(dim, settings.hidden_dim, settings.proj_dim)
        self.predictor = mlp(settings.proj_dim, settings.hidden_dim, settings.proj_dim)
        self.target = frozen_copy(nn.ModuleDict({"encoder": encoder, "projector": self.projector}))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([batch["view1"], batch["view2"]])
        n = batch["view1"].shape[0]
        p = self.predictor(self.projector(self.encoder(x)[1]))
        with torch.no_grad():
            t = self.target["projector"](self.target["encoder"](x)[1])
        p1, p2, t1, t2 = p[:n], p[n:], t[:n], t[n:]
        # symmetric: 2 - 2 cos per direction, summed (Grill et al. eq. 2 + its swapped term)
        return (2 - 2 * F.cosine_similarity(p1, t2, dim=-1)) + (2 - 2 * F.cosine_similarity(p2, t1, dim=-1))

    def after_step(self, fraction: float) -> None:
        student = nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})
        ema_update(self.target, student, ema_momentum(self.settings.ema_momentum, fraction))
