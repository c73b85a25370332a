"""First-use dependency check: what the bundled core needs and what is missing in this Python.

The pinned versions are read from ``Resources/requirements.txt`` shipped with the module (the same
versions as the project's requirements.lock). PyTorch is not installed by pip here: the PyTorch
extension's helper (``PyTorchUtils``) picks the build for the machine's GPU. The check is pure; the
install function takes the installers as arguments (``slicer.util.pip_install``, the PyTorch helper)
so that only the widget calls them.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
TORCH = "torch"
PROVIDED_BY_SLICER = {"numpy", "simpleitk"}
"""Checked, never installed over Slicer's own copy (that would break Slicer); too old means a newer Slicer."""


@dataclass(frozen=True)
class Requirement:
    name: str
    specifier: str
    """``==1.2.3`` (pinned, installed by pip) or ``>=1.2`` (a minimum, for what Slicer or PyTorch provide)."""

    @property
    def pip(self) -> str:
        return f"{self.name}{self.specifier}"


@dataclass(frozen=True)
class Missing:
    requirement: Requirement
    installed: str | None
    """The installed version when it does not satisfy the requirement, None when not installed."""

    def describe(self) -> str:
        found = "not installed" if self.installed is None else f"version {self.installed} installed"
        return f"{self.requirement.name} ({self.requirement.specifier} needed, {found})"


_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)\s*((?:[<>=!~]=?\s*[^,\s]+\s*,?\s*)+)$")


def read_requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    requirements = []
    for number, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        match = _LINE.match(text)
        if match is None:
            raise ValueError(f"{path}, line {number}: cannot read requirement {text!r}")
        requirements.append(Requirement(match.group(1), match.group(2).replace(" ", "")))
    return requirements


def _release(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version (``2.13.0+cu126`` -> (2, 13, 0))."""
    numbers = []
    for part in version.split("+", 1)[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def satisfies(version: str, specifier: str) -> bool:
    """Enough of PEP 440 for this list: ==, >=, <=, >, <, != on release numbers (local tags ignored)."""
    have = _release(version)
    for clause in filter(None, specifier.split(",")):
        op, wanted = re.match(r"([<>=!~]=?)(.+)", clause).groups()
        want = _release(wanted)
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {"==": a == b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "!=": a != b,
              "~=": a >= b and a[: len(want) - 1] == b[: len(want) - 1]}[op]
        if not ok:
            return False
    return True


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages(requirements: list[Requirement] | None = None,
                     version_of: Callable[[str], str | None] = installed_version) -> list[Missing]:
    """Every requirement that is not installed or whose installed version does not satisfy it."""
    requirements = read_requirements() if requirements is None else requirements
    missing = []
    for requirement in requirements:
        version = version_of(requirement.name)
        if version is None or not satisfies(version, requirement.specifier):
            missing.append(Missing(requirement, version))
    return missing


def describe_missing(missing: list[Missing]) -> str:
    if not missing:
        return "All packages NeuroRADFM needs are installed."
    return ("NeuroRADFM needs packages that are missing or of another version: "
            + "; ".join(m.describe() for m in missing) + ".")


def install(missing: list[Missing], pip_install: Callable[[str], None],
            install_torch: Callable[[str], object] | None = None) -> list[str]:
    """Install what is missing: PyTorch through ``install_torch(specifier)`` (the PyTorch extension),
    everything else with one ``pip_install`` call of pinned requirements. Returns what was requested."""
    requested = []
    provided = [m for m in missing if m.requirement.name.lower() in PROVIDED_BY_SLICER]
    if provided:
        raise RuntimeError("this Slicer's own " + "; ".join(m.describe() for m in provided)
                           + ": NeuroRADFM needs a newer Slicer (these packages come with Slicer and are not replaced)")
    torch = [m for m in missing if m.requirement.name.lower() == TORCH]
    if torch:
        if install_torch is None:
            raise RuntimeError("PyTorch is missing and the PyTorch extension is not installed: install the "
                               "'PyTorch' extension from the Extensions Manager, restart Slicer and try again")
        install_torch(torch[0].requirement.specifier)
        requested.append(torch[0].requirement.pip)
    others = [m.requirement.pip for m in missing if m.requirement.name.lower() not in {TORCH, *PROVIDED_BY_SLICER}]
    if others:
        pip_install(" ".join(others))
        requested += others
    return requested
