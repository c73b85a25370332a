"""First use: what the bundled core needs, what this Slicer has, and what to install (from PyPI or offline).

``resolve`` is pure: given an Environment as data (Python version, Slicer's numpy and SimpleITK, torch or none, the
other installed packages; ``release_environment`` makes one from a known Slicer release) and a Source (the internet,
or a wheel folder made by ``neuroradfm wheelhouse``), it decides: refuse (one message: a Slicer too old, a folder
that cannot serve), install (exact pins with pip, PyTorch through the PyTorch extension) or ready.
``install`` carries a plan out with injected installers (``slicer.util.pip_install``, PyTorchUtils), so that the
tests run it with the real pip on a local folder of wheels.

The list (``Resources/requirements.txt``, read by neuroradfm.wheelhouse) gives each package an accepted range and the
verified version to install. numpy and SimpleITK come with Slicer: checked, never installed, and pip is always told
to keep this Slicer's versions (``numpy==<installed>``), so that no dependency can make it replace them. PyTorch
has a lower bound only; when it is missing or older, the PyTorch extension installs it (it picks the CUDA build);
offline, a folder made with ``--with-torch`` holds the CPU build.

Where the wheel folder comes from: $NEURORADFM_WHEELHOUSE (an administrator's choice), else the folder the user
picked in the module's dialog (kept in Slicer's settings). Every message says which mode is used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform as _platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from neuroradfm.wheelhouse import (
    REQUIRES_PYTHON,
    SLICER_RELEASES,
    TORCH,
    WHEELHOUSE_REQUIREMENTS,
    Requirement,
    host_platform,
    minimum_slicer,
    normalize,
    read_manifest,
    read_pins,
    read_requirements,
    satisfies,
    wheel_name_version,
)

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
WHEELHOUSE_VARIABLE = "NEURORADFM_WHEELHOUSE"
WHEELHOUSE_SETTING = "NeuroRADFM/WheelhouseFolder"
PYPI = "https://pypi.org/simple/pip/"
READY, INSTALL, REFUSE = "ready", "install", "refuse"


class DependencyError(RuntimeError):
    """An install that cannot be done or failed; the message says what to do."""


@dataclass(frozen=True)
class Missing:
    requirement: Requirement
    installed: str | None
    """The installed version when it does not satisfy the requirement, None when not installed."""

    def describe(self) -> str:
        found = "not installed" if self.installed is None else f"version {self.installed} installed"
        return f"{self.requirement.name} ({self.requirement.specifier} needed, {found})"


PYTHON = Requirement("Python", ">=" + ".".join(map(str, REQUIRES_PYTHON)), provided=True)


@dataclass(frozen=True)
class Environment:
    """What a Slicer has, as data."""

    python: str
    packages: Mapping[str, str]
    """Installed packages as pip sees them: {normalized name: version}."""
    platform: str | None = None
    """neuroradfm.wheelhouse.PLATFORMS key of the computer (None: unknown, not checked)."""
    pytorch_extension: bool = True
    """Whether the PyTorch extension (PyTorchUtils) is there to install PyTorch."""
    torch_loaded: bool = False
    """Whether torch is imported in this Slicer session (then it cannot be replaced: files in use on Windows)."""


@dataclass(frozen=True)
class Source:
    """Where packages come from: the internet (PyPI), or a wheel folder."""

    folder: Path | None = None
    pins: Mapping[str, str] = field(default_factory=dict)
    """The folder's exact versions (its requirements.txt): {normalized name: version}."""
    wheels: frozenset = frozenset()
    """(normalized name, version) of each wheel file in the folder."""
    platform: str | None = None
    python: str | None = None
    """The folder manifest's platform and Python (None: a folder made by hand, not checked)."""

    @property
    def origin(self) -> str:
        return "from the internet (PyPI)" if self.folder is None else f"offline from {self.folder}"

    def describe(self) -> str:
        return f"installing {self.origin}"


ONLINE = Source()


