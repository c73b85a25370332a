"""Hostile or implausible images: each is an InputError naming the file, raised before any expensive work."""

from __future__ import annotations

import gzip
import json
import locale
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io import load_case, read_image, read_manifest
from neuroradfm.io.case import Case
from neuroradfm.io.dicom import find_series, read_series
from neuroradfm.io.images import MAX_VOXELS, check_image
from neuroradfm.preprocess import PreprocessSettings, preprocess_case
from neuroradfm.template import load_template

QUICK = PreprocessSettings(spacing_mm=4.0, size=(48, 48, 48))  # N4 on: every check must come before it
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
OBLIQUE = (0.9848077, 0.0, -0.1736482, 0.0, 1.0, 0.0, 0.1736482, 0.0, 0.9848077)


def _noise(size=(20, 22, 18), spacing=(1.0, 1.0, 2.0), seed=0) -> sitk.Image:
    array = np.random.default_rng(seed).uniform(50, 150, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _nifti(path, array):
    """A NIfTI written by nibabel (array in i, j, k order; 1 x 1 x 2 mm voxels)."""
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def _case(images: dict[str, sitk.Image]) -> Case:
    return Case("bad", **images, sources={k: f"/data/{k}.nii.gz" for k in SEQUENCES})


def _head(spacing: float = 3.0) -> sitk.Image:
    """The MNI152 head (skull-stripped template) on a coarse grid, with noise inside the head."""
    template = load_template("t1")
    extent = np.asarray(template.GetSize()) * np.asarray(template.GetSpacing())
    grid = sitk.Image([int(round(v / spacing)) for v in extent], sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin(template.GetOrigin())
    grid.SetDirection(template.GetDirection())
    head = sitk.Resample(template, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(head)
    array += np.random.default_rng(1).normal(0, 2.0, array.shape).astype(np.float32) * (array > 0)
    noisy = sitk.GetImageFromArray(array)
    noisy.CopyInformation(head)
    return noisy


# --- 1. complex, vector and label-map voxels -----------------------------------------------------------------

def test_complex_voxels_are_refused_in_every_format(tmp_path):
    array = (np.ones((8, 9, 10)) + 2j).astype(np.complex64)
    for name in ("complex.nii.gz", "complex.nii"):
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / name))
        with pytest.raises(InputError, match=f"{name}: has complex-valued voxels .*expected a real grey-level image"):
            read_image(tmp_path / name)
    real = sitk.Image([8, 9, 10], sitk.sitkFloat32) + 1.0
    complex_image = sitk.RealAndImaginaryToComplex(real, real)
    sitk.WriteImage(complex_image, str(tmp_path / "complex.nrrd"))
    with pytest.raises(InputError, match="complex.nrrd: has complex-valued voxels"):
        read_image(tmp_path / "complex.nrrd")
    sitk.WriteImage(complex_image, str(tmp_path / "complex.mha"))  # MetaImage stores it as 2 channels
    with pytest.raises(InputError, match="complex.mha: has 2 components per voxel"):
        read_image(tmp_path / "complex.mha")
    with pytest.raises(InputError, match="in memory: has complex-valued voxels"):
        check_image(complex_image, "in memory")


def test_vector_and_label_map_pixel_types_are_refused(tmp_path):
    rgb = np.zeros((8, 9, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(InputError, match="rgb.nii.gz: has 3 components per voxel"):
        read_image(tmp_path / "rgb.nii.gz")
    label_map = sitk.Image([8, 9, 10], sitk.sitkLabelUInt8)
    with pytest.raises(InputError, match="labels: has voxels of type 'label of 8-bit unsigned integer'; expected"):
        check_image(label_map, "labels")
    one_channel = sitk.Image([8, 9, 10], sitk.sitkVectorFloat32, 1)
    with pytest.raises(InputError, match="channel: has voxels of type 'vector of 32-bit float'"):
        check_image(one_channel, "channel")


def test_complex_sequence_in_a_case_is_an_input_error_before_any_step():
    head = _head()
    complex_image = sitk.RealAndImaginaryToComplex(head, head)
    case = _case({"t1": head, "t1ce": head, "t2": complex_image, "flair": head})
    with pytest.raises(InputError, match="/data/t2.nii.gz: has complex-valued voxels"):
        preprocess_case(case, QUICK)


@pytest.fixture
def no_correction(monkeypatch):
    """Checks must refuse before any correction: N4, the registrations and deepbet fail the test if reached."""
    from neuroradfm.preprocess import steps

    for name in ("n4_correct", "rigid_register", "affine_register", "deepbet_mask"):
        monkeypatch.setattr(steps, name, lambda *args, name=name, **kwargs: pytest.fail(f"{name} ran"))


# --- 2. grids too small for the model -----------------------------------------------------------------------

@pytest.mark.parametrize("size, spacing, problem", [
    ((5, 5, 5), (1.0, 1.0, 1.0), "5 x 5 x 5 voxels, and the preprocessing needs at least 8 along every axis"),
    ((200, 200, 4), (1.0, 1.0, 3.0), "200 x 200 x 4 voxels"),
    ((30, 30, 30), (1.0, 1.0, 1.0), "field of view is 30 x 30 x 30 mm \\(27 mL\\)"),
    ((128, 128, 128), (0.3, 0.3, 0.3), "field of view is 38.4 x 38.4 x 38.4 mm"),
    ((60, 60, 60), (0.75, 0.75, 0.75), "field of view is 45 x 45 x 45 mm \\(91.1 mL\\).*holds at least 100 mL"),
])
def test_grids_too_small_for_the_model_are_refused_with_the_numbers(tmp_path, size, spacing, problem, no_correction):
    folder = tmp_path / "BraTS-GLI-00001-000"
    folder.mkdir()
    for index, tag in enumerate(("t1n", "t1c", "t2w", "t2f")):
        sitk.WriteImage(_noise(size, spacing, seed=index), str(folder / f"BraTS-GLI-00001-000-{tag}.nii.gz"))
    case = load_case(folder)  # a plausible image file: only the model needs more
    with pytest.raises(InputError, match=f"t1c.nii.gz: is too small for the model: .*{problem}"):
        preprocess_case(case, QUICK)  # refused before N4, deepbet or any registration (no_correction)


# --- 3. implausible voxel sizes and fields of view --------------------------------------------------------------

@pytest.mark.parametrize("spacing, problem", [
    ((0.01, 0.01, 0.01), "voxel size of 0.01 x 0.01 x 0.01 mm, outside the plausible MRI range 0.1 to 20 mm"),
    ((50.0, 50.0, 50.0), "voxel size of 50 x 50 x 50 mm, outside the plausible MRI range"),
    ((1.0, 1.0, 25.0), "voxel size of 1 x 1 x 25 mm"),
])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_implausible_voxel_sizes_are_refused_on_read(tmp_path, spacing, problem, suffix):
    path = tmp_path / f"odd{suffix}"
    sitk.WriteImage(_noise(size=(16, 16, 12), spacing=spacing), str(path))
    with pytest.raises(InputError, match=f"odd{suffix.replace('.', '[.]')}: has a {problem}"):
        read_image(path)


def test_implausible_spacing_in_memory_is_refused_before_n4():
    """N4 crashed on 0.01 mm voxels; a case built in memory (e.g. from Slicer nodes) is checked too."""
    tiny = _noise(size=(64, 64, 64), spacing=(0.01, 0.01, 0.01))
    head = _head()
    with pytest.raises(InputError, match="/data/t1ce.nii.gz: has a voxel size of 0.01 x 0.01 x 0.01 mm"):
        preprocess_case(_case({"t1": head, "t1ce": tiny, "t2": head, "flair": head}), QUICK)


def test_a_field_of_view_of_metres_is_not_a_head(tmp_path):
    path = tmp_path / "body.nii.gz"
    sitk.WriteImage(_noise(size=(300, 20, 20), spacing=(10.0, 10.0, 10.0)), str(path))
    with pytest.raises(InputError, match="body.nii.gz: has a field of view of 3000 x 200 x 200 mm, implausibly large "
                                         "for a head MRI \\(at most 500 mm per axis\\)"):
        read_image(path)


def _nrrd(path, fields: str, data: bytes = b"\0" * 8 * 9 * 10 * 4) -> None:
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 8 9 10\nendian: little\nencoding: raw\n"
                     + fields.encode() + b"\n" + data)


def _meta(path, fields: str, data: bytes = b"\0" * 8 * 9 * 10 * 4, size: str = "8 9 10") -> None:
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                     + f"{fields}DimSize = {size}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n".encode() + data)


def test_zero_negative_and_nan_geometry_in_headers(tmp_path):
    """Each of these was read without a word (ITK replaces the bad number with 0, 1 or its absolute value)."""
    _meta(tmp_path / "negative.mha", "ElementSpacing = -1 1 2\n")
    _meta(tmp_path / "zero.mha", "ElementSpacing = 0 1 2\n")
    _meta(tmp_path / "nan_spacing.mha", "ElementSpacing = nan 1 2\n")
    _meta(tmp_path / "nan_origin.mha", "Offset = nan 0 0\nElementSpacing = 1 1 2\n")
    _nrrd(tmp_path / "zero.nrrd", "space: left-posterior-superior\nspace directions: (0,0,0) (0,1,0) (0,0,2)\n")
    _nrrd(tmp_path / "nan.nrrd", "spacings: nan 1 2\n")
    _nrrd(tmp_path / "nan_origin.nrrd", "space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,2)\n"
                                        "space origin: (nan,nan,nan)\n")
    _nrrd(tmp_path / "none.nrrd", "space: left-posterior-superior\nspace directions: none (0,1,0) (0,0,2)\n")
    expected = {
        "negative.mha": "has an invalid voxel size -1 x 1 x 2 mm: every axis needs a finite, positive spacing",
        "zero.mha": "has an invalid voxel size 0 x 1 x 2 mm",
        "nan_spacing.mha": "has an invalid voxel size 0 x 0 x 0 mm",  # what ITK makes of it; refused either way
        "nan_origin.mha": "MetaImage header field offset = nan 0 0 is not a list of finite numbers",
        "zero.nrrd": "has an invalid voxel size 0 x 1 x 2 mm",
        "nan.nrrd": "NRRD header field 'spacings' is not finite \\(\\[nan, 1.0, 2.0\\]\\): the voxel size or "
                    "position is unknown",
        "nan_origin.nrrd": "NRRD header field 'space origin' is not finite \\(\\[nan, nan, nan\\]\\)",
        "none.nrrd": "NRRD header field 'space directions' is not finite \\(\\[\\[nan, nan, nan\\]",
    }
    for name, problem in expected.items():
        with pytest.raises(InputError, match=f"{name}: {problem}"):
            read_image(tmp_path / name)
    for name, pixdim in (("zero.nii", 0.0), ("nan.nii", np.nan), ("negative.nii", -2.0)):
        raw = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), None)
        raw.header["pixdim"][1] = pixdim
        raw.header["qform_code"] = raw.header["sform_code"] = 0
        raw.to_filename(str(tmp_path / name))
        with pytest.raises(InputError, match=f"{name}: has an invalid voxel size"):
            read_image(tmp_path / name)
    for name, field, value, problem in (("nan_offset.nii.gz", "qoffset_x", np.nan, "has a non-finite NIfTI qform"),
                                        ("nan_quaternion.nii", "quatern_b", np.nan, "has a non-finite NIfTI qform"),
                                        ("inf_sform.nii", "srow_y", [0.0, 2.0, 0.0, np.inf],
                                         "has a non-finite NIfTI sform")):
        _patched_nifti(tmp_path / name, **{field: value})
        with pytest.raises(InputError, match=f"{name}: {problem}"):
            read_image(tmp_path / name)


