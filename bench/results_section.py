"""One way for a benchmark to keep its section of bench/RESULTS.md current."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def update_results(heading: str, begin: str, end: str, block: str, path: Path = RESULTS) -> None:
    """Replace the generated part of a section (``block``: from the ``begin`` marker to the ``end`` marker, both
    included) and keep what is written after ``end``; append the section under ``heading`` when it is not there."""
    text = path.read_text(encoding="utf-8")
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    else:
        text = text[:start] + block + text[stop + len(end):]
    path.write_text(text, encoding="utf-8")
