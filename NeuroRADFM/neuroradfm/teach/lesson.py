"""``neuroradfm lesson``: the shortcut-learning lesson, an ERM and a Group-DRO model side by side.

A pair of small models trained on phantoms where site-D's images carry a scanner artifact and the lesson's marker
travels with it (neuroradfm.teach.lesson_design). On the same held-out patients, as acquired and with the artifact
swapped to the other site, the pack shows each model's accuracy per site and per site x marker group, where its
Grad-CAM maps point (the artifact or the tumour), how its probabilities move when only the artifact moves, and the
site silhouette of its embeddings; teacher notes say what students should see, from the measured numbers.

The pack (``--out``, a new or empty folder, written whole or not at all):

    lesson.json              every measured number, the design, the models (name, hash, rebuild command)
    notes.html               the teacher's notes, figures inlined (offline, self-contained)
    cases.csv                one row per held-out case x version x model
    figures/*.png            the notes' figures
    viewer/case-*.html       held-out cases with both models' maps (neuroradfm.teach.viewer)
    cohorts/held-out-*/      the held-out phantoms as acquired and with the artifact swapped
    cohorts/training/, models/{erm,group-dro}/   with --rebuild: the training phantoms and the rebuilt pair

Without ``--rebuild`` the shipped pair is used (Resources/lesson-bundles, found as the demo bundle is), or the
pair in ``models`` (a folder holding erm/ and group-dro/, e.g. an earlier rebuild's models/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from neuroradfm import __version__
from neuroradfm.atomic import atomic_folder
from neuroradfm.errors import BundleError, NeuroRADFMError, SettingsError
from neuroradfm.output_paths import check_new_folder
from neuroradfm.progress import Progress, null_progress, sub_progress
from neuroradfm.teach.lesson_design import (
    MODEL_LABELS,
    MODELS,
    VERSIONS,
    LessonDesign,
    write_test_cohort,
    write_training_cohort,
)

LESSON_FILE = "lesson.json"
LESSON_FORMAT = "neuroradfm-shortcut-lesson"
NOTICE = ("Synthetic phantoms and a teaching demonstration: neither model is for clinical use, and neither says "
          "anything about real patients.")


def lesson_bundles(models: str | Path | None = None) -> dict[str, Path]:
    """The pair's folders: ``models``/erm and ``models``/group-dro, else the shipped pair."""
    from neuroradfm.demo import lesson_bundle_path

    if models is None:
        return {model: lesson_bundle_path(model) for model in MODELS}
    return {model: Path(models) / model for model in MODELS}


def load_pair(paths: dict[str, Path], marker: str) -> dict:
    """Both bundles, each checked to predict ``marker`` (a BundleError naming the folder otherwise)."""
    from neuroradfm.models.bundle import load_bundle

    bundles = {}
    for model, path in paths.items():
        bundle = load_bundle(path)
        heads = bundle.require_heads()
        if not any(head.key == marker for head in heads.markers):
            raise BundleError(path, f"has no {marker} probe: the lesson compares both models' {marker} calls")
        bundles[model] = bundle
    return bundles


