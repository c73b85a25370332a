"""The phantom's biology: subtype -> markers -> imaging traits -> survival.

Every rule is documented in docs/PHANTOM.md; the numbers live here, once.
Sampling order per case: site prevalence -> subtype -> markers (conditional on subtype, with
noise) -> age/sex -> traits (each marker shifts at least one trait that only it shifts) ->
survival from a Weibull proportional-hazards model with independent censoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuroradfm.markers import MARKER_KEYS

SUBTYPES = ("oligodendroglioma", "astrocytoma", "glioblastoma")

# P(marker positive | subtype), columns in SUBTYPES order.
MARKER_GIVEN_SUBTYPE = {
    "mgmt": (0.90, 0.75, 0.45),
    "atrx": (0.05, 0.80, 0.10),
    "tp53": (0.05, 0.75, 0.30),
    "egfr": (0.02, 0.05, 0.45),
    "tert": (0.90, 0.10, 0.75),
    "cdkn2ab": (0.05, 0.15, 0.50),
    "ki67_high": (0.20, 0.25, 0.70),
}
TP53_EXPRESSION_HIGH = (0.15, 0.85)  # P(high expression | TP53 wildtype, mutant)
AGE = {"oligodendroglioma": (45, 11), "astrocytoma": (38, 10), "glioblastoma": (62, 10)}

# Weibull proportional hazards: h(t) = h0(t) exp(lp); baseline median about 15 months.
WEIBULL_SHAPE = 1.3
WEIBULL_SCALE_DAYS = 600.0
LOG_HAZARD = {"idh1": -0.9, "codel_1p19q": -0.5, "mgmt": -0.5, "cdkn2ab": 0.4, "egfr": 0.3, "ki67_high": 0.3}
LOG_HAZARD_PER_YEAR_OF_AGE = 0.03
LOG_HAZARD_PER_MM_RADIUS = 0.03
FOLLOW_UP_DAYS = (365.0, 3000.0)  # administrative censoring, uniform
LOSS_TO_FOLLOW_UP = 0.1


def subtype_prevalence(site_index: int, n_sites: int) -> np.ndarray:
    """Site-dependent subtype mix: the first site is GBM-rich, the last IDH-mutant-rich."""
    gbm_rich, idh_rich = np.array([0.05, 0.15, 0.80]), np.array([0.30, 0.45, 0.25])
    w = site_index / max(n_sites - 1, 1)
    return (1 - w) * gbm_rich + w * idh_rich


@dataclass
class Traits:
    """Imaging traits, all in physical units; each names the markers that move it."""

    region: str              # "frontal" (IDH-mutant) or "temporoparietal" (IDH-wildtype)
    radius_mm: float         # tumour core radius: GBM, EGFR, Ki-67 enlarge
    necrosis: float          # necrotic fraction of the core radius: GBM, CDKN2A/B, Ki-67
    necrosis_offset: float   # eccentric necrosis (fraction of radius): TP53 mutation
    enhancement: float       # T1ce gain of the enhancing rim: GBM, Ki-67
    rim_mm: float            # enhancing rim thickness: Ki-67
    edema_mm: float          # edema reach beyond the core: EGFR (+), GBM (+), MGMT methylation (-)
    flair_mismatch: float    # FLAIR/T2 ratio inside the non-enhancing tumour: ATRX loss lowers it
    calcifications: int      # dark T2*/T1 spots: 1p/19q codeletion
    texture: float           # fine intratumoural texture amplitude: TP53 expression
    lobulation: float        # margin irregularity: CDKN2A/B deletion
    t1_core: float           # T1 signal of the solid tumour (darker = more hypointense): TERT


def sample_markers(rng: np.random.Generator, subtype: str) -> dict[str, int]:
    column = SUBTYPES.index(subtype)
    markers = {"idh1": int(subtype != "glioblastoma"), "codel_1p19q": int(subtype == "oligodendroglioma")}
    for key, probabilities in MARKER_GIVEN_SUBTYPE.items():
        markers[key] = int(rng.random() < probabilities[column])
    markers["tp53_expr_high"] = int(rng.random() < TP53_EXPRESSION_HIGH[markers["tp53"]])
    return {key: markers[key] for key in MARKER_KEYS}


def sample_traits(rng: np.random.Generator, subtype: str, m: dict[str, int]) -> Traits:
    gbm = subtype == "glioblastoma"
    return Traits(
        region="temporoparietal" if gbm else "frontal",
        radius_mm=float(np.clip(14 + 4 * gbm + 3 * m["egfr"] + 2 * m["ki67_high"] + rng.normal(0, 1.5), 9, 28)),
        necrosis=float(np.clip(0.05 + 0.35 * gbm + 0.15 * m["cdkn2ab"] + 0.1 * m["ki67_high"]
                               + rng.normal(0, 0.04), 0, 0.8)),
        necrosis_offset=float(0.35 * m["tp53"] + rng.normal(0, 0.03)),
        enhancement=float(np.clip(0.1 + 0.6 * gbm + 0.3 * m["ki67_high"] + rng.normal(0, 0.05), 0, 1.2)),
        rim_mm=float(np.clip(2.5 + 2.5 * m["ki67_high"] + rng.normal(0, 0.3), 1.5, 6)),
        edema_mm=float(np.clip(6 + 4 * gbm + 9 * m["egfr"] - 4 * m["mgmt"] + rng.normal(0, 1.5), 2, 25)),
        flair_mismatch=float(np.clip((0.5 if m["atrx"] else 1.0) + rng.normal(0, 0.04), 0.3, 1.1)),
        calcifications=int(8 * m["codel_1p19q"] + rng.integers(0, 2)),
        texture=float(np.clip(0.05 + 0.25 * m["tp53_expr_high"] + rng.normal(0, 0.02), 0, 0.5)),
        lobulation=float(np.clip(0.1 + 0.3 * m["cdkn2ab"] + rng.normal(0, 0.03), 0.02, 0.6)),
        t1_core=float(np.clip((0.35 if m["tert"] else 0.55) + rng.normal(0, 0.03), 0.2, 0.7)),
    )


def sample_survival(rng: np.random.Generator, m: dict[str, int], age: float, radius_mm: float) -> tuple[float, int]:
    lp = sum(LOG_HAZARD[k] * m[k] for k in LOG_HAZARD)
    lp += LOG_HAZARD_PER_YEAR_OF_AGE * (age - 50) + LOG_HAZARD_PER_MM_RADIUS * (radius_mm - 16)
    death = WEIBULL_SCALE_DAYS * (-np.log(rng.random()) / np.exp(lp)) ** (1 / WEIBULL_SHAPE)
    censor = rng.uniform(*FOLLOW_UP_DAYS)
    if rng.random() < LOSS_TO_FOLLOW_UP:
        censor = rng.uniform(30, censor)
    return float(round(min(death, censor), 1)), int(death <= censor)


def sample_patient(rng: np.random.Generator, site_index: int, n_sites: int,
                   age: float | None = None) -> tuple[dict, Traits]:
    """Clinical row (subtype, markers, age, sex, survival) and the imaging traits of one patient; ``age`` replaces
    the drawn age (the draw is still made, so every other draw stays the same)."""
    subtype = SUBTYPES[int(rng.choice(3, p=subtype_prevalence(site_index, n_sites)))]
    markers = sample_markers(rng, subtype)
    mean, sd = AGE[subtype]
    drawn = float(np.clip(round(rng.normal(mean, sd)), 18, 90))
    age = drawn if age is None else float(age)
    sex = "F" if rng.random() < 0.5 else "M"
    traits = sample_traits(rng, subtype, markers)
    days, event = sample_survival(rng, markers, age, traits.radius_mm)
    return {"age": age, "sex": sex, "subtype": subtype, **markers, "os_days": days, "os_event": event}, traits