def _patched_nifti(path, **fields):
    """A valid NIfTI (sform and qform set) whose header fields are then overwritten as stored bytes: nibabel
    itself would recompute them from the affine when saving."""
    image = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), np.diag([1.0, 2.0, 2.0, 1.0]))
    image.header.set_qform(image.affine, 1)
    header = image.header.copy()
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    data = header.binaryblock + b"\0" * 4 + np.ones((8, 9, 10), np.float32).tobytes(order="F")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# --- 4. headers claiming more data than the file holds --------------------------------------------------------

_PEAK = """
import json, sys
from neuroradfm.errors import InputError
from neuroradfm.io import read_image
try:
    read_image(sys.argv[1])
    outcome = "read"
except InputError as error:
    outcome = str(error)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps([outcome, int(peak.split()[1]) / 1024]))
"""


def _read_in_a_child(path) -> tuple[str, float]:
    """read_image in a fresh process: what it says, and the process's peak resident memory in MB (VmHWM: unlike
    ru_maxrss, not inherited from the forking test process)."""
    result = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120)
    outcome, peak_mb = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome, peak_mb


def _float32_header(shape: tuple[int, int, int], spacing: float) -> bytes:
    """A NIfTI-1 header (and its 4 extension bytes) claiming ``shape`` float32 voxels, with no data after it."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    header.set_qform(np.diag([spacing, spacing, spacing, 1.0]), 1)
    header.set_sform(np.diag([spacing, spacing, spacing, 1.0]), 1)
    return header.binaryblock + b"\0" * 4


def _claim_1e9(path):
    block = _float32_header((1000, 1000, 1000), 0.2)
    path.write_bytes(gzip.compress(block) if path.name.endswith(".gz") else block)


@pytest.mark.parametrize("name, problem", [
    ("claim.nii.gz", "the header claims 1000 x 1000 x 1000 voxels of float32 \\(4000000000 bytes\\), more than any "
                     "gzip stream of \\d+ bytes can hold \\(deflate expands at most 1032:1\\)"),
    ("claim.nii", "truncated image file: 352 bytes of 4000000352 expected"),
    ("claim.nrrd", "the header claims 1000 x 1000 x 1000 voxels \\(4000000000 bytes\\), more than any compressed "
                   "stream of \\d+ bytes can hold"),
    ("claim.mha", "unreadable or truncated image file \\(the header claims 1000 x 1000 x 1000 voxels \\(4000000000 "
                  "bytes\\) but only 100 bytes of data are there\\)"),
    ("huge.mha", re.escape(f"claims 2000 x 1000 x 1000 = 2e+09 voxels, more than the {MAX_VOXELS:.3g} accepted")),
])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory from /proc/self/status")
def test_a_header_claiming_a_billion_voxels_allocates_nothing(tmp_path, name, problem):
    path = tmp_path / name
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        _claim_1e9(path)
    elif name.endswith(".nrrd"):
        path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nspacings: 0.2 0.2 0.2\n"
                         b"endian: little\nencoding: gzip\n\n" + gzip.compress(b"\0" * 1000))
    else:
        _meta(path, "ElementSpacing = 0.2 0.2 0.2\n", b"\0" * 100,
              size="2000 1000 1000" if name == "huge.mha" else "1000 1000 1000")
    outcome, peak_mb = _read_in_a_child(path)
    assert outcome.startswith(f"{path}: ") and re.search(problem, outcome), outcome
    assert peak_mb < 400, f"{peak_mb:.0f} MB used to refuse {name}"  # 4 GB were allocated before the fix


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory from /proc/self/status")
def test_truncated_gzip_nifti_is_refused_before_itk_allocates_it(tmp_path):
    """The header claims 512^3 float32 voxels (537 MB); 600 kB of data follow. ITK used to zero-fill 537 MB first."""
    data = np.random.default_rng(0).uniform(0, 100, 150_000).astype(np.float32).tobytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(_float32_header((512, 512, 512), 0.4) + data))
    outcome, peak_mb = _read_in_a_child(path)
    assert outcome == f"{path}: truncated image file: 600352 bytes of 536871264 expected"
    assert peak_mb < 400, f"{peak_mb:.0f} MB used to refuse a truncated file"


# --- 5. NaN and infinite voxels in NIfTI (ITK's reader silently makes them 0) -----------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_voxels_in_nifti_are_counted(tmp_path, suffix, dtype):
    array = np.ones((8, 9, 10), dtype)
    array[1, 2, 3], array[4, 4, 4], array[7, 8, 9] = np.nan, np.inf, -np.inf
    path = _nifti(tmp_path / f"written_by_nibabel{suffix}", array)
    with pytest.raises(InputError, match=f"written_by_nibabel{suffix.replace('.', '[.]')}: contains 3 NaN or infinite "
                                         "voxels$"):
        read_image(path)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    sitk.WriteImage(image, str(tmp_path / f"written_by_itk{suffix}"))
    with pytest.raises(InputError, match="written_by_itk.* contains 3 NaN or infinite voxels"):
        read_image(tmp_path / f"written_by_itk{suffix}")


def test_nan_nifti_in_a_brats_folder_and_a_manifest_names_the_file(tmp_path):
    folder = tmp_path / "BraTS2021_00003"
    folder.mkdir()
    for index, key in enumerate(SEQUENCES):
        array = np.random.default_rng(index).uniform(1, 2, (20, 22, 18)).astype(np.float32)
        if key == "flair":
            array[5, 5, 5] = np.nan
        _nifti(folder / f"BraTS2021_00003_{key}.nii.gz", array)
    with pytest.raises(InputError, match="BraTS2021_00003_flair.nii.gz: contains 1 NaN or infinite voxels"):
        load_case(folder)
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,site,t1,t1ce,t2,flair\n3,s," + ",".join(
        f"BraTS2021_00003/BraTS2021_00003_{k}.nii.gz" for k in SEQUENCES) + "\n")
    with pytest.raises(InputError, match="BraTS2021_00003_flair.nii.gz: contains 1 NaN"):
        read_manifest(manifest)[0].load()


def test_valid_nifti_scaling_and_nibabel_defaults_still_read(tmp_path):
    """nibabel stores scl_slope = NaN ("no scaling") in float files; integer data with a real slope are scaled."""
    floating = _nifti(tmp_path / "plain.nii.gz", np.full((8, 9, 10), 3.5, np.float32))
    assert float(sitk.GetArrayViewFromImage(read_image(floating)).mean()) == pytest.approx(3.5)
    scaled = nib.Nifti1Image(np.full((8, 9, 10), 100, np.int16), np.eye(4))
    scaled.header.set_slope_inter(2.0, 5.0)
    nib.save(scaled, str(tmp_path / "scaled.nii"))
    assert float(sitk.GetArrayViewFromImage(read_image(tmp_path / "scaled.nii")).mean()) == pytest.approx(205.0)


# --- 6. a blank series -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("background", ["zero", "noise"])
def test_a_series_constant_inside_the_head_is_refused_before_n4(background, no_correction):
    head = _head()
    array = (sitk.GetArrayFromImage(head) > 0).astype(np.float32) * 250.0
    if background == "noise":
        outside = array == 0
        array[outside] = np.random.default_rng(2).uniform(0, 20, int(outside.sum()))
    blank = sitk.GetImageFromArray(array)
    blank.CopyInformation(head)
    with pytest.raises(InputError, match="/data/t2.nii.gz: is constant inside the brain mask and the whole head "
                                         "around it \\(250 in 99% of the head's voxels"):
        preprocess_case(_case({"t1": head, "t1ce": head, "t2": blank, "flair": head}), QUICK)  # before N4


def test_an_empty_reference_names_the_reference_file():
    head, empty = _head(), _head() * 0.0
    with pytest.raises(InputError, match="/data/t1ce.nii.gz: brain mask is empty or implausibly small: every voxel"):
        preprocess_case(_case({"t1": empty, "t1ce": empty, "t2": head, "flair": head}), QUICK)


# --- 7. DICOM series mixing slice orientations -----------------------------------------------------------------

def _write_series(folder, uid, directions, spacing=(0.9, 0.9, 3.0), description="AX T1"):
    """GDCM's writer switches the process to the C locale; it is restored so later tests read text as UTF-8."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(folder, uid, directions, spacing, description)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(folder, uid, directions, spacing, description):
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, d in enumerate(directions):
        piece = sitk.GetImageFromArray(np.random.default_rng(k).integers(0, 1000, (10, 12)).astype(np.int16))
        piece.SetSpacing(spacing[:2])
        tags = {"0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.2", "0020|000e": uid, "0008|103e": description,
                "0020|0013": str(k + 1), "0020|0032": f"-20.0\\15.5\\{30.0 + k * spacing[2]:.6f}",
                "0020|0037": "\\".join(f"{v:.7f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}",
                "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2])}
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(piece)
    return folder


def test_dicom_series_with_mixed_orientations_is_refused(tmp_path):
    folder = _write_series(tmp_path / "study" / "s1", "1.2.826.0.1.3680043.8.498.2001", [AXIAL] * 4 + [OBLIQUE] * 2)
    (series,) = find_series(tmp_path / "study")
    with pytest.raises(InputError) as error:
        read_series(series)
    message = str(error.value)
    assert message.startswith(f"{folder}: series 'AX T1' mixes 2 slice orientations (ImageOrientationPatient "
                              "0020|0037): ")
    assert "1\\0\\0\\0\\1\\0 in 4 slices" in message and "\\1\\0 in 2 slices" in message
    assert "export each orientation as its own series" in message
    consistent = _write_series(tmp_path / "other" / "s1", "1.2.826.0.1.3680043.8.498.2002", [OBLIQUE] * 4)
    (series,) = find_series(consistent.parent)
    assert read_series(series).GetSize() == (12, 10, 4)


def test_dicom_series_with_implausible_pixel_spacing_is_refused(tmp_path):
    _write_series(tmp_path / "study" / "s1", "1.2.826.0.1.3680043.8.498.2003", [AXIAL] * 4, spacing=(0.01, 0.01, 3.0))
    (series,) = find_series(tmp_path / "study")
    with pytest.raises(InputError, match="s1 \\('AX T1'\\): has a voxel size of 0.01 x 0.01 x 3 mm"):
        read_series(series)


# --- 8. sheared (non-orthogonal) grids ---------------------------------------------------------------------------

def test_sheared_nifti_is_refused_even_when_itk_would_use_the_qform(tmp_path):
    sheared = np.diag([1.0, 1.0, 2.0, 1.0])
    sheared[0, 1] = 0.3
    with_qform = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), None)
    with_qform.header.set_sform(sheared, 1)
    with_qform.header.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), 1)  # ITK silently placed the image by this one
    with_qform.to_filename(str(tmp_path / "qform.nii.gz"))
    sform_only = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), sheared)
    sform_only.header["qform_code"] = 0
    sform_only.to_filename(str(tmp_path / "sform.nii"))
    for name in ("qform.nii.gz", "sform.nii"):
        with pytest.raises(InputError, match=f"{name}: direction cosines are not orthogonal \\(NIfTI sform\\): voxel "
                                             "axes i and j meet at 73.30 or 106.70 degrees instead of 90 \\(off by "
                                             "16.70; at most 0.1 is accepted\\)"):
            read_image(tmp_path / name)


