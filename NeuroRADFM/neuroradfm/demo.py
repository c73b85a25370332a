"""``neuroradfm demo``: one phantom case in, predictions and Grad-CAM maps out, from a fresh install.

The case is a native-geometry phantom (its own brain, head with skull, oblique anisotropic acquisition)
drawn with a seed the demo model never saw, so the whole preprocessing chain runs, and its ground
truth is printed next to the predictions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from neuroradfm import SEQUENCES
from neuroradfm.errors import BundleError, NeuroRADFMError, SettingsError

DEMO_CASE_SEED = 20261124
DEMO_CASE_SPACING_MM = 1.5
"""Rendering grid of the demo phantom; its acquisition (site-A) is 0.9 x 0.9 x 3 mm, oblique."""
BUNDLE_DIR = "demo-bundle"
LESSON_BUNDLES_DIR = "lesson-bundles"
"""The shortcut-learning lesson's pair (neuroradfm.teach.lesson): Resources/lesson-bundles/{erm,group-dro}."""


def shipped_bundle_path(folder: str, variable: str, what: str) -> Path:
    """A bundle shipped under Resources/``folder``: the folder $``variable`` names (with ``folder``'s last part
    below it when a folder of several bundles is meant: see ``lesson_bundle_path``), else this source tree's
    Resources, else the installed Slicer extension's copy (the module's Resources beside the bundled core)."""
    override = os.environ.get(variable)
    candidates = [Path(override)] if override else []
    if override and "/" in folder:
        candidates = [Path(override) / folder.rsplit("/", 1)[1]]
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "Resources" / folder,  # source tree: <repo>/Resources/<folder>
                   here.parents[1] / "Resources" / folder,  # Slicer: <qt-scripted-modules>/Resources/<folder>
                   here.parent / "Resources" / folder]
    for candidate in candidates:
        if (candidate / "card.json").is_file():
            return candidate
    raise BundleError(candidates[0], f"{what} not found (set {variable} to its folder)")


def demo_bundle_path() -> Path:
    """The shipped demo bundle: $NEURORADFM_DEMO_BUNDLE, else Resources/demo-bundle of this source tree, else
    the installed Slicer extension's copy (the module's Resources/demo-bundle beside the bundled core)."""
    return shipped_bundle_path(BUNDLE_DIR, "NEURORADFM_DEMO_BUNDLE", "demo bundle")


def lesson_bundle_path(model: str) -> Path:
    """One model of the shipped lesson pair (``model``: erm or group-dro), found as the demo bundle is;
    $NEURORADFM_LESSON_BUNDLES names a folder that holds both."""
    return shipped_bundle_path(f"{LESSON_BUNDLES_DIR}/{model}", "NEURORADFM_LESSON_BUNDLES",
                               f"the shortcut lesson's {model} bundle")


def _current_phantom(folder: Path) -> bool:
    """Whether ``folder`` holds a demo case of this generator (a case from an older demo run is drawn again)."""
    import json

    from neuroradfm.phantom.cohort import GENERATOR_VERSION

    try:
        return json.loads((folder / "phantom.json").read_text(encoding="utf-8")).get("generator_version") \
            == GENERATOR_VERSION
    except (OSError, ValueError):
        return False


def demo_case_manifest(folder: str | Path, progress=None) -> Path:
    """The demo phantom case in ``folder``: generated there, or reused when this generator wrote it."""
    from neuroradfm.phantom import generate_cohort
    from neuroradfm.progress import null_progress

    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file() or not _current_phantom(folder):
        generate_cohort(folder, n=1, sites=1, seed=DEMO_CASE_SEED, native=True, spacing=DEMO_CASE_SPACING_MM,
                        progress=progress or null_progress)
    return manifest


def _dropped(drop: Sequence[str]) -> list[str]:
    """The sequences ``--drop`` names, checked: known names (``subsets.canonical``), and not all four."""
    from neuroradfm.subsets import ALL_FOUR, canonical

    try:
        names = canonical(drop)
    except ValueError as error:
        raise SettingsError("--drop", str(error)) from None
    if names == ALL_FOUR:
        raise SettingsError("--drop", "dropping all four sequences leaves nothing to predict from")
    return list(names)


def run_demo(out: str | Path, device: str = "auto", progress=None, drop: Sequence[str] = ()) -> Path:
    """Generate (or reuse) the demo phantom case, predict it with the demo bundle, print a summary. ``drop``: the
    sequences left out of the case (a study that lacks them); the bundle must take what remains."""
    from neuroradfm.batch import predict_cases
    from neuroradfm.io import read_manifest
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.progress import null_progress, sub_progress
    from neuroradfm.subsets import canonical, label, reliability

    progress = progress or null_progress
    out = Path(out)
    dropped = [] if not drop else _dropped(drop)
    bundle = load_bundle(demo_bundle_path())
    kept = canonical(s for s in SEQUENCES if s not in dropped)
    bundle.require_subset(kept, "of the demo")  # before the phantom is drawn
    progress("phantom", 0.0, "the demo phantom case")
    manifest = demo_case_manifest(out / "case", sub_progress(progress, 0.0, 0.25))
    entry = read_manifest(manifest)[0]
    entry = replace(entry, paths={k: v for k, v in entry.paths.items() if k not in dropped})
    result = predict_cases([(entry.case_id, entry.load)], bundle, out / "results", device=device,
                           progress=sub_progress(progress, 0.25, 1.0), keep_predictions=True)
    if result.failures:
        raise NeuroRADFMError("demo case failed: " + "; ".join(result.failures.values()))
    prediction = result.predictions[entry.case_id]
    folder = result.outputs[entry.case_id]
    print(f"\nNeuroRAD-FM demo — model: {bundle.name}\n{bundle.card.get('intended_use', '')}\n")
    print(f"case {entry.case_id} (phantom; truth from {manifest.parent / 'clinical.csv'})")
    print(f"sequences: {label(kept)}; {reliability(bundle.card, kept)['note']}")
    print(f"{'marker':<18}{'probability':>12}  {'call':<22}{'truth':<10}")
    for m in prediction.markers:
        truth = entry.clinical.get(m.key)
        truth_text = "" if truth is None else ("positive" if int(truth) else "negative")
        print(f"{m.label:<18}{m.probability:>12.2f}  {m.call:<22}{truth_text:<10}")
    if prediction.survival is not None:
        s = prediction.survival
        print(f"survival: {s.risk_group} risk (score {s.risk_score:+.2f}); "
              f"P(alive at 1 y) = {s.survival_1y:.2f}, at 2 y = {s.survival_2y:.2f}")
    print(f"out-of-distribution distance {prediction.ood_distance:.1f} "
          f"(threshold {prediction.ood_threshold:.1f}){' -> FLAGGED' if prediction.ood_flag else ''}")
    print(f"\noutputs in {folder}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name}")
    return folder
