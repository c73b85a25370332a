"""Two-view 3D augmentation from MONAI transforms, reproducible per sample.

Every view is a random crop, flips (along the three axes, left-right only, or none), a small affine
(rotation, scaling), intensity scale and shift, gamma, Gaussian noise and a smooth bias field. The random
state of the whole chain is set from a seed derived from (run seed, epoch, case index), so a sample's views do
not depend on which worker, rank or resumed process draws them: this is what makes resume exact and DDP equal
to one process.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCrop,
)

FLIPS: dict[str, tuple[int, ...]] = {"all": (0, 1, 2), "lr": (2,), "none": ()}
"""Spatial axes each view may be flipped along. Cached cases are (4, K, J, I) arrays on the model grid, whose
I axis runs left-right: "lr" flips only that one, the only flip a registered brain can show."""


def view_transform(crop_size: int, strength: float = 1.0, flips: str = "all") -> Compose:
    """One view's chain; ``strength`` 0 leaves only the crop (and flips)."""
    if flips not in FLIPS:
        raise ValueError(f"unknown flips {flips!r}; choose one of {', '.join(FLIPS)}")
    s = float(strength)
    return Compose([
        RandSpatialCrop(roi_size=(crop_size,) * 3, random_size=False),
        *(RandFlip(prob=0.5, spatial_axis=axis) for axis in FLIPS[flips]),
        RandAffine(prob=0.5 * s, rotate_range=(0.2 * s,) * 3, scale_range=(0.1 * s,) * 3, padding_mode="zeros",
                   mode="bilinear"),
        RandScaleIntensity(factors=0.2 * s, prob=0.8 * s),
        RandShiftIntensity(offsets=0.2 * s, prob=0.8 * s),
        RandAdjustContrast(gamma=(1 - 0.3 * s, 1 + 0.5 * s), prob=0.3 * s, retain_stats=True),
        RandGaussianNoise(prob=0.3 * s, std=0.1 * s),
        RandBiasField(prob=0.3 * s, coeff_range=(0.0, 0.2 * s), degree=3),
    ], lazy=False)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers (run seed, epoch, index, ...), well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class TwoViews:
    """``(image (4, K, J, I) float32, seed) -> (view1, view2)`` as float32 tensors of the crop size."""

    def __init__(self, crop_size: int, strength: float = 1.0, flips: str = "all") -> None:
        self.crop_size = crop_size
        self.transform = view_transform(crop_size, strength, flips)

    def __call__(self, image: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if min(image.shape[1:]) < self.crop_size:
            raise ValueError(f"crop size {self.crop_size} exceeds the cached model grid {tuple(image.shape[1:])}")
        views = []
        for k in range(2):
            self.transform.set_random_state(seed=sample_seed(seed, k))
            view = self.transform(torch.from_numpy(image))
            view = view.as_tensor() if hasattr(view, "as_tensor") else view  # MetaTensor -> plain tensor
            views.append(view.to(torch.float32).contiguous())
        return views[0], views[1]


def degrade(channels: np.ndarray, rng: np.random.Generator, sequence_dropout: float = 0.0,
            artifact_probability: float = 0.0) -> np.ndarray:
    """What real studies bring, drawn at random for training: with ``artifact_probability`` one artifact of
    neuroradfm.artifacts (any family, level 1-4), then sequence dropout (neuroradfm.subsets.drop_sequences: each
    present sequence zeroed with ``sequence_dropout``, never all). ``channels`` (4, K, J, I) model input; returned
    unchanged (not copied) when neither applies, else a new float32 array."""
    from neuroradfm.artifacts import apply_artifact, draw_artifact
    from neuroradfm.subsets import drop_sequences

    out = channels
    if artifact_probability > 0 and rng.random() < artifact_probability:
        name, level, seed = draw_artifact(rng)
        out = apply_artifact(out, name, level, seed)
    if sequence_dropout > 0:
        present = np.asarray(out).reshape(len(out), -1).any(axis=1)
        keep = drop_sequences(present, sequence_dropout, rng)
        if (keep != present).any():
            out = np.array(out, np.float32, copy=True)
            out[~keep] = 0
    return out