def test_nifti_whose_sform_disagrees_with_pixdim_is_refused(tmp_path):
    image = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), None)
    image.header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), 1)
    image.header["qform_code"] = 0
    image.header["pixdim"][1:4] = 1.0  # ITK takes the voxel size from here: half the size the sform says
    image.to_filename(str(tmp_path / "scales.nii"))
    with pytest.raises(InputError, match="scales.nii: has an ambiguous NIfTI header: its sform \\(code 1\\) gives "
                                         "voxels of 2 x 2 x 2 mm but pixdim / SimpleITK say 1 x 1 x 1 mm"):
        read_image(tmp_path / "scales.nii")


def test_nifti_whose_sform_and_qform_disagree_is_refused(tmp_path):
    """ITK follows the qform (scanner, code 1) here; nibabel and most tools the sform (aligned, code 2)."""
    image = nib.Nifti1Image(np.ones((8, 9, 10), np.float32), None)
    image.header.set_sform(np.array([[1.0, 0, 0, 10], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]), 2)
    image.header.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), 1)
    image.to_filename(str(tmp_path / "two_placements.nii.gz"))
    with pytest.raises(InputError, match="two_placements.nii.gz: has an ambiguous NIfTI header: SimpleITK would place "
                                         "the image differently from its sform \\(code 2\\) \\(origin \\(0, 0, 0\\) "
                                         "vs \\(10, 0, 0\\) mm RAS, 10 mm apart"):
        read_image(tmp_path / "two_placements.nii.gz")
    image.header.set_sform(np.array([[1.0, 0, 0, 10], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]), 1)
    image.header.set_qform(image.header.get_sform(), 1)
    image.to_filename(str(tmp_path / "agreeing.nii.gz"))
    assert read_image(tmp_path / "agreeing.nii.gz").GetOrigin() == pytest.approx((-10.0, 0.0, 0.0))


