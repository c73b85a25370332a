"""``neuroradfm cohort import`` / ``check`` on small fixture trees laid out like the downloads (DATASETS.md)."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm.cli import main
from neuroradfm.cohort import check_manifest, import_cohort
from neuroradfm.cohort.merge import merge_manifests
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.io import read_manifest

SUFFIXES_2021 = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
SUFFIXES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def _image(path: Path, size: int = 8, spacing: float = 1.0) -> None:
    """Voxels of their own for every file name: two files hold the same scan only where a test makes them."""
    voxels = np.random.default_rng(zlib.crc32(path.name.encode())).integers(0, 1000, (size,) * 3, dtype=np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing([spacing] * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _case(folder: Path, separator: str, suffixes: dict[str, str], skip: tuple[str, ...] = ()) -> None:
    for key, suffix in suffixes.items():
        if key not in skip:
            _image(folder / f"{folder.name}{separator}{suffix}.nii.gz")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def brats2021_tcia(tmp_path):
    """TCIA packaging: BraTS2021_TrainingSet/<source collection>/BraTS2021_NNNNN/ (+ one case with 3 of 4 and a
    folder holding only its segmentation)."""
    root = tmp_path / "BraTS2021_TrainingSet"
    _case(root / "UPENN-GBM" / "BraTS2021_00001", "_", SUFFIXES_2021)
    _case(root / "UCSF-PDGM" / "BraTS2021_00002", "_", SUFFIXES_2021)
    _case(root / "TCGA-GBM" / "BraTS2021_00003", "_", SUFFIXES_2021, skip=("flair",))
    _case(root / "TCGA-GBM" / "BraTS2021_00004", "_", {"seg": "seg"})
    (root / "notes").mkdir()
    return root


def test_brats2021_tcia_packaging_gives_site_subject_and_lists_incomplete_cases(brats2021_tcia, tmp_path):
    out = import_cohort("brats2021", brats2021_tcia, tmp_path / "out" / "brats21.csv")
    rows = _rows(out)
    assert [r["case_id"] for r in rows] == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert [r["site"] for r in rows] == ["UPENN-GBM", "UCSF-PDGM", "TCGA-GBM"]
    assert {r["dataset"] for r in rows} == {"brats2021"} and rows[0]["subject_id"] == "BraTS2021_00001"
    assert Path(rows[0]["t1ce"]).name == "BraTS2021_00001_t1ce.nii.gz" and Path(rows[0]["seg"]).is_file()
    assert rows[2]["flair"] == "" and Path(rows[2]["t2"]).name == "BraTS2021_00003_t2.nii.gz"  # kept, cell empty
    sidecar = json.loads((out.parent / "brats21.import.json").read_text())
    assert sidecar["seg_labels"] == {"1": "necrotic / non-enhancing core", "2": "edema", "4": "enhancing"}
    assert (sidecar["incomplete_cases"], sidecar["cases_lacking"]) == (1, {"flair": 1})
    assert sidecar["incomplete"] == {"BraTS2021_00003": ["flair"]}
    (skipped,) = sidecar["skipped"].items()  # a folder with no sequence at all
    assert skipped[0].endswith("BraTS2021_00004") and skipped[1].startswith("no sequence found")
    entries = read_manifest(out, check_files=True)  # what predict, the trainers and evaluate read
    assert [e.clinical["subject_id"] for e in entries] == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    report = check_manifest(out)
    assert report.exit_status() == 1 and not report.errors
    assert report.warnings == ["1 case(s) lack a sequence (flair: 1; e.g. BraTS2021_00003): kept, the trainers use "
                               "them only with --sequence-dropout"]
    assert report.geometry["UPENN-GBM"] == {"8x8x8 @ 1x1x1 mm LPS": 1}


def test_brats2021_challenge_zip_has_cases_directly_under_the_root(tmp_path):
    root = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    _case(root / "BraTS2021_00010", "_", SUFFIXES_2021)
    rows = _rows(import_cohort("brats2021", root, tmp_path / "m.csv"))
    assert rows[0]["site"] == "brats2021" and rows[0]["timepoint"] == "000"


def test_brats2023_subjects_timepoints_and_follow_ups_are_flagged(tmp_path, capsys):
    root = tmp_path / "BraTS2024-BraTS-GLI-TrainingData" / "training_data1_v2"
    for name in ("BraTS-GLI-00005-100", "BraTS-GLI-00005-101", "BraTS-GLI-00006-100"):
        _case(root / name, "-", SUFFIXES_2023)
    out = import_cohort("brats2023", root.parent, tmp_path / "gli.csv")
    rows = _rows(out)
    assert [(r["subject_id"], r["timepoint"]) for r in rows] == [
        ("BraTS-GLI-00005", "100"), ("BraTS-GLI-00005", "101"), ("BraTS-GLI-00006", "100")]
    assert {r["site"] for r in rows} == {"brats-gli"}
    assert json.loads((tmp_path / "gli.import.json").read_text())["seg_labels"]["3"] == "enhancing"
    report = check_manifest(out)
    assert report.exit_status() == 1 and report.exit_status(strict=True) == 2
    assert any("BraTS-GLI-00005" in w and "2 timepoints" in w for w in report.warnings)
    assert main(["cohort", "check", str(out)]) == 1
    assert main(["cohort", "check", str(out), "--strict"]) == 2
    assert "follow-ups of one patient" in capsys.readouterr().out


def test_import_refuses_a_root_without_the_layout_and_writes_nothing(brats2021_tcia, tmp_path, capsys):
    out = tmp_path / "out" / "m.csv"
    out.parent.mkdir()
    with pytest.raises(InputError, match="holds no brats2023 case folder"):
        import_cohort("brats2023", brats2021_tcia, out)
    assert main(["cohort", "import", str(tmp_path / "nowhere"), "--layout", "brats2021", "--out", str(out)]) == 2
    assert main(["cohort", "import", str(brats2021_tcia), "--layout", "upenn", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cohort root not found" in err and "unknown layout 'upenn'" in err
    assert list(out.parent.iterdir()) == []
    no_sequence = tmp_path / "no_sequence"
    _case(no_sequence / "BraTS2021_00009", "_", {"seg": "seg"})
    with pytest.raises(InputError, match="no usable brats2021 case: BraTS2021_00009: no sequence found"):
        import_cohort("brats2021", no_sequence, out)
    assert list(out.parent.iterdir()) == []


def test_the_output_never_replaces_an_input_or_a_file_it_did_not_write(upenn, brats2021_tcia, tmp_path,
                                                                       capsys):
    root, table = upenn
    before = table.read_bytes()
    assert main(["cohort", "import", str(root), "--layout", "upenn-gbm", "--clinical", str(table),
                 "--out", str(table)]) == 2
    assert "would replace an input of this run (--clinical" in capsys.readouterr().err
    assert table.read_bytes() == before
    mapping = tmp_path / "m.import.json"  # the map file where the sidecar of m.csv would go
    mapping.write_text('{"columns": {}}')
    assert main(["cohort", "import", str(root), "--layout", "upenn-gbm", "--clinical", str(table), "--map",
                 str(mapping), "--out", str(tmp_path / "m.csv")]) == 2
    assert "would replace an input of this run (--map" in capsys.readouterr().err
    assert mapping.read_text() == '{"columns": {}}' and not (tmp_path / "m.csv").exists()
    mapping.unlink()
    users = tmp_path / "notes.csv"
    users.write_text("my,own\n1,2\n")
    assert main(["cohort", "import", str(root), "--layout", "upenn-gbm", "--out", str(users)]) == 2
    assert "exists and is not a manifest written by `neuroradfm cohort import`" in capsys.readouterr().err
    assert users.read_text() == "my,own\n1,2\n"
    out = import_cohort("upenn-gbm", root, tmp_path / "m.csv")
    assert import_cohort("upenn-gbm", root, out) == out  # an earlier import is replaced
    other = import_cohort("brats2021", brats2021_tcia, tmp_path / "n.csv")
    with pytest.raises(SettingsError, match="would replace an input of this run \\(manifest 2"):
        merge_manifests([out, other], other)
    twice = import_cohort("upenn-gbm", root, tmp_path / "again.csv")
    with pytest.raises(SettingsError, match="not a manifest written by `neuroradfm cohort merge`"):
        merge_manifests([out, other], twice)  # an import's manifest is not a merge's to replace
    with pytest.raises(InputError, match="upenn-gbm case UPENN-GBM-00001_11 is in .*m.csv and .*again.csv"):
        merge_manifests([out, twice], tmp_path / "all.csv")
    assert not (tmp_path / "all.csv").exists()
    merged, dropped = merge_manifests([other, out], tmp_path / "all.csv", hashes=False)
    record = json.loads((tmp_path / "all.merge.json").read_text())
    assert record["manifests"] == [str(other.resolve()), str(out.resolve())] and record["voxel_hashes"] is False
    assert record["dropped"] == dropped and record["cases"] == len(_rows(merged)) == 8  # incomplete cases too
    assert merge_manifests([other, out], merged, hashes=False)[0] == merged  # its own earlier result: replaced


def test_the_same_case_in_two_packagings_under_one_root_is_refused(tmp_path):
    _case(tmp_path / "root" / "UPENN-GBM" / "BraTS2021_00001", "_", SUFFIXES_2021)
    _case(tmp_path / "root" / "copy" / "BraTS2021_00001", "_", SUFFIXES_2021)
    with pytest.raises(InputError, match="BraTS2021_00001 is there twice"):
        import_cohort("brats2021", tmp_path / "root", tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.import.json").exists()


def test_check_finds_files_survival_and_subjects_that_cannot_be_right(tmp_path):
    for name in ("a", "b", "c", "d"):
        for key in ("t1", "t1ce", "t2", "flair"):
            _image(tmp_path / name / f"{key}.nii.gz")
    (tmp_path / "d" / "t2.nii.gz").write_text("not an image")
    (tmp_path / "c" / "flair.nii.gz").unlink()
    header = "case_id,subject_id,dataset,timepoint,site,t1,t1ce,t2,flair,idh1,os_days,os_event\n"
    rows = ["a,P1,upenn-gbm,0,s1,a/t1.nii.gz,a/t1ce.nii.gz,a/t2.nii.gz,a/flair.nii.gz,1,-3,1",
            "b,P1,brats2021,0,s2,b/t1.nii.gz,b/t1ce.nii.gz,b/t2.nii.gz,b/flair.nii.gz,0,,1",
            "c,P3,upenn-gbm,0,s1,c/t1.nii.gz,c/t1ce.nii.gz,c/t2.nii.gz,c/flair.nii.gz,,20000,0",
            "d,P4,upenn-gbm,0,s2,d/t1.nii.gz,d/t1ce.nii.gz,d/t2.nii.gz,d/flair.nii.gz,1,100,2"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(header + "\n".join(rows) + "\n")
    report = check_manifest(manifest)
    text = "\n".join(report.errors)
    assert "a: os_days is negative (-3)" in text and "b: os_event 1 without os_days" in text
    assert "c: os_days 20000 is beyond 30 years" in text and "c: flair file not found" in text
    assert "d: t2 file" in text and "is not a readable image" in text
    assert "d: os_event must be 0 (censored) or 1 (event), got 2" in text
    assert any("subject P1 is in several datasets (brats2021, upenn-gbm)" in w for w in report.warnings)
    assert report.labels["idh1"] == {"s1": (1, 0, 1), "s2": (1, 1, 0)}
    assert report.exit_status() == 2 and report.missing_files == 1


def test_an_imported_manifest_is_what_predict_reads(phantom_cohort, tiny_bundle, tmp_path, capsys):
    """The phantom writes BraTS-2023 naming (BraTS-PHN-NNNNN-000): two of its cases imported, checked, predicted."""
    import shutil

    for folder in sorted(p for p in phantom_cohort.parent.iterdir() if p.is_dir())[:2]:
        shutil.copytree(folder, tmp_path / "download" / folder.name)
    manifest = import_cohort("brats2023", tmp_path / "download", tmp_path / "cohort.csv")
    assert check_manifest(manifest).exit_status() == 0
    assert main(["predict", str(manifest), "--model", str(tiny_bundle), "--out", str(tmp_path / "results"),
                 "--device", "cpu", "--progress", "none"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir()) == [
        "BraTS-PHN-00000-000", "BraTS-PHN-00001-000"]


UPENN_CLINICAL = ("ID,Gender,Age_at_scan_years,Survival_from_surgery_days_UPDATED,Survival_Status,Survival_Censor,"
                  "IDH1,MGMT\n") + """UPENN-GBM-00001_11,M,60.5,400,Deceased,,Wildtype,Methylated
