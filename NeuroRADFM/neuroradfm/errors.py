"""Errors a user can act on: each message names the file (or setting) and the problem.

The command line maps them to exit status 2 (bad input or settings); any other exception is a bug
(exit status 3, with a log to report). A batch records either kind per case and goes on.
"""

from __future__ import annotations

from pathlib import Path


class NeuroRADFMError(Exception):
    """Base class for every error the core raises on purpose."""

    def __reduce__(self) -> tuple:
        """Pickled as its message and attributes, not by calling __init__ again (whose arguments differ per class):
        an error raised in a cohort worker process reaches the main process whole."""
        return _rebuilt, (type(self), self.args), self.__dict__


def _rebuilt(cls: type[NeuroRADFMError], args: tuple) -> NeuroRADFMError:
    return cls.__new__(cls, *args)


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


class SettingsError(NeuroRADFMError, ValueError):
    """A setting that cannot work for any case (a device that is not there, an unusable output folder)."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class OutputError(NeuroRADFMError):
    """An output that could not be written (disk full, no permission) or would not stay inside its folder."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file (a missing file, a broken or looping link, a folder, a device
    or a pipe), or None when it can."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return "is a symbolic link to nothing (its target is missing, or the links loop)"
    if not path.exists():
        return "file not found"
    return "is a folder, not a file" if path.is_dir() else "is not a regular file (a device, a pipe or a socket)"


def itk_reason(error: BaseException) -> str:
    """The useful line of an ITK (SimpleITK) error: its last non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown reason"


FAILURE_KINDS = ("input", "resources", "system", "internal")
"""How a case failed: a problem with its input (NeuroRADFMError), memory, the operating system (a file that
cannot be read or written), or a bug (any other exception)."""


def describe_failure(error: BaseException) -> tuple[str, str]:
    """(kind, message) for a case that failed with ``error``: the batch records it and goes on."""
    if isinstance(error, OutputError):  # the disk or the folder, not the case
        return "system", str(error)
    if isinstance(error, NeuroRADFMError):
        return "input", str(error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch's, without torch
        return "resources", f"out of memory while processing this case ({type(error).__name__}: {error})".strip()
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return "system", f"{where}{error.strerror or error}"
    return "internal", f"internal error (a bug in neuroradfm; please report it): {type(error).__name__}: {error}"
