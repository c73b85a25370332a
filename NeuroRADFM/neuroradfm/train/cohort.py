"""A cohort in memory: every case of a manifest preprocessed onto the model grid.

Batch rule: a case that fails is reported and left out; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuroradfm.errors import NeuroRADFMError
from neuroradfm.io import CaseEntry
from neuroradfm.markers import MARKER_KEYS
from neuroradfm.preprocess import PreprocessSettings, preprocess_case
from neuroradfm.progress import Progress, null_progress


@dataclass
class PreparedCohort:
    case_ids: list[str]
    sites: list[str]
    inputs: np.ndarray
    """(N, 4, K, J, I) float16 model inputs."""
    labels: np.ndarray
    """(N, M) marker labels in MARKER_KEYS order, NaN where unknown."""
    os_days: np.ndarray
    os_event: np.ndarray
    tumour: np.ndarray | None = None
    """(N, K, J, I) uint8 tumour masks on the model grid when every case has a seg, else None."""
    failures: dict[str, str] = field(default_factory=dict)

    def subset(self, index: np.ndarray) -> PreparedCohort:
        return PreparedCohort([self.case_ids[i] for i in index], [self.sites[i] for i in index], self.inputs[index],
                              self.labels[index], self.os_days[index], self.os_event[index],
                              None if self.tumour is None else self.tumour[index], dict(self.failures))


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def prepare_cohort(entries: list[CaseEntry], settings: PreprocessSettings,
                   progress: Progress = null_progress) -> PreparedCohort:
    ids, sites, inputs, labels, days, events, tumours, failures = [], [], [], [], [], [], [], {}
    for index, entry in enumerate(entries):
        progress("preprocess", index / len(entries), entry.case_id)
        try:
            case = entry.load()
            prepared = preprocess_case(case, settings)
        except NeuroRADFMError as error:
            failures[entry.case_id] = str(error)
            progress("preprocess", (index + 1) / len(entries), f"{entry.case_id} FAILED: {error}")
            continue
        ids.append(entry.case_id)
        sites.append(str(entry.site))
        inputs.append(prepared.channels.astype(np.float16))
        tumours.append(None if case.seg is None else (prepared.to_model_grid(case.seg) > 0).astype(np.uint8))
        labels.append([_number(entry.clinical.get(key)) for key in MARKER_KEYS])
        days.append(_number(entry.clinical.get("os_days")))
        events.append(_number(entry.clinical.get("os_event")))
    progress("preprocess", 1.0, f"{len(ids)} cases ready, {len(failures)} failed")
    if not ids:
        raise NeuroRADFMError("no case of the cohort could be prepared: " + "; ".join(failures.values()))
    tumour = None if any(t is None for t in tumours) else np.stack(tumours)
    return PreparedCohort(ids, sites, np.stack(inputs), np.asarray(labels, np.float64),
                          np.asarray(days), np.asarray(events), tumour, failures)