UPENN-GBM-00001_21,M,61,400,Deceased,,Wildtype,Not Available
UPENN-GBM-00003_11,F,45,,Alive,1200,Mutated,Unmethylated
UPENN-GBM-00005_11,F,Not Available,,Lost to Follow-up,,NOS/NEC,Indeterminate
UPENN-GBM-00004_11,F,50,,Deceased - uncertain date of death,,Not Available,Indeterminate
"""


@pytest.fixture
def upenn(tmp_path):
    package = tmp_path / "PKG" / "NIfTI-files"
    for scan, skip in (("UPENN-GBM-00001_11", ()), ("UPENN-GBM-00001_21", ()), ("UPENN-GBM-00002_11", ("FLAIR",)),
                       ("UPENN-GBM-00003_11", ()), ("UPENN-GBM-00005_11", ())):
        for name in ("T1", "T1GD", "T2", "FLAIR"):
            if name not in skip:
                _image(package / "images_structural" / scan / f"{scan}_{name}.nii.gz")
        _image(package / "images_structural_unstripped" / scan / f"{scan}_T1_unstripped.nii.gz")
    _image(package / "images_segm" / "UPENN-GBM-00001_11_segm.nii.gz")
    _image(package / "automated_segm" / "UPENN-GBM-00001_11_automated_approx_segm.nii.gz")
    _image(package / "automated_segm" / "UPENN-GBM-00003_11_automated_approx_segm.nii.gz")
    table = tmp_path / "UPENN-GBM_clinical_info_v2.1.csv"
    table.write_text(UPENN_CLINICAL)
    return tmp_path / "PKG", table


def test_upenn_gbm_scans_segmentations_and_clinical_values_one_by_one(upenn, tmp_path):
    root, table = upenn
    out = import_cohort("upenn-gbm", root, tmp_path / "upenn.csv", clinical=table)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11",
                          "UPENN-GBM-00005_11"]
    assert rows["UPENN-GBM-00002_11"]["flair"] == "" and rows["UPENN-GBM-00002_11"]["t1ce"].endswith("_T1GD.nii.gz")
    first = rows["UPENN-GBM-00001_11"]
    assert (first["subject_id"], first["timepoint"], first["site"]) == ("UPENN-GBM-00001", "11", "upenn-gbm")
    assert Path(first["t1ce"]).name == "UPENN-GBM-00001_11_T1GD.nii.gz"
    assert Path(first["seg"]).name == "UPENN-GBM-00001_11_segm.nii.gz" and first["seg_source"] == "expert"
    assert rows["UPENN-GBM-00003_11"]["seg_source"] == "automated" and rows["UPENN-GBM-00001_21"]["seg"] == ""
    # Deceased: the days to death, event 1; Alive: Survival_Censor, event 0; no time: no survival at all
    assert (first["os_days"], first["os_event"], first["idh1"], first["mgmt"]) == ("400.0", "1", "0", "1")
    assert (first["age"], first["sex"]) == ("60.5", "M")
    assert rows["UPENN-GBM-00001_21"]["mgmt"] == ""  # Not Available
    third = rows["UPENN-GBM-00003_11"]
    assert (third["os_days"], third["os_event"], third["idh1"], third["mgmt"]) == ("1200.0", "0", "1", "0")
    lost = rows["UPENN-GBM-00005_11"]  # lost to follow-up without a censoring time; NOS/NEC, Indeterminate
    assert (lost["os_days"], lost["os_event"], lost["idh1"], lost["mgmt"], lost["age"]) == ("", "", "", "", "")
    sidecar = json.loads((tmp_path / "upenn.import.json").read_text())
    assert sidecar["skipped"] == {} and sidecar["incomplete"] == {"UPENN-GBM-00002_11": ["flair"]}
    assert sidecar["clinical"]["rows_without_images"] == ["UPENN-GBM-00004_11"]
    assert sidecar["clinical"]["columns"]["idh1"] == {
        "source": "IDH1", "values": {"Wildtype": 0, "Mutated": 1, "": None, "Not Available": None,
                                     "Not Applicable": None, "Indeterminate": None, "NOS/NEC": None}}
    assert sidecar["timepoints"]["21"] == "follow-up"
    report = check_manifest(out)
    assert report.errors == [] and any("UPENN-GBM-00001 (upenn-gbm) has 2 timepoints" in w for w in report.warnings)
    assert report.labels["idh1"] == {"upenn-gbm": (1, 2, 2)}  # 00002_11 has no clinical row
    entries = read_manifest(out)
    assert entries[0].clinical["os_days"] == 400.0 and entries[0].clinical["os_event"] == 1


def test_upenn_clinical_v1_gives_times_without_inventing_events(upenn, tmp_path):
    root, table = upenn
    table.write_text("ID,Gender,Age_at_scan_years,Survival_from_surgery_days,IDH1,MGMT\n"
                     "UPENN-GBM-00001_11,M,60.5,400,Wildtype,Methylated\n"
                     "UPENN-GBM-00003_11,F,45,Not Available,Mutated,Unmethylated\n")
    out = import_cohort("upenn-gbm", root, tmp_path / "v1.csv", clinical=table)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert (rows["UPENN-GBM-00001_11"]["os_days"], rows["UPENN-GBM-00001_11"]["os_event"]) == ("400.0", "")
    assert rows["UPENN-GBM-00003_11"]["os_days"] == "" and rows["UPENN-GBM-00003_11"]["idh1"] == "1"
    columns = json.loads((tmp_path / "v1.import.json").read_text())["clinical"]["columns"]
    assert columns["os_days (v1.x: no status column, os_event empty)"] == {
        "source": "Survival_from_surgery_days", "values": "number"}
    assert check_manifest(out, hashes=False).errors == []


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("Mutated,Unmethylated", "maybe,Unmethylated"),
     "line 4, column 'IDH1': value 'maybe' is not one of"),
    (lambda t: t.replace("Deceased,,Wildtype,Methylated", "Deceased,,Wildtype,Methylated").replace(
        "400,Deceased,,Wildtype,Methylated", "four hundred,Deceased,,Wildtype,Methylated"),
     "line 2, column 'Survival_from_surgery_days_UPDATED': 'four hundred' is not a number"),
    (lambda t: t.replace("Survival_Status", "Status"), "lacks the survival columns of v2.1"),
    (lambda t: t.replace("IDH1", "IDH"), "lacks column(s) 'IDH1'"),
])
def test_upenn_clinical_values_outside_the_mapping_stop_with_file_line_and_column(upenn, tmp_path, edit, message,
                                                                                   capsys):
    root, table = upenn
    table.write_text(edit(UPENN_CLINICAL))
    out = tmp_path / "out" / "upenn.csv"
    assert main(["cohort", "import", str(root), "--layout", "upenn-gbm", "--clinical", str(table),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(table) in err and message in err
    assert not out.parent.exists()
    with pytest.raises(Exception, match="has no clinical table mapping"):
        import_cohort("brats2023", root, out, clinical=table)


UCSF_METADATA = """ID,Sex,Age at MRI,WHO CNS Grade,MGMT status,MGMT index,1p/19q,IDH,1-dead 0-alive,OS,BraTS21 ID
UCSF-PDGM-004,M,66,4,positive,12,intact,wildtype,1,300,BraTS2021_00002
UCSF-PDGM-433,F,41,2,negative,0,co-deletion,IDH1 p.R132H,0,1500,
UCSF-PDGM-010,F,55,4,indeterminate,,relative co-deletion,unknown,,,
UCSF-PDGM-500,M,70,4,unknown,,unknown,mutated (NOS),1,200,
"""


@pytest.fixture
def ucsf(tmp_path):
    root = tmp_path / "UCSF-PDGM-v5"
    for exam, skip in (("UCSF-PDGM-0004", ()), ("UCSF-PDGM-0433", ()), ("UCSF-PDGM-0433_FU007d", ()),
                       ("UCSF-PDGM-0010", ())):
        for name in ("T1", "T1c", "T2", "FLAIR", "T1_bias", "FLAIR_bias", "tumor_segmentation"):
            if name not in skip:
                _image(root / f"{exam}_nifti" / f"{exam}_{name}.nii.gz")
    _image(root / "UCSF-PDGM-0099_nifti" / "UCSF-PDGM-0099_T1.nii.gz")  # 1 of 4
    _image(root / "UCSF-PDGM-0098_nifti" / "UCSF-PDGM-0098_tumor_segmentation.nii.gz")  # none of the four
    table = tmp_path / "UCSF-PDGM-metadata_v5.csv"
    table.write_text(UCSF_METADATA)
    return root, table


def test_ucsf_pdgm_exams_follow_ups_and_metadata_values_one_by_one(ucsf, tmp_path):
    root, table = ucsf
    out = import_cohort("ucsf-pdgm", root, tmp_path / "ucsf.csv", clinical=table)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["UCSF-PDGM-0004", "UCSF-PDGM-0010", "UCSF-PDGM-0099", "UCSF-PDGM-0433",
                          "UCSF-PDGM-0433_FU007d"]
    only_t1 = rows["UCSF-PDGM-0099"]
    assert Path(only_t1["t1"]).name == "UCSF-PDGM-0099_T1.nii.gz" and only_t1["t1ce"] == only_t1["seg"] == ""
    first = rows["UCSF-PDGM-0004"]  # the metadata's 3-digit id UCSF-PDGM-004 is this exam
    assert Path(first["t1"]).name == "UCSF-PDGM-0004_T1.nii.gz" and Path(first["t1ce"]).name.endswith("_T1c.nii.gz")
    assert Path(first["seg"]).name == "UCSF-PDGM-0004_tumor_segmentation.nii.gz"
    assert (first["idh1"], first["mgmt"], first["codel_1p19q"], first["os_days"], first["os_event"]) == (
        "0", "1", "0", "300.0", "1")
    assert (first["age"], first["sex"], first["brats21_id"]) == ("66.0", "M", "BraTS2021_00002")
    oligo = rows["UCSF-PDGM-0433"]  # a named IDH1 mutation; alive at 1500 days
    assert (oligo["idh1"], oligo["mgmt"], oligo["codel_1p19q"], oligo["os_days"], oligo["os_event"]) == (
        "1", "0", "1", "1500.0", "0")
    unknown = rows["UCSF-PDGM-0010"]  # relative co-deletion, unknown IDH, indeterminate MGMT, no survival
    assert [unknown[k] for k in ("idh1", "mgmt", "codel_1p19q", "os_days", "os_event")] == [""] * 5
    follow_up = rows["UCSF-PDGM-0433_FU007d"]
    assert (follow_up["subject_id"], follow_up["timepoint"], follow_up["idh1"]) == ("UCSF-PDGM-0433", "FU007d", "")
    sidecar = json.loads((tmp_path / "ucsf.import.json").read_text())
    assert sidecar["clinical"]["rows_without_images"] == ["UCSF-PDGM-0500"]
    assert sidecar["clinical"]["columns"]["codel_1p19q"]["values"]["relative co-deletion"] is None
    assert sidecar["incomplete"] == {"UCSF-PDGM-0099": ["t1ce", "t2", "flair"]}
    assert sidecar["cases_lacking"] == {"t1ce": 1, "t2": 1, "flair": 1}
    assert sidecar["skipped"][str((root / "UCSF-PDGM-0098_nifti").resolve())].startswith(
        "no sequence found (none of UCSF-PDGM-0098_T1, UCSF-PDGM-0098_T1c")
    report = check_manifest(out)
    assert report.errors == [] and any("UCSF-PDGM-0433 (ucsf-pdgm) has 2 timepoints" in w for w in report.warnings)


def test_ucsf_pdgm_value_outside_the_mapping_names_file_line_and_column(ucsf, tmp_path):
    root, table = ucsf
    table.write_text(UCSF_METADATA.replace("negative,0,co-deletion", "weakly,0,co-deletion"))
    with pytest.raises(InputError, match=r"line 3, column 'MGMT status': value 'weakly' is not one of"):
        import_cohort("ucsf-pdgm", root, tmp_path / "ucsf.csv", clinical=table)
    assert not (tmp_path / "ucsf.csv").exists()


def test_merge_drops_the_brats2021_copy_of_a_ucsf_exam_and_keeps_ids_unique(brats2021_tcia, ucsf, tmp_path, capsys):
    root, table = ucsf
    ucsf_manifest = import_cohort("ucsf-pdgm", root, tmp_path / "a" / "ucsf.csv", clinical=table)
    brats_manifest = import_cohort("brats2021", brats2021_tcia, tmp_path / "b" / "brats.csv")
    out = tmp_path / "all" / "all.csv"
    assert main(["cohort", "merge", str(ucsf_manifest), str(brats_manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("dropped brats2021:BraTS2021_00002: the patient BraTS2021_00002 is already in ucsf-pdgm (case "
            "UCSF-PDGM-0004)") in printed
    rows = _rows(out)
    assert [r["case_id"] for r in rows] == ["UCSF-PDGM-0004", "UCSF-PDGM-0010", "UCSF-PDGM-0099", "UCSF-PDGM-0433",
                                            "UCSF-PDGM-0433_FU007d", "BraTS2021_00001", "BraTS2021_00003"]
    assert {r["dataset"] for r in rows} == {"ucsf-pdgm", "brats2021"} and rows[-2]["site"] == "UPENN-GBM"
    assert rows[-2]["idh1"] == "" and rows[0]["idh1"] == "0"  # the union of the columns
    assert rows[2]["t1ce"] == rows[-1]["flair"] == ""  # incomplete cases keep their empty cells
    entries = read_manifest(out, check_files=True)  # paths absolute: the merged manifest works from its folder
    assert len(entries) == 7
    assert check_manifest(out).errors == []
    # the same subject in two datasets: kept once; the same case id for other subjects: prefixed with the dataset
    first, twin = tmp_path / "c" / "alpha.csv", tmp_path / "c" / "other.csv"
    first.parent.mkdir()
    first.write_text(brats_manifest.read_text().replace("brats2021,", "alpha,"))
    twin.write_text(brats_manifest.read_text().replace("brats2021,", "other,").replace(",BraTS2021_00002,000,",
                                                                                       ",P2,000,")
                    .replace(",BraTS2021_00002\n", ",\n"))
    assert main(["cohort", "merge", str(first), str(twin), "--out", str(tmp_path / "twin.csv"), "--headers-only"]) == 0
    assert ("dropped other:BraTS2021_00001: the patient BraTS2021_00001 is already in alpha (case BraTS2021_00001)"
            in capsys.readouterr().out)
    assert [r["case_id"] for r in _rows(tmp_path / "twin.csv")] == ["BraTS2021_00001", "BraTS2021_00002",
                                                                    "BraTS2021_00003", "other-BraTS2021_00002"]
    # P2 points at the same images: the voxels say it is the same scan
    assert main(["cohort", "merge", str(first), str(twin), "--out", str(tmp_path / "twin.csv"),
                 "--progress", "none"]) == 0
    assert ("dropped other:BraTS2021_00002: identical T1ce voxels to the alpha case BraTS2021_00002"
            in capsys.readouterr().out)
    assert [r["case_id"] for r in _rows(tmp_path / "twin.csv")] == ["BraTS2021_00001", "BraTS2021_00002",
                                                                    "BraTS2021_00003"]
    report = check_manifest(_twin_manifest(first, twin, tmp_path))
    assert any("hold identical T1ce voxels" in w and "BraTS2021_00002 (alpha)" in w for w in report.warnings)
    assert check_manifest(_twin_manifest(first, twin, tmp_path), hashes=False).warnings == [
        w for w in report.warnings if "identical T1ce voxels" not in w]


def _twin_manifest(first: Path, twin: Path, tmp_path: Path) -> Path:
    """Both manifests' rows in one file (ids made unique), as a hand-made merge would leave them."""
    rows = _rows(first) + [{**r, "case_id": "x-" + r["case_id"]} for r in _rows(twin)]
    out = tmp_path / "hand.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_merge_refuses_a_manifest_that_no_import_wrote_and_writes_nothing(brats2021_tcia, phantom_cohort, tmp_path,
                                                                         capsys):
    brats_manifest = import_cohort("brats2021", brats2021_tcia, tmp_path / "brats.csv")
    out = tmp_path / "out" / "all.csv"
    assert main(["cohort", "merge", str(brats_manifest), str(phantom_cohort), "--out", str(out)]) == 2
    assert "has no dataset column" in capsys.readouterr().err and not out.parent.exists()


