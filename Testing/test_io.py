"""The one case loader: files, BraTS folders, DICOM studies, manifests, and every bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm import SEQUENCES
from neuroradfm.errors import InputError
from neuroradfm.io import classify_series, load_case, read_image, read_manifest

BRATS_2021 = {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"}
BRATS_2023 = {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}


def _volume(value: float = 1.0, size=(16, 18, 12), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
            direction=None, seed: int = 0) -> sitk.Image:
    array = np.random.default_rng(seed).uniform(0.5, 1.5, size=size[::-1]).astype(np.float32) * value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _write_case(folder, naming, case_id, with_seg=True, suffix=".nii.gz"):
    folder.mkdir(parents=True)
    for index, (key, tag) in enumerate(naming.items()):
        if key == "seg" and not with_seg:
            continue
        image = sitk.Cast(_volume() > 1.0, sitk.sitkUInt8) if key == "seg" else _volume(index + 1.0, seed=index)
        sitk.WriteImage(image, str(folder / f"{case_id}{tag}{suffix}"))
    return folder


@pytest.mark.parametrize("naming, case_id", [(BRATS_2021, "BraTS2021_00012"), (BRATS_2023, "BraTS-GLI-00002-000")])
def test_brats_folders_in_both_namings(tmp_path, naming, case_id):
    folder = _write_case(tmp_path / case_id, naming, case_id)
    case = load_case(folder, site="upenn")
    assert case.case_id == case_id and case.site == "upenn"
    for index, key in enumerate(SEQUENCES):
        assert case.image(key).GetSize() == (16, 18, 12)
        assert float(sitk.GetArrayViewFromImage(case.image(key)).mean()) == pytest.approx(index + 1.0, rel=0.05)
        assert case.source(key).endswith(f"{case_id}{naming[key]}.nii.gz")
    assert case.seg is not None


def test_brats_folder_without_seg(tmp_path):
    case = load_case(_write_case(tmp_path / "c", BRATS_2023, "BraTS-MEN-00000-000", with_seg=False))
    assert case.seg is None


def test_explicit_files_in_mixed_formats(tmp_path):
    paths = {}
    for index, (key, suffix) in enumerate(zip(SEQUENCES, (".nii.gz", ".nrrd", ".mha", ".nii"))):
        paths[key] = tmp_path / f"patient7_{key}{suffix}"
        sitk.WriteImage(_volume(index + 1.0), str(paths[key]))
    case = load_case(paths, site="x", clinical={"age": 50})
    assert case.case_id == "patient7" and case.clinical == {"age": 50}
    assert float(sitk.GetArrayViewFromImage(case.flair).mean()) == pytest.approx(4.0, rel=0.05)


def test_missing_and_duplicated_sequences_are_named(tmp_path):
    folder = _write_case(tmp_path / "c", BRATS_2021, "BraTS2021_00001", with_seg=False)
    (folder / "BraTS2021_00001_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="missing sequence\\(s\\) flair") as error:
        load_case(folder)
    assert str(folder) in str(error.value) and "BraTS2021_00001_t1.nii.gz" in str(error.value)
    sitk.WriteImage(_volume(), str(folder / "BraTS2021_00001_flair.nii.gz"))
    sitk.WriteImage(_volume(), str(folder / "BraTS2021_00001_flair.nrrd"))
    with pytest.raises(InputError, match="more than one file for a sequence \\(flair"):
        load_case(folder)
    with pytest.raises(InputError, match="explicit files need exactly"):
        load_case({"t1": folder / "a.nii"})


def test_unreadable_truncated_2d_4d_and_non_finite_images(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="garbage.nii.gz: (unreadable|truncated)"):
        read_image(garbage)
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "absent.nii.gz")

    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(_volume(size=(40, 40, 30)), str(whole))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.nii.gz: .*truncated"):
        read_image(truncated)
    raw = tmp_path / "short.nii"
    sitk.WriteImage(_volume(size=(40, 40, 30)), str(raw))
    raw.write_bytes(raw.read_bytes()[:-1000])
    with pytest.raises(InputError, match="short.nii: truncated image file"):
        read_image(raw)

    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8), np.float32)), str(flat))
    with pytest.raises(InputError, match="flat.nrrd: is a 2D image"):
        read_image(flat)
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 8, 8), np.float32), isVector=False), str(series))
    with pytest.raises(InputError, match="series.nii.gz: is a 4D image"):
        read_image(series)
    for bad, name in ((np.nan, "nan"), (np.inf, "inf")):
        array = np.ones((6, 6, 6), np.float32)
        array[2, 2, 2] = bad
        path = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        with pytest.raises(InputError, match=f"{name}.nrrd: contains 1 NaN or infinite voxels"):
            read_image(path)


def test_gzip_members_are_checked_without_loading_twice(tmp_path):
    path = tmp_path / "ok.nii.gz"
    sitk.WriteImage(_volume(), str(path))
    with gzip.open(path) as handle:
        assert len(handle.read()) > 16 * 18 * 12 * 4
    assert read_image(path).GetSize() == (16, 18, 12)


def test_mismatched_physical_extent_names_the_file(tmp_path):
    folder = _write_case(tmp_path / "c", BRATS_2023, "BraTS-GLI-00009-000", with_seg=False)
    sitk.WriteImage(_volume(origin=(500.0, 0.0, 0.0)), str(folder / "BraTS-GLI-00009-000-t2w.nii.gz"))
    with pytest.raises(InputError, match="t2w.nii.gz: mismatched physical extent"):
        load_case(folder)


# --- DICOM -----------------------------------------------------------------------------------------------

OBLIQUE = (0.9848077, 0.0, -0.1736482, 0.0, 1.0, 0.0, 0.1736482, 0.0, 0.9848077)


def _write_series(folder, description, uid, value, contrast="", direction=OBLIQUE, slices=5):
    folder.mkdir(parents=True)
    image = _volume(value, size=(12, 10, slices), spacing=(0.9, 0.9, 3.0), direction=direction, seed=int(value))
    image = sitk.Cast(image * 100, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    for k in range(slices):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0010|0010": "PHANTOM^TEST", "0010|0020": "P1", "0008|0060": "MR", "0020|000d": "1.2.826.0.1.3680043.2.1",
            "0020|000e": uid, "0008|103e": description, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.7f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}", "0018|0050": "3.0",
        }
        if contrast:
            tags["0018|0010"] = contrast
        for key, value_ in tags.items():
            piece.SetMetaData(key, value_)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(piece)


@pytest.fixture
def dicom_study(tmp_path):
    study = tmp_path / "study"
    _write_series(study / "s1", "AX T1 SE", "1.2.826.0.1.3680043.2.1.1", 1.0)
    _write_series(study / "s2", "AX T1 SE", "1.2.826.0.1.3680043.2.1.2", 2.0, contrast="Gadovist")
    _write_series(study / "s3", "AX T2 FSE", "1.2.826.0.1.3680043.2.1.3", 3.0)
    _write_series(study / "s4", "AX T2 FLAIR", "1.2.826.0.1.3680043.2.1.4", 4.0)
    _write_series(study / "s0", "3-Plane Localizer", "1.2.826.0.1.3680043.2.1.5", 5.0, slices=3)
    return study


def test_dicom_study_assigns_series_and_keeps_oblique_geometry(dicom_study):
    case = load_case(dicom_study)
    for index, key in enumerate(SEQUENCES):
        mean = float(sitk.GetArrayViewFromImage(case.image(key)).mean())
        assert mean == pytest.approx(100 * (index + 1), rel=0.05)
    assert case.t1ce.GetSize() == (12, 10, 5)
    np.testing.assert_allclose(case.t1ce.GetSpacing(), (0.9, 0.9, 3.0), atol=1e-4)
    np.testing.assert_allclose(case.t1ce.GetDirection(), OBLIQUE, atol=1e-5)
    assert "AX T2 FLAIR" in case.source("flair")


def test_dicom_ambiguity_and_gaps_list_every_series_and_override_wins(dicom_study):
    _write_series(dicom_study / "s5", "T1 POST GAD", "1.2.826.0.1.3680043.2.1.6", 6.0)
    with pytest.raises(InputError, match="2 candidate series for t1ce") as error:
        load_case(dicom_study)
    assert "3-Plane Localizer" in str(error.value) and "override" in str(error.value)
    case = load_case(dicom_study, sequences={"t1ce": "T1 POST GAD"})
    assert float(sitk.GetArrayViewFromImage(case.t1ce).mean()) == pytest.approx(600, rel=0.05)
    case = load_case(dicom_study, sequences={"t1ce": "1.2.826.0.1.3680043.2.1.2"})
    assert float(sitk.GetArrayViewFromImage(case.t1ce).mean()) == pytest.approx(200, rel=0.05)


def test_dicom_missing_sequence(tmp_path):
    study = tmp_path / "study"
    _write_series(study / "a", "AX T1", "1.2.3.1", 1.0)
    _write_series(study / "b", "AX T2", "1.2.3.2", 2.0)
    with pytest.raises(InputError, match="no series for t1ce; no series for flair"):
        load_case(study)


@pytest.mark.parametrize("description, expected", [
    ("AX T1 POST GAD", "t1ce"), ("T1_MPRAGE_SAG", "t1"), ("Ax T2 FLAIR", "flair"), ("T2W_TSE", "t2"),
    ("t1_se_tra_KM", "t1ce"), ("sag 3D T1 +C", "t1ce"), ("MPRAGE post", "t1ce"), ("T1 pre", "t1"),
    ("t2_tirm_tra_dark-fluid", "flair"), ("T1 FLAIR", "t1"), ("AX T2 FSE", "t2"), ("Localizer", None),
    ("DWI b1000", None), ("ADC", None), ("T2*", None), ("T2 star", None), ("SWI", None), ("ep2d_perf", None),
    ("BraTS-GLI-00000-000-t1c", "t1ce"), ("BraTS2021_00012_flair.nii.gz", "flair"), ("BraTS2021_00012_t1", "t1"),
    ("UPENN-GBM-00001_11_T1GD", "t1ce"), ("T1wCE", "t1ce"), ("CT1", "t1ce"), ("", None), ("survey", None),
])
def test_classify_series(description, expected):
    assert classify_series(description) == expected


def test_contrast_agent_tag_makes_t1_post_contrast():
    assert classify_series("AX T1 SE", contrast_agent="Dotarem") == "t1ce"


# --- manifests ------------------------------------------------------------------------------------------

def test_manifest_relative_paths_and_clinical_types(tmp_path):
    _write_case(tmp_path / "cases" / "A", BRATS_2023, "A", with_seg=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,site,t1,t1ce,t2,flair,age,idh1,note\n"
                        "A,s1,cases/A/A-t1n.nii.gz,cases/A/A-t1c.nii.gz,cases/A/A-t2w.nii.gz,cases/A/A-t2f.nii.gz,"
                        "61.5,1,\n")
    (entry,) = read_manifest(manifest, check_files=True)
    assert entry.clinical == {"age": 61.5, "idh1": 1, "note": None}
    case = entry.load()
    assert case.case_id == "A" and case.site == "s1" and case.clinical["idh1"] == 1


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,t1,t1ce\nA,a,b\n")
    with pytest.raises(InputError, match="bad.csv: manifest lacks required column\\(s\\) site, t2, flair"):
        read_manifest(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\nA,s,a,b,c,d\n")
    with pytest.raises(InputError, match="duplicated case_id\\(s\\): A"):
        read_manifest(dup)
    with pytest.raises(InputError, match="4 image file\\(s\\) not found"):
        read_manifest(_single(tmp_path), check_files=True)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def _single(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a.nii,b.nii,c.nii,d.nii\n")
    return path