@dataclass(frozen=True)
class Plan:
    action: str
    """READY, INSTALL or REFUSE."""
    message: str
    source: Source = ONLINE
    missing: tuple = ()
    pip: tuple = ()
    """Exact pins pip installs (``monai==1.6.1``)."""
    torch: str | None = None
    """The specifier to ask the PyTorch extension for (``>=2.8``), None when it is not needed."""
    guards: tuple = ()
    """``numpy==2.0.2`` etc.: installed packages pip is given as they are, so that it never replaces them."""

    @property
    def ready(self) -> bool:
        return self.action == READY

    @property
    def refused(self) -> bool:
        return self.action == REFUSE


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def current_environment(requirements: Iterable[Requirement] | None = None,
                        version_of: Callable[[str], str | None] = installed_version) -> Environment:
    requirements = read_requirements(REQUIREMENTS_FILE) if requirements is None else requirements
    packages = {}
    for requirement in requirements:
        version = version_of(requirement.name)
        if version is not None:
            packages[requirement.key] = version
    return Environment(_platform.python_version(), packages, host_platform(),
                       pytorch_extension=importlib.util.find_spec("PyTorchUtils") is not None,
                       torch_loaded=TORCH in sys.modules)


def release_environment(version: str, torch: str | None = None, packages: Mapping[str, str] | None = None,
                        pytorch_extension: bool = True, platform: str | None = None) -> Environment:
    """A freshly installed Slicer ``version`` (SLICER_RELEASES), plus ``torch`` and other ``packages`` if given."""
    release = SLICER_RELEASES[version]
    found = {**release.packages(), **{normalize(k): v for k, v in (packages or {}).items()}}
    if torch is not None:
        found[TORCH] = torch
    return Environment(release.python, found, platform, pytorch_extension)


def _missing(environment: Environment, requirements: Iterable[Requirement]) -> list[Missing]:
    missing = []
    if tuple(int(p) for p in re.findall(r"\d+", environment.python)[:2]) < REQUIRES_PYTHON:
        missing.append(Missing(PYTHON, environment.python))
    for requirement in requirements:
        version = environment.packages.get(requirement.key)
        if version is None or not satisfies(version, requirement.specifier):
            missing.append(Missing(requirement, version))
    return missing


def too_old_message(missing: Iterable[Missing], requirements: Iterable[Requirement] | None = None) -> str:
    """The one message for a Slicer whose own Python / numpy / SimpleITK the core cannot use."""
    requirements = read_requirements(REQUIREMENTS_FILE) if requirements is None else list(requirements)
    try:
        needed = minimum_slicer(requirements)
        wanted = f"Slicer {needed.version} or newer (Python {needed.python_tag})"
    except IndexError:
        wanted = "a newer Slicer"
    found = [f"{m.requirement.name} {m.installed or '(missing)'}" for m in missing if m.requirement.provided]
    return (f"NeuroRAD-FM needs {wanted}; this Slicer has {', '.join(found)}. These come with Slicer and are "
            "never replaced: install a newer Slicer from https://download.slicer.org, then this extension.")


def describe_missing(missing: list[Missing]) -> str:
    if not missing:
        return "All packages NeuroRAD-FM needs are installed."
    if any(m.requirement.provided for m in missing):
        return too_old_message(missing)
    if len(missing) > 4:  # a fresh Slicer: the names, not every range
        absent = [m.requirement.name for m in missing if m.installed is None]
        parts = [f"{len(absent)} not installed ({', '.join(absent)})"] if absent else []
        return ("NeuroRAD-FM needs packages: " + "; ".join(parts + [m.describe() for m in missing if m.installed])
                + ".")
    return ("NeuroRAD-FM needs packages that are missing or of another version: "
            + "; ".join(m.describe() for m in missing) + ".")


def missing_packages(requirements: list[Requirement] | None = None,
                     version_of: Callable[[str], str | None] = installed_version) -> list[Missing]:
    """Every requirement (and this Python) that is not installed or whose version is outside its range."""
    requirements = read_requirements(REQUIREMENTS_FILE) if requirements is None else requirements
    return _missing(current_environment(requirements, version_of), requirements)


