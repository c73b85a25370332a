"""The demo case of ``neuroradfm demo`` as four image files: a native phantom (head with skull, oblique
anisotropic acquisition) that the demo bundle never saw. Used by the module's "Load demo case" button
and its self-test."""

from __future__ import annotations

from pathlib import Path

from neuroradfm import SEQUENCES


def demo_case(folder: str | Path) -> dict[str, Path]:
    """Generate the demo phantom case into ``folder`` (or reuse it); returns sequence -> file."""
    from neuroradfm.demo import DEMO_CASE_SEED, DEMO_CASE_SPACING_MM
    from neuroradfm.io import read_manifest
    from neuroradfm.phantom import generate_cohort

    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        generate_cohort(folder, n=1, sites=1, seed=DEMO_CASE_SEED, native=True, spacing=DEMO_CASE_SPACING_MM)
    entry = read_manifest(manifest)[0]
    return {sequence: Path(entry.paths[sequence]) for sequence in SEQUENCES}
