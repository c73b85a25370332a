"""Acquisition sites: each a fixed scanner profile (the same for every cohort and seed).

Effects, all applied after the anatomy is rendered: blur (resolution), through-plane slice
thickness, a smooth multiplicative bias field, per-sequence intensity scale and offset, and
Rician noise. Native acquisitions add an orientation and voxel spacing per site. Optionally
(``site_contrast`` > 0) each site also changes the tissue contrast itself, as different sequence
parameters or field strengths do; z-scoring removes a scale and offset, not this. A site may also have a
scanner artifact (``add_scanner_artifact``): a receive-coil hot spot at a fixed place, in every case of that site
(the shortcut-learning lesson, docs/SHORTCUT-LESSON.md).
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


SCANNER_ARTIFACT_CENTRE_LPS = (0.0, 84.0, 8.0)
"""Centre of the scanner artifact (RAS 0, -84, 8: the occipital lobe, over a posterior receive-coil element): far
from where the tumours are planted (IDH-mutant frontal, glioblastoma temporo-parietal), and on the midline, so that
a left-right flip leaves it where it was."""
SCANNER_ARTIFACT_RADIUS_MM = 12.0
SCANNER_ARTIFACT_EDGE_MM = 1.5
"""Width of the hot spot's edge: sharp enough that N4's smooth bias field does not absorb it."""
SCANNER_ARTIFACT_GAIN = 1.0
"""The signal inside the hot spot is (1 + gain) x what it would be, in all four sequences."""


def scanner_artifact_record(sites: list[str]) -> dict:
    """What phantom.json says of the artifact: which sites have it, what and where it is."""
    return {"sites": sites, "kind": "receive-coil hot spot (multiplicative, all four sequences)",
            "centre_lps_mm": list(SCANNER_ARTIFACT_CENTRE_LPS), "radius_mm": SCANNER_ARTIFACT_RADIUS_MM,
            "edge_mm": SCANNER_ARTIFACT_EDGE_MM, "gain": SCANNER_ARTIFACT_GAIN}


def scanner_artifact_profile(coords: np.ndarray) -> np.ndarray:
    """0..1 at every voxel of ``coords`` ((..., 3) physical LPS points): a soft ball of SCANNER_ARTIFACT_RADIUS_MM
    around SCANNER_ARTIFACT_CENTRE_LPS."""
    distance = np.linalg.norm(coords - np.asarray(SCANNER_ARTIFACT_CENTRE_LPS, np.float32), axis=-1)
    edge = np.clip((SCANNER_ARTIFACT_RADIUS_MM - distance) / SCANNER_ARTIFACT_EDGE_MM, -30, 30)
    return (1.0 / (1.0 + np.exp(-edge))).astype(np.float32)


def add_scanner_artifact(images: dict[str, np.ndarray], coords: np.ndarray) -> dict[str, np.ndarray]:
    """The clean images with the site's hot spot: no random draw, so every other draw of the case stays the same;
    the site's blur, bias and noise come on top of it as on the rest of the image."""
    gain = 1.0 + SCANNER_ARTIFACT_GAIN * scanner_artifact_profile(coords)
    return {sequence: (image * gain).astype(np.float32) for sequence, image in images.items()}
