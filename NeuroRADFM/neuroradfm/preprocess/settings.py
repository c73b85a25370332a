"""Preprocessing settings: stored in every model bundle's card so inference repeats training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from neuroradfm import SEQUENCES
from neuroradfm.errors import SettingsError

SPACING_RANGE_MM = (0.25, 10.0)
"""Model grid spacings that can hold a brain: finer only costs memory, coarser leaves a handful of voxels."""
_CHOICES = {"coregister": ("auto", "always", "never"), "brain_extraction": ("auto", "deepbet", "none"),
            "template_registration": ("auto", "affine", "none")}


@dataclass(frozen=True)
class PreprocessSettings:
    spacing_mm: float = 2.0
    """Model grid spacing (isotropic, mm) in MNI152 template space."""
    size: tuple[int, int, int] = (128, 128, 128)
    """Model grid voxels along the template's axes."""
    reference: str = "t1ce"
    """Co-registration target; every output map is written on this sequence's original grid (when the case lacks it,
    on the first it has of t1ce, t1, flair, t2)."""
    n4: bool = True
    coregister: str = "auto"
    """auto: skipped when all sequences already share the reference's grid."""
    brain_extraction: str = "auto"
    """auto: deepbet unless the input is already skull-stripped (zero background)."""
    template_registration: str = "auto"
    """auto: affine to MNI152 unless the input is already in template space."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.size) != 3 or min(self.size) < 8:
            raise SettingsError("--size", f"the model grid needs 3 sizes of at least 8 voxels, got {self.size}")
        if not SPACING_RANGE_MM[0] <= self.spacing_mm <= SPACING_RANGE_MM[1]:  # also NaN
            raise SettingsError("--spacing", f"the model grid spacing must lie in {SPACING_RANGE_MM[0]:g}.."
                                             f"{SPACING_RANGE_MM[1]:g} mm, got {self.spacing_mm}")
        if self.reference not in SEQUENCES:
            raise SettingsError("preprocessing", f"reference must be one of {SEQUENCES}, got {self.reference!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise SettingsError("preprocessing", f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["size"] = list(self.size)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSettings:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError("preprocessing", f"unknown preprocessing settings: {sorted(unknown)}")
        return cls(**data)
