"""``neuroradfm cohort import`` for MU-Glioma-Post (.xlsx), the Kaggle RSNA-MICCAI DICOM tree, the generic folder
layout with a ``--map`` file and the BraTS 2021 TCIA mapping sheet; imported manifests through the trainers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import openpyxl
import pytest

from neuroradfm import SEQUENCES
from neuroradfm.cli import main
from neuroradfm.cohort import check_manifest, import_cohort
from neuroradfm.cohort.merge import merge_manifests
from neuroradfm.errors import InputError, SettingsError
from neuroradfm.io import read_manifest
from test_cohort import SUFFIXES_2021, UPENN_CLINICAL, _case, _rows
from test_io import _write_series


def _workbook(path: Path, sheets: dict[str, list[list]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


# --- MU-Glioma-Post --------------------------------------------------------------------------------------------

MU_HEADER = ["Patient_ID", "Sex at Birth", "Age at diagnosis", "IDH1 mutation", "IDH2 mutation", "MGMT methylation",
             "1p/19q", "ATRX mutation", "TERT promoter mutation", "EGFR amplification", "CDKN2A/B deletion",
             "TP53 alteration", "Overall Survival (Death)", "Number of days from Diagnosis to death (Days)",
             "Number of Days from Diagnosis to 1st MRI (Timepoint_1) ",  # the trailing spaces of the real sheet
             "Number of Days from Diagnosis to 2nd MRI (Timepoint_2) "]
MU_ROWS = [
    ["PatientID_0001", "Male", 61, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 420, 30, 200],
    ["PatientID_0002", "Female", 45, 1, None, 2, 1, 1, 0, 0, 0, 0, 0, None, 25, 310],
    ["PatientID_0003", "Male", 70, None, None, 4, None, None, None, None, None, None, 1, None, 40, None],
]


@pytest.fixture
def mu(tmp_path):
    root = tmp_path / "PKG - MU-Glioma-Post" / "MU-Glioma-Post"
    for patient, timepoints in (("PatientID_0001", (1, 2)), ("PatientID_0002", (2,)), ("PatientID_0003", (1,))):
        for k in timepoints:
            session = root / patient / f"Timepoint_{k}"
            stem = f"{patient}_Timepoint_{k}"
            for suffix in ("t1n", "t1c", "t2w", "t2f", "tumorMask"):
                if not (patient == "PatientID_0003" and suffix == "t2f"):  # 0003: no FLAIR
                    _case_file(session / f"{stem}_{'' if suffix == 'tumorMask' else 'brain_'}{suffix}.nii.gz")
    _case_file(root / "PatientID_0002" / "Timepoint_3" / "PatientID_0002_Timepoint_3_tumorMask.nii.gz")  # no image
    table = _workbook(tmp_path / "MU-Glioma-Post_ClinicalData-July2025.xlsx", {
        "Data Dictionary": [["Variable", "Codes"], ["MGMT methylation", "0 - unmethylated, 1 - methylated"]],
        "MU Glioma Post": [MU_HEADER, *MU_ROWS, [None] * len(MU_HEADER)]})
    return root.parent, table


def _case_file(path: Path) -> None:
    from test_cohort import _image

    _image(path)


def test_mu_glioma_post_timepoints_and_the_xlsx_values_one_by_one(mu, tmp_path):
    root, table = mu
    out = import_cohort("mu-glioma-post", root, tmp_path / "out" / "mu.csv", clinical=table)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["PatientID_0001_Timepoint_1", "PatientID_0001_Timepoint_2", "PatientID_0002_Timepoint_2",
                          "PatientID_0003_Timepoint_1"]
    first, later, other, no_flair = rows.values()
    assert no_flair["flair"] == "" and no_flair["t1ce"].endswith("_brain_t1c.nii.gz") and no_flair["mgmt"] == ""
    assert (first["subject_id"], first["timepoint"], later["timepoint"], other["timepoint"]) == (
        "PatientID_0001", "001", "002", "002")
    assert Path(first["t1ce"]).name == "PatientID_0001_Timepoint_1_brain_t1c.nii.gz"
    assert Path(first["flair"]).name.endswith("_brain_t2f.nii.gz") and first["seg"].endswith("_tumorMask.nii.gz")
    # codes: 0 negative, 1 positive; MGMT 2 indeterminate and 4 unknown are missing
    assert {k: first[k] for k in ("idh1", "mgmt", "codel_1p19q", "atrx", "tert", "egfr", "cdkn2ab", "tp53")} == {
        "idh1": "0", "mgmt": "1", "codel_1p19q": "0", "atrx": "0", "tert": "1", "egfr": "1", "cdkn2ab": "0",
        "tp53": "1"}
    assert (first["os_days"], first["os_event"], first["sex"], first["age"]) == ("420.0", "1", "Male", "61.0")
    assert later["mgmt"] == later["os_days"] == ""  # the clinical row goes to the first timepoint only
    # alive: censored at the last MRI day the sheet gives; MGMT code 2 (indeterminate) is missing
    assert (other["os_days"], other["os_event"], other["mgmt"], other["idh1"]) == ("310.0", "0", "", "1")
    sidecar = json.loads(out.with_name("mu.import.json").read_text())
    assert sidecar["seg_labels"]["4"] == "resection cavity"
    assert sidecar["clinical"]["columns"]["mgmt"] == {"source": "MGMT methylation", "values": {
        "0": 0, "1": 1, "": None, "NA": None, "N/A": None, "unknown": None, "not tested": None,
        "not available": None, "2": None, "3": None, "4": None}}
    assert sidecar["clinical"]["columns"]["os_days (censored: last MRI day)"]["values"] == "number"
    assert sidecar["clinical"]["rows_without_images"] == []
    assert sidecar["incomplete"] == {"PatientID_0003_Timepoint_1": ["flair"]} and sidecar["incomplete_cases"] == 1
    (skipped, why), = sidecar["skipped"].items()
    assert skipped.endswith("PatientID_0002/Timepoint_3") and why.startswith(
        "no sequence found (none of PatientID_0002_Timepoint_3_brain_t1n")
    report = check_manifest(out)
    assert report.exit_status() == 1 and report.errors == []  # a follow-up and an incomplete case are warnings
    assert report.labels["egfr"] == {"mu-glioma-post": (1, 1, 2)}
    case = read_manifest(out)[0].load()  # what the trainers, predict and evaluate do with each row
    assert case.seg is not None and case.clinical["subject_id"] == "PatientID_0001" and case.clinical["tert"] == 1


def test_mu_glioma_post_value_outside_the_codes_names_row_and_column_and_a_map_file_fixes_it(mu, tmp_path, capsys):
    root, table = mu
    rows = [list(r) for r in MU_ROWS]
    rows[1][9] = 7  # EGFR amplification: a code the mapping does not know
    _workbook(table, {"MU Glioma Post": [MU_HEADER, *rows]})
    out = tmp_path / "out" / "mu.csv"
    assert main(["cohort", "import", str(root), "--layout", "mu-glioma-post", "--clinical", str(table),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(table) in err and "row 3, column 'EGFR amplification': value '7' is not one of" in err
    assert not out.parent.exists()
    fix = tmp_path / "map.json"
    fix.write_text(json.dumps({"columns": {"egfr": {"source": "EGFR amplification",
                                                    "values": {"0": 0, "1": 1, "7": None, "": None}}}}))
    assert main(["cohort", "import", str(root), "--layout", "mu-glioma-post", "--clinical", str(table),
                 "--map", str(fix), "--out", str(out)]) == 0
    assert [r["egfr"] for r in _rows(out)] == ["1", "", "", ""]
    sidecar = json.loads(out.with_name("mu.import.json").read_text())
    assert sidecar["clinical"]["columns"]["egfr"]["values"]["7"] is None and sidecar["map_file"] == str(fix)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a workbook"), "not a readable .xlsx spreadsheet"),
    (lambda p: _workbook(p, {"Sheet1": [MU_HEADER, *MU_ROWS]}), "has no sheet 'MU Glioma Post' (sheets: Sheet1)"),
    (lambda p: _workbook(p, {"MU Glioma Post": [MU_HEADER[1:], *[r[1:] for r in MU_ROWS]]}),
     "lacks column(s) 'Patient_ID'"),
    (lambda p: _workbook(p, {"MU Glioma Post": [MU_HEADER, MU_ROWS[0], MU_ROWS[0]]}),
     "column 'Patient_ID' repeats id(s) PatientID_0001 (rows 2, 3)"),
])
def test_unreadable_or_incomplete_spreadsheets_stop_the_import(mu, tmp_path, write, message):
    root, table = mu
    table.unlink()
    write(table)
    with pytest.raises(InputError, match=None) as raised:
        import_cohort("mu-glioma-post", root, tmp_path / "out" / "mu.csv", clinical=table)
    assert str(table) in str(raised.value) and message in str(raised.value)
    assert not (tmp_path / "out").exists()
    old = table.with_suffix(".xls")
    old.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(InputError, match="old-format .xls workbook"):
        import_cohort("mu-glioma-post", root, tmp_path / "out" / "mu.csv", clinical=old)


# --- RSNA-MICCAI (Kaggle) --------------------------------------------------------------------------------------

KAGGLE = {"T1w": ("AX T1 SE", ""), "T1wCE": ("AX T1 SE", "Gadovist"), "T2w": ("AX T2 FSE", ""),
          "FLAIR": ("AX T2 FLAIR", "")}


@pytest.fixture
def kaggle(tmp_path):
    root = tmp_path / "rsna-miccai-brain-tumor-radiogenomic-classification"
    for n, case in enumerate(("00000", "00002", "00109", "00005")):
        for k, (name, (description, contrast)) in enumerate(KAGGLE.items()):
            if case == "00005" and name == "T2w":
                (root / "train" / case / name).mkdir(parents=True)  # an empty sequence folder: no T2
                continue
            _write_series(root / "train" / case / name, description, f"1.2.826.0.1.3680043.8.498.{n}{k}1",
                          float(10 * n + k + 1), contrast=contrast)
    (root / "train" / "00007" / "FLAIR").mkdir(parents=True)  # no sequence holds a file
    labels = root / "train_labels.csv"
    labels.write_text("BraTS21ID,MGMT_value\n0,1\n2,0\n109,1\n5,1\n")
    return root, labels


def test_rsna_miccai_dicom_folders_become_loadable_cases_with_their_mgmt(kaggle, tmp_path):
    root, labels = kaggle
    out = import_cohort("rsna-miccai-mgmt", root, tmp_path / "out" / "rsna.csv", clinical=labels)
    rows = _rows(out)
    assert [r["case_id"] for r in rows] == ["rsna-00000", "rsna-00002", "rsna-00005"]
    assert [r["subject_id"] for r in rows] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00005"]
    assert [r["mgmt"] for r in rows] == ["1", "0", "1"] and rows[0]["kaggle_split"] == "train"
    assert rows[2]["t2"] == "" and Path(rows[2]["flair"]).name == "FLAIR"
    assert Path(rows[0]["t1ce"]).name == "T1wCE" and Path(rows[0]["t1ce"]).is_dir()
    sidecar = json.loads(out.with_name("rsna.import.json").read_text())
    skipped = {Path(k).name: v for k, v in sidecar["skipped"].items()}
    assert skipped == {"00109": "reported broken by the competition's hosts",
                       "00007": "no sequence found (no T1w/, T1wCE/, T2w/, FLAIR/ folder holding DICOM files)"}
    assert sidecar["incomplete"] == {"rsna-00005": ["t2"]}
    assert sidecar["clinical"]["rows_without_images"] == ["00109"]
    report = check_manifest(out)
    assert report.errors == [] and report.warnings == [
        "1 case(s) lack a sequence (t2: 1; e.g. rsna-00005): kept, the trainers use them only with "
        "--sequence-dropout"], report.text()
    assert report.geometry["rsna-miccai-mgmt"] == {"12x10x5 @ 0.9x0.9 mm in-plane LPS": 3}  # one slice's header
    incomplete = read_manifest(out)[2].load()
    assert incomplete.available == ("t1", "t1ce", "flair") and incomplete.t2 is None
    case = read_manifest(out)[0].load()  # what the trainers, predict and evaluate do with each row
    assert case.t1ce.GetSize() == (12, 10, 5) and case.clinical["mgmt"] == 1
    assert case.t1ce.GetPixel(0, 0, 0) != case.t2.GetPixel(0, 0, 0)  # each folder's own series


def test_rsna_label_outside_0_1_and_a_folder_of_two_series_are_refused(kaggle, tmp_path):
    root, labels = kaggle
    labels.write_text("BraTS21ID,MGMT_value\n0,1\n2,2\n")
    with pytest.raises(InputError, match=r"line 3, column 'MGMT_value': value '2' is not one of '0', '1'"):
        import_cohort("rsna-miccai-mgmt", root, tmp_path / "out" / "rsna.csv", clinical=labels)
    assert not (tmp_path / "out").exists()
    # a sequence folder with a second series in it: the loader cannot know which one is meant
    shutil.copytree(root / "train" / "00000" / "T2w", root / "train" / "00000" / "T1wCE" / "extra")
    out = import_cohort("rsna-miccai-mgmt", root, tmp_path / "out" / "rsna.csv")
    with pytest.raises(InputError, match="a sequence folder must hold exactly one DICOM series, found"):
        read_manifest(out)[0].load()
    report = check_manifest(out)
    assert any("rsna-00000: t1ce" in e and "exactly one DICOM series" in e for e in report.errors)


def test_merge_drops_the_kaggle_copy_of_a_brats2021_case(kaggle, tmp_path):
    root, labels = kaggle
    rsna = import_cohort("rsna-miccai-mgmt", root, tmp_path / "a" / "rsna.csv", clinical=labels)
    brats_root = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    _case(brats_root / "BraTS2021_00000", "_", SUFFIXES_2021)
    brats = import_cohort("brats2021", brats_root, tmp_path / "b" / "brats.csv")
    out, dropped = merge_manifests([rsna, brats], tmp_path / "all.csv")
    assert dropped == {"rsna-miccai-mgmt:rsna-00000": "the patient BraTS2021_00000 is already in brats2021 "
                                                      "(case BraTS2021_00000)"}
    assert [r["case_id"] for r in _rows(out)] == ["BraTS2021_00000", "rsna-00002", "rsna-00005"]


# --- generic folder layout with a map file ---------------------------------------------------------------------

def _study(folder: Path, base: int, shared: bool = False) -> None:
    for k, (description, contrast) in enumerate(KAGGLE.values()):
        _write_series(folder / f"series{k}", description, f"1.2.826.0.1.3680043.8.498.7{base}{k}", float(base + k),
                      contrast=contrast)
    if shared:  # the T1ce's slices moved in with the T1's: two series in one folder
        for file in (folder / "series1").iterdir():
            file.rename(folder / "series0" / f"ce-{file.name}")
        (folder / "series1").rmdir()


@pytest.fixture
def hospital(tmp_path):
    root = tmp_path / "hospital_x"
    _case(root / "case_a", "_", SUFFIXES_2021)
    _study(root / "case_b", 20)
    _study(root / "case_c", 40, shared=True)
    (root / "case_d").mkdir()
    table = tmp_path / "clinical.csv"
    table.write_text("PatientID,Hospital,OS_weeks,Dead,MGMT_status,Patient\n"
                     "case_a,H1,10,yes,M,p1\ncase_b,H2,,no,U,p2\ncase_z,H3,5,yes,,p9\n")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"key": "PatientID", "columns": {
        "site": {"source": "Hospital"}, "subject_id": {"source": "Patient"},
        "os_days": {"source": "OS_weeks", "unit": "weeks"},
        "os_event": {"source": "Dead", "values": {"yes": 1, "no": 0}},
        "mgmt": {"source": "MGMT_status", "values": {"M": 1, "U": 0, "": None}}}}))
    return root, table, mapping


def test_folder_layout_reads_brats_files_and_dicom_studies_and_maps_the_users_columns(hospital, tmp_path):
    root, table, mapping = hospital
    out = import_cohort("folder", root, tmp_path / "out" / "mine.csv", clinical=table, mapping=mapping)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["case_a", "case_b"]
    a, b = rows.values()
    assert (a["site"], a["subject_id"], a["dataset"], a["os_days"], a["os_event"], a["mgmt"]) == (
        "H1", "p1", "hospital_x", "70.0", "1", "1")
    assert (b["site"], b["os_days"], b["os_event"], b["mgmt"]) == ("H2", "", "", "0")  # no time: no event
    assert Path(a["t1ce"]).name == "case_a_t1ce.nii.gz"
    assert Path(b["t1ce"]).name == "series1" and Path(b["flair"]).name == "series3"
    sidecar = json.loads(out.with_name("mine.import.json").read_text())
    assert sidecar["clinical"]["columns"]["os_days"] == {"source": "OS_weeks", "values": "number", "unit": "weeks"}
    assert sidecar["clinical"]["columns"]["mgmt"]["values"] == {"M": 1, "U": 0, "": None}
    assert sidecar["clinical"]["rows_without_images"] == ["case_z"]
    skipped = {Path(k).name: v for k, v in sidecar["skipped"].items()}
    assert "share a folder with others" in skipped["case_c"] and "t1: " in skipped["case_c"]
    assert "holds neither BraTS-named image files nor a DICOM series" in skipped["case_d"]
    assert check_manifest(out).errors == []
    assert read_manifest(out)[1].load().t1ce.GetSize() == (12, 10, 5)


def test_folder_layout_without_a_map_reads_a_table_in_our_column_names(hospital, tmp_path):
    root, _, _ = hospital
    table = tmp_path / "ours.csv"
    table.write_text("case_id,site,mgmt,idh1,os_days,os_event\ncase_a,H9,1,NA,100,1\ncase_b,H9,0,1,,\n")
    rows = _rows(import_cohort("folder", root, tmp_path / "out" / "m.csv", clinical=table))
    assert [(r["site"], r["mgmt"], r["idh1"], r["os_days"], r["os_event"]) for r in rows] == [
        ("H9", "1", "", "100.0", "1"), ("H9", "0", "1", "", "")]
    table.write_text("case_id,Methylation\ncase_a,yes\n")
    with pytest.raises(InputError, match="has none of our columns .* give a --map file"):
        import_cohort("folder", root, tmp_path / "out2" / "m.csv", clinical=table)


def test_incomplete_cases_are_kept_with_empty_cells_and_load_with_what_they_have(tmp_path):
    """Cases without T1 (the importer places a case by its first present sequence) from BraTS files and from a
    DICOM study: kept, listed in the sidecar, and loaded by the manifest reader; a folder with none is skipped."""
    root = tmp_path / "hospital_y"
    _case(root / "case_a", "_", SUFFIXES_2021)
    _case(root / "case_f", "_", SUFFIXES_2021, skip=("t1", "t2"))
    for k, (description, contrast) in enumerate(KAGGLE.values()):
        if k:  # every series but the T1
            _write_series(root / "case_g" / f"series{k}", description, f"1.2.826.0.1.3680043.8.498.9{k}1",
                          float(k + 1), contrast=contrast)
    _case(root / "case_h", "_", {"seg": "seg"})  # a segmentation, no sequence
    out = import_cohort("folder", root, tmp_path / "out" / "m.csv")
    rows = {r["case_id"]: r for r in _rows(out)}
    assert list(rows) == ["case_a", "case_f", "case_g"]
    assert rows["case_f"]["t1"] == rows["case_f"]["t2"] == "" and rows["case_g"]["t1"] == ""
    sidecar = json.loads(out.with_name("m.import.json").read_text())
    assert sidecar["incomplete"] == {"case_f": ["t1", "t2"], "case_g": ["t1"]}
    assert (sidecar["incomplete_cases"], sidecar["cases_lacking"]) == (2, {"t1": 2, "t2": 1})
    (skipped, why), = sidecar["skipped"].items()
    assert Path(skipped).name == "case_h" and why.startswith("no sequence found")
    entries = read_manifest(out, check_files=True)  # what predict, the trainers and evaluate read
    assert [e.load().available for e in entries] == [SEQUENCES, ("t1ce", "flair"), ("t1ce", "t2", "flair")]
    report = check_manifest(out)
    assert report.errors == [] and report.warnings == [
        "2 case(s) lack a sequence (t1: 2, t2: 1; e.g. case_f): kept, the trainers use them only with "
        "--sequence-dropout"]


@pytest.mark.parametrize("spec, message", [
    ({"key": "PatientID", "columns": {"grade": {"source": "Hospital"}}}, "'grade': not one of our columns"),
    ({"columns": {"mgmt": {"source": "MGMT_status", "values": {"M": 2}}}}, '"values" maps their values to 0, 1'),
    ({"columns": {"mgmt": {"source": "MGMT_status", "unit": "weeks"}}}, '"unit" is for os_days'),
    ({"columns": {"mgmt": "MGMT_status"}}, 'expected {"source"'),
    ({"key": "PatientID", "columns": {"mgmt": {"source": "Methylation"}}}, "lacks column(s) 'Methylation'"),
    ({"key": "PatientID", "columns": {"mgmt": {"source": "MGMT_status"}}},
     "line 2, column 'MGMT_status': value 'M' is not one of '0', '1', '', 'NA'"),
    ([1, 2], "a map file is"),
])
def test_map_files_that_cannot_be_right_are_refused_and_nothing_is_written(hospital, tmp_path, spec, message):
    root, table, mapping = hospital
    mapping.write_text(json.dumps(spec))
    with pytest.raises(InputError) as raised:
        import_cohort("folder", root, tmp_path / "out" / "m.csv", clinical=table, mapping=mapping)
    assert message in str(raised.value) and not (tmp_path / "out").exists()


def test_map_file_options_that_do_not_fit_the_layout(hospital, tmp_path, mu):
    root, table, mapping = hospital
    with pytest.raises(SettingsError, match="give the table with --clinical"):
        import_cohort("folder", root, tmp_path / "m.csv", mapping=mapping)
    mu_root, mu_table = mu
    with pytest.raises(InputError, match='"key" is fixed by a public layout'):
        import_cohort("mu-glioma-post", mu_root, tmp_path / "m.csv", clinical=mu_table, mapping=mapping)
    mapping.write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON map file"):
        import_cohort("folder", root, tmp_path / "m.csv", clinical=table, mapping=mapping)


# --- BraTS 2021 with the TCIA mapping sheet ----------------------------------------------------------------------

MAPPING_HEADER = ["Data Collection (as on TCIA+additional)", "Site ID", "PatientID on TCIA Radiology Portal",
                  "Study date (m/d/yyyy) per PatientID", "BraTS2021 ID", "Segmentation (Task 1) Cohort",
                  "MGMT (Task 2) Cohort", "MGMT value"]


def test_brats2021_mapping_sheet_gives_institution_source_patient_and_mgmt_and_merge_keeps_the_source(tmp_path):
    root = tmp_path / "BraTS2021_TrainingSet"
    for source, case in (("UPENN-GBM", "BraTS2021_00001"), ("UCSF-PDGM", "BraTS2021_00002"),
                         ("TCGA-GBM", "BraTS2021_00003"), ("new-not-previously-in-TCIA", "BraTS2021_00004")):
        _case(root / source / case, "_", SUFFIXES_2021)
    sheet = _workbook(tmp_path / "BraTS2021_MappingToTCIA.xlsx", {"Sheet1": [MAPPING_HEADER,
        ["UPENN-GBM", 1.0, "UPENN-GBM-00001_11", "1/2/2003", "BraTS2021_00001", "Training", "Training", 1],
        ["UCSF-PDGM", 18.0, "4", None, "BraTS2021_00002", "Training", None, 0],
        ["TCGA-GBM", 4.0, "TCGA-02-0001", None, "BraTS2021_00003", "Training", "Training", None],
        ["Collection 5", 21.0, "new-not-previously-in-TCIA", None, "BraTS2021_00004", "Training", None, None],
        ["TCGA-LGG", 4.0, "TCGA-02-0009", None, "00150", None, "Training", 1]]})
    out = import_cohort("brats2021", root, tmp_path / "b" / "brats.csv", clinical=sheet)
    rows = {r["case_id"]: r for r in _rows(out)}
    assert {k: (r["site"], r["subject_id"], r["mgmt"]) for k, r in rows.items()} == {
        "BraTS2021_00001": ("brats21-site-1", "UPENN-GBM-00001", "1"),
        "BraTS2021_00002": ("brats21-site-18", "UCSF-PDGM-0004", "0"),
        "BraTS2021_00003": ("brats21-site-4", "TCGA-02-0001", ""),
        "BraTS2021_00004": ("brats21-site-21", "BraTS2021_00004", "")}
    assert rows["BraTS2021_00001"]["tcia_patient_id"] == "UPENN-GBM-00001_11"
    sidecar = json.loads(out.with_name("brats.import.json").read_text())
    assert sidecar["clinical"]["rows_without_images"] == ["BraTS2021_00150"]
    # the real-looking collision: BraTS2021_00001 is UPENN-GBM-00001's baseline scan, given first or not
    upenn_root = tmp_path / "PKG - UPENN-GBM" / "NIfTI-files" / "images_structural"
    for scan in ("UPENN-GBM-00001_11", "UPENN-GBM-00001_21"):
        for name in ("T1", "T1GD", "T2", "FLAIR"):
            _case_file(upenn_root / scan / f"{scan}_{name}.nii.gz")
    table = tmp_path / "UPENN-GBM_clinical_info_v2.1.csv"
    table.write_text(UPENN_CLINICAL)
    upenn = import_cohort("upenn-gbm", upenn_root.parent, tmp_path / "u" / "upenn.csv", clinical=table)
    merged, dropped = merge_manifests([out, upenn], tmp_path / "all.csv", hashes=False)
    assert dropped == {"brats2021:BraTS2021_00001": "the patient UPENN-GBM-00001 is already in upenn-gbm (case "
                                                    "UPENN-GBM-00001_11)"}
    assert [r["case_id"] for r in _rows(merged)] == ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "BraTS2021_00002",
                                                     "BraTS2021_00003", "BraTS2021_00004"]
    report = check_manifest(merged)
    assert report.errors == [] and any("UPENN-GBM-00001 (upenn-gbm) has 2 timepoints" in w for w in report.warnings)


def test_without_the_sheet_identical_voxels_find_the_brats_copy_of_an_upenn_scan(tmp_path):
    upenn_root = tmp_path / "UPENN-GBM" / "images_structural" / "UPENN-GBM-00001_11"
    for name in ("T1", "T1GD", "T2", "FLAIR"):
        _case_file(upenn_root / f"UPENN-GBM-00001_11_{name}.nii.gz")
    brats_case = tmp_path / "BraTS2021" / "BraTS2021_00001"
    _case(brats_case, "_", SUFFIXES_2021)
    shutil.copy(upenn_root / "UPENN-GBM-00001_11_T1GD.nii.gz", brats_case / "BraTS2021_00001_t1ce.nii.gz")
    upenn = import_cohort("upenn-gbm", tmp_path / "UPENN-GBM", tmp_path / "u.csv")
    brats = import_cohort("brats2021", tmp_path / "BraTS2021", tmp_path / "b.csv")
    out, dropped = merge_manifests([brats, upenn], tmp_path / "all.csv")
    assert dropped == {"brats2021:BraTS2021_00001": "identical T1ce voxels to the upenn-gbm case UPENN-GBM-00001_11"}
    assert [r["case_id"] for r in _rows(out)] == ["UPENN-GBM-00001_11"]


def test_copies_without_a_t1ce_are_found_by_their_t1_voxels(tmp_path):
    """A case lacking the T1ce is compared by its reference image, the T1, with the cases of the same reference."""
    upenn_root = tmp_path / "UPENN-GBM" / "images_structural" / "UPENN-GBM-00001_11"
    for name in ("T1", "T2", "FLAIR"):
        _case_file(upenn_root / f"UPENN-GBM-00001_11_{name}.nii.gz")
    brats_case = tmp_path / "BraTS2021" / "BraTS2021_00001"
    _case(brats_case, "_", SUFFIXES_2021, skip=("t1ce",))
    shutil.copy(upenn_root / "UPENN-GBM-00001_11_T1.nii.gz", brats_case / "BraTS2021_00001_t1.nii.gz")
    upenn = import_cohort("upenn-gbm", tmp_path / "UPENN-GBM", tmp_path / "u.csv")
    brats = import_cohort("brats2021", tmp_path / "BraTS2021", tmp_path / "b.csv")
    out, dropped = merge_manifests([brats, upenn], tmp_path / "all.csv")
    assert dropped == {"brats2021:BraTS2021_00001": "identical T1 voxels to the upenn-gbm case UPENN-GBM-00001_11"}
    assert [r["case_id"] for r in _rows(out)] == ["UPENN-GBM-00001_11"]
    report = check_manifest(_both(brats, upenn, tmp_path))
    assert any("hold identical T1 voxels" in w for w in report.warnings), report.text()


def _both(first: Path, second: Path, tmp_path: Path) -> Path:
    """Two imports' rows in one hand-made manifest (their ids differ)."""
    header = first.read_text().splitlines()[0].split(",")
    rows = [{k: r.get(k, "") for k in header} for r in _rows(first) + _rows(second)]
    out = tmp_path / "both.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return out


