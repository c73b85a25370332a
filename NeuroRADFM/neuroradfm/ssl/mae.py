"""A masked autoencoder adapted to a CNN encoder (dense masking, SimMIM-style).

A ViT-MAE drops masked tokens; a 3D ResNet cannot, so masked cubes of the input are set to 0 (the
z-scored intensity mean, which is also the value outside the brain) and the full masked volume goes
through the encoder. A light decoder (two 1x1x1 convolutions and a 3D pixel shuffle) maps each cell of the
last feature map back onto the voxels it covers; the loss is the mean squared error on the MASKED voxels
only, per sample. The mask (from the data pipeline, so it is reproducible across ranks and resumes) is made
of cubes of the encoder's total stride by default, one feature-map cell per cube, the same cubes in every
sequence unless ``mae_mask_per_sequence`` draws each sequence's cubes on their own (cross-sequence
reconstruction, as multi-sequence MRI masked autoencoders do). The decoder is discarded; only the encoder
goes into the bundle.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuroradfm.models.encoder import Encoder
from neuroradfm.ssl.base import MethodSettings, SSLMethod


def mask_spec(method: str, encoder: Encoder, settings: MethodSettings) -> dict[str, Any]:
    """The masking arguments of ``PretrainDataset`` for ``method`` (none unless MAE)."""
    if method != "mae":
        return {}
    return {"mask_patch": settings.mae_patch or encoder_stride(encoder), "mask_ratio": settings.mae_mask_ratio,
            "mask_channels": encoder.config.in_channels if settings.mae_mask_per_sequence else 1}


def encoder_stride(encoder: Encoder) -> int:
    """Total down-sampling of the feature map: conv1 stride x max-pool (2 unless off) x 8 (layers 2-4)."""
    config = encoder.config
    return config.conv1_stride * (1 if config.no_max_pool else 2) * 8


class MAE(SSLMethod):
    name = "mae"

    def __init__(self, encoder: Encoder, settings: MethodSettings, crop_size: int | None = None) -> None:
        super().__init__(encoder, settings)
        self.stride = encoder_stride(encoder)
        if crop_size is not None and crop_size % self.stride:
            raise ValueError(f"MAE needs a crop size divisible by the encoder's stride {self.stride}, got {crop_size}")
        channels = encoder.config.in_channels
        self.decoder = nn.Sequential(
            nn.Conv3d(encoder.embedding_dim, settings.mae_decoder_dim, kernel_size=1), nn.GELU(),
            nn.Conv3d(settings.mae_decoder_dim, channels * self.stride ** 3, kernel_size=1))

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.encoder.feature_map(x * (1 - mask))
        b, _, d, h, w = features.shape
        s, c = self.stride, x.shape[1]
        out = self.decoder(features).view(b, c, s, s, s, d, h, w)  # 3D pixel shuffle
        return out.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, d * s, h * s, w * s)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, mask = batch["view1"], batch["mask"].to(batch["view1"].dtype)
        target = batch.get("target", x)
        # the loss covers the masked cubes of the sequences the case has (with sequence dropout, ``target`` still
        # holds the dropped ones: all their cubes count, as they are hidden); a sequence it lacks is no target
        present = target.detach().flatten(2).ne(0).any(dim=2).to(x.dtype)[:, :, None, None, None]
        dropped = present * (1 - x.detach().flatten(2).ne(0).any(dim=2).to(x.dtype)[:, :, None, None, None])
        weight = torch.maximum(mask.expand_as(x) * present, dropped)
        error = (self.reconstruct(x, mask) - target) ** 2 * weight
        return error.sum(dim=(1, 2, 3, 4)) / weight.sum(dim=(1, 2, 3, 4)).clamp(min=1)


def random_mask(shape: tuple[int, int, int], patch: int, ratio: float, rng, channels: int = 1) -> torch.Tensor:
    """(channels, D, H, W) float mask, 1 on a random ``ratio`` of the ``patch``-sized cubes, drawn for each
    channel in turn (numpy Generator ``rng``)."""
    if channels > 1:
        return torch.cat([random_mask(shape, patch, ratio, rng) for _ in range(channels)])
    grid = [max(1, s // patch) for s in shape]
    n = grid[0] * grid[1] * grid[2]
    k = min(n, max(1, int(round(ratio * n))))
    flat = torch.zeros(n)
    flat[torch.from_numpy(rng.permutation(n)[:k])] = 1.0
    cubes = flat.view(1, *grid)
    for axis in range(3):
        cubes = cubes.repeat_interleave(patch, dim=axis + 1)
    out = torch.zeros(1, *shape)
    out[:, :cubes.shape[1], :cubes.shape[2], :cubes.shape[3]] = cubes[:, :shape[0], :shape[1], :shape[2]]
    return out
