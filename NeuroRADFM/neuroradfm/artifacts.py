"""Image artifacts at graded strengths, from MONAI's transforms: what a bundle's robustness is measured against.

Where they apply: on the model input, the preprocessed (C, K, J, I) float32 channels (z-scored inside the brain,
0 outside), not on the images before preprocessing. That is fast (no N4, registration or resampling per corrupted
copy) and it is exactly what training-time augmentation sees. After the artifact the brain mask (the voxels
non-zero in any channel) is applied again (the background stays 0, a missing all-zero channel stays missing) and
every channel is standardised again on its brain voxels (MONAI's NormalizeIntensity: mean 0, SD 1; the pipeline's
0.5-99.5 % clip is not repeated), as the pipeline's last step would standardise a corrupted scan: a global change
of brightness or scale is not counted as an artifact, only what survives that normalisation is. The pipeline's
other corrections (N4 against a bias field) get no chance to undo an artifact: these are artifacts as the encoder
would meet them had they survived preprocessing.

Families (``FAMILIES``), each with levels 0 (none: the input returned unchanged) to 4 (strong); a level's strength
is in the family's own unit, listed in its ``strengths``:

- ``bias``: a smooth multiplicative field, MONAI's RandBiasField (degree-3 Legendre polynomial, its coefficients
  drawn from [-c, c], the field exp(polynomial)), applied to each channel shifted to start at 0 inside the brain
  (the darkest brain voxel taken as no signal).
- ``noise``: additive Gaussian noise, MONAI's RandGaussianNoise (prob 1, a fixed SD, in units of the brain's SD).
- ``gibbs``: Gibbs ringing, MONAI's GibbsNoise (k-space truncated to a sphere whose radius shrinks with alpha).
- ``spike``: a k-space spike per channel (herringbone stripes), MONAI's RandKSpaceSpikeNoise with its log
  intensity set so that the stripe's amplitude is the level's strength in units of the brain's SD (a coefficient
  of magnitude A gives a wave of amplitude A / N after the inverse FFT over N voxels).
- ``gamma``: a gamma contrast change, MONAI's AdjustContrast on the brain voxels of each channel, gamma = 2**s or
  2**-s (the direction drawn from the seed).
- ``thick``: thick slices along the grid's K axis (the slowest array axis; axial on the MNI-aligned model grid):
  MONAI's Resize down by the level's factor (area averaging, a thick slice's partial volume) and back (trilinear).

Determinism: the same (channels, family, level, seed) gives the same output; the levels of one seed draw the same
random field, noise pattern, spike location and gamma direction, only scaled, so a stronger level is the same
artifact made stronger. ``draw_artifact`` draws a family, a level and a seed for training-time augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    AdjustContrast,
    GibbsNoise,
    NormalizeIntensity,
    RandBiasField,
    RandGaussianNoise,
    RandKSpaceSpikeNoise,
    Resize,
)
from monai.utils import convert_to_tensor

LEVELS = 5
"""Levels 0 (none) .. 4 (strong) of every family."""


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    parameter: str
    """What a level's strength sets, with its unit."""
    strengths: tuple[float, ...]
    """Strength of levels 0 .. LEVELS - 1; level 0 is no artifact."""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bias", "smooth multiplicative bias field (MONAI RandBiasField, degree 3)",
           "Legendre coefficients drawn from [-c, c]", (0.0, 0.1, 0.2, 0.35, 0.5)),
    Family("noise", "additive Gaussian noise (MONAI RandGaussianNoise)",
           "noise SD, in units of the brain's SD", (0.0, 0.1, 0.25, 0.5, 1.0)),
    Family("gibbs", "Gibbs ringing from truncated k-space (MONAI GibbsNoise)",
           "alpha (fraction of the k-space radius removed)", (0.0, 0.4, 0.55, 0.7, 0.8)),
    Family("spike", "one k-space spike per channel: stripes (MONAI RandKSpaceSpikeNoise)",
           "stripe amplitude, in units of the brain's SD", (0.0, 0.1, 0.25, 0.5, 1.0)),
    Family("gamma", "gamma contrast change (MONAI AdjustContrast), gamma = 2**s or 2**-s",
           "s = |log2 gamma|", (0.0, 0.5, 1.0, 1.5, 2.0)),
    Family("thick", "thick slices along the grid's K axis: down and back up (MONAI Resize)",
           "slice thickness, in grid voxels", (1.0, 2.0, 3.0, 4.0, 6.0)),
)}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown artifact family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _check_level(level: int) -> int:
    if not isinstance(level, (int, np.integer)) or not 0 <= level < LEVELS:
        raise ValueError(f"artifact level must be an integer 0 .. {LEVELS - 1}, got {level!r}")
    return int(level)


