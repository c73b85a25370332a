"""The preprocessing steps, each a small function on SimpleITK images.

Timings and settings follow shared/docs/PREPROCESSING.md: N4 and registrations run on shrunk
images (the model grid is 2 mm anyway); registrations use Mattes mutual information with a
fixed sampling seed so that the same input always gives the same output.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import SimpleITK as sitk

SAMPLING_SEED = 20250919


def is_skull_stripped(image: sitk.Image) -> bool:
    """Zero background around the head: >= 20% exact zeros and a border that is (almost) all zero."""
    values = sitk.GetArrayViewFromImage(image)
    if (values == 0).mean() < 0.2:
        return False
    faces = [values[0], values[-1], values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]]
    border_zero = np.mean(np.concatenate([f.ravel() == 0 for f in faces]))
    return bool(border_zero >= 0.95)


def foreground_mask(image: sitk.Image) -> sitk.Image:
    """Head (or brain, for skull-stripped input) mask: Otsu, largest component, holes filled."""
    mask = sitk.OtsuThreshold(image, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.BinaryFillhole(sitk.Cast(components == 1, sitk.sitkUInt8))


def n4_correct(image: sitk.Image, mask: sitk.Image, target_spacing_mm: float = 6.0) -> sitk.Image:
    """N4 on a shrunk copy, then the full image divided by the expanded bias field."""
    shrink = [max(1, int(round(target_spacing_mm / s))) for s in image.GetSpacing()]
    small = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20, 20])
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(image)
    return image / sitk.Exp(log_bias)


def _registration(shrink: list[int], smooth: list[float], sampling: float) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=150,
                                                    relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smooth)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def rigid_register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """Rigid transform mapping fixed-image points to moving-image points."""
    fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = _registration([4, 2], [2.0, 1.0], 0.1)
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def affine_register(fixed: sitk.Image, moving: sitk.Image) -> sitk.AffineTransform:
    """Affine transform mapping fixed (template) points to moving (subject) points: moments, rigid, affine."""
    fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = _registration([8, 4], [4.0, 2.0], 0.05)
    rigid.SetInitialTransform(initial, inPlace=True)
    rigid.Execute(fixed, moving)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(initial.GetCenter())
    affine.SetMatrix(initial.GetMatrix())
    affine.SetTranslation(initial.GetTranslation())
    method = _registration([4, 2], [2.0, 1.0], 0.05)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)
    return affine


@lru_cache(maxsize=1)
def _deepbet():
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def deepbet_mask(image: sitk.Image) -> sitk.Image:
    """deepbet's brain mask (its CNN weights ship in the wheel) on the image's own grid."""
    import nibabel as nib

    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (i, j, k)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps  # LPS -> RAS
    _, mask, _ = _deepbet().run(nib.Nifti1Image(array, affine))
    result = sitk.GetImageFromArray(np.asarray(mask.dataobj).astype(np.uint8).transpose(2, 1, 0))
    result.CopyInformation(image)
    return result


def resample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform,
             interpolator: int = sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    return sitk.Resample(image, grid, transform, interpolator, default, sitk.sitkFloat32)
