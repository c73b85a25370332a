"""One case onto the model grid, keeping the way back to the reference's original grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError, itk_reason
from neuroradfm.io.case import Case, reference_key
from neuroradfm.io.images import check_image
from neuroradfm.preprocess import sri24, steps
from neuroradfm.preprocess.grid import in_template_space, model_grid
from neuroradfm.preprocess.settings import PreprocessSettings
from neuroradfm.progress import Progress, null_progress
from neuroradfm.template import load_brain_mask, load_template

MIN_BRAIN_ML = 100.0
"""Smallest brain mask accepted (mL); an adult brain is 1000-1500 mL, so 100 mL means no real brain was found."""
MIN_VOXELS_PER_AXIS = 8
"""Fewest voxels accepted along any axis: the registrations smooth every axis (ITK needs >= 4 voxels) and shrink
the image by up to 4 on their coarsest level; a 5 x 5 x 5 image leaves them no sample at all."""
MIN_EXTENT_MM = 40.0
"""Smallest field of view accepted along any axis (a whole brain spans about 140 x 170 x 120 mm). N4 shrinks the
image to ~6 mm voxels first: a few-millimetre image shrinks to nothing and N4 fails."""


@dataclass
class Preprocessed:
    channels: np.ndarray
    """float32 (4, K, J, I) in SEQUENCES order, z-scored inside the brain mask, 0 outside; a sequence the case
    lacks is all zeros (``available`` says which are real)."""
    mask: np.ndarray
    """bool (K, J, I) brain mask on the model grid."""
    grid: sitk.Image
    """The model grid (geometry in template space)."""
    reference: sitk.Image
    """The reference sequence exactly as loaded: outputs go back onto its grid."""
    template_to_reference: sitk.Transform
    """Maps template-space points to reference points (identity when registration was skipped)."""
    steps: dict[str, str] = field(default_factory=dict)
    available: tuple[str, ...] = SEQUENCES
    """The sequences the case had (SEQUENCES order); the reference is the first of them in REFERENCE_ORDER."""

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


def _check_sequence(image: sitk.Image, source: str) -> sitk.Image:
    """Refuse, before any correction, a sequence that the preprocessing cannot use (checked like any read image)."""
    image = check_image(image, source)
    size = np.asarray(image.GetSize())
    extent = size * np.asarray(image.GetSpacing())
    if size.min() < MIN_VOXELS_PER_AXIS:
        raise InputError(source, f"is too small for the model: {' x '.join(map(str, size))} voxels, and the "
                                 f"preprocessing needs at least {MIN_VOXELS_PER_AXIS} along every axis")
    if extent.min() < MIN_EXTENT_MM or extent.prod() / 1000.0 < MIN_BRAIN_ML:
        raise InputError(source, f"is too small for the model: its field of view is "
                                 f"{' x '.join(f'{v:.3g}' for v in extent)} mm ({extent.prod() / 1000.0:.3g} mL); "
                                 f"a brain MRI covers at least {MIN_EXTENT_MM:g} mm along every axis and holds at "
                                 f"least {MIN_BRAIN_ML:g} mL of brain")
    _check_contrast(image, source)
    return image


def _check_contrast(image: sitk.Image, source: str) -> None:
    """A blank series (constant, or constant inside the head and 0 outside) has nothing for N4 or the model to use.

    The head is the Otsu foreground, found on a subsample so that the check costs well under a second.
    """
    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low == high == 0:
        raise InputError(source, "brain mask is empty or implausibly small: every voxel of the image is 0 (an empty "
                                 "series); is this a brain MRI?")
    if low == high:
        raise InputError(source, f"is constant inside the brain mask (every voxel of the image is {low:g}): no image "
                                 "contrast to use; a blank series?")
    step = max(1, round((values.size / 1e6) ** (1 / 3)))
    sample = np.ascontiguousarray(values[::step, ::step, ::step], dtype=np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(sample))
    head = sample[sample > otsu.GetThreshold()]
    head = head if head.size else sample
    lo, hi = np.percentile(head, [0.5, 99.5])
    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        raise InputError(source, f"is constant inside the brain mask and the whole head around it ({hi:.4g} in 99% of "
                                 "the head's voxels; only the background differs): no image contrast to use; a blank "
                                 "series?")


def _brain_volume_ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000.0)


def usable_sequences(case: Case, allow_missing: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """The sequences to use and, with ``allow_missing``, those left out as empty or constant (sequence -> why);
    without it an empty or constant sequence is an error naming it."""
    if not allow_missing:
        return case.available, {}
    blank = {}
    for key in case.available:
        try:
            _check_contrast(case.image(key), case.source(key))
        except InputError as error:
            blank[key] = error.problem
    if len(blank) == len(case.available):
        raise InputError(None, f"case {case.case_id}: every sequence is empty or constant ("
                               + "; ".join(f"{k}: {case.source(k)}" for k in blank) + ")")
    return tuple(k for k in case.available if k not in blank), blank


def prepare_case(case: Case, bundle: Any, progress: Progress = null_progress,
                 allow_missing: bool = False) -> Preprocessed:
    """The CPU half of a prediction: the bundle (a ``neuroradfm.models.bundle.Bundle``, or its card-only copy in a
    cohort worker) must take the case's sequences, then preprocessing onto the model grid with its settings. Here,
    not in neuroradfm.predict, so that cohort workers prepare cases without importing torch and MONAI (~450 MB
    each)."""
    bundle.require_subset(usable_sequences(case, allow_missing)[0], case.case_id)
    return preprocess_case(case, bundle.preprocessing, progress=progress, allow_missing=allow_missing)


def preprocess_case(case: Case, settings: PreprocessSettings | None = None,
                    progress: Progress = null_progress, allow_missing: bool = False) -> Preprocessed:
    """Every sequence is checked first (geometry, size, contrast: cheap), then corrected, registered, resampled.
    ``allow_missing``: an empty or constant sequence is left out (a zero channel) instead of an error."""
    settings = settings or PreprocessSettings()
    available, blank = usable_sequences(case, allow_missing)
    ref_key = reference_key(available, settings.reference)
    originals = {k: _check_sequence(case.image(k), case.source(k))
                 for k in sorted(available, key=lambda k: k != ref_key)}  # the reference first: errors name it
    images = {k: sitk.Cast(originals[k], sitk.sitkFloat32) for k in available}
    reference = images[ref_key]
    done: dict[str, str] = {f"{k} left out": f"empty or constant (--allow-missing): {why}" for k, why in blank.items()}
    stripped = steps.is_skull_stripped(reference)

    progress("n4", 0.0, "bias field correction")
    if settings.n4:
        for index, key in enumerate(available):
            head = steps.foreground_mask(images[key])
            images[key] = steps.n4_correct(images[key], head)
            progress("n4", 0.3 * (index + 1) / len(available), key)
        done["n4"] = "done"
    else:
        done["n4"] = "skipped: disabled in the settings"

    to_sequence: dict[str, sitk.Transform] = {ref_key: sitk.Euler3DTransform()}
    same_grid = all(_same_grid(images[k], reference) for k in available)
    if settings.coregister == "never" or (settings.coregister == "auto" and same_grid):
        to_sequence.update({k: sitk.Euler3DTransform() for k in available})
        done["coregister"] = ("skipped: all sequences share the reference's grid" if same_grid
                              else "skipped: disabled in the settings")
    else:
        for index, key in enumerate(k for k in available if k != ref_key):
            progress("coregister", 0.3 + 0.2 * index / 3, f"{key} -> {ref_key}")
            try:
                to_sequence[key] = steps.rigid_register(images[ref_key], images[key])
            except RuntimeError as error:
                raise InputError(case.source(key), f"could not be co-registered to the {ref_key} "
                                                   f"({itk_reason(error)}); do both show the same head?") from None
        done["coregister"] = f"done: rigid, to {ref_key}"

    progress("brain", 0.5, "brain mask")
    if settings.brain_extraction == "none" or (settings.brain_extraction == "auto" and stripped):
        brain = sitk.BinaryFillhole(sitk.Cast(sitk.NotEqual(originals[ref_key], 0), sitk.sitkUInt8))
        done["brain_extraction"] = ("skipped: input is already skull-stripped" if stripped
                                    else "skipped: disabled; mask = non-zero voxels")
    else:
        brain = steps.deepbet_mask(images[ref_key])
        done["brain_extraction"] = f"done: deepbet on {ref_key}"
    if _brain_volume_ml(brain) < MIN_BRAIN_ML:
        raise InputError(case.source(ref_key), f"brain mask is empty or implausibly small "
                                               f"({_brain_volume_ml(brain):.0f} mL); is this a brain MRI?")

    progress("register", 0.6, "affine to MNI152")
    sri24_dice = None
    if settings.template_registration == "auto" and sri24.has_sri24_header(reference):
        sri24_dice = sri24.brain_dice(brain, sri24.mni_to_sri24())
    if settings.template_registration == "none" or (settings.template_registration == "auto"
                                                    and in_template_space(reference)):
        template_to_reference: sitk.Transform = sitk.AffineTransform(3)
        done["template_registration"] = ("skipped: input is already in MNI152 template space"
                                         if settings.template_registration == "auto" else "skipped: disabled")
    elif sri24_dice is not None and sri24_dice >= sri24.MIN_BRAIN_DICE:
        template_to_reference = sri24.mni_to_sri24()
        done["template_registration"] = (f"skipped: SRI24 (BraTS) header and brain; the fixed SRI24-to-MNI152 "
                                         f"affine (brain overlap {sri24_dice:.2f})")
    else:
        brain_only = sitk.Mask(images[ref_key], brain)
        template = sitk.Mask(load_template("t1"), load_brain_mask())
        try:
            template_to_reference = steps.affine_register(template, brain_only)
        except RuntimeError as error:
            raise InputError(case.source(ref_key), f"could not be registered to the MNI152 template "
                                                   f"({itk_reason(error)}); is this a brain MRI?") from None
        done["template_registration"] = "done: affine, brain to MNI152 brain" + (
            "" if sri24_dice is None else f" (SRI24 header, but its brain overlaps the template's only "
                                          f"{sri24_dice:.2f} through the fixed SRI24 affine)")

    progress("resample", 0.85, "onto the model grid")
    grid = model_grid(settings)
    mask = sitk.GetArrayFromImage(steps.resample(brain, grid, template_to_reference)) > 0.5
    if not mask.any():
        raise InputError(case.source(ref_key), "the brain falls outside the model grid after registration")
    channels = []
    for key in SEQUENCES:
        if key not in available:
            channels.append(np.zeros(mask.shape, np.float32))
            continue
        composite = sitk.CompositeTransform([to_sequence[key], template_to_reference])
        array = sitk.GetArrayFromImage(steps.resample(images[key], grid, composite))
        channels.append(_zscore(array, mask, case.source(key)))
    done["normalise"] = "done: z-score inside the brain mask" + (
        "" if available == SEQUENCES else f"; missing {', '.join(k for k in SEQUENCES if k not in available)}: zeros")
    progress("preprocess", 1.0, "done")
    return Preprocessed(np.stack(channels), mask, grid, originals[ref_key], template_to_reference, done, available)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))
