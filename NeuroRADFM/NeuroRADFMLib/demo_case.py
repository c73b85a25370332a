"""The demo case of ``neuroradfm demo`` as four image files: a native phantom (its own brain, skull, oblique
anisotropic acquisition) that the demo bundle never saw. Used by the module's "Load demo case" button
and its self-test."""

from __future__ import annotations

from pathlib import Path

from neuroradfm import SEQUENCES


def demo_case(folder: str | Path) -> dict[str, Path]:
    """Generate the demo phantom case into ``folder`` (or reuse it); returns sequence -> file."""
    from neuroradfm.demo import demo_case_manifest
    from neuroradfm.io import read_manifest

    entry = read_manifest(demo_case_manifest(folder))[0]
    return {sequence: Path(entry.paths[sequence]) for sequence in SEQUENCES}
