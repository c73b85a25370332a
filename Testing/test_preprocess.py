"""Preprocessing: geometry round trip, registration accuracy, skips, z-scoring, deepbet and errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io.case import Case
from neuroradfm.preprocess import PreprocessSettings, model_grid, preprocess_case
from neuroradfm.preprocess.steps import deepbet_mask
from neuroradfm.template import load_brain_mask, load_template

SMALL = PreprocessSettings(spacing_mm=3.0, size=(64, 64, 64))


def _oblique_grid(size, spacing, angles, flip, centre=(0.0, -15.0, 10.0)) -> sitk.Image:
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles)
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag(flip)
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)).tolist())
    return grid


def _case_from_template(grid: sitk.Image, pose: sitk.Transform, seed: int = 0) -> Case:
    """The template seen through ``pose`` (subject point -> template point) on ``grid``, four contrasts."""
    subject = sitk.Resample(load_template("t1"), grid, pose, sitk.sitkLinear, 0.0)
    rng = np.random.default_rng(seed)
    images = {}
    for gain, key in zip((1.0, 1.1, 0.7, 0.9), SEQUENCES):
        array = sitk.GetArrayFromImage(subject)
        array = (array * gain + rng.normal(0, 1.0, array.shape) * (array > 0)).astype(np.float32)
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(subject)
        images[key] = image
    return Case("synthetic", **images, sources={k: f"/data/{k}.nii.gz" for k in SEQUENCES})


@pytest.fixture(scope="module")
def oblique_result():
    """RAS-flipped oblique anisotropic reference whose field of view cuts the brain (so deepbet runs)."""
    pose = sitk.Euler3DTransform()
    pose.SetRotation(0.08, 0.05, -0.1)
    pose.SetTranslation([5.0, -8.0, 6.0])
    grid = _oblique_grid((70, 80, 34), (2.4, 2.2, 4.5), (0.15, -0.1, 0.2), (1, -1, -1))
    case = _case_from_template(grid, pose)
    return case, pose, preprocess_case(case, SMALL)


def test_outputs_go_back_exactly_onto_the_reference_grid(oblique_result):
    case, _, result = oblique_result
    back = result.to_reference(result.mask.astype(np.float32))
    assert back.GetSize() == case.t1ce.GetSize()
    assert back.GetSpacing() == case.t1ce.GetSpacing()
    assert back.GetOrigin() == case.t1ce.GetOrigin()
    assert back.GetDirection() == case.t1ce.GetDirection()


def test_registration_recovers_the_known_pose(oblique_result):
    _, pose, result = oblique_result
    truth = pose.GetInverse()
    for point in ([0.0, 0.0, 0.0], [40.0, 0.0, 20.0], [-40.0, -30.0, 0.0], [0.0, 50.0, -20.0]):
        error = np.linalg.norm(np.subtract(result.template_to_reference.TransformPoint(point),
                                           truth.TransformPoint(point)))
        assert error < 3.0, (point, error)


def test_full_pipeline_steps_and_z_scoring(oblique_result):
    case, _, result = oblique_result
    assert result.steps["brain_extraction"] == "done: deepbet on t1ce"
    assert result.steps["template_registration"].startswith("done: affine")
    assert result.steps["coregister"].startswith("skipped: all sequences share")
    assert result.channels.shape == (4, 64, 64, 64) and result.channels.dtype == np.float32
    for channel in result.channels:
        inside = channel[result.mask]
        assert abs(inside.mean()) < 1e-3 and inside.std() == pytest.approx(1.0, abs=1e-3)
        assert (channel[~result.mask] == 0).all()
    # the mask covers the part of the brain inside the reference's field of view
    template_mask = sitk.GetArrayFromImage(sitk.Resample(load_brain_mask(), result.grid, sitk.Transform(),
                                                         sitk.sitkNearestNeighbor)) > 0
    overlap = (template_mask & result.mask).sum() / result.mask.sum()
    assert overlap > 0.9


def test_template_space_skull_stripped_input_skips_to_a_direct_resample():
    template = load_template("t1")
    case = Case("mni", **{k: template for k in SEQUENCES})
    result = preprocess_case(case, PreprocessSettings(spacing_mm=3.0, size=(64, 64, 64), n4=False))
    assert result.steps["coregister"].startswith("skipped")
    assert result.steps["brain_extraction"] == "skipped: input is already skull-stripped"
    assert result.steps["template_registration"] == "skipped: input is already in MNI152 template space"
    direct = sitk.GetArrayFromImage(sitk.Resample(template, model_grid(SMALL), sitk.Transform(),
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    corr = np.corrcoef(direct[result.mask], result.channels[0][result.mask])[0, 1]
    assert corr > 0.99


def test_rigid_coregistration_of_a_moved_sequence():
    template = load_template("t1")
    moved_grid = _oblique_grid((60, 70, 60), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (-1, -1, 1), centre=(0.0, 18.0, 10.0))
    base = sitk.Resample(template, moved_grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    shift = sitk.Euler3DTransform()
    shift.SetRotation(0.0, 0.0, 0.12)
    shift.SetTranslation([6.0, -4.0, 3.0])
    moved = sitk.Resample(template, moved_grid, shift, sitk.sitkLinear, 0.0)
    case = Case("moved", t1=moved, t1ce=base, t2=base, flair=base)
    result = preprocess_case(case, PreprocessSettings(spacing_mm=3.0, size=(64, 64, 64), n4=False,
                                                      coregister="always"))
    assert result.steps["coregister"] == "done: rigid, to t1ce"
    t1, t1ce = result.channels[0][result.mask], result.channels[1][result.mask]
    assert np.corrcoef(t1, t1ce)[0, 1] > 0.95  # aligned again


def test_deepbet_mask_lands_on_the_brain_of_an_oblique_head():
    grid = _oblique_grid((64, 72, 60), (3.0, 3.0, 3.0), (0.1, 0.0, 0.15), (1, 1, 1), centre=(0.0, 18.0, 10.0))
    brain = sitk.Resample(sitk.Cast(load_brain_mask(), sitk.sitkFloat32), grid, sitk.Transform(),
                          sitk.sitkLinear) > 0.5
    head = sitk.Resample(load_template("t1"), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    outside = sitk.SignedMaurerDistanceMap(brain, insideIsPositive=False, useImageSpacing=True)
    scalp = sitk.Cast((outside > 6) & (outside < 12), sitk.sitkFloat32) * 90.0
    mask = deepbet_mask(head + scalp)
    truth, found = sitk.GetArrayFromImage(brain) > 0, sitk.GetArrayFromImage(mask) > 0
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice > 0.85


def test_errors_name_the_source():
    flat = sitk.Image(40, 40, 40, sitk.sitkFloat32)
    flat.SetSpacing((3.0, 3.0, 3.0))
    noise = sitk.GetImageFromArray(np.random.default_rng(0).uniform(1, 2, (40, 40, 40)).astype(np.float32))
    noise.CopyInformation(flat)
    empty = Case("empty", t1=flat, t1ce=flat, t2=flat, flair=flat, sources={k: f"/d/{k}.nii" for k in SEQUENCES})
    with pytest.raises(InputError, match="/d/t1ce.nii: brain mask is empty or implausibly small"):
        preprocess_case(empty, PreprocessSettings(spacing_mm=3.0, size=(64, 64, 64), n4=False,
                                                  brain_extraction="none", template_registration="none"))
    template = load_template("t1")
    constant = template * 0.0 + 100.0  # a blank series
    case = Case("c", t1=template, t1ce=template, t2=constant, flair=template,
                sources={k: f"/d/{k}.nii" for k in SEQUENCES})
    with pytest.raises(InputError, match="/d/t2.nii: is constant inside the brain mask"):
        preprocess_case(case, PreprocessSettings(spacing_mm=3.0, size=(64, 64, 64), n4=False))


def test_settings_round_trip_and_validation():
    settings = PreprocessSettings(spacing_mm=1.5, size=(96, 112, 96), coregister="never")
    assert PreprocessSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown preprocessing settings"):
        PreprocessSettings.from_dict({"spacing_mm": 2.0, "skull": True})
    with pytest.raises(ValueError, match="coregister must be one of"):
        PreprocessSettings(coregister="sometimes")
    grid = model_grid(PreprocessSettings(spacing_mm=2.0, size=(96, 96, 96)))
    assert grid.GetSize() == (96, 96, 96) and grid.GetDirection() == load_template("t1").GetDirection()
