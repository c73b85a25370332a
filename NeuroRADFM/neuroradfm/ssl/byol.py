"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the other view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuroradfm.ssl.base import PredictorTargetMethod


class BYOL(PredictorTargetMethod):
    name = "byol"

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        p1, p2, t1, t2 = self.predictions_and_targets(batch)
        # symmetric: 2 - 2 cos per direction, summed (Grill et al. eq. 2 + its swapped term)
        return (2 - 2 * F.cosine_similarity(p1, t2, dim=-1)) + (2 - 2 * F.cosine_similarity(p2, t1, dim=-1))