def test_sheared_nrrd_metaimage_and_in_memory_images_are_refused(tmp_path):
    _nrrd(tmp_path / "sheared.nrrd", "space: left-posterior-superior\n"
                                     "space directions: (1,0,0) (0.3,1,0) (0,0,2)\nspace origin: (0,0,0)\n")
    with pytest.raises(InputError, match="sheared.nrrd: direction cosines are not orthogonal: voxel axes i and j meet "
                                         "at 73.30 or 106.70 degrees"):
        read_image(tmp_path / "sheared.nrrd")
    _meta(tmp_path / "sheared.mha", "TransformMatrix = 1 0 0 0.2 0.98 0 0 0 1\nElementSpacing = 1 1 2\n")
    with pytest.raises(InputError, match="sheared.mha: direction cosines are not orthogonal"):
        read_image(tmp_path / "sheared.mha")
    image = _noise()
    image.SetDirection((1.0, 0.05, 0.0, 0.0, 0.99875, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="memory: direction cosines are not orthogonal: .*off by 2.87"):
        check_image(image, "memory")


# --- valid data keeps working ---------------------------------------------------------------------------------------

def test_plausible_images_in_every_format_still_read(tmp_path):
    image = _noise(size=(24, 26, 20), spacing=(0.9, 0.9, 5.0))
    image.SetDirection(OBLIQUE)
    image.SetOrigin((-20.0, 15.5, 30.0))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        sitk.WriteImage(image, str(tmp_path / f"ok{suffix}"))
        read = read_image(tmp_path / f"ok{suffix}")
        assert read.GetSize() == (24, 26, 20)
        np.testing.assert_allclose(read.GetSpacing(), (0.9, 0.9, 5.0), rtol=1e-5)
        np.testing.assert_allclose(read.GetDirection(), OBLIQUE, atol=1e-5)
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image), rtol=1e-6)
    compressed = tmp_path / "ok_compressed.nrrd"
    sitk.WriteImage(image, str(compressed), useCompression=True)
    assert read_image(compressed).GetSize() == (24, 26, 20)


def test_a_dicom_header_claiming_huge_slices_is_refused_before_the_series_is_read(tmp_path, monkeypatch):
    """Rows and Columns of 40000 in three 1 kB files: the series would claim 4.8e9 voxels (9.6 GB)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "study" / "s1"
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series_uid, "1.2.3"
        ds.SeriesDescription, ds.InstanceNumber = "AX T1", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 3.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 3.0
        ds.Rows = ds.Columns = 40000
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = b"\0" * 1024
        ds.save_as(str(folder / f"{k}.dcm"), enforce_file_format=True)
    (series,) = find_series(tmp_path / "study")
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda self: pytest.fail("the series was read"))
    with pytest.raises(InputError, match="s1 \\('AX T1'\\): claims 40000 x 40000 x 3 = 4.8e\\+09 voxels, more than"):
        read_series(series)
