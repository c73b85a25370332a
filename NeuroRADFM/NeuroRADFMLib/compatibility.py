"""Which Slicer can run NeuroRADFM, and when a self-test should skip.

Imported by the module files (NeuroRADFM.py, NeuroRADFMTrain.py) at start-up, before anything else of the
extension, so this file (and the package's ``__init__``) must import and run on Python 3.9 (Slicer 5.8): no
``match``, no ``X | Y`` evaluated at run time, no import of the core.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


def slicer_version_problem(python_version: Sequence[int], slicer_version: Sequence[int] | None) -> str | None:
    """One message when this Python / Slicer cannot run the extension, None when it can.

    ``python_version``: ``sys.version_info`` or a tuple; ``slicer_version``: (major, minor[, patch]) or None when
    unknown (then only Python is checked). Slicer 5.8 has Python 3.9 and numpy 1.26, which the core cannot use."""
    python = tuple(python_version)[:3]
    slicer = None if slicer_version is None else tuple(slicer_version)[:3]
    if python[:2] >= MINIMUM_PYTHON and (slicer is None or slicer[:2] >= MINIMUM_SLICER):
        return None
    this = (f"this is Slicer {_dotted(slicer)} with Python {_dotted(python)}" if slicer is not None
            else f"this Slicer has Python {_dotted(python)}")
    return (f"NeuroRADFM needs 3D Slicer {_dotted(MINIMUM_SLICER)} or newer (Python {_dotted(MINIMUM_PYTHON)} or "
            f"newer); {this}. Install a newer Slicer from https://download.slicer.org and the extension again. "
            "The module is disabled in this Slicer.")


def running_slicer_version() -> tuple[int, int] | None:
    """(major, minor) of the running Slicer application; None outside it (slicer-core, plain Python)."""
    try:
        import slicer

        return int(slicer.app.majorVersion), int(slicer.app.minorVersion)
    except Exception:
        return None


def version_problem() -> str | None:
    """``slicer_version_problem`` for this process."""
    return slicer_version_problem(sys.version_info, running_slicer_version())


def version_note() -> str:
    """The module help text's first paragraph in a Slicer too old for the extension, else ""."""
    problem = version_problem()
    return f"{problem}\n\n" if problem else ""


def self_test_skip_reason(missing: Callable[[], list] | None = None) -> str | None:
    """Why a self-test cannot run here: a Slicer too old, or the core's packages not installed (a clean build, as on
    the extension factory); None when it can. ``missing``: the missing-packages check (default: the Lib's)."""
    problem = version_problem()
    if problem:
        return problem
    from NeuroRADFMLib.dependencies import describe_missing, missing_packages

    absent = (missing or missing_packages)()
    if absent:
        return f"{describe_missing(absent)} Install them (the module's Apply offers to) to run this test."
    return None
