"""Grad-CAM maps: what drove each head's output.

Fast path: for a linear head y = w . z + b on a global-average-pooled embedding z = mean(F),
Grad-CAM at the last block has channel weights alpha_k = dy/dF_k averaged over space = w_k / N,
so the map is ReLU(sum_k w_k F_k) / N. One forward pass gives every head's map.

General path: MONAI's GradCAM (true gradients) for any layer or non-linear head; tests check
that both agree at the last block.

Reference: plain Grad-CAM credits every cell with w . F_c, so cells that look the same in every case
(normal anatomy, the background) light up whenever their constant share points the call's way, and the
map of a negative call mostly shows them. A bundle therefore stores the mean feature map R of the cohort
its heads were fitted on, and the map is ReLU(sum_k w_k (F_k - R_k)) / N: the same gradient weights applied
to how this case's activations differ from the cohort's (gradient x activation-difference, as DeepLIFT and
expected-gradients attributions do). Unrectified, its cells sum to logit(case) - logit(reference): the map
splits the case's deviation from the average case over space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import nn

from neuroradfm.models.encoder import Encoder


def linear_cams(features: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor | None = None,
                rectify: bool = True) -> torch.Tensor:
    """Grad-CAM of linear heads on pooled features.

    features: (B, C, d, h, w) last-block feature maps; weights: (M, C) head weights on the pooled
    embedding (flip a row's sign for the map of the negative call); reference: (C, d, h, w) feature map
    the activations are taken against (None: plain Grad-CAM). Returns (B, M, d, h, w).
    """
    n_voxels = features[0, 0].numel()
    if reference is not None:
        features = features - reference.to(features.device, features.dtype)
    maps = torch.einsum("mc,bcdhw->bmdhw", weights.to(features.dtype), features) / n_voxels
    return F.relu(maps) if rectify else maps


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, M, d, h, w) -> (B, M, *size), trilinear as MONAI's default Grad-CAM upsampler."""
    return F.interpolate(maps, size=tuple(size), mode="trilinear", align_corners=False)


class LinearHeadModel(nn.Module):
    """Encoder + linear heads as one network, so MONAI's GradCAM can take gradients through it."""

    def __init__(self, encoder: Encoder, weights: np.ndarray, biases: np.ndarray) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weights, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(biases, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[1])


def gradient_cam(model: nn.Module, x: torch.Tensor, layer: str, class_idx: int,
                 upsample_to_input: bool = False) -> torch.Tensor:
    """True Grad-CAM (MONAI) of output ``class_idx`` at ``layer``, unnormalised.

    Returns (B, 1, ...) at the layer's resolution, or at the input's with ``upsample_to_input``.
    """
    def upsampler(size: Sequence[int]):
        return (lambda acti: upsample(acti, size)) if upsample_to_input else (lambda acti: acti)

    cam = GradCAM(model, target_layers=layer, upsampler=upsampler, postprocessing=lambda acti: acti)
    return cam(x, class_idx=class_idx)


def normalise(volume: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Scale a map to 0..1 by its maximum inside ``mask``; returns the map and the scale used."""
    inside = volume if mask is None else np.where(mask, volume, 0.0)
    peak = float(inside.max()) if inside.size else 0.0
    if peak <= 0:
        return np.zeros_like(inside, dtype=np.float32), 0.0
    return (inside / peak).astype(np.float32), peak
