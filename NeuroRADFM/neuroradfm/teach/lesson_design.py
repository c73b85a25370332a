"""The shortcut lesson's cohorts and training commands: a design in which ERM can take the shortcut.

Two sites with near-identical scanners (site-C and site-D of the phantom: 3 mm slices, ~1 mm blur), so that the one
thing that tells their images apart at a glance is site-D's receive-coil hot spot (``--scanner-artifact site-D``).
The training cases are picked from the phantom's case sequence (``generate_cohort(indices=...)``, each case the one
the full cohort holds at that index) so that the lesson's marker travels with the artifact: 90 % (``agreement``) of
site-D's cases are marker-positive and 90 % of site-C's negative. The held-out cases are other patients (another seed),
balanced over site x marker, rendered twice: as acquired (artifact at site-D) and with the artifact swapped to site-C
(the same patients, only the artifact moved: the counterfactual).

Both models are trained by ``neuroradfm train-baseline`` with the same seed, split and settings; the Group-DRO one
adds ``--dro exponentiated --group-column scanner_artifact,<marker>`` (Sagawa et al.'s groups: spurious attribute x
label; its marker probes are then fitted group-balanced too). Every number of the design lives here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from neuroradfm.errors import SettingsError
from neuroradfm.phantom import PhantomOptions, generate_cohort
from neuroradfm.phantom.biology import sample_patient
from neuroradfm.phantom.sites import site_name
from neuroradfm.progress import Progress, null_progress

MARKER = "mgmt"
"""The lesson's marker: MGMT promoter methylation, whose only planted imaging trait is a shorter edema reach (-4 mm
beside +4 for glioblastoma and +9 for EGFR): a weak signal, as on real MRI, so that the artifact is the easier cue.
(IDH1 was tried first: its planted traits (location, enhancement) are so easy that the ERM model left the artifact
alone; docs/SHORTCUT-LESSON.md.)"""
SITES = 4
"""The phantom's site count: its sites C and D (indices 2 and 3) are the lesson's two."""
CLEAN_SITE, ARTIFACT_SITE = 2, 3
TRAIN_SEED, TEST_SEED = 0, 1
MODELS = ("erm", "group-dro")
MODEL_LABELS = {"erm": "ERM", "group-dro": "Group-DRO"}
VERSIONS = {"as-acquired": ARTIFACT_SITE, "artifact-swapped": CLEAN_SITE}
"""The held-out cohorts: the site whose cases carry the artifact in each."""


@dataclass(frozen=True)
class LessonDesign:
    """Every number of the lesson; the default is the shipped pair's (tests use a tiny one)."""

    marker: str = MARKER
    train_per_site: int = 48
    agreement: float = 0.9
    """Share of each site's training cases whose marker agrees with the artifact (positive with it, negative
    without)."""
    test_per_group: int = 6
    """Held-out cases per site x marker value."""
    spacing_mm: float = 3.0
    """The phantoms' voxel size (the model grid's too): coarse, so that the pair rebuilds in minutes on two cores."""
    training: tuple[str, ...] = ("--arch", "resnet10", "--widen", "0.25", "--size", "64", "--spacing", "3",
                                 "--no-n4", "--epochs", "20", "--seed", "0", "--cam-layer", "layer2")
    """``train-baseline`` settings shared by both models (N4 off: the BraTS-style phantoms need none, and N4 leaves
    the artifact in place anyway, measured); ``--markers`` (the lesson marker) and ``--demo`` are added."""
    eta_q: float = 0.02
    """Group-DRO's step size: q moves to the worst group within the run's ~300 steps without collapsing onto
    one group (1.0 and 0.1 did, measured)."""
    viewer_cases: int = 4
    """Case viewer pages: one held-out case per site x marker group, as acquired, with both models' maps."""

    def __post_init__(self) -> None:
        from neuroradfm.markers import MARKER_KEYS

        if self.marker not in MARKER_KEYS:
            raise SettingsError("marker", f"one of {', '.join(MARKER_KEYS)}, got {self.marker!r}")
        if self.train_per_site < 2 or self.test_per_group < 1 or not 0.5 <= self.agreement < 1:
            raise SettingsError("design", "at least 2 training cases a site, 1 held-out case a group and an agreement "
                                          f"in 0.5..1 (exclusive), got {self}")

    @property
    def dro(self) -> tuple[str, ...]:
        """What the Group-DRO model adds: Sagawa et al.'s groups, spurious attribute x label."""
        return ("--dro", "exponentiated", "--group-column", f"scanner_artifact,{self.marker}",
                "--eta-q", f"{self.eta_q:g}")

    def training_indices(self) -> list[int]:
        agreeing = round(self.agreement * self.train_per_site)
        rest = self.train_per_site - agreeing
        return pick_indices(TRAIN_SEED, self.marker, {(ARTIFACT_SITE, 1): agreeing, (ARTIFACT_SITE, 0): rest,
                                                      (CLEAN_SITE, 0): agreeing, (CLEAN_SITE, 1): rest})

    def test_indices(self) -> list[int]:
        return pick_indices(TEST_SEED, self.marker, {(site, value): self.test_per_group
                                                     for site in (CLEAN_SITE, ARTIFACT_SITE) for value in (0, 1)})

    def training_command(self, model: str, manifest: str, out: str, cache: str, device: str) -> list[str]:
        """The ``neuroradfm train-baseline`` arguments of ``model`` (erm or group-dro)."""
        return ["train-baseline", "--manifest", manifest, "--out", out, "--name", f"neuroradfm-lesson-{model}",
                *self.training, "--markers", self.marker, *(self.dro if model == "group-dro" else ()), "--demo",
                "--cache", cache, "--device", device, "--progress", "json"]

    def to_dict(self) -> dict:
        return {**asdict(self), "training": list(self.training), "dro": list(self.dro),
                "sites": [site_name(CLEAN_SITE), site_name(ARTIFACT_SITE)], "artifact_site": site_name(ARTIFACT_SITE),
                "train_seed": TRAIN_SEED, "test_seed": TEST_SEED}


