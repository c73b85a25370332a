"""``neuroradfm teach``: graded case choice, the pack on disk, its answers against the phantom's records, the index
page's own completeness check in headless Chromium, and bad packs / settings refused with nothing half-written."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from neuroradfm.errors import BundleError, InputError, SettingsError
from neuroradfm.models.bundle import load_bundle, save_bundle
from neuroradfm.phantom import generate_case, generate_cohort
from neuroradfm.teach import plan as plan_module
from neuroradfm.teach.build import build_pack
from neuroradfm.teach.pack import CASE_CHECK_FILE, PACK_FILE, read_pack
from neuroradfm.teach.plan import MAX_PACK_CASES, PACK_SITES, plan_cases, traits_grade


def test_plan_grades_every_case_as_asked_and_covers_every_site():
    planned = plan_cases(8, seed=5)
    assert [case.grade for case in planned] == sorted(case.grade for case in planned)
    assert {case.site for case in planned} == {f"site-{c}" for c in "ABCD"}
    assert {case.grade for case in planned} == {1, 2, 3, 4}
    assert len({case.index for case in planned}) == 8
    for case in planned:
        row, traits = plan_module._patient(case.index, 5, PACK_SITES)
        assert traits_grade(row["subtype"], traits, row) == case.traits
        assert row["subtype"] == case.subtype
        assert case.index % PACK_SITES == "ABCD".index(case.site[-1])
    clean = {case.site for case in planned if case.acquisition == "clean"}
    scores = {s: plan_module.site_artifact_score(plan_module.make_site(i)) for i, s in enumerate(
        [f"site-{c}" for c in "ABCD"])}
    assert max(scores[s] for s in clean) < min(scores[s] for s in scores if s not in clean)
    assert plan_cases(8, seed=5) == planned  # deterministic
    assert plan_cases(8, seed=6) != planned


@pytest.mark.parametrize("cases", [0, MAX_PACK_CASES + 1])
def test_a_case_count_out_of_range_is_refused_before_anything_is_written(cases, tmp_path, tiny_bundle):
    with pytest.raises(SettingsError, match="--cases"):
        build_pack(tmp_path / "pack", cases=cases, model=tiny_bundle)
    assert not (tmp_path / "pack").exists()


def test_a_chosen_case_is_the_case_the_full_cohort_holds_at_that_index(tmp_path):
    manifest = generate_cohort(tmp_path / "c", n=1, sites=4, seed=2, spacing=8.0, indices=[6])
    with open(manifest, newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    images, seg, clinical = generate_case(6, seed=2, n_sites=4, spacing=8.0)
    assert row["case_id"] == "BraTS-PHN-00006-000" and row["subtype"] == clinical["subtype"]
    written = sitk.ReadImage(str(manifest.parent / row["t1ce"]))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(images["t1ce"]))
    assert json.loads((manifest.parent / "phantom.json").read_text())["indices"] == [6]
    with pytest.raises(SettingsError, match="indices"):
        generate_cohort(tmp_path / "d", n=2, indices=[1, 1])


@pytest.fixture(scope="module")
def pack(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("teach") / "pack"
    events = []
    build_pack(out, cases=2, seed=0, model=tiny_bundle, spacing_mm=4.0, device="cpu",
               progress=lambda stage, fraction, message="": events.append((stage, fraction)))
    return out, events


def test_the_pack_holds_every_page_and_reads_back(pack):
    out, events = pack
    loaded = read_pack(out)
    assert [case.number for case in loaded.cases] == [1, 2]
    for case in loaded.cases:
        for name in (case.student_sheet, case.viewer, case.answers, *case.sequences.values(), case.tumour):
            assert (out / name).is_file(), name
        assert (out / case.results / "predictions.json").is_file()
        assert "Reveal" in (out / case.viewer).read_text(encoding="utf-8")
        sheet = (out / case.student_sheet).read_text(encoding="utf-8")
        assert "which hemisphere" in sheet and "data:image/png;base64," in sheet
        assert case.truth["subtype"] not in sheet  # the student sheet gives nothing away
    assert (out / "index.html").is_file() and (out / "teacher" / "answers.html").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert events[-1] == ("pages", 1.0)
    assert all(0.0 <= fraction <= 1.0 for _, fraction in events)


def test_the_answers_are_the_planted_truth_and_the_models_own_calls(pack):
    out, _ = pack
    loaded = read_pack(out)
    with open(out / "cohort" / "clinical.csv", newline="", encoding="utf-8") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    draws = json.loads((out / "cohort" / "phantom.json").read_text())["cases"]
    for case in loaded.cases:
        row = rows[case.case_id]
        assert case.truth["subtype"] == row["subtype"]
        assert case.truth["markers"] == {k: int(row[k]) for k in case.truth["markers"]}
        assert case.truth["lobe"] == ("frontal" if row["trait_region"] == "frontal" else "temporo-parietal")
        assert case.truth["hemisphere"] == draws[case.case_id]["mass_effect"]["side"]
        assert case.truth["enhancing"] == (float(row["trait_enhancement"]) >= 0.4)
        predictions = json.loads((out / case.results / "predictions.json").read_text())
        for entry in predictions["markers"]:
            mine = case.model["markers"][entry["key"]]
            assert mine["probability"] == pytest.approx(entry["probability"])
            assert mine["agrees"] == (entry["positive"] == bool(int(row[entry["key"]])))
        agreement = case.model["agreement"]
        assert agreement["markers"] == sum(m["agrees"] for m in case.model["markers"].values())
        for entry in case.model["maps"].values():
            assert entry["on_tumour"] is None or 0.0 <= entry["on_tumour"] <= 1.0
        answers = (out / case.answers).read_text(encoding="utf-8")
        assert case.truth["subtype"] in answers and "Why it shows" in answers


def test_map_on_tumour_measures_the_hot_region_inside_the_label_map():
    from neuroradfm.teach.answers import map_on_tumour

    tumour = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    tumour[2:5, 2:5, 2:5] = 3
    heat = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    heat[2:5, 2:5, 2:5] = 1.0  # 27 voxels inside
    heat[7:10, 7:10, 7:10] = 0.6  # 27 hot voxels outside (>= 0.5 of the peak)
    heat[0, 0, 0] = 0.2  # not hot
    assert map_on_tumour(heat, tumour) == pytest.approx(0.5)
    assert map_on_tumour(sitk.Image([10, 10, 10], sitk.sitkFloat32), tumour) is None


def _copy(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def test_an_incomplete_pack_is_refused_naming_what_is_missing(pack, tmp_path):
    copy = _copy(pack[0], tmp_path)
    (copy / "cases" / "02" / "viewer.html").unlink()
    with pytest.raises(InputError, match=r"incomplete.*cases/02/viewer.html"):
        read_pack(copy)
    (copy / PACK_FILE).unlink()
    with pytest.raises(InputError, match="not a teaching pack"):
        read_pack(copy)
    with pytest.raises(InputError, match="no such folder"):
        read_pack(tmp_path / "nowhere")


@pytest.mark.parametrize("edit, message", [
    (lambda card: card.update(pack_version=99, neuroradfm_version="9.9"), r"version 99 \(written by neuroradfm 9.9\)"),
    (lambda card: card.update(format="something-else"), "not a NeuroRAD-FM teaching pack"),
    (lambda card: card["cases"][0].update(viewer="../../etc/passwd"), "outside the pack"),
    (lambda card: card["cases"][0].update(tumour="/etc/passwd"), "outside the pack"),
    (lambda card: card["cases"][0].pop("truth"), "lacks 'truth'"),
    (lambda card: card["cases"][1].update(number=1), "case number twice"),
])
def test_a_pack_from_another_version_or_edited_is_refused(pack, tmp_path, edit, message):
    copy = _copy(pack[0], tmp_path)
    card = json.loads((copy / PACK_FILE).read_text())
    edit(card)
    (copy / PACK_FILE).write_text(json.dumps(card))
    with pytest.raises(InputError, match=message):
        read_pack(copy)


def test_a_damaged_pack_json_is_refused(pack, tmp_path):
    copy = _copy(pack[0], tmp_path)
    (copy / PACK_FILE).write_text('{"format": "neuroradfm-teaching-pack", "cases": [')
    with pytest.raises(InputError, match="not valid JSON"):
        read_pack(copy)


def _dom(page: Path) -> str:
    chromium = shutil.which("chromium")
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return run.stdout


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (CI installs the Debian package 'chromium')")
def test_the_index_page_says_whether_the_pack_is_complete(pack, tmp_path):
    dom = _dom(pack[0] / "index.html")
    assert "<title>PACK OK</title>" in dom and "Pack complete: 2 cases." in dom
    copy = _copy(pack[0], tmp_path)
    shutil.rmtree(copy / "cases" / "02")
    (copy / "cases" / "01" / CASE_CHECK_FILE).write_text("neuroradfmPackCase(1, 0);\n")
    dom = _dom(copy / "index.html")
    assert "<title>PACK PROBLEM</title>" in dom
    assert "missing or incomplete: cases/02" in dom and "case(s) 1 come from another version" in dom


def test_settings_that_cannot_work_are_refused_before_anything_is_written(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    encoder = save_bundle(tmp_path / "encoder", bundle.encoder, None, bundle.preprocessing,
                          {"name": "encoder-only", "intended_use": "tests"})
    with pytest.raises(BundleError, match="encoder-only bundle has no heads"):
        build_pack(tmp_path / "a", cases=1, model=encoder)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SettingsError, match="not an empty folder"):
        build_pack(busy, cases=1, model=tiny_bundle)
    with pytest.raises(SettingsError, match="--spacing"):
        build_pack(tmp_path / "b", cases=1, model=tiny_bundle, spacing_mm=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "encoder"]
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_a_failure_while_writing_leaves_no_half_pack(tiny_bundle, tmp_path, monkeypatch):
    from neuroradfm.teach import sheets

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sheets, "answer_key", broken)
    with pytest.raises(Exception, match="No space left"):
        build_pack(tmp_path / "pack", cases=1, model=tiny_bundle, spacing_mm=8.0, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_checks_a_pack(pack, tmp_path, capsys):
    from neuroradfm.cli import main

    assert main(["teach", "--check", str(pack[0])]) == 0
    assert "a complete teaching pack, 2 cases" in capsys.readouterr().out
    copy = _copy(pack[0], tmp_path)
    (copy / "cases" / "01" / "student.html").unlink()
    assert main(["teach", "--check", str(copy)]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert main(["teach", "--progress", "none"]) == 2
    assert "--out: name the folder" in capsys.readouterr().err


def test_a_clear_glioblastoma_needs_a_ring_the_phantom_labels_as_enhancing(tmp_path):
    from dataclasses import replace

    from neuroradfm.teach.plan import CLEAR_RIM_MM

    case = next(c for c in plan_cases(8, seed=0) if c.traits == "clear" and c.subtype == "glioblastoma")
    row, traits = plan_module._patient(case.index, 0, PACK_SITES)
    assert traits.rim_mm >= CLEAR_RIM_MM and traits_grade(row["subtype"], traits, row) == "clear"
    thin = replace(traits, rim_mm=2.5)  # the Ki-67-low rim: no enhancing label at 1.5 mm voxels
    assert traits_grade(row["subtype"], thin, row) != "clear"
    manifest = generate_cohort(tmp_path / "c", n=1, sites=PACK_SITES, seed=0,
                               spacing=1.5, indices=[case.index])
    with open(manifest, newline="", encoding="utf-8") as handle:
        assert float(next(csv.DictReader(handle))["enhancing_ml"]) > 1.0
