"""The molecular markers the product predicts, in one place so that the phantom cohort,
clinical tables, probes and outputs all use the same names.

Each marker is binary: 1 is the "positive" state named in ``positive``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Marker:
    key: str
    label: str
    positive: str
    negative: str


MARKERS: tuple[Marker, ...] = (
    Marker("mgmt", "MGMT promoter", "methylated", "unmethylated"),
    Marker("idh1", "IDH1", "mutant", "wildtype"),
    Marker("codel_1p19q", "1p/19q", "codeleted", "intact"),
    Marker("egfr", "EGFR", "amplified", "not amplified"),
    Marker("atrx", "ATRX", "lost/mutant", "retained"),
    Marker("tp53", "TP53", "mutant", "wildtype"),
    Marker("cdkn2ab", "CDKN2A/B", "homozygous deletion", "intact"),
    Marker("tert", "TERT promoter", "mutant", "wildtype"),
    Marker("ki67_high", "Ki-67 index", "high (>= 20%)", "low (< 20%)"),
    Marker("tp53_expr_high", "TP53 expression", "high (IHC >= 10%)", "low (IHC < 10%)"),
)

MARKER_KEYS: tuple[str, ...] = tuple(m.key for m in MARKERS)

SURVIVAL_COLUMNS = ("os_days", "os_event")
"""Overall survival in days and the event indicator (1 = death observed, 0 = censored)."""


def marker(key: str) -> Marker:
    for m in MARKERS:
        if m.key == key:
            return m
    raise KeyError(f"unknown marker {key!r}; known: {', '.join(MARKER_KEYS)}")