def _train(root: Path, model: str, design: LessonDesign, manifest: Path, device: str, progress: Progress) -> Path:
    """``neuroradfm train-baseline`` in a process of its own, in ``root`` (so that the card's rebuild command has
    paths relative to the lesson folder); its JSON progress lines are passed on."""
    import neuroradfm

    command = design.training_command(model, manifest.relative_to(root).as_posix(), f"models/{model}", "cache",
                                      device)
    env = dict(os.environ)
    core = str(Path(neuroradfm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([core, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    process = subprocess.Popen([sys.executable, "-m", "neuroradfm", *command], cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    other: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        try:
            report = json.loads(line)
            progress(f"train {model}", float(report["progress"]), str(report.get("message", "")))
        except (ValueError, KeyError, TypeError):
            other.append(line.rstrip())
    if process.wait() != 0:
        raise NeuroRADFMError(f"training the lesson's {model} model failed (neuroradfm {' '.join(command)}): "
                              + " | ".join(other[-5:]))
    return root / "models" / model


def _held_out(root: Path, design: LessonDesign, settings_of: dict, progress: Progress) -> dict:
    """Both held-out versions, written and preprocessed: {version: {preprocessing key: [HeldOutCase]}} and the
    loaded cases' images (for the viewer pages)."""
    from neuroradfm.io import read_manifest
    from neuroradfm.preprocess import preprocess_case
    from neuroradfm.teach.lesson_measure import HeldOutCase

    held: dict = {"cases": {}, "images": {}}
    for position, version in enumerate(VERSIONS):
        part = sub_progress(progress, position / len(VERSIONS), (position + 1) / len(VERSIONS))
        manifest = write_test_cohort(root / "cohorts" / f"held-out-{version}", version, design,
                                     sub_progress(part, 0.0, 0.7))
        entries = read_manifest(manifest)
        for number, entry in enumerate(entries):
            part("preprocess", 0.7 + 0.3 * number / len(entries), f"{version}: {entry.case_id}")
            case = entry.load()
            held["images"][(entry.case_id, version)] = case
            for key, settings in settings_of.items():
                held["cases"].setdefault(version, {}).setdefault(key, []).append(HeldOutCase(
                    entry.case_id, str(entry.site), version, int(float(entry.clinical[design.marker])),
                    bool(int(float(entry.clinical["scanner_artifact"]))), preprocess_case(case, settings), case.seg))
    return held


def run_lesson(out: str | Path, rebuild: bool = False, device: str = "auto", progress: Progress = null_progress,
               models: str | Path | None = None, design: LessonDesign | None = None) -> Path:
    """Write the lesson pack into ``out`` (a new or empty folder); returns it. ``rebuild``: train the pair afresh
    (phantoms and both models, by the project's own commands) instead of using the shipped pair or ``models``."""
    from neuroradfm.models.encoder import resolve_device
    from neuroradfm.teach.lesson_measure import accuracy_table, cam_table, counterfactual_table, measure, silhouettes
    from neuroradfm.teach.lesson_report import viewer_choice, write_cases_csv, write_figures, write_notes, write_viewers

    design = design or LessonDesign()
    out = Path(out)
    if rebuild and models is not None:
        raise SettingsError("--models", "conflicts with --rebuild (which trains the pair afresh): give one of them")
    check_new_folder(out, LESSON_FILE, "lesson")
    resolve_device(device)
    bundles = None if rebuild else load_pair(lesson_bundles(models), design.marker)  # before anything is written
    started = time.time()
    timings: dict[str, float] = {}
    with atomic_folder(out, own=(LESSON_FILE,)) as root:
        if rebuild:
            progress("phantom", 0.0, "training phantoms")
            manifest = write_training_cohort(root / "cohorts" / "training", design, sub_progress(progress, 0.0, 0.2))
            timings["training_phantoms_s"] = time.time() - started
            for position, model in enumerate(MODELS):
                began = time.time()
                _train(root, model, design, manifest, device,
                       sub_progress(progress, 0.2 + 0.2 * position, 0.4 + 0.2 * position))
                timings[f"train_{model}_s"] = time.time() - began
            shutil.rmtree(root / "cache", ignore_errors=True)  # preprocessed copies: large, and rebuilt in seconds
            bundles = load_pair({model: root / "models" / model for model in MODELS}, design.marker)
        assert bundles is not None
        first = 0.6 if rebuild else 0.0
        began = time.time()
        settings_of = {json.dumps(b.preprocessing.to_dict(), sort_keys=True): b.preprocessing for b in bundles.values()}
        held = _held_out(root, design, settings_of, sub_progress(progress, first, first + 0.5 * (1 - first)))
        timings["held_out_phantoms_s"] = time.time() - began
        began = time.time()
        results: dict = {}
        for model, bundle in bundles.items():
            progress("predict", first + 0.6 * (1 - first), f"{MODEL_LABELS[model]} on the held-out cases")
            key = json.dumps(bundle.preprocessing.to_dict(), sort_keys=True)
            keep = [f"{c.case_id}/as-acquired" for c in held["cases"]["as-acquired"][key]]
            results[model] = {version: measure(model, bundle, held["cases"][version][key], design.marker, device,
                                               keep if version == "as-acquired" else ())
                              for version in VERSIONS}
        timings["predict_s"] = time.time() - began
        summary = {model: {"accuracy": {version: accuracy_table(runs[version]) for version in VERSIONS},
                           "grad_cam": {version: cam_table(runs[version]) for version in VERSIONS},
                           "counterfactual": counterfactual_table(runs["as-acquired"], runs["artifact-swapped"]),
                           "embeddings": silhouettes(runs["as-acquired"], runs["artifact-swapped"])}
                   for model, runs in results.items()}
        progress("report", first + 0.8 * (1 - first), "figures, notes and case pages")
        about = {model: {"name": bundle.name, "content_hash": bundle.card.get("content_hash"),
                         "rebuild_command": bundle.card.get("rebuild_command"),
                         "intended_use": bundle.card.get("intended_use"),
                         "training": {k: bundle.card.get("training", {}).get(k) for k in
                                      ("method", "dro", "group_column", "groups", "group_sizes", "q_final",
                                       "cases_encoder", "cases_heads", "manifest_hash")},
                         "own_cv_auc": next(h.metrics.get("cv_auc") for h in bundle.heads.markers
                                            if h.key == design.marker),
                         "folder": str(bundle.path) if not rebuild else f"models/{model}"}
                 for model, bundle in bundles.items()}
        figures = write_figures(root / "figures", results, summary, held, design)
        chosen = viewer_choice(results["erm"]["as-acquired"], design.viewer_cases)
        pages = write_viewers(root / "viewer", chosen, results, held, design)
        write_cases_csv(root / "cases.csv", results)
        timings["total_s"] = time.time() - started
        record = {"format": LESSON_FORMAT, "neuroradfm_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "notice": NOTICE, "rebuilt": rebuild,
                  "design": design.to_dict(), "models": about, "results": _without_maps(summary),
                  "figures": [p.relative_to(root).as_posix() for p in figures],
                  "viewer_pages": [p.relative_to(root).as_posix() for p in pages],
                  "timings": {k: round(v, 1) for k, v in timings.items()}, "device": device}
        write_notes(root / "notes.html", record, figures, pages)
        (root / LESSON_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    progress("done", 1.0, f"lesson in {out}")
    return out


def _without_maps(summary: dict) -> dict:
    """The summary for lesson.json: the 2-D PCA points stay in the figure."""
    return {model: {**parts, "embeddings": {k: v for k, v in parts["embeddings"].items() if k not in ("pca_2d",)}}
            for model, parts in summary.items()}
