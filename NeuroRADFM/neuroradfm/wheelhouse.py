"""What the Slicer extension installs, what each Slicer release brings, and offline wheel folders.

- ``Resources/requirements.txt`` (read by ``read_requirements``): for each package the range that is ACCEPTED when
  it is already installed, and the verified version that is INSTALLED when it is missing or outside the range
  (``monai>=1.6,<1.7  # install 1.6.1``). numpy and SimpleITK are marked ``# provided by Slicer``: checked, never
  installed. PyTorch has a lower bound only: the PyTorch extension installs it (and picks the CUDA build).
- ``SLICER_RELEASES``: Python, numpy and SimpleITK of each Slicer release, as data (read from Slicer's source).
- ``build_wheelhouse`` (``neuroradfm wheelhouse``): on a computer with internet, ``pip download`` every package the
  extension installs, for another computer's platform and Slicer, into a folder that the module installs from
  offline (``pip install --no-index --find-links``).

Imported by the Slicer-side dependency check (NeuroRADFMLib.dependencies), so the module level needs nothing but
the standard library and keeps to Python 3.9 syntax.
"""

from __future__ import annotations

import email.parser
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroradfm.errors import NeuroRADFMError
from neuroradfm.hashing import file_sha256

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
"""The module's list, beside the bundled core (source tree and installed extension alike)."""

REQUIRES_PYTHON = (3, 10)
"""The core's minimum Python (pyproject.toml's requires-python)."""

TORCH = "torch"
MANIFEST = "neuroradfm-wheelhouse.json"
WHEELHOUSE_REQUIREMENTS = "requirements.txt"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class WheelhouseError(NeuroRADFMError):
    """A wheel folder that cannot be made or used (pip failed, a package without a wheel for the platform)."""


def normalize(name: str) -> str:
    """PEP 503 name: ``SimpleITK`` -> ``simpleitk``, ``fill_voids`` -> ``fill-voids``."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the requirement list ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    name: str
    specifier: str
    """The accepted range (``>=1.6,<1.7``): an installed version in it is kept."""
    install: str | None = None
    """The verified version installed (``name==install``) when missing or outside the range; None: not pip's job."""
    provided: bool = False
    """Comes with Slicer (numpy, SimpleITK): checked, never installed over Slicer's own build."""

    @property
    def key(self) -> str:
        return normalize(self.name)

    @property
    def pin(self) -> str | None:
        return None if self.install is None else f"{self.name}=={self.install}"


_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)\s*((?:[<>=!~]=?\s*[^,\s]+\s*,?\s*)+)$")
_INSTALL = re.compile(r"\binstall\s+([0-9][A-Za-z0-9.+!\-]*)")
_PROVIDED = re.compile(r"\bprovided by Slicer\b", re.IGNORECASE)


def read_requirements(path: str | Path | None = None) -> list[Requirement]:
    """The requirement list: ``name<range>  # install <version>`` or ``name<range>  # provided by Slicer``."""
    path = REQUIREMENTS_FILE if path is None else Path(path)
    requirements = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text, _, comment = line.partition("#")
        text = text.strip()
        if not text:
            continue
        match = _LINE.match(text)
        if match is None:
            raise ValueError(f"{path}, line {number}: cannot read requirement {text!r}")
        pinned = _INSTALL.search(comment)
        requirements.append(Requirement(match.group(1), match.group(2).replace(" ", ""),
                                        pinned.group(1) if pinned else None, bool(_PROVIDED.search(comment))))
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
    """Enough of PEP 440 for these lists: ==, >=, <=, >, <, !=, ~= on release numbers (local tags ignored)."""
    have = _release(version)
    for clause in filter(None, specifier.replace(" ", "").split(",")):
        op, wanted = re.match(r"([<>=!~]=?)(.+)", clause).groups()
        want = _release(wanted)
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {"==": a == b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "!=": a != b,
              "~=": a >= b and a[: len(want) - 1] == b[: len(want) - 1]}[op]
        if not ok:
            return False
    return True


# --- what each Slicer release brings ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SlicerRelease:
    version: str
    python: str
    numpy: str
    simpleitk: str

    @property
    def python_tag(self) -> str:
        """``3.12`` (pip's --python-version)."""
        return ".".join(self.python.split(".")[:2])

    def packages(self) -> dict[str, str]:
        """The bundled packages the requirement list checks (normalized names)."""
        return {"numpy": self.numpy, "simpleitk": self.simpleitk}


