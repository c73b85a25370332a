"""One case onto the model grid, keeping the way back to the reference's original grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io.case import Case
from neuroradfm.preprocess import steps
from neuroradfm.preprocess.grid import in_template_space, model_grid
from neuroradfm.preprocess.settings import PreprocessSettings
from neuroradfm.progress import Progress, null_progress
from neuroradfm.template import load_brain_mask, load_template

MIN_BRAIN_ML = 100.0


@dataclass
class Preprocessed:
    channels: np.ndarray
    """float32 (4, K, J, I) in SEQUENCES order, z-scored inside the brain mask, 0 outside."""
    mask: np.ndarray
    """bool (K, J, I) brain mask on the model grid."""
    grid: sitk.Image
    """The model grid (geometry in template space)."""
    reference: sitk.Image
    """The reference sequence exactly as loaded: outputs go back onto its grid."""
    template_to_reference: sitk.Transform
    """Maps template-space points to reference points (identity when registration was skipped)."""
    steps: dict[str, str] = field(default_factory=dict)

    def to_reference(self, volume: np.ndarray, interpolator: int = sitk.sitkLinear,
                     default: float = 0.0) -> sitk.Image:
        """A (K, J, I) model-grid array -> an image on the reference's exact original grid."""
        image = sitk.GetImageFromArray(np.asarray(volume))
        image.CopyInformation(self.grid)
        return sitk.Resample(image, self.reference, self.template_to_reference.GetInverse(), interpolator, default,
                             image.GetPixelID())

    def to_model_grid(self, image: sitk.Image, interpolator: int = sitk.sitkNearestNeighbor) -> np.ndarray:
        """An image on the reference grid (e.g. a tumour seg) -> a (K, J, I) model-grid array."""
        return sitk.GetArrayFromImage(sitk.Resample(image, self.grid, self.template_to_reference, interpolator, 0,
                                                    image.GetPixelID()))


def _zscore(channel: np.ndarray, mask: np.ndarray, source: str) -> np.ndarray:
    inside = channel[mask]
    lo, hi = np.percentile(inside, [0.5, 99.5])
    clipped = np.clip(inside, lo, hi)
    std = float(clipped.std())
    if std < 1e-6 * max(1.0, abs(float(clipped.mean()))):
        raise InputError(source, "is constant inside the brain mask: no image contrast to use")
    out = np.zeros_like(channel, dtype=np.float32)
    out[mask] = (clipped - clipped.mean()) / std
    return out


def _brain_volume_ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000.0)


def preprocess_case(case: Case, settings: PreprocessSettings | None = None,
                    progress: Progress = null_progress) -> Preprocessed:
    settings = settings or PreprocessSettings()
    ref_key = settings.reference
    images = {k: sitk.Cast(case.image(k), sitk.sitkFloat32) for k in SEQUENCES}
    reference = images[ref_key]
    done: dict[str, str] = {}
    stripped = steps.is_skull_stripped(reference)

    progress("n4", 0.0, "bias field correction")
    if settings.n4:
        for index, key in enumerate(SEQUENCES):
            head = steps.foreground_mask(images[key])
            images[key] = steps.n4_correct(images[key], head)
            progress("n4", 0.3 * (index + 1) / len(SEQUENCES), key)
        done["n4"] = "done"
    else:
        done["n4"] = "skipped: disabled in the settings"

    to_sequence: dict[str, sitk.Transform] = {ref_key: sitk.Euler3DTransform()}
    same_grid = all(_same_grid(images[k], reference) for k in SEQUENCES)
    if settings.coregister == "never" or (settings.coregister == "auto" and same_grid):
        to_sequence.update({k: sitk.Euler3DTransform() for k in SEQUENCES})
        done["coregister"] = ("skipped: all sequences share the reference's grid" if same_grid
                              else "skipped: disabled in the settings")
    else:
        for index, key in enumerate(k for k in SEQUENCES if k != ref_key):
            progress("coregister", 0.3 + 0.2 * index / 3, f"{key} -> {ref_key}")
            to_sequence[key] = steps.rigid_register(images[ref_key], images[key])
        done["coregister"] = f"done: rigid, to {ref_key}"

    progress("brain", 0.5, "brain mask")
    if settings.brain_extraction == "none" or (settings.brain_extraction == "auto" and stripped):
        brain = sitk.BinaryFillhole(sitk.Cast(sitk.NotEqual(case.image(ref_key), 0), sitk.sitkUInt8))
        done["brain_extraction"] = ("skipped: input is already skull-stripped" if stripped
                                    else "skipped: disabled; mask = non-zero voxels")
    else:
        brain = steps.deepbet_mask(images[ref_key])
        done["brain_extraction"] = f"done: deepbet on {ref_key}"
    if _brain_volume_ml(brain) < MIN_BRAIN_ML:
        raise InputError(case.source(ref_key), f"brain mask is empty or implausibly small "
                                               f"({_brain_volume_ml(brain):.0f} mL); is this a brain MRI?")

    progress("register", 0.6, "affine to MNI152")
    if settings.template_registration == "none" or (settings.template_registration == "auto"
                                                    and in_template_space(reference)):
        template_to_reference: sitk.Transform = sitk.AffineTransform(3)
        done["template_registration"] = ("skipped: input is already in MNI152 template space"
                                         if settings.template_registration == "auto" else "skipped: disabled")
    else:
        brain_only = sitk.Mask(images[ref_key], brain)
        template = sitk.Mask(load_template("t1"), load_brain_mask())
        template_to_reference = steps.affine_register(template, brain_only)
        done["template_registration"] = "done: affine, brain to MNI152 brain"

    progress("resample", 0.85, "onto the model grid")
    grid = model_grid(settings)
    mask = sitk.GetArrayFromImage(steps.resample(brain, grid, template_to_reference)) > 0.5
    if not mask.any():
        raise InputError(case.source(ref_key), "the brain falls outside the model grid after registration")
    channels = []
    for key in SEQUENCES:
        composite = sitk.CompositeTransform([to_sequence[key], template_to_reference])
        array = sitk.GetArrayFromImage(steps.resample(images[key], grid, composite))
        channels.append(_zscore(array, mask, case.source(key)))
    done["normalise"] = "done: z-score inside the brain mask"
    progress("preprocess", 1.0, "done")
    return Preprocessed(np.stack(channels), mask, grid, case.image(ref_key), template_to_reference, done)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))
