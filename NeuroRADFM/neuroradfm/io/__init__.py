"""Case input: one loader (explicit files, BraTS folders, DICOM studies) and cohort manifests.

Names are imported on first use, so that ``neuroradfm.io.sequence_names`` (pure Python) can be used
before SimpleITK and pandas are installed (the Slicer module's first start).
"""

from importlib import import_module
from typing import Any

_WHERE = {"Case": "case", "read_image": "images", "load_case": "loader", "CaseEntry": "manifest",
          "read_manifest": "manifest", "classify_series": "sequence_names"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