SLICER_RELEASES: dict[str, SlicerRelease] = {r.version: r for r in (
    # Read from Slicer's source at tags v5.8.1 / v5.10.0 / v5.12.0: the top CMakeLists.txt (Python),
    # SuperBuild/External_python-numpy.cmake and External_SimpleITK.cmake (docs/SLICER-CORE.md).
    SlicerRelease("5.8", python="3.9.10", numpy="1.26.4", simpleitk="2.3.1"),
    SlicerRelease("5.10", python="3.12.10", numpy="2.0.2", simpleitk="2.5.2"),
    SlicerRelease("5.12", python="3.12", numpy="2.4.6", simpleitk="2.5"),  # SimpleITK 2.5.x: patch not recorded
)}


def python_releases() -> list[str]:
    """The known Slicer releases whose Python the core runs on (``neuroradfm wheelhouse --slicer`` choices)."""
    return [v for v, r in SLICER_RELEASES.items() if _release(r.python)[:2] >= REQUIRES_PYTHON]


def release_problems(python: str, packages: dict[str, str], requirements: Iterable[Requirement]) -> list[str]:
    """What of Slicer's own (Python, numpy, SimpleITK) is too old for the core: ``["Python 3.9.10", ...]``."""
    problems = [] if _release(python)[:2] >= REQUIRES_PYTHON else [f"Python {python}"]
    for requirement in requirements:
        if requirement.provided:
            version = packages.get(requirement.key)
            if version is None or not satisfies(version, requirement.specifier):
                problems.append(f"{requirement.name} {version or '(missing)'}")
    return problems


def supported_releases(requirements: Iterable[Requirement] | None = None) -> list[SlicerRelease]:
    """The known Slicer releases the extension runs on, oldest first."""
    requirements = read_requirements() if requirements is None else list(requirements)
    return [release for release in sorted(SLICER_RELEASES.values(), key=lambda r: _release(r.version))
            if not release_problems(release.python, release.packages(), requirements)]


def minimum_slicer(requirements: Iterable[Requirement] | None = None) -> SlicerRelease:
    return supported_releases(requirements)[0]


# --- offline wheel folders --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Platform:
    key: str
    pip_platforms: tuple[str, ...]
    """pip download's --platform tags (pip widens a macOS tag to older macOS versions itself, not manylinux)."""
    markers: tuple[tuple[str, str], ...]
    """PEP 508 environment markers of that platform (pip evaluates markers for the computer it runs on)."""
    torch_local: str
    """Local label of the CPU build on download.pytorch.org/whl/cpu (macOS wheels have none)."""


PLATFORMS: dict[str, Platform] = {p.key: p for p in (
    Platform("win_amd64", ("win_amd64",),
             (("sys_platform", "win32"), ("platform_system", "Windows"), ("os_name", "nt"),
              ("platform_machine", "AMD64")), "+cpu"),
    Platform("manylinux",  # glibc 2.28 (Slicer's Linux builds) down to manylinux1
             tuple(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)) + ("manylinux2014_x86_64",),
             (("sys_platform", "linux"), ("platform_system", "Linux"), ("os_name", "posix"),
              ("platform_machine", "x86_64")), "+cpu"),
    # Apple silicon only: PyTorch >= 2.8 has no wheels for Intel Macs
    Platform("macos", ("macosx_14_0_arm64",),
             (("sys_platform", "darwin"), ("platform_system", "Darwin"), ("os_name", "posix"),
              ("platform_machine", "arm64")), ""),
)}


def host_platform() -> str | None:
    """The PLATFORMS key of this computer, None when there is none (another OS or processor)."""
    import platform

    machine = platform.machine().lower()
    if sys.platform == "win32" and machine in ("amd64", "x86_64"):
        return "win_amd64"
    if sys.platform.startswith("linux") and machine in ("x86_64", "amd64"):
        return "manylinux"
    if sys.platform == "darwin" and machine == "arm64":
        return "macos"
    return None


Runner = Callable[[Sequence[str]], "tuple[int, str]"]
"""Runs a command, returns (exit status, its output): injected by the tests, which have no network."""


