"""Training metrics as JSON lines in a file: what a live loss curve (the Slicer Train module) reads.

Progress (neuroradfm.progress) says how far a job is; metrics say how training goes. They are kept
apart so that a reader of either never has to parse the other. One object per line, flushed at once;
every line has ``step``; the rest (``epoch``, ``loss``, per-group losses, DRO weights, ...) depends on
the trainer.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSON-lines log; with no path it records nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, **values: Any) -> None:
        if self.path is None:
            return
        line = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def _plain(value: Any) -> Any:
    """JSON-safe: numpy/torch scalars to float, non-finite floats to None, sequences element-wise."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics log (a line still being written is skipped)."""
    rows = []
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return rows
