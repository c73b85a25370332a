"""BraTS cases in SRI24 space take the fixed SRI24-to-MNI152 affine instead of a per-case registration, but only when
their header and their brain say SRI24."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm.io.case import Case
from neuroradfm.phantom import generate_case
from neuroradfm.preprocess import PreprocessSettings, preprocess_case, sri24

SETTINGS = PreprocessSettings(size=(64, 64, 64), spacing_mm=3.0, n4=False)


@pytest.fixture(scope="module")
def mni_and_sri24():
    """One phantom case in MNI152 space (rendered at 2 mm: a quarter of the 1 mm rendering's time) and the same case
    resampled into the BraTS/SRI24 format (1 mm, 240 x 240 x 155)."""
    images, _, _ = generate_case(2, seed=7, n_sites=4, spacing=2.0)
    return images, {key: sri24.to_sri24(image) for key, image in images.items()}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_brats_format_case_has_the_sri24_header(mni_and_sri24):
    _, brats = mni_and_sri24
    image = brats["t1ce"]
    assert image.GetSize() == (240, 240, 155)
    assert image.GetOrigin() == (0.0, -239.0, 0.0)
    assert sri24.has_sri24_header(image)
    for change in ({"size": (240, 240, 154)}, {"origin": (0.0, -200.0, 0.0)}, {"spacing": (1.0, 1.0, 1.2)},
                   {"direction": (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)}):
        other = sitk.Image(list(change.get("size", sri24.SRI24_SIZE)), sitk.sitkUInt8)
        other.SetOrigin(change.get("origin", sri24.SRI24_ORIGIN))
        other.SetSpacing(change.get("spacing", sri24.SRI24_SPACING))
        other.SetDirection(change.get("direction", sri24.SRI24_DIRECTION))
        assert not sri24.has_sri24_header(other), change


def test_sri24_case_skips_registration_and_lands_where_the_mni_case_does(mni_and_sri24):
    mni, brats = mni_and_sri24
    direct = preprocess_case(Case("mni", **mni), SETTINGS)
    fixed = preprocess_case(Case("brats", **brats), SETTINGS)
    step = fixed.steps["template_registration"]
    assert step.startswith("skipped: SRI24 (BraTS) header and brain"), step
    overlap = float(step.rsplit("overlap ", 1)[1].rstrip(")"))
    assert sri24.MIN_BRAIN_DICE <= overlap <= 1.0
    assert _dice(direct.mask, fixed.mask) > 0.95
    both = direct.mask & fixed.mask
    for channel in range(4):
        assert np.corrcoef(direct.channels[channel][both], fixed.channels[channel][both])[0, 1] > 0.95
    # outputs go back onto the BraTS grid exactly
    back = fixed.to_reference(fixed.mask.astype(np.float32))
    assert back.GetSize() == (240, 240, 155) and back.GetOrigin() == (0.0, -239.0, 0.0)
    brain = sitk.GetArrayViewFromImage(brats["t1ce"]) != 0
    assert _dice(sitk.GetArrayViewFromImage(back) > 0.5, brain) > 0.9


@pytest.mark.parametrize("how", ["shifted", "flipped"])
def test_a_header_that_lies_is_caught_by_the_brain_overlap(mni_and_sri24, how):
    _, brats = mni_and_sri24
    image = brats["t1ce"]
    if how == "shifted":
        moved = sitk.Resample(image, image, sitk.TranslationTransform(3, (25.0, 0.0, 15.0)), sitk.sitkLinear, 0)
    else:
        moved = sitk.Flip(image, [False, True, False])
        moved.CopyInformation(image)
    assert sri24.has_sri24_header(moved)
    dice = sri24.brain_dice(sitk.Cast(moved != 0, sitk.sitkUInt8), sri24.mni_to_sri24())
    assert dice < sri24.MIN_BRAIN_DICE
    assert sri24.brain_dice(sitk.Cast(image != 0, sitk.sitkUInt8), sri24.mni_to_sri24()) >= sri24.MIN_BRAIN_DICE


def test_a_shifted_brats_case_is_registered_instead(mni_and_sri24):
    mni, brats = mni_and_sri24
    shift = sitk.TranslationTransform(3, (20.0, 0.0, 20.0))
    moved = {key: sitk.Resample(image, image, shift, sitk.sitkLinear, 0) for key, image in brats.items()}
    result = preprocess_case(Case("moved", **moved), SETTINGS)
    step = result.steps["template_registration"]
    assert step.startswith("done: affine") and "SRI24 header, but its brain overlaps" in step, step
    direct = preprocess_case(Case("mni", **mni), SETTINGS)
    assert _dice(direct.mask, result.mask) > 0.9


def test_derive_recovers_the_affine_from_an_atlas_in_sri24_space():
    """``python -m neuroradfm.preprocess.sri24 ATLAS``'s derivation, run on the MNI152 brain carried into SRI24 space
    by the constant: it gives the constant back (points within 2 mm) and a high brain overlap."""
    from neuroradfm.template import load_brain_mask, load_template

    atlas = sri24.to_sri24(sitk.Cast(sitk.Mask(load_template("t1"), load_brain_mask()), sitk.sitkFloat32))
    matrix, dice = sri24.derive(atlas)
    assert dice > 0.93
    expected = np.asarray(sri24.MNI_TO_SRI24)
    corners = np.array([[x, y, z, 1.0] for x in (-60, 60) for y in (-90, 60) for z in (-40, 70)])
    assert np.abs(corners @ matrix.T - corners @ expected.T).max() < 2.0
    with pytest.raises(ValueError, match="SRI24 header"):
        sri24.derive(sitk.Image([10, 10, 10], sitk.sitkFloat32))
