"""The one case loader: files, BraTS folders, DICOM studies, manifests, and every bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm import SEQUENCES, cli
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
    case = load_case({**paths, "seg": None}, site="x", clinical={"age": 50})
    assert case.case_id == "patient7" and case.clinical == {"age": 50} and case.seg is None
    assert float(sitk.GetArrayViewFromImage(case.flair).mean()) == pytest.approx(4.0, rel=0.05)
    assert case.source("t2") == str(paths["t2"]) and case.t2.GetPixelID() == sitk.sitkFloat32
    with pytest.raises(InputError, match="override applies to DICOM studies only"):
        load_case(paths, sequences={"t1": "x"})


def test_brats_folder_with_uncompressed_nifti_and_integer_pixels(tmp_path):
    folder = tmp_path / "BraTS2021_00005"
    folder.mkdir()
    for index, key in enumerate(SEQUENCES):
        image = sitk.Cast(_volume(100.0 * (index + 1)), sitk.sitkInt16)
        sitk.WriteImage(image, str(folder / f"{folder.name}_{key}.nii"))
    case = load_case(folder)
    assert case.case_id == "BraTS2021_00005" and case.t2.GetPixelID() == sitk.sitkInt16  # pixel type kept as read
    assert float(sitk.GetArrayViewFromImage(case.t2).mean()) == pytest.approx(300.0, rel=0.05)
    with pytest.raises(InputError, match="override applies to DICOM studies only"):
        load_case(folder, sequences={"t1ce": "x"})


def test_a_subset_of_sequences_loads_and_duplicated_or_no_sequences_are_named(tmp_path):
    folder = _write_case(tmp_path / "c", BRATS_2021, "BraTS2021_00001", with_seg=False)
    (folder / "BraTS2021_00001_flair.nii.gz").unlink()
    case = load_case(folder)  # any non-empty subset: the bundle decides whether it can use it
    assert case.available == ("t1", "t1ce", "t2") and case.flair is None and set(case.images) == {"t1", "t1ce", "t2"}
    with pytest.raises(KeyError, match="has no flair \\(it has t1, t1ce, t2\\)"):
        case.image("flair")
    (folder / "BraTS2021_00001_t1ce.nii.gz").unlink()
    files = {"t2": folder / "BraTS2021_00001_t2.nii.gz", "t1": folder / "BraTS2021_00001_t1.nii.gz"}
    only = load_case(files)
    assert only.available == ("t1", "t2") and only.case_id == "BraTS2021_00001"  # named after the T1 (reference)
    sitk.WriteImage(_volume(), str(folder / "BraTS2021_00001_flair.nii.gz"))
    sitk.WriteImage(_volume(), str(folder / "BraTS2021_00001_flair.nrrd"))
    with pytest.raises(InputError, match="more than one file for a sequence \\(flair"):
        load_case(folder)
    with pytest.raises(InputError, match="explicit files are any of .* no sequence given"):
        load_case({"seg": folder / "a.nii"})
    with pytest.raises(InputError, match="unexpected \\['dwi'\\]"):
        load_case({"t1": files["t1"], "dwi": files["t2"]})
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / "BraTS2021_00002_seg.nii.gz").write_bytes((folder / "BraTS2021_00001_t1.nii.gz").read_bytes())
    with pytest.raises(InputError, match="no sequence found"):
        load_case(empty)


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
    for bad, name in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "minus_inf")):
        array = np.ones((6, 6, 6), np.float32)
        array[2, 2, 2] = bad
        path = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        with pytest.raises(InputError, match=f"{name}.nrrd: contains 1 NaN or infinite voxels"):
            read_image(path)


def test_singleton_4th_dimension_is_squeezed_and_vector_pixels_rejected(tmp_path):
    import nibabel as nib

    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((8, 9, 10, 1), np.float32), affine), str(tmp_path / "single.nii.gz"))
    image = read_image(tmp_path / "single.nii.gz")
    assert image.GetDimension() == 3 and image.GetSize() == (8, 9, 10)
    np.testing.assert_allclose(image.GetSpacing(), (1.5, 1.0, 2.0))
    vector = sitk.GetImageFromArray(np.ones((6, 7, 8, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="rgb.nrrd: has 3 components per voxel"):
        read_image(tmp_path / "rgb.nrrd")
    thin = tmp_path / "thin.mha"
    sitk.WriteImage(_volume(size=(8, 8, 1)), str(thin))
    with pytest.raises(InputError, match="thin.mha: is a single slice"):
        read_image(thin)


def test_broken_metaimage_files_are_named(tmp_path):
    whole = tmp_path / "whole.mha"
    sitk.WriteImage(_volume(), str(whole))
    (tmp_path / "cut.mha").write_bytes(whole.read_bytes()[:-2000])
    with pytest.raises(InputError, match="cut.mha: unreadable or truncated image file"):
        read_image(tmp_path / "cut.mha")
    sitk.WriteImage(_volume(), str(tmp_path / "split.mhd"))
    (tmp_path / "split.raw").unlink()
    with pytest.raises(InputError, match="split.mhd: .*data file split.raw is missing"):
        read_image(tmp_path / "split.mhd")
    assert read_image(whole).GetSize() == (16, 18, 12)


def test_gzip_members_are_checked_without_loading_twice(tmp_path):
    path = tmp_path / "ok.nii.gz"
    sitk.WriteImage(_volume(), str(path))
    with gzip.open(path) as handle:
        assert len(handle.read()) > 16 * 18 * 12 * 4
    assert read_image(path).GetSize() == (16, 18, 12)


def test_mismatched_physical_extent_names_the_file(tmp_path):
    folder = _write_case(tmp_path / "c", BRATS_2023, "BraTS-GLI-00009-000", with_seg=False)
    sitk.WriteImage(_volume(origin=(9.0, 0.0, 0.0)), str(folder / "BraTS-GLI-00009-000-t2w.nii.gz"))
    with pytest.raises(InputError, match="t2w.nii.gz: mismatched physical extent") as error:
        load_case(folder)
    assert "t1c.nii.gz" in str(error.value)  # the reference it was compared with
    # the boxes are 16 x 18 x 24 mm: a 9 mm shift leaves 44% overlap (rejected above), 4 mm leaves 75%
    sitk.WriteImage(_volume(origin=(4.0, 0.0, 0.0)), str(folder / "BraTS-GLI-00009-000-t2w.nii.gz"))
    assert load_case(folder).t2.GetOrigin() == (4.0, 0.0, 0.0)
    sitk.WriteImage(sitk.Cast(_volume(origin=(0.0, 0.0, -200.0)) > 1, sitk.sitkUInt8),
                    str(folder / "BraTS-GLI-00009-000-seg.nii.gz"))
    with pytest.raises(InputError, match="seg.nii.gz: mismatched physical extent"):
        load_case(folder)


# --- DICOM -----------------------------------------------------------------------------------------------

OBLIQUE = (0.9848077, 0.0, -0.1736482, 0.0, 1.0, 0.0, 0.1736482, 0.0, 0.9848077)


ORIGIN = (-20.0, 15.5, 30.0)


def _write_series(folder, description, uid, value, contrast="", direction=OBLIQUE, slices=5, image_type="",
                  protocol=""):
    folder.mkdir(parents=True)
    image = _volume(value, size=(12, 10, slices), spacing=(0.9, 0.9, 3.0), origin=ORIGIN, direction=direction,
                    seed=int(value))
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
        if image_type:
            tags["0008|0008"] = image_type
        if protocol:
            tags["0018|1030"] = protocol
        for key, value_ in tags.items():
            piece.SetMetaData(key, value_)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(piece)


UID = "1.2.826.0.1.3680043.8.498.1000{}"


@pytest.fixture
def dicom_study(tmp_path):
    study = tmp_path / "study"
    _write_series(study / "s1", "AX T1 SE", UID.format(1), 1.0)
    _write_series(study / "s2", "AX T1 SE", UID.format(2), 2.0, contrast="Gadovist")
    _write_series(study / "PAT1" / "EXAM2" / "s3", "AX T2 FSE", UID.format(3), 3.0)  # any nesting
    _write_series(study / "s4", "", UID.format(4), 4.0, contrast="Gadovist", protocol="AX T2 FLAIR")
    _write_series(study / "s0", "3-Plane Localizer", UID.format(5), 5.0, slices=3)
    _write_series(study / "s6", "AX T1 SE", UID.format(6), 7.0, contrast="Gadovist",
                  image_type="DERIVED\\SECONDARY\\MPR")  # a reformat: never a candidate
    _write_series(study / "s7", "t1_se_tra_KM_MPR_Cor", UID.format(8), 8.0, protocol="t1_se_tra_KM")  # nor this
    return study


def test_dicom_study_assigns_series_and_keeps_oblique_geometry(dicom_study):
    case = load_case(dicom_study, site="s")
    for index, key in enumerate(SEQUENCES):
        mean = float(sitk.GetArrayViewFromImage(case.image(key)).mean())
        assert mean == pytest.approx(100 * (index + 1), rel=0.05)
    assert case.case_id == "study" and case.site == "s" and case.seg is None
    assert case.t1ce.GetSize() == (12, 10, 5)
    np.testing.assert_allclose(case.t1ce.GetSpacing(), (0.9, 0.9, 3.0), atol=1e-4)
    np.testing.assert_allclose(case.t1ce.GetDirection(), OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(case.t2.GetOrigin(), ORIGIN, atol=1e-4)
    assert case.source("flair") == f"{dicom_study / 's4'} ('AX T2 FLAIR')"
    assert case.source("t2").startswith(str(dicom_study / "PAT1" / "EXAM2" / "s3"))


def test_dicom_ambiguity_lists_every_series_and_override_wins(dicom_study):
    _write_series(dicom_study / "s5", "T1 POST GAD", UID.format(7), 6.0)
    with pytest.raises(InputError, match="2 candidate series for t1ce") as error:
        load_case(dicom_study)
    message = str(error.value)
    assert message.startswith(str(dicom_study)) and "override" in message
    assert f"...{UID.format(5)[-12:].lstrip('.')} '3-Plane Localizer' (3 slices)" in message
    assert f"{dicom_study / 's0'} -> not used\n" in message and f"{dicom_study / 's7'} -> not used" in message
    assert f"'AX T1 SE' (5 slices) in {dicom_study / 's6'} -> not used (derived secondary image)" in message
    assert f"in {dicom_study / 's1'} -> t1\n" in message  # what was assigned
    for key in ("T1 POST GAD", "t1 post gad", UID.format(7), "..." + UID.format(7)[-12:].lstrip(".")):
        case = load_case(dicom_study, sequences={"t1ce": key})
        assert float(sitk.GetArrayViewFromImage(case.t1ce).mean()) == pytest.approx(600, rel=0.05), key
    case = load_case(dicom_study, sequences={"t1ce": UID.format(2)})
    assert case.t1ce.GetSize() == (12, 10, 5)
    assert float(sitk.GetArrayViewFromImage(case.t1ce).mean()) == pytest.approx(200, rel=0.05)
    # overriding t1 with the series that would be the automatic t1ce leaves T1 POST GAD as the only t1ce
    case = load_case(dicom_study, sequences={"T1": UID.format(2)})
    assert float(sitk.GetArrayViewFromImage(case.t1).mean()) == pytest.approx(200, rel=0.05)
    assert float(sitk.GetArrayViewFromImage(case.t1ce).mean()) == pytest.approx(600, rel=0.05)
    with pytest.raises(InputError, match="override t1='AX T1 SE' matches 3 series \\(give the full"):
        load_case(dicom_study, sequences={"t1": "AX T1 SE", "t1ce": "T1 POST GAD"})
    with pytest.raises(InputError, match="override t1ce='nothing' matches 0 series"):
        load_case(dicom_study, sequences={"t1ce": "nothing"})
    with pytest.raises(InputError, match="unknown sequences \\['t1c'\\]"):
        load_case(dicom_study, sequences={"t1c": "T1 POST GAD"})


def test_cli_series_option_forces_the_dicom_assignment(dicom_study, tmp_path, capsys):
    _write_series(dicom_study / "s5", "T1 POST GAD", UID.format(7), 6.0)
    args = cli._parser().parse_args(["predict", str(dicom_study), "--series", "T1CE=T1 POST GAD", "--out", "x"])
    [(_, load)] = cli._case_loaders(args)
    assert float(sitk.GetArrayViewFromImage(load().t1ce).mean()) == pytest.approx(600, rel=0.05)
    for bad in ("t1c=T1 POST GAD", "t1ce="):
        assert cli.main(["predict", str(dicom_study), "--series", bad, "--out", str(tmp_path / "o")]) == 2
        assert f"--series '{bad}': expected SEQUENCE=SERIES" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dicom_missing_sequence_and_uneven_slices(tmp_path):
    study = tmp_path / "study"
    _write_series(study / "a", "AX T1", "1.2.3.1", 1.0)
    _write_series(study / "b", "AX T2", "1.2.3.2", 2.0)
    _write_series(study / "c", "T1 post", "1.2.3.3", 3.0)
    assert load_case(study).available == ("t1", "t1ce", "t2")  # no FLAIR: a subset
    _write_series(tmp_path / "other" / "a", "3-Plane Localizer", "1.2.3.9", 1.0, slices=3)
    with pytest.raises(InputError, match="T1/T1ce/T2/FLAIR: no series is a T1, T1ce, T2 or FLAIR\\.\n") as error:
        load_case(tmp_path / "other")
    assert "'3-Plane Localizer' (3 slices)" in str(error.value)
    _write_series(study / "d", "FLAIR", "1.2.3.4", 4.0, slices=6)
    (study / "d" / "002.dcm").unlink()
    with pytest.raises(InputError, match="d: series 'FLAIR' has uneven slice positions .*missing slices"):
        load_case(study)
    (study / "d" / "003.dcm").rename(study / "d" / "002.dcm")  # file names do not matter; a gap does
    with pytest.raises(InputError, match="uneven slice positions"):
        load_case(study)
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="notes: holds neither BraTS-named image files .* nor a DICOM series"):
        load_case(empty)


def test_dicom_series_split_over_folders_is_one_series(dicom_study):
    (dicom_study / "s4b").mkdir()
    for name in ("000.dcm", "003.dcm"):  # not contiguous: the split must be re-sorted by position
        (dicom_study / "s4" / name).rename(dicom_study / "s4b" / name)
    case = load_case(dicom_study)
    assert case.flair.GetSize() == (12, 10, 5) and case.source("flair").startswith(f"{dicom_study} (")
    assert float(sitk.GetArrayViewFromImage(case.flair).mean()) == pytest.approx(400, rel=0.05)
    np.testing.assert_allclose(case.flair.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(case.flair.GetSpacing(), (0.9, 0.9, 3.0), atol=1e-4)


@pytest.mark.parametrize("description, expected", [
    ("AX T1 POST GAD", "t1ce"), ("T1_MPRAGE_SAG", "t1"), ("Ax T2 FLAIR", "flair"), ("T2W_TSE", "t2"),
    ("t1_se_tra_KM", "t1ce"), ("sag 3D T1 +C", "t1ce"), ("MPRAGE post", "t1ce"), ("T1 pre", "t1"),
    ("t2_tirm_tra_dark-fluid", "flair"), ("T1 FLAIR", "t1"), ("AX T2 FSE", "t2"), ("Localizer", None),
    ("DWI b1000", None), ("ADC", None), ("T2*", None), ("T2 star", None), ("SWI", None), ("ep2d_perf", None),
    ("BraTS-GLI-00000-000-t1c", "t1ce"), ("BraTS2021_00012_flair.nii.gz", "flair"), ("BraTS2021_00012_t1", "t1"),
    ("UPENN-GBM-00001_11_T1GD", "t1ce"), ("T1wCE", "t1ce"), ("CT1", "t1ce"), ("", None), ("survey", None),
    # Siemens
    ("t1_mpr_sag_p2_iso", "t1"), ("t1_mpr_sag_p2_iso_MPR_Tra", None), ("t2_spc_da-fl_sag_p2_iso", "flair"),
    ("ep2d_diff_3scan_trace_p2_ADC", None), ("t2_tse_tra", "t2"), ("AAHead_Scout", None),
    # GE
    ("Ax T1 BRAVO +C", "t1ce"), ("AX FSPGR 3D", "t1"), ("AX PD/T2 FSE", None), ("AX T2 GRE", None),
    ("Ax T1 FLAIR post", "t1ce"), ("SAG T1 FLAIR", "t1"), ("3D ASL", None), ("SWAN", None),
    # Philips
    ("sT1W_3D_TFE", "t1"), ("T1W_3D_TFE +C", "t1ce"), ("sT2W_FLAIR", "flair"), ("T2_FFE", None),
    ("Survey_SHC", None), ("Reg - DWI", None),
    # free text
    ("T1 W/O CONTRAST", "t1"), ("T1 POSTCONTRAST", "t1ce"), ("T1 pre-contrast MPRAGE", "t1"), ("COR STIR", None),
    ("T1 POST SUB", None), ("TOF 3D", None), ("T1 map", None), ("3: AX T1 POST GAD", "t1ce"), ("C+ T1 AX", "t1ce"),
    # file and Slicer volume-node names
    ("T1 post Gd", "t1ce"), ("flair.nii.gz", "flair"), ("BraTS-GLI-00000-000-t1c_1", "t1ce"),
    ("BraTS-GLI-00000-000-t2w", "t2"), ("BraTS-GLI-00000-000-t2f", "flair"), ("BraTS-GLI-00000-000-seg", None),
    ("sub-01_ce-gadolinium_T1w", "t1ce"), ("sub-01_ses-02_FLAIR.nii.gz", "flair"), ("sub-01_T1w.nii.gz", "t1"),
])
def test_classify_series(description, expected):
    assert classify_series(description) == expected


@pytest.mark.parametrize("agent, expected", [("Dotarem", "t1ce"), ("GADOVIST 1.0", "t1ce"), ("", "t1"),
                                             ("NONE", "t1"), ("n/a", "t1")])
def test_contrast_agent_tag_decides_t1_versus_t1ce(agent, expected):
    assert classify_series("AX T1 SE", contrast_agent=agent) == expected
    assert classify_series("Ax T2 FLAIR", contrast_agent=agent) == "flair"  # the agent only matters for T1


# --- manifests ------------------------------------------------------------------------------------------

def test_manifest_relative_paths_and_clinical_types(tmp_path):
    _write_case(tmp_path / "cases" / "A", BRATS_2023, "A", with_seg=True)
    _write_case(tmp_path / "elsewhere" / "007", BRATS_2021, "007", with_seg=False)
    absolute = tmp_path / "elsewhere" / "007"
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "case_id,site,t1,t1ce,t2,flair,seg,age,idh1,grade,note\n"
        "A,s1,../cases/A/A-t1n.nii.gz,../cases/A/A-t1c.nii.gz,../cases/A/A-t2w.nii.gz,../cases/A/A-t2f.nii.gz,"
        "../cases/A/A-seg.nii.gz,61.5,1,IV,\n"
        f"007,,{absolute}/007_t1.nii.gz,{absolute}/007_t1ce.nii.gz,{absolute}/007_t2.nii.gz,"
        f"{absolute}/007_flair.nii.gz,,70,NA,3,left frontal\n")
    first, second = read_manifest(manifest, check_files=True)
    assert first.clinical == {"age": 61.5, "idh1": 1, "grade": "IV", "note": None}
    assert second.clinical == {"age": 70, "idh1": None, "grade": 3, "note": "left frontal"}
    assert second.case_id == "007" and second.site is None and "seg" not in second.paths
    assert first.paths["t1ce"].resolve() == (tmp_path / "cases" / "A" / "A-t1c.nii.gz").resolve()
    case = first.load()
    assert case.case_id == "A" and case.site == "s1" and case.clinical["idh1"] == 1 and case.seg is not None
    assert second.load().t1ce.GetSize() == (16, 18, 12)


def test_manifest_from_a_spreadsheet_export(tmp_path):
    """Excel writes a byte-order mark and, in some locales, semicolons."""
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("case_id;site;t1;t1ce;t2;flair;os_days\nB; s2 ;b1.nii;b2.nii;b3.nii;b4.nii;1234\n"
                         .encode("utf-8-sig"))
    (entry,) = read_manifest(manifest)
    assert (entry.case_id, entry.site, entry.clinical) == ("B", "s2", {"os_days": 1234})
    assert entry.paths["flair"] == tmp_path / "b4.nii"
    with pytest.raises(InputError, match="4 image files not found: t1: .*b1.nii; .*; flair: .*b4.nii"):
        entry.load()  # reported when the case loads, all at once
    (tmp_path / "b1.nii").write_bytes(b"")
    (tmp_path / "b2.nii").write_bytes(b"")
    (tmp_path / "b3.nii").write_bytes(b"")
    with pytest.raises(InputError, match="b4.nii: file not found"):
        entry.load()


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,t1,t1ce\nA,a,b\n")
    with pytest.raises(InputError, match="bad.csv: manifest lacks required column\\(s\\) site, t2, flair"):
        read_manifest(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\nB,s,a,b,c,d\nA,s,a,b,c,d\n")
    with pytest.raises(InputError, match="dup.csv: duplicated case_id\\(s\\): A \\(lines 2, 4\\)$"):
        read_manifest(dup)
    with pytest.raises(InputError, match="one.csv: 4 image file\\(s\\) not found: A t1: .*a.nii; .*; A flair: .*d.nii"):
        read_manifest(_single(tmp_path), check_files=True)
    assert len(read_manifest(_single(tmp_path))) == 1  # without check_files, missing files wait for load()
    with pytest.raises(InputError, match="none.csv: manifest not found"):
        read_manifest(tmp_path / "none.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text("case_id,site,t1,t1ce,t2,flair\n")
    with pytest.raises(InputError, match="header.csv: manifest has no cases"):
        read_manifest(header_only)
    (tmp_path / "zero.csv").write_text("")
    with pytest.raises(InputError, match="zero.csv: not a readable CSV manifest"):
        read_manifest(tmp_path / "zero.csv")
    gap = tmp_path / "gap.csv"
    gap.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\nB,s,a,,c,d\nC,s,,,,\n")
    with pytest.raises(InputError, match="gap.csv: line 4: empty image paths"):
        read_manifest(gap)
    gap.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a,b,c,d\nB,s,a,,c,d\n")
    assert sorted(read_manifest(gap)[1].paths) == ["flair", "t1", "t2"]  # a subset: no t1ce


def _single(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("case_id,site,t1,t1ce,t2,flair\nA,s,a.nii,b.nii,c.nii,d.nii\n")
    return path