def run_streaming(command: Sequence[str]) -> tuple[int, str]:
    """Run ``command``, show its output as it comes, return (exit status, the output)."""
    print("$ " + " ".join(command), flush=True)
    lines = []
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return process.returncode, "".join(lines)


def pip_download_command(python: str, platform: Platform, release: SlicerRelease, dest: Path, requirements: Path,
                         constraints: Path | None = None, find_links: Path | None = None, deps: bool = True,
                         extra_index: str | None = None) -> list[str]:
    """``python -m pip download --only-binary=:all: --platform <tag>... --python-version 3.12 --implementation cp
    --dest DIR -r <requirements>`` (+ ``-c``, ``--find-links``, ``--no-deps``, ``--extra-index-url``)."""
    command = [python, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:"]
    for tag in platform.pip_platforms:
        command += ["--platform", tag]
    command += ["--python-version", release.python_tag, "--implementation", "cp", "--dest", str(dest),
                "-r", str(requirements)]
    if constraints is not None:
        command += ["-c", str(constraints)]
    if find_links is not None:
        command += ["--find-links", str(find_links)]
    if not deps:
        command.append("--no-deps")
    if extra_index:
        command += ["--extra-index-url", extra_index]
    return command


def pip_wheel_command(python: str, requirement: str, wheel_dir: Path) -> list[str]:
    """Build one package's wheel from its source archive (for the packages PyPI has no wheel of)."""
    return [python, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--wheel-dir", str(wheel_dir),
            requirement]


_NO_DISTRIBUTION = re.compile(r"No matching distribution found for ([^\s;]+)")


def wheel_name_version(path: str | Path) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name."""
    parts = Path(path).name[:-len(".whl")].split("-")
    return normalize(parts[0]), parts[1]


def wheel_requires(path: str | Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if not names:
            raise WheelhouseError(f"{path}: not a wheel (no .dist-info/METADATA)")
        metadata = email.parser.Parser().parsestr(archive.read(names[0]).decode("utf-8", "replace"))
    return metadata.get_all("Requires-Dist") or []


def _packaging_requirement():
    try:
        from packaging.requirements import Requirement as Parsed
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement as Parsed
    return Parsed


def marker_environment(platform: Platform, release: SlicerRelease) -> dict[str, str]:
    full = release.python if release.python.count(".") == 2 else release.python + ".0"
    return {"python_version": release.python_tag, "python_full_version": full, "implementation_name": "cpython",
            "implementation_version": full, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_version": "", **dict(platform.markers)}


def applicable(requires: Iterable[str], environment: dict[str, str], extras: Iterable[str] = ()) -> list:
    """The requirements (packaging Requirement objects) that apply on the target, with these extras asked for."""
    parsed_type = _packaging_requirement()
    found = []
    for text in requires:
        requirement = parsed_type(text)
        if requirement.marker is None or any(requirement.marker.evaluate({**environment, "extra": extra})
                                             for extra in ("", *extras)):
            found.append(requirement)
    return found


def missing_dependencies(folder: Path, environment: dict[str, str], skip: Iterable[str]) -> list[str]:
    """Dependencies the folder's wheels have on the target platform but no wheel in the folder provides
    (``name<specifiers>``): pip evaluates markers for the computer it runs on, not the target."""
    skip = {normalize(name) for name in skip}
    wheels = {wheel_name_version(path)[0]: wheel_requires(path) for path in sorted(folder.glob("*.whl"))}
    extras: dict[str, set[str]] = {key: set() for key in wheels}
    while True:
        missing: dict[str, list[str]] = {}
        grown = False
        for key, requires in wheels.items():
            for requirement in applicable(requires, environment, extras[key]):
                name = normalize(requirement.name)
                if name in skip:
                    continue
                if name not in wheels:
                    missing.setdefault(name, []).append(str(requirement.specifier))
                elif not set(requirement.extras) <= extras[name]:
                    extras[name] |= set(requirement.extras)
                    grown = True
        if not grown:
            return [name + ",".join(s for s in specifiers if s) for name, specifiers in sorted(missing.items())]


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


class _Downloader:
    """pip download rounds into one folder; a package PyPI has only as source (autograd-gamma) is built into a
    wheel here, which must then be pure Python (``-none-any``) to serve another platform."""

    MAX_BUILDS = 10

    def __init__(self, python: str, platform: Platform, release: SlicerRelease, dest: Path, scratch: Path,
                 run: Runner, extra_index: str | None) -> None:
        self.python, self.platform, self.release, self.dest, self.run = python, platform, release, dest, run
        self.scratch, self.extra_index = scratch, extra_index
        self.built = scratch / "built"
        self.built.mkdir()
        self.constraints = scratch / "constraints.txt"  # pip resolves against the numpy of that Slicer
        self.constraints.write_text(f"numpy=={release.numpy}\n", encoding="utf-8")
        self.rounds = 0
        self.commands: list[list[str]] = []

    def download(self, requirements: Sequence[str], deps: bool) -> None:
        self.rounds += 1
        listing = self.scratch / f"round-{self.rounds}.txt"
        listing.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
        tried: set[str] = set()
        while True:
            command = pip_download_command(self.python, self.platform, self.release, self.dest, listing,
                                           self.constraints, self.built, deps, self.extra_index)
            self.commands.append(command)
            status, output = self.run(command)
            if status == 0:
                return
            match = _NO_DISTRIBUTION.search(output)
            wanted = match.group(1) if match else None
            if wanted is None or normalize(re.split(r"[\[<>=!~]", wanted)[0]) in tried \
                    or len(tried) >= self.MAX_BUILDS:
                raise WheelhouseError(f"pip download failed (exit status {status}; no internet, or a package "
                                      f"without a wheel for {self.platform.key} / Python {self.release.python_tag}):"
                                      f"\n{_tail(output)}")
            tried.add(normalize(re.split(r"[\[<>=!~]", wanted)[0]))
            self.build(wanted)

    def build(self, requirement: str) -> None:
        before = set(self.built.glob("*.whl"))
        command = pip_wheel_command(self.python, requirement, self.built)
        self.commands.append(command)
        status, output = self.run(command)
        made = sorted(set(self.built.glob("*.whl")) - before)
        if status != 0 or not made:
            raise WheelhouseError(f"pip found no {requirement} for {self.platform.key} / Python "
                                  f"{self.release.python_tag} (no internet, or PyPI has no wheel of it for that "
                                  f"platform), and building one from its source failed:\n{_tail(output)}")
        for wheel in made:
            if not wheel.name.endswith("-none-any.whl"):
                wheel.unlink()
                raise WheelhouseError(f"{requirement} has no wheel for {self.platform.key} / Python "
                                      f"{self.release.python_tag} on PyPI and is not pure Python (built "
                                      f"{wheel.name}): it cannot go into an offline folder for that platform")


def build_wheelhouse(out: str | Path, platform: str | None = None, slicer: str = "5.10", with_torch: bool = False,
                     requirements_file: str | Path | None = None, run: Runner | None = None,
                     python: str = sys.executable) -> Path:
    """Download every package the extension installs into ``out`` for ``platform`` and ``slicer``; returns the
    manifest's path. numpy and SimpleITK are left out (Slicer's own); PyTorch only with ``with_torch`` (the CPU build
    from download.pytorch.org), since the PyTorch extension normally picks the build for the GPU.

    ``out`` must be new, empty, or a folder this function wrote (it is replaced as a whole, only on success)."""
    from neuroradfm import __version__
    from neuroradfm.atomic import atomic_folder

    run = run or run_streaming
    platform = platform or host_platform()
    if platform not in PLATFORMS:
        raise WheelhouseError(f"--platform: {platform!r} is not one of {', '.join(PLATFORMS)}")
    target = PLATFORMS[platform]
    listing = REQUIREMENTS_FILE if requirements_file is None else Path(requirements_file)
    if not listing.is_file():
        raise WheelhouseError(f"{listing}: the requirement list is not there (a core installed with pip has none): "
                              "pass --requirements <the extension's NeuroRADFM/Resources/requirements.txt>")
    requirements = read_requirements(listing)
    releases = {r.version: r for r in supported_releases(requirements)}
    if slicer not in releases:
        raise WheelhouseError(f"--slicer: {slicer} is not one of the supported Slicer releases "
                              f"({', '.join(releases)})")
    release = releases[slicer]
    installs = [r for r in requirements if not r.provided and r.install and (with_torch or r.key != TORCH)]
    pins = [f"{r.pin}{target.torch_local if r.key == TORCH else ''}" for r in installs]
    provided = {r.key for r in requirements if r.provided}
    environment = marker_environment(target, release)

    with atomic_folder(out, own=[MANIFEST, WHEELHOUSE_REQUIREMENTS, "*.whl"]) as stage, \
            tempfile.TemporaryDirectory(prefix="neuroradfm-wheelhouse-") as scratch:
        pip = _Downloader(python, target, release, stage, Path(scratch), run,
                          TORCH_CPU_INDEX if with_torch else None)
        if with_torch:
            pip.download(pins, deps=True)
        else:  # PyTorch out: what needs it comes without dependencies, their other dependencies are asked for
            pip.download(pins, deps=False)
            needs_torch, roots = set(), []
            for wheel in sorted(stage.glob("*.whl")):
                requires = applicable(wheel_requires(wheel), environment)
                if any(normalize(r.name) == TORCH for r in requires):
                    needs_torch.add(wheel_name_version(wheel)[0])
                    roots += [str(r).split(";")[0].strip() for r in requires
                              if normalize(r.name) not in provided | {TORCH}]
            roots = [p for p in pins if normalize(p.split("==")[0]) not in needs_torch] + roots
            if roots:
                pip.download(roots, deps=True)
        skip = provided | (set() if with_torch else {TORCH})
        for _ in range(5):  # dependencies that apply on the target but not here (colorama on Windows)
            missing = missing_dependencies(stage, environment, skip)
            if not missing:
                break
            pip.download(missing, deps=True)
        else:
            raise WheelhouseError(f"dependencies still missing after 5 rounds: {', '.join(missing)}")
        files = sorted(stage.glob("*.whl"))
        if not with_torch:
            pulled = [f.name for f in files if wheel_name_version(f)[0] in (TORCH, "triton")
                      or wheel_name_version(f)[0].startswith("nvidia-")]
            if pulled:
                raise WheelhouseError(f"a package pulls PyTorch in through its dependencies ({', '.join(pulled)}); "
                                      "use --with-torch")
        for wheel in files:
            if wheel_name_version(wheel)[0] in provided:  # Slicer's own numpy / SimpleITK: never installed
                wheel.unlink()
        files = sorted(stage.glob("*.whl"))
        (stage / WHEELHOUSE_REQUIREMENTS).write_text(
            f"# Written by `neuroradfm wheelhouse` (neuroradfm {__version__}) for {platform}, Python "
            f"{release.python_tag}, Slicer {release.version}: the exact versions this folder holds wheels for.\n"
            "# In Slicer the NeuroRADFM module installs from here (NEURORADFM_WHEELHOUSE or its dialog); by hand:\n"
            "#   PythonSlicer -m pip install --no-index --find-links <this folder> -r requirements.txt\n"
            + "".join(f"{pin}\n" for pin in pins), encoding="utf-8")
        manifest = {
            "format": "neuroradfm-wheelhouse", "format_version": 1, "neuroradfm": __version__,
            "platform": platform, "pip_platforms": list(target.pip_platforms), "python": release.python_tag,
            "implementation": "cp", "slicer": release.version, "numpy": release.numpy, "with_torch": with_torch,
            "requirements": pins, "provided_by_slicer": sorted(r.name for r in requirements if r.provided),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [{"name": f.name, "sha256": file_sha256(f), "bytes": f.stat().st_size} for f in files],
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return Path(out) / MANIFEST


def read_manifest(folder: str | Path) -> dict | None:
    """A wheel folder's manifest, None when it has none (a folder of wheels made by hand)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WheelhouseError(f"{path}: cannot be read ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "neuroradfm-wheelhouse":
        raise WheelhouseError(f"{path}: not a neuroradfm wheelhouse manifest")
    return manifest


def read_pins(path: str | Path) -> dict[str, str]:
    """``name==version`` lines of a wheel folder's requirements.txt: {normalized name: version}."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            name, separator, version = text.partition("==")
            if not separator or not version.strip():
                raise WheelhouseError(f"{path}: {text!r} is not an exact pin (name==version)")
            pins[normalize(name.strip())] = version.strip()
    return pins