def _seeded(transform, seed: int):
    transform.set_random_state(seed=int(seed) % 2**32)
    return transform


def _plain(value) -> torch.Tensor:
    """A transform's output as a plain float32 tensor (MONAI's MetaTensor makes every later torch call slow)."""
    return convert_to_tensor(value, dtype=torch.float32, track_meta=False)


def _corrupt(x: torch.Tensor, inside: torch.Tensor, name: str, strength: float, seed: int) -> torch.Tensor:
    """``x`` (C, K, J, I) with the artifact; ``inside``: the flat indices of the brain voxels."""
    brain = x.reshape(len(x), -1)[:, inside]
    if name == "bias":
        positive = x - brain.min(dim=1).values.view(-1, 1, 1, 1)
        return _seeded(RandBiasField(degree=3, coeff_range=(-strength, strength), prob=1.0), seed)(positive)
    if name == "noise":
        return _seeded(RandGaussianNoise(prob=1.0, std=strength, sample_std=False), seed)(x)
    if name == "gibbs":
        return GibbsNoise(alpha=strength)(x)
    if name == "spike":
        log_amplitude = math.log(strength * math.prod(x.shape[1:]))
        return _seeded(RandKSpaceSpikeNoise(prob=1.0, intensity_range=(log_amplitude, log_amplitude),
                                            channel_wise=True), seed)(x)
    if name == "gamma":
        gamma = 2.0 ** (strength if np.random.RandomState(int(seed) % 2**32).rand() < 0.5 else -strength)
        out = x.clone().reshape(len(x), -1)
        for c in range(len(x)):
            out[c, inside] = _plain(AdjustContrast(gamma)(brain[c]))
        return out.reshape(x.shape)
    if name == "thick":
        shape = tuple(x.shape[1:])
        thin = max(1, round(shape[0] / strength))
        down = Resize((thin, -1, -1), mode="area")(x)
        return Resize(shape, mode="trilinear", align_corners=False)(down)
    raise ValueError(name)


def apply_artifact_strength(channels: np.ndarray, name: str, strength: float, seed: int = 0) -> np.ndarray:
    """``channels`` (C, K, J, I) with family ``name``'s artifact at any ``strength`` in its unit (see
    ``FAMILIES``): float32, the same shape. The strength of "no artifact" returns an unchanged copy."""
    spec = family(name)
    array = np.asarray(channels, np.float32)
    if array.ndim != 4:
        raise ValueError(f"channels must be (C, K, J, I), got shape {array.shape}")
    x = torch.from_numpy(array.copy())
    inside = (x != 0).any(dim=0).reshape(-1).nonzero().squeeze(1)
    if strength == spec.strengths[0] or not len(inside):
        return array.copy()
    present = torch.as_tensor([bool(c.any()) for c in array])
    corrupted = _plain(_corrupt(x, inside, name, float(strength), seed)).reshape(len(x), -1)
    out = torch.zeros_like(x).reshape(len(x), -1)
    rows = present.nonzero().squeeze(1)
    standardised = NormalizeIntensity(channel_wise=True)(corrupted[rows][:, inside])
    out[rows.unsqueeze(1), inside.unsqueeze(0)] = _plain(standardised)
    return out.reshape(x.shape).numpy()


def apply_artifact(channels: np.ndarray, name: str, level: int, seed: int = 0) -> np.ndarray:
    """``channels`` (C, K, J, I) with family ``name``'s artifact at ``level`` (0: none, returned unchanged, as a
    copy; 4: strong), deterministic for ``seed``: float32, the same shape."""
    return apply_artifact_strength(channels, name, family(name).strengths[_check_level(level)], seed)


def draw_artifact(rng: np.random.Generator, families: Sequence[str] | None = None, min_level: int = 1,
                  max_level: int = LEVELS - 1) -> tuple[str, int, int]:
    """A random (family, level, seed) for training-time augmentation: the family uniform among ``families``
    (default all), the level uniform in ``min_level .. max_level``; pass the three to ``apply_artifact``."""
    names = list(families) if families is not None else list(FAMILIES)
    for name in names:
        family(name)
    low, high = _check_level(min_level), _check_level(max_level)
    if low > high:
        raise ValueError(f"min_level {low} is above max_level {high}")
    name = names[int(rng.integers(len(names)))]
    return name, int(rng.integers(low, high + 1)), int(rng.integers(2**31))