def offline_source(folder: str | Path) -> Source:
    """A wheel folder: its pins (requirements.txt, if any), its wheels, its manifest's platform and Python."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DependencyError(f"The wheel folder {folder} does not exist (set by ${WHEELHOUSE_VARIABLE} or chosen "
                              "in the dialog): make one with `neuroradfm wheelhouse` on a computer with internet.")
    wheels = frozenset(wheel_name_version(path) for path in folder.glob("*.whl"))
    if not wheels:
        raise DependencyError(f"The wheel folder {folder} holds no wheels (.whl): make one with "
                              "`neuroradfm wheelhouse --out <folder>` on a computer with internet.")
    try:
        manifest = read_manifest(folder) or {}
        listing = folder / WHEELHOUSE_REQUIREMENTS
        pins = read_pins(listing) if listing.is_file() else {}
    except Exception as error:  # noqa: BLE001 - a damaged folder is a message, not a traceback
        raise DependencyError(f"The wheel folder {folder} cannot be used: {error}") from None
    return Source(folder, pins, wheels, manifest.get("platform"), manifest.get("python"))


def wheelhouse_folder(environ: Mapping[str, str] | None = None, setting: str | None = None) -> str | None:
    """The wheel folder to install from: $NEURORADFM_WHEELHOUSE, else the one kept in the settings, else None."""
    environ = os.environ if environ is None else environ
    return (environ.get(WHEELHOUSE_VARIABLE) or "").strip() or (setting or "").strip() or None


def resolve(environment: Environment, requirements: Iterable[Requirement] | None = None,
            source: Source = ONLINE) -> Plan:
    """Refuse, install or ready: what this Slicer needs, from ``source``."""
    requirements = read_requirements(REQUIREMENTS_FILE) if requirements is None else list(requirements)
    missing = _missing(environment, requirements)
    if not missing:
        return Plan(READY, "All packages NeuroRAD-FM needs are installed.", source)
    if any(m.requirement.provided for m in missing):
        return Plan(REFUSE, too_old_message(missing, requirements), source, tuple(missing))
    offline = source.folder is not None
    problems = []
    if offline and source.platform and environment.platform and source.platform != environment.platform:
        problems.append(f"it was made for {source.platform}, this computer is {environment.platform}")
    python = ".".join(environment.python.split(".")[:2])
    if offline and source.python and source.python != python:
        problems.append(f"it was made for Python {source.python}, this Slicer has Python {python}")
    torch_spec = None
    pins = []
    for item in missing:
        requirement = item.requirement
        if requirement.key == TORCH and item.installed is not None and environment.torch_loaded:
            return Plan(REFUSE, f"PyTorch {item.installed} is loaded in this Slicer session and NeuroRAD-FM needs "
                                f"torch{requirement.specifier}; a loaded PyTorch cannot be replaced. Restart Slicer, "
                                "open NeuroRADFM before any other AI module and install again.", source, tuple(missing))
        if requirement.key == TORCH and not (offline and TORCH in source.pins):
            if offline:
                problems.append(f"it holds no PyTorch and torch{requirement.specifier} is "
                                f"{'not installed' if item.installed is None else f'{item.installed} here'} (make "
                                "the folder with --with-torch, or let the PyTorch extension install it once online)")
            elif not environment.pytorch_extension:
                return Plan(REFUSE, "NeuroRAD-FM needs PyTorch " + requirement.specifier + ", which the PyTorch "
                                    "extension installs: install 'PyTorch' from the Extensions Manager, restart "
                                    "Slicer and try again.", source, tuple(missing))
            torch_spec = requirement.specifier
            continue
        version = source.pins.get(requirement.key) if offline and source.pins else requirement.install
        if version is None:
            problems.append(f"it has no {requirement.name} in its requirements.txt" if offline
                            else f"no version of {requirement.name} to install is listed")
        elif not satisfies(version, requirement.specifier):
            problems.append(f"it has {requirement.name} {version}, NeuroRAD-FM needs {requirement.specifier}")
        elif offline and (requirement.key, version) not in source.wheels:
            problems.append(f"it has no wheel of {requirement.name} {version}")
        else:
            pins.append(f"{requirement.name}=={version}")
    if problems and offline:
        return Plan(REFUSE, f"Cannot install offline from {source.folder}: " + "; ".join(problems) + ". Make the "
                    f"folder again with `neuroradfm wheelhouse --platform {environment.platform or '<platform>'}` "
                    "(see the README).", source, tuple(missing))
    if problems:
        return Plan(REFUSE, "Cannot install: " + "; ".join(problems) + f" in {REQUIREMENTS_FILE}.", source,
                    tuple(missing))
    guards = []
    for requirement in requirements:
        version = environment.packages.get(requirement.key)
        kept = requirement.provided or (requirement.key == TORCH and torch_spec is None
                                        and not any(p.startswith(requirement.name + "==") for p in pins))
        if kept and version is not None:
            guards.append(f"{requirement.name}=={version}")
    steps = [f"PyTorch (torch{torch_spec}) through the PyTorch extension (it picks the build for this computer's "
             "GPU)"] if torch_spec else []
    if pins:
        steps.append(f"{len(pins)} package{'s' if len(pins) > 1 else ''} with pip")
    how = source.describe()
    message = f"{describe_missing(missing)} {how[0].upper()}{how[1:]}: {', then '.join(steps)}."
    return Plan(INSTALL, message, source, tuple(missing), tuple(pins), torch_spec, tuple(guards))


def check(folder: str | Path | None = None, requirements: Iterable[Requirement] | None = None,
          version_of: Callable[[str], str | None] = installed_version) -> Plan:
    """``resolve`` for this Slicer: from the internet, or offline from ``folder``."""
    requirements = read_requirements(REQUIREMENTS_FILE) if requirements is None else list(requirements)
    source = ONLINE if folder is None else offline_source(folder)
    return resolve(current_environment(requirements, version_of), requirements, source)


def pip_arguments(plan: Plan) -> list[str]:
    """The arguments of ``pip install`` (a list: ``slicer.util.pip_install`` takes one as is, so that a Windows
    folder keeps its backslashes): ``--no-index --find-links DIR`` offline, the pins, then the guards."""
    offline = [] if plan.source.folder is None else ["--no-index", "--find-links", str(plan.source.folder)]
    return [*offline, *plan.pip, *plan.guards]


_NO_DISTRIBUTION = re.compile(r"No matching distribution found for ([^\s;]+)")


def _pip_output(error: BaseException) -> str:
    return "\n".join(str(getattr(error, name, None) or "") for name in ("output", "stderr", "stdout"))


def failure_message(plan: Plan, error: BaseException) -> str:
    """What a failed pip install means, in the mode it was in."""
    match = _NO_DISTRIBUTION.search(_pip_output(error))
    if plan.source.folder is not None:
        what = (f": the folder has no wheel of {match.group(1)} for this computer" if match
                else f" ({error})")
        return (f"Installing offline from {plan.source.folder} failed{what}. Make the folder again with `neuroradfm "
                "wheelhouse` for this computer's platform and Slicer (see the README).")
    return (f"Installing from the internet (PyPI) failed ({error}). Without internet, make a wheel folder with "
            "`neuroradfm wheelhouse` on a computer with internet and install offline from it "
            f"(${WHEELHOUSE_VARIABLE} or the dialog's 'Install offline from a folder').")


def install(plan: Plan, pip_install: Callable[[list], object],
            install_torch: Callable[[str], object] | None = None,
            version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """Carry ``plan`` out: PyTorch through ``install_torch(specifier)`` (the PyTorch extension), then one
    ``pip_install(arguments)``. Returns what was requested; a failure is a DependencyError saying what to do."""
    if plan.refused:
        raise DependencyError(plan.message)
    requested = []
    if plan.torch:
        if install_torch is None:
            raise DependencyError("PyTorch is missing and the PyTorch extension is not installed: install the "
                                  "'PyTorch' extension from the Extensions Manager, restart Slicer and try again")
        try:
            install_torch(plan.torch)
        except Exception as error:
            raise DependencyError(f"Installing PyTorch (torch{plan.torch}) through the PyTorch extension failed "
                                  f"({error}). It downloads from the internet; offline, use a wheel folder made with "
                                  "`neuroradfm wheelhouse --with-torch`.") from error
        requested.append(TORCH + plan.torch)
        version = version_of(TORCH)  # pip keeps the PyTorch just installed
        if version is not None:
            plan = replace(plan, guards=(*plan.guards, f"{TORCH}=={version}"))
    if plan.pip:
        try:
            pip_install(pip_arguments(plan))
        except Exception as error:
            raise DependencyError(failure_message(plan, error)) from error
        importlib.invalidate_caches()  # the new packages import in this session
        requested += plan.pip
    return requested


def pypi_reachable(timeout: float = 3.0, url: str = PYPI) -> bool:
    """Whether PyPI answers (through the proxy the environment sets, as pip would)."""
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 - any failure means: not reachable now
        return False


def confirmation_text(plan: Plan, reachable: bool | None = None) -> str:
    """The one question before installing: what is missing, the plan and its mode."""
    text = plan.message + " This takes several minutes."
    if plan.source.folder is None and reachable is False:
        text += ("\n\npypi.org cannot be reached from this computer. Without internet, install offline from a wheel "
                 "folder made with `neuroradfm wheelhouse` on a computer with internet (see the README).")
    return text

