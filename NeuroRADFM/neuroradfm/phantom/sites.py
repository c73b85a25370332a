"""Acquisition sites: each a fixed scanner profile (the same for every cohort and seed).

Effects, all applied after the anatomy is rendered: blur (resolution), through-plane slice
thickness, a smooth multiplicative bias field, per-sequence intensity scale and offset, and
Rician noise. Native acquisitions add an orientation and voxel spacing per site. Optionally
(``site_contrast`` > 0) each site also changes the tissue contrast itself, as different sequence
parameters or field strengths do; z-scoring removes a scale and offset, not this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from neuroradfm import SEQUENCES

SITE_SEED = 7_2025


@dataclass(frozen=True)
class Site:
    name: str
    index: int
    blur_mm: float
    slice_mm: float
    bias: float
    scale: dict[str, float]
    offset: dict[str, float]
    noise: float
    native_spacing: tuple[float, float, float]
    native_tilt_deg: float
    native_ras: bool

    def to_dict(self) -> dict:
        return asdict(self)


NATIVE_SPACINGS = ((0.9, 0.9, 3.0), (1.0, 1.0, 1.0), (1.2, 1.2, 5.0), (1.0, 1.0, 2.0), (0.8, 0.8, 4.0))


def site_name(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return f"site-{letters}"


def contrast_factors(index: int, strength: float, tissues: list[str]) -> dict[str, np.ndarray]:
    """Site ``index``'s multiplicative factor on each tissue's intensity in each sequence: exp(strength * u),
    u ~ N(0, 1) fixed per (site, tissue, sequence), from a stream of its own (the site profile and every case
    draw the same numbers whatever the strength); strength 0 gives factors of exactly 1."""
    rng = np.random.default_rng(np.random.SeedSequence([SITE_SEED, index, 1]))
    u = rng.standard_normal((len(tissues), len(SEQUENCES)))
    return {tissue: np.exp(strength * u[i]) for i, tissue in enumerate(tissues)}


def make_site(index: int) -> Site:
    rng = np.random.default_rng(np.random.SeedSequence([SITE_SEED, index]))
    return Site(
        name=site_name(index),
        index=index,
        blur_mm=float(rng.uniform(0.0, 1.5)),
        slice_mm=float(rng.choice([1.0, 2.0, 3.0, 4.0])),
        bias=float(rng.uniform(0.05, 0.35)),
        scale={s: float(rng.uniform(0.7, 1.4)) for s in SEQUENCES},
        offset={s: float(rng.uniform(-0.05, 0.1)) for s in SEQUENCES},
        noise=float(rng.uniform(0.01, 0.05)),
        native_spacing=NATIVE_SPACINGS[index % len(NATIVE_SPACINGS)],
        native_tilt_deg=float(rng.uniform(-12, 12)),
        native_ras=bool(index % 2),
    )