# --- an imported manifest through the trainers and evaluate ----------------------------------------------------

def test_a_folder_import_is_what_train_baseline_pretrain_and_evaluate_read(phantom_cohort, tmp_path, capsys):
    """The phantom's case folders as a user's own tree, its table (our column names) as the clinical table."""
    manifest = import_cohort("folder", phantom_cohort.parent, tmp_path / "cohort" / "imported.csv",
                             clinical=phantom_cohort)
    assert check_manifest(manifest).errors == []
    rows = _rows(manifest)
    assert len(rows) == 16 and {r["site"] for r in rows} == {"site-A", "site-B"}
    small = ["--arch", "resnet10", "--widen", "0.125", "--size", "16", "--spacing", "8", "--cache",
             str(tmp_path / "cache"), "--device", "cpu", "--progress", "none"]  # one preprocessing for both
    assert main(["train-baseline", "--manifest", str(manifest), "--out", str(tmp_path / "baseline"), "--epochs", "1",
                 *small]) == 0
    assert main(["pretrain", "--manifest", str(manifest), "--method", "byol", "--out", str(tmp_path / "encoder"),
                 "--crop", "16", "--batch-size", "2", "--max-steps", "1", "--hidden-dim", "16", "--proj-dim", "8",
                 "--workers", "0", *small]) == 0
    assert main(["evaluate", "--manifest", str(manifest), "--model", str(tmp_path / "baseline"), "--out",
                 str(tmp_path / "evaluation"), "--cache", str(tmp_path / "cache"), "--device", "cpu",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    assert (tmp_path / "encoder" / "card.json").is_file()
    record = json.loads((tmp_path / "evaluation" / "report" / "metrics.json").read_text())["data"]
    assert (record["cases_used"], record["subjects"], record["sites"]) == (16, 16, {"site-A": 8, "site-B": 8})


def test_case_folders_whose_names_no_reader_accepts_stop_the_import(tmp_path):
    root = tmp_path / "mixed"
    _case(root / "Case_A", "_", SUFFIXES_2021)
    _case(root / "case_a", "_", SUFFIXES_2021)  # one output folder on a case-insensitive disk
    with pytest.raises(InputError, match="would share one output folder") as raised:
        import_cohort("folder", root, tmp_path / "out" / "m.csv")
    assert "Case_A" in str(raised.value) and not (tmp_path / "out").exists()
    shutil.rmtree(root / "case_a")
    _case(root / "tab\there", "_", SUFFIXES_2021)
    with pytest.raises(InputError, match=r"control characters .* case\(s\) 'tab\\there'"):
        import_cohort("folder", root, tmp_path / "out" / "m.csv")
    assert not (tmp_path / "out").exists()
