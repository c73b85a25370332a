"""The one progress protocol: ``progress(stage, fraction, message)``.

Long jobs call it; the console shows a tqdm bar, the Slicer module reads JSON lines
(``{"stage": ..., "progress": 0.42, "message": ...}``) from the process's stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None: ...


def null_progress(stage: str, fraction: float, message: str = "") -> None:
    """Progress sink for library calls that nobody watches."""


class JsonLinesProgress:
    """One JSON object per line, flushed at once so a parent process can follow."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        line = {"stage": stage, "progress": round(float(fraction), 4), "message": message}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()


class TqdmProgress:
    """A console bar over the whole job (fraction 0..1), its text showing the stage."""

    def __init__(self, description: str = "neuroradfm") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=description, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self.bar.set_postfix_str(f"{stage} {message}".strip(), refresh=False)
        self.bar.update(max(0, round(fraction * 1000) - self.bar.n))
        if fraction >= 1.0:
            self.bar.close()


def make_progress(kind: str) -> Progress:
    """``tqdm`` for people, ``json`` for the Slicer module, ``none`` for silence."""
    if kind == "json":
        return JsonLinesProgress()
    if kind == "tqdm":
        return TqdmProgress()
    if kind == "none":
        return null_progress
    raise ValueError(f"unknown progress kind {kind!r} (use tqdm, json or none)")


def sub_progress(progress: Progress, start: float, end: float) -> Progress:
    """Map a sub-job's 0..1 onto [start, end] of the parent's range."""

    def report(stage: str, fraction: float, message: str = "") -> None:
        progress(stage, start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report
