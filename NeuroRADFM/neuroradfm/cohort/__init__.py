"""Public cohorts as downloaded -> a checked manifest: ``neuroradfm cohort import`` and ``cohort check``.

Layouts and their conventions, each with how sure we are of it: shared/docs/DATASETS.md.
"""

from neuroradfm.cohort.check import CheckReport, check_manifest
from neuroradfm.cohort.importer import LAYOUTS, import_cohort

__all__ = ["LAYOUTS", "CheckReport", "check_manifest", "import_cohort"]
