"""Case input: one loader (explicit files, BraTS folders, DICOM studies) and cohort manifests."""

from neuroradfm.io.case import Case
from neuroradfm.io.images import read_image
from neuroradfm.io.loader import load_case
from neuroradfm.io.manifest import CaseEntry, read_manifest
from neuroradfm.io.sequence_names import classify_series

__all__ = ["Case", "CaseEntry", "classify_series", "load_case", "read_image", "read_manifest"]
