"""``neuroradfm teach``: an exercise pack of graded phantom cases with known answers.

Layout (relative paths, so the folder can be copied anywhere)::

    index.html                 the front page: cases, links, and a check that the pack is complete
    pack.json                  format, version, model, and every case's files and answers (teach.pack reads it)
    cohort/                    the phantom cases (BraTS naming, clinical.csv, manifest.csv, phantom.json)
    results/<case id>/         what `neuroradfm predict` wrote for each case (maps on the case's own grid)
    cases/NN/student.html      the sequences through the lesion and the questions
    cases/NN/viewer.html       the interactive viewer; the model's answer and the truth behind Reveal buttons
    cases/NN/case.js           lets index.html tell a complete case folder from a missing or foreign one
    teacher/answers.html       the answer key; teacher/case-NN.html one case's answers

The whole pack is written in a staging folder and moved into place when complete: a failure or Ctrl-C leaves no
half pack. ``pack.json`` is written last inside it.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from neuroradfm import __version__
from neuroradfm.atomic import atomic_folder
from neuroradfm.errors import NeuroRADFMError, SettingsError
from neuroradfm.output_paths import check_new_folder
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.teach import answers, sheets
from neuroradfm.teach.pack import (
    CASE_CHECK_FILE,
    PACK_FILE,
    PACK_FORMAT,
    PACK_VERSION,
    case_check_script,
    grade_text,
)
from neuroradfm.teach.plan import PACK_SITES, PlannedCase, acquisition_grades, plan_cases

DEFAULT_CASES = 8
DEFAULT_SPACING_MM = 1.5
"""The phantoms' voxel size: close to clinical images, and ~5 s a case to render on 2 cores (1 mm: ~15 s)."""
GRADES_TEXT = ("Grades: 1 clear traits, clean images; 2 clear traits, images with the site's artifacts; "
               "3 subtle traits, clean images; 4 subtle traits, images with artifacts.")


def _grade_text(case: PlannedCase) -> str:
    return grade_text(case.grade, case.traits, case.acquisition)


def _site_text(case: PlannedCase) -> str:
    from neuroradfm.phantom.sites import make_site

    profile = make_site(case.index % PACK_SITES)  # the site of phantom case ``index`` (draw_case)
    return (f"{profile.name}: blur {profile.blur_mm:.1f} mm, {profile.slice_mm:.0f} mm slices, bias field "
            f"{profile.bias:.2f}, noise {100 * profile.noise:.1f} %")


