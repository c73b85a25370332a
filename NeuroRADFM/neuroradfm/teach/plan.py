"""Which phantom cases go into a teaching pack: graded by how plainly the tumour shows and how clean the site's
images are, every site represented.

A case's patient (subtype, markers, traits) is the first draw of its own random stream, so it can be read for
thousands of candidate indices in milliseconds and only the chosen cases are rendered (``generate_cohort(indices=)``
renders exactly the case the full cohort would hold at that index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuroradfm.errors import SettingsError
from neuroradfm.phantom.biology import Traits, sample_patient
from neuroradfm.phantom.sites import Site, make_site

PACK_SITES = 4
MAX_PACK_CASES = 48
"""A class's session: 48 cases is 12 per site and grade pair; each costs ~20 s to render and predict on 2 cores."""
CANDIDATES_PER_CASE = 20_000
TRAIT_GRADES = ("clear", "subtle")
CLEAR_RIM_MM = 4.0
ACQUISITION_GRADES = ("clean", "artifacts")


@dataclass(frozen=True)
class PlannedCase:
    index: int
    site: str
    traits: str
    acquisition: str
    subtype: str

    @property
    def grade(self) -> int:
        """1 (clear traits, clean images) .. 4 (subtle traits, images with the site's artifacts)."""
        return 1 + ACQUISITION_GRADES.index(self.acquisition) + 2 * TRAIT_GRADES.index(self.traits)


def site_artifact_score(site: Site) -> float:
    """How much a site's acquisition degrades its images: blur, slice thickness, bias field and noise, each scaled
    by its range in ``sites.make_site`` (so each counts about the same)."""
    return site.blur_mm / 1.5 + (site.slice_mm - 1.0) / 3.0 + site.bias / 0.35 + site.noise / 0.05


def acquisition_grades(sites: int = PACK_SITES) -> dict[str, str]:
    """Site name -> "clean" for the better half of the sites by ``site_artifact_score``, else "artifacts"."""
    profiles = [make_site(i) for i in range(sites)]
    order = sorted(profiles, key=site_artifact_score)
    clean = {site.name for site in order[: max(1, len(order) // 2)]}
    return {site.name: "clean" if site.name in clean else "artifacts" for site in profiles}


def traits_grade(subtype: str, traits: Traits, markers: dict[str, int]) -> str | None:
    """"clear": the textbook look (a large necrotic ring-enhancing glioblastoma, or a large non-enhancing IDH-mutant
    tumour with a T2-FLAIR mismatch or calcifications); "subtle": a small lesion whose enhancement is ambiguous or
    whose edema barely reaches beyond it; None: in between (not used). A clear ring needs a rim of CLEAR_RIM_MM: the
    phantom's 2.5 mm rims (Ki-67 low) blur into the core at 1.5 mm voxels and leave no enhancing label."""
    if subtype == "glioblastoma":
        if (traits.radius_mm >= 17 and traits.enhancement >= 0.6 and traits.necrosis >= 0.35
                and traits.rim_mm >= CLEAR_RIM_MM):
            return "clear"
    elif traits.radius_mm >= 15 and traits.enhancement <= 0.2 and (markers["atrx"] or markers["codel_1p19q"]):
        return "clear"
    if traits.radius_mm <= 14.5 and (0.25 <= traits.enhancement <= 0.55 or traits.edema_mm <= 5):
        return "subtle"
    return None


def _patient(index: int, seed: int, sites: int) -> tuple[dict, Traits]:
    """The patient ``draw_case`` draws first for case ``index`` (same stream, same order)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    return sample_patient(rng, index % sites, sites)


def check_case_count(cases: int) -> None:
    if not 1 <= cases <= MAX_PACK_CASES:
        raise SettingsError("--cases", f"a teaching pack holds 1 to {MAX_PACK_CASES} cases ({PACK_SITES} sites x 2 "
                                       f"trait grades x 2 image grades, several each), got {cases}")


def plan_cases(cases: int, seed: int, sites: int = PACK_SITES) -> list[PlannedCase]:
    """``cases`` phantom cases: slot k at site k mod ``sites``, clear traits in even rounds over the sites and subtle
    in odd ones; each slot takes the first unused index of its site whose patient has that grade. Ordered by grade
    (easiest first), then site."""
    check_case_count(cases)
    if seed < 0:
        raise SettingsError("--seed", f"must be 0 or more, got {seed}")
    quality = acquisition_grades(sites)
    used: set[int] = set()
    planned = []
    for slot in range(cases):
        site_index = slot % sites
        wanted = TRAIT_GRADES[(slot // sites) % 2]
        first = None
        for round_ in range(CANDIDATES_PER_CASE):
            index = site_index + sites * round_
            if index in used:
                continue
            row, traits = _patient(index, seed, sites)
            first = first if first is not None else (index, row)
            if traits_grade(row["subtype"], traits, row) == wanted:
                break
        else:  # no candidate of that grade (never seen with these rules): the first unused case of the site
            index, row = first  # type: ignore[misc]
        used.add(index)
        site = make_site(site_index).name
        planned.append(PlannedCase(index, site, wanted, quality[site], row["subtype"]))
    return sorted(planned, key=lambda case: (case.grade, case.site, case.index))