LUMIERE_TABLE = ("Patient,Survival time (weeks),Sex,Age at surgery (years),IDH (WT: wild type),IDH method,"
                 "MGMT qualitative\n") + """Patient-001,52,male,61,WT,NGS,methylated
Patient-002,na,female,44,R132H mut,IHC,not methylated
Patient-003,10,female,na,na,na,na
"""


def test_lumiere_weeks_sessions_registered_images_and_survival_in_weeks(tmp_path):
    imaging = tmp_path / "Imaging"
    for name in ("T1", "CT1", "T2", "FLAIR"):
        _image(imaging / "Patient-001" / "week-000" / f"{name}.nii.gz")  # native only
        _image(imaging / "Patient-001" / "week-044-1" / f"{name}.nii.gz")
        if name != "FLAIR":  # 3 of 4 registered: the native week folder, with all four, is used
            _image(imaging / "Patient-001" / "week-044-1" / "HD-GLIO-AUTO-segmentation" / "registered"
                   / f"{name}_r2s_bet_reg.nii.gz")
        registered = imaging / "Patient-002" / "week-003" / "HD-GLIO-AUTO-segmentation" / "registered"
        _image(registered / f"{name}_r2s_bet_reg.nii.gz")
        _image(imaging / "Patient-002" / "week-003" / f"{name}.nii.gz")
    _image(registered / "segmentation.nii.gz")
    _image(imaging / "Patient-003" / "week-001" / "T1.nii.gz")  # 1 of 4: kept
    _image(imaging / "Patient-003" / "week-002" / "HD-GLIO-AUTO-segmentation" / "registered"
           / "segmentation.nii.gz")  # none of the four: skipped
    table = tmp_path / "LUMIERE-Demographics_Pathology.csv"
    table.write_text(LUMIERE_TABLE)
    out = import_cohort("lumiere", imaging, tmp_path / "lumiere.csv", clinical=table)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["Patient-001_week-000", "Patient-001_week-044-1", "Patient-002_week-003",
                          "Patient-003_week-001"]
    assert Path(rows["Patient-001_week-044-1"]["t1ce"]).name == "CT1.nii.gz"
    assert rows["Patient-001_week-044-1"]["seg"] == ""
    first = rows["Patient-001_week-000"]
    assert (first["subject_id"], first["timepoint"]) == ("Patient-001", "week-000")
    assert Path(first["t1ce"]).name == "CT1.nii.gz" and first["seg"] == ""
    assert (first["os_days"], first["os_event"], first["idh1"], first["mgmt"]) == ("364.0", "", "0", "1")  # 52 weeks
    second = rows["Patient-002_week-003"]  # the registered set, with its segmentation
    assert Path(second["t1ce"]).name == "CT1_r2s_bet_reg.nii.gz" and Path(second["seg"]).name == "segmentation.nii.gz"
    assert (second["os_days"], second["idh1"], second["mgmt"]) == ("", "1", "0")
    sidecar = json.loads((tmp_path / "lumiere.import.json").read_text())
    assert sidecar["survival"].startswith("weeks x 7") and sidecar["seg_labels"]["2"] == "enhancing (HD-GLIO)"
    (skipped, why), = sidecar["skipped"].items()
    assert skipped.endswith("Patient-003/week-002") and why.startswith("no sequence found (none of T1, CT1, T2, FLAIR")
    assert sidecar["incomplete"] == {"Patient-003_week-001": ["t1ce", "t2", "flair"]}
    assert Path(rows["Patient-003_week-001"]["t1"]).name == "T1.nii.gz"
    assert check_manifest(out).errors == []