def _rows(cohort: Path) -> dict[str, dict[str, str]]:
    with open(cohort / "clinical.csv", newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _case_pages(root: Path, number: int, planned: PlannedCase, entry: Any, result: Path, row: dict[str, str],
                draws: dict[str, Any]) -> dict[str, Any]:
    """One case's pages (student sheet, viewer, answers, case.js) and its pack.json entry."""
    from neuroradfm.map_files import read_heatmap
    from neuroradfm.teach.viewer import RevealPanel, write_case_viewer

    folder = f"cases/{number:02d}"
    images = {name: sitk.ReadImage(str(path)) for name, path in entry.paths.items() if name != "seg"}
    tumour = sitk.ReadImage(str(entry.paths["seg"]))
    truth = answers.truth(row, draws)
    predictions = json.loads((result / "predictions.json").read_text(encoding="utf-8"))
    model = answers.model_answers(predictions, result, tumour, truth["markers"])
    grade = _grade_text(planned)
    _write(root / folder / "student.html",
           sheets.student_sheet(number, grade, sheets.sequence_figure(images, tumour, f"Case {number}"),
                                "viewer.html"))
    maps = {model["markers"].get(key, {}).get("label", "Survival risk"): read_heatmap(result / entry_map["file"])
            for key, entry_map in model["maps"].items()}
    write_case_viewer(root / folder / "viewer.html", title=f"Case {number} ({grade})", sequences=images, maps=maps,
                      tumour=tumour, notice=sheets.NOTICE,
                      panels=[RevealPanel("model", "Reveal the model's answer", sheets.model_panel(model)),
                              RevealPanel("truth", "Reveal the truth", sheets.truth_panel(truth, model))])
    overview = result / "overview.png"
    _write(root / "teacher" / f"case-{number:02d}.html",
           sheets.answer_page(number, entry.case_id, grade, _site_text(planned), truth, model,
                              f"../{folder}/viewer.html",
                              f"../{_relative(overview, root)}" if overview.is_file() else None,
                              sheets.sequence_figure(images, tumour, f"Case {number}", outline=True)))
    _write(root / folder / CASE_CHECK_FILE, case_check_script(number))
    return {
        "number": number, "case_id": entry.case_id, "phantom_index": planned.index, "site": planned.site,
        "grade": planned.grade, "traits": planned.traits, "acquisition": planned.acquisition,
        "sequences": {name: _relative(Path(path), root) for name, path in entry.paths.items() if name != "seg"},
        "tumour": _relative(Path(entry.paths["seg"]), root), "results": _relative(result, root),
        "student_sheet": f"{folder}/student.html", "viewer": f"{folder}/viewer.html",
        "answers": f"teacher/case-{number:02d}.html", "truth": truth, "model": model,
    }


def build_pack(out: str | Path, cases: int = DEFAULT_CASES, seed: int = 0, model: str | Path | None = None,
               spacing_mm: float = DEFAULT_SPACING_MM, device: str = "auto",
               progress: Progress = null_progress) -> Path:
    """Write an exercise pack of ``cases`` graded phantom cases, each predicted by ``model`` (default: the demo
    bundle). Every setting is checked before anything is written."""
    from neuroradfm.batch import predict_cases
    from neuroradfm.demo import demo_bundle_path
    from neuroradfm.io import read_manifest
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.models.encoder import resolve_device
    from neuroradfm.phantom import generate_cohort
    from neuroradfm.phantom.cohort import SPACING_RANGE_MM

    out = Path(out)
    plan = plan_cases(cases, seed)
    if not SPACING_RANGE_MM[0] <= spacing_mm <= SPACING_RANGE_MM[1]:
        raise SettingsError("--spacing", f"the voxel size must lie in {SPACING_RANGE_MM[0]:g}..{SPACING_RANGE_MM[1]:g} "
                                         f"mm, got {spacing_mm:g}")
    check_new_folder(out, PACK_FILE, "pack")
    resolve_device(device)
    bundle = load_bundle(model if model is not None else demo_bundle_path())
    bundle.require_heads()
    started = time.time()
    with atomic_folder(out, own=(PACK_FILE,)) as root:
        progress("phantom", 0.0, f"{len(plan)} graded phantom cases")
        manifest = generate_cohort(root / "cohort", n=len(plan), sites=PACK_SITES, seed=seed, spacing=spacing_mm,
                                   indices=[case.index for case in plan], progress=sub_progress(progress, 0.0, 0.3))
        entries = read_manifest(manifest)
        result = predict_cases([(entry.case_id, entry.load) for entry in entries], bundle, root / "results",
                               device=device, progress=sub_progress(progress, 0.3, 0.8))
        if result.failures:
            raise NeuroRADFMError("the pack was not written: the model failed on "
                                  + "; ".join(f"{k}: {v}" for k, v in result.failures.items()))
        rows = _rows(root / "cohort")
        draws = json.loads((root / "cohort" / "phantom.json").read_text(encoding="utf-8")).get("cases", {})
        written = []
        for number, (planned, entry) in enumerate(zip(plan, entries), start=1):
            progress("pages", 0.8 + 0.2 * (number - 1) / len(plan), f"case {number}")
            written.append(_case_pages(root, number, planned, entry, result.outputs[entry.case_id],
                                       rows[entry.case_id], draws.get(entry.case_id, {})))
        links = [{**case, "answers_link": f"case-{case['number']:02d}.html",
                  "folder": f"cases/{case['number']:02d}"} for case in written]
        _write(root / "teacher" / "answers.html", sheets.answer_key(links))
        _write(root / "index.html", sheets.index_page(f"NeuroRAD-FM teaching pack: {len(plan)} cases", links,
                                                      GRADES_TEXT))
        card = {"format": PACK_FORMAT, "pack_version": PACK_VERSION, "neuroradfm_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": seed, "cases_requested": cases,
                "sites": PACK_SITES, "spacing_mm": spacing_mm, "site_grades": acquisition_grades(PACK_SITES),
                "model": {"name": bundle.name, "content_hash": bundle.card.get("content_hash"),
                          "intended_use": bundle.card.get("intended_use", "")},
                "seconds": round(time.time() - started, 1), "cases": written}
        _write(root / PACK_FILE, json.dumps(card, indent=1) + "\n")
    progress("pages", 1.0, f"pack in {out}")
    return out
