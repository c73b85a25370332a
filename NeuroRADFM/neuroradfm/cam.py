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

Layer: the last block's cells are coarse (16 input voxels a side: 32 mm at 2 mm spacing), and a trilinear
upsampling peaks at a cell's centre, often just outside a small lesion. Earlier stages have finer cells, so
a bundle names the layer its maps are taken at (``Heads.cam_layer``) and stores the cohort mean of that
layer's activation; there the channel weights are the true gradients (``layer_cams``, one batched backward
pass for all heads). Measured on the demo bundle: bench/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import nn

from neuroradfm import CAM_LAYERS
from neuroradfm.models.encoder import Encoder

LAST_BLOCK = CAM_LAYERS[-1]


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


def layer_cams(activation: torch.Tensor, z: torch.Tensor, weights: torch.Tensor,
               reference: torch.Tensor | None = None, rectify: bool = True, copies: int = 1) -> torch.Tensor:
    """Grad-CAM of linear heads y = weights . z at any layer, with true gradients.

    activation: (B, C, d, h, w) a layer's output that requires grad; z: (B, D) the embedding computed from
    it; weights: (M, D); reference: (C, d, h, w) as in ``linear_cams``. The channel weights are the
    spatial means of dy/dA, for all M heads from one backward pass. Returns (B, M, d, h, w); at the
    last block this equals ``linear_cams``. ``copies``: as ``encode_for_cam`` made them (M, one per head: the
    activation and z then have B * M rows, case b's head m in row b * M + m).
    """
    n_heads = weights.shape[0]
    if copies > 1:
        if copies != n_heads:
            raise ValueError(f"encode_for_cam made {copies} copies per case for {n_heads} heads")
        batch = z.shape[0] // copies
        grad_outputs = weights.to(z.dtype).repeat(batch, 1)  # row b * M + m: head m's weights
        (gradients,) = torch.autograd.grad(z, activation, grad_outputs=grad_outputs)
        alpha = gradients.mean(dim=(2, 3, 4)).reshape(batch, n_heads, -1).transpose(0, 1)  # (M, B, C)
        values = activation.detach()[::copies]
    else:
        logits = z @ weights.to(z.dtype).T
        batch = z.shape[0]
        selectors = torch.eye(n_heads, dtype=logits.dtype, device=logits.device)[:, None, :].expand(
            n_heads, batch, n_heads)
        (gradients,) = torch.autograd.grad(logits, activation, grad_outputs=selectors, is_grads_batched=True)
        alpha = gradients.mean(dim=(3, 4, 5))  # (M, B, C)
        values = activation.detach()
    if reference is not None:
        values = values - reference.to(values.device, values.dtype)
    maps = torch.einsum("mbc,bcdhw->bmdhw", alpha, values)
    return F.relu(maps) if rectify else maps


def encode_for_cam(encoder: Encoder, x: torch.Tensor, layer: str, copies: int = 1,
                   autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass keeping what Grad-CAM at ``layer`` needs: (the layer's activation, the embedding z).

    Below the last block z stays differentiable with respect to the activation (for ``layer_cams``); at the
    last block the closed form needs no gradients and nothing is recorded. ``copies`` > 1 (below the last
    block; one per head): the rest of the network runs on that many copies of each case's activation, rows
    b * copies + m, so that one ordinary backward pass gives every head its own gradient. On a CPU that costs
    about half of a vmap'd batched backward (bench/perf.py, maps_over_forward). z then has B * copies rows,
    ``copies`` identical ones per case, at every layer: the embedding is ``z[::copies]``.

    ``autocast``: the layers run under autocast in that dtype (float16 on a GPU); the activation and z are
    float32 whatever the layers ran in, so the heads, the backward pass and the maps work in float32.
    """
    grad = layer != LAST_BLOCK
    context = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else nullcontext()
    with context:
        with torch.no_grad():
            activation = encoder.layer_output(x, layer).float()
        if grad and copies > 1:
            activation = activation.repeat_interleave(copies, dim=0)
        with torch.set_grad_enabled(grad):
            activation.requires_grad_(grad)
            features, _ = encoder.from_layer(activation, layer)
            z = features.float().mean(dim=(2, 3, 4))
    if not grad and copies > 1:  # the closed form needs one activation per case; z keeps the same row layout
        z = z.repeat_interleave(copies, dim=0)
    return activation, z


def cams_at(layer: str, activation: torch.Tensor, z: torch.Tensor, weights: torch.Tensor,
            reference: torch.Tensor | None = None, copies: int = 1, rectify: bool = True) -> torch.Tensor:
    """Every head's map at ``layer`` from ``encode_for_cam``'s output (made with the same ``copies``): closed
    form at the last block, gradients elsewhere. (B, M, d, h, w). Unrectified maps are linear in the weights:
    one pass with unsigned weights serves every case's calls (a sign per case and head before the ReLU)."""
    if layer == LAST_BLOCK:
        return linear_cams(activation.detach(), weights, reference, rectify)
    return layer_cams(activation, z, weights, reference, rectify, copies)


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
