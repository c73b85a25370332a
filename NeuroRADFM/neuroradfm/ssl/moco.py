"""MoCo v3 (Chen, Xie, He 2021): InfoNCE between a query (online + predictor) and the momentum encoder's keys
of the other view; the keys of the whole global batch (all ranks) are the negatives. No queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroradfm.ssl.base import PredictorTargetMethod


class MoCoV3(PredictorTargetMethod):
    """The momentum encoder is the shared EMA ``target``."""

    name = "moco"

    def _contrast(self, q: torch.Tensor, k_local: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=-1)
        keys = F.normalize(self.gather(k_local), dim=-1)
        logits = q @ keys.T / self.settings.moco_temperature
        labels = torch.arange(q.shape[0], device=q.device) + self.rank * q.shape[0]
        # 2 tau scaling as in MoCo v3
        return F.cross_entropy(logits, labels, reduction="none") * (2 * self.settings.moco_temperature)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q1, q2, k1, k2 = self.predictions_and_targets(batch)
        return self._contrast(q1, k2) + self._contrast(q2, k1)
