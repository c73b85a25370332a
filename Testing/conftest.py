"""Shared fixtures: a small phantom cohort and a tiny bundle trained on it by the project's own code."""

from __future__ import annotations

import csv
import locale
from pathlib import Path

import pytest
import torch

from neuroradfm.models.encoder import EncoderConfig
from neuroradfm.preprocess import PreprocessSettings
from neuroradfm.train.baseline import BaselineSettings

torch.set_num_threads(2)

TINY_SETTINGS = BaselineSettings(
    encoder=EncoderConfig("resnet10", widen_factor=0.125, conv1_stride=2, no_max_pool=True),
    preprocessing=PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48), n4=False),
    epochs=1, batch_size=4, probe_fraction=0.75, seed=0, device="cpu", tumour_weight=1.0,
)


def write_manifest(target: Path, rows: list[dict[str, str]]) -> Path:
    """A manifest CSV of ``rows`` (dicts with the same keys), its folder created."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """GDCM's DICOM writer switches the process to the C locale, where text opened without an encoding is ASCII:
    no test leaves that to the next one."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory):
    """16 BraTS-style phantom cases at 4 mm from 2 sites (manifest path)."""
    from neuroradfm.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom"), n=16, sites=2, seed=3, spacing=4.0)


@pytest.fixture(scope="session")
def tiny_bundle(phantom_cohort, tmp_path_factory):
    from neuroradfm.train.baseline import train_baseline

    return train_baseline(phantom_cohort, tmp_path_factory.mktemp("bundles") / "tiny", TINY_SETTINGS,
                          card={"name": "tiny-test-bundle", "intended_use": "tests only"})


@pytest.fixture(scope="session")
def native_case_dir(tmp_path_factory):
    """One native phantom (head with skull; site-C: LPS-based oblique axes, 1.2 x 1.2 x 5 mm voxels)."""
    import SimpleITK as sitk

    from neuroradfm.phantom import case_id, generate_case
    from neuroradfm.phantom.cohort import FILE_SUFFIX

    images, seg, row = generate_case(2, seed=11, n_sites=4, native=True, spacing=2.0)
    folder = tmp_path_factory.mktemp("native") / case_id(2)
    folder.mkdir()
    for key, image in [*images.items(), ("seg", seg)]:
        sitk.WriteImage(image, str(folder / f"{case_id(2)}-{FILE_SUFFIX[key]}.nii.gz"))
    return folder


@pytest.fixture
def scene():
    """A real MRML scene (PyPI slicer-core), with the segmentation converter rules the application registers at
    start-up, set as slicer.mrmlScene for slicer.util's helpers."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