def marker_value(index: int, seed: int, marker: str) -> int:
    """``marker`` of phantom case ``index`` of ``seed``: the first draws of the case's own stream, as
    ``phantom.cohort.draw_case`` makes them (no image is rendered)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    return int(sample_patient(rng, index % SITES, SITES)[0][marker])


def pick_indices(seed: int, marker: str, quotas: Mapping[tuple[int, int], int]) -> list[int]:
    """The first case indices of ``seed`` that fill ``quotas`` ((site index, marker value) -> count), in order."""
    left = dict(quotas)
    chosen: list[int] = []
    index = 0
    while any(left.values()):
        if index % SITES in (CLEAN_SITE, ARTIFACT_SITE):
            key = (index % SITES, marker_value(index, seed, marker))
            if left.get(key, 0) > 0:
                chosen.append(index)
                left[key] -= 1
        index += 1
    return chosen


def write_training_cohort(folder: Path, design: LessonDesign, progress: Progress = null_progress) -> Path:
    """The training phantoms (artifact at site-D); returns the manifest."""
    indices = design.training_indices()
    return generate_cohort(folder, len(indices), sites=SITES, seed=TRAIN_SEED, spacing=design.spacing_mm,
                           options=PhantomOptions(scanner_artifact=(site_name(ARTIFACT_SITE),)), indices=indices,
                           progress=progress)


def write_test_cohort(folder: Path, version: str, design: LessonDesign, progress: Progress = null_progress) -> Path:
    """The held-out phantoms of ``version`` (VERSIONS); returns the manifest."""
    indices = design.test_indices()
    return generate_cohort(folder, len(indices), sites=SITES, seed=TEST_SEED, spacing=design.spacing_mm,
                           options=PhantomOptions(scanner_artifact=(site_name(VERSIONS[version]),)), indices=indices,
                           progress=progress)
