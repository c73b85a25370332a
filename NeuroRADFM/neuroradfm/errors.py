"""Errors a user can act on: each message names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class NeuroRADFMError(Exception):
    """Base class for every error the core raises on purpose."""


class InputError(NeuroRADFMError, ValueError):
    """A case, image, manifest or DICOM study that cannot be used as given."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class BundleError(NeuroRADFMError, ValueError):
    """A model bundle that is missing, foreign, corrupt or of an unknown version."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
