"""First use inside Slicer: the requirement list (ranges + verified pins, tied to requirements.lock), the resolver on
each known Slicer release's bundled packages, the installers it drives, `neuroradfm wheelhouse` (commands and
manifest, pip replaced by a fake: no network here), and an offline install by the real pip from a local folder."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from neuroradfm import cli  # noqa: E402
from neuroradfm import wheelhouse as wh  # noqa: E402
from NeuroRADFMLib import dependencies as deps  # noqa: E402
from NeuroRADFMLib.dependencies import (  # noqa: E402
    REQUIREMENTS_FILE,
    Environment,
    Requirement,
    describe_missing,
    install,
    missing_packages,
    read_requirements,
    release_environment,
    resolve,
    satisfies,
)

REPO = Path(__file__).resolve().parents[1]
HOST = wh.host_platform() or "manylinux"


def lock_versions() -> dict[str, str]:
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, version = line.split("==")
        lock[wh.normalize(name)] = version
    return lock


# --- the requirement list ---------------------------------------------------------------------------------------

def test_requirement_ranges_and_pins_match_the_lock_file():
    requirements = {r.key: r for r in read_requirements()}
    lock = lock_versions()
    assert {k for k, r in requirements.items() if r.provided} == {"numpy", "simpleitk"}
    assert requirements["numpy"].specifier == ">=2.0" and requirements["simpleitk"].specifier == ">=2.5,<2.6"
    assert requirements["torch"].specifier == ">=2.8"  # a lower bound only: the PyTorch extension's build is kept
    pinned = [r for r in requirements.values() if r.install]
    assert len(pinned) >= 15 and not any(r.provided for r in pinned)
    for requirement in pinned:  # the verified versions are installed, and each lies in its own range
        assert requirement.install == lock[requirement.key], requirement
        assert satisfies(requirement.install, requirement.specifier), requirement
    for name in ("numpy", "simpleitk", "torch"):
        assert satisfies(lock[name], requirements[name].specifier), name
    for requirement in requirements.values():  # ranges, not exact pins (deepbet's mask feeds the model: exact)
        assert requirement.key == "deepbet" or not requirement.specifier.startswith("=="), requirement
    assert REQUIREMENTS_FILE == wh.REQUIREMENTS_FILE
    assert REQUIREMENTS_FILE.parent.name == "Resources" and REQUIREMENTS_FILE.parent.parent.name == "NeuroRADFM"


def test_the_list_parses_ranges_pins_and_slicer_packages(tmp_path):
    listing = tmp_path / "requirements.txt"
    listing.write_text("# comment line: install 9.9 is not a pin\nnumpy>=2.0  # provided by Slicer\n"
                       "torch>=2.8  # install 2.13.0 (installed by the PyTorch extension)\n"
                       "scikit-learn >= 1.9, <1.10, !=1.9.0  # install 1.9.1\nplain>=1\n")
    assert read_requirements(listing) == [
        Requirement("numpy", ">=2.0", None, True), Requirement("torch", ">=2.8", "2.13.0"),
        Requirement("scikit-learn", ">=1.9,<1.10,!=1.9.0", "1.9.1"), Requirement("plain", ">=1")]
    listing.write_text("monai 1.6\n")
    with pytest.raises(ValueError, match="line 1: cannot read requirement 'monai 1.6'"):
        read_requirements(listing)
    assert satisfies("2.13.0+cu126", ">=2.8") and not satisfies("2.7.1", ">=2.8")
    assert satisfies("1.9.1", ">=1.9,<1.10,!=1.9.0") and not satisfies("1.9.0", ">=1.9,<1.10,!=1.9.0")
    assert satisfies("2.9.0+cu126", "==2.9.0+cu126") and not satisfies("1.10", "<1.9")


# --- the resolver on each Slicer release ------------------------------------------------------------------------

def test_slicer_5_8_is_refused_with_one_message():
    assert [wh.SLICER_RELEASES[v].python for v in ("5.8", "5.10", "5.12")] == ["3.9.10", "3.12.10", "3.12"]
    assert [r.version for r in wh.supported_releases()] == ["5.10", "5.12"] and wh.minimum_slicer().version == "5.10"
    for torch in (None, "2.8.0"):
        plan = resolve(release_environment("5.8", torch=torch))
        assert plan.refused and not plan.pip and plan.torch is None
        assert plan.message.startswith("NeuroRAD-FM needs Slicer 5.10 or newer (Python 3.12); this Slicer has "
                                       "Python 3.9.10, numpy 1.26.4, SimpleITK 2.3.1.")
        assert "download.slicer.org" in plan.message
    with pytest.raises(deps.DependencyError, match="needs Slicer 5.10 or newer"):
        install(resolve(release_environment("5.8")), pytest.fail, pytest.fail)
    # the same message where only the numbers are known (the self-test's skip reason, the module's status line)
    missing = deps._missing(release_environment("5.8"), read_requirements())
    assert describe_missing(missing).startswith("NeuroRAD-FM needs Slicer 5.10 or newer")


def test_slicer_5_10_fresh_installs_the_pins_and_pytorch_through_the_extension():
    plan = resolve(release_environment("5.10"))
    requirements = read_requirements()
    assert plan.action == deps.INSTALL and plan.source is deps.ONLINE
    assert plan.torch == ">=2.8"
    assert list(plan.pip) == [r.pin for r in requirements if r.install and r.key != "torch"]
    assert not any(p.lower().startswith(("numpy", "simpleitk", "torch")) for p in plan.pip)
    assert plan.guards == ("numpy==2.0.2", "SimpleITK==2.5.2")  # pip keeps Slicer's own
    assert "Installing from the internet (PyPI): PyTorch (torch>=2.8) through the PyTorch extension" in plan.message
    assert deps.pip_arguments(plan) == [*plan.pip, "numpy==2.0.2", "SimpleITK==2.5.2"]


def test_slicer_5_12_keeps_what_is_installed_in_range():
    everything = {r.name: r.install for r in read_requirements() if r.install and r.key != "torch"}
    ready = resolve(release_environment("5.12", torch="2.9.0+cu126", packages=everything))
    assert ready.ready and ready.message == "All packages NeuroRAD-FM needs are installed."
    # another extension's scipy 1.17.0 and pandas 2.3.1 are in range: kept; an old monai is replaced by the pin
    others = {**everything, "scipy": "1.17.0", "pandas": "2.3.1", "monai": "1.5.2"}
    plan = resolve(release_environment("5.12", torch="2.9.0+cu126", packages=others))
    assert plan.pip == ("monai==1.6.1",) and plan.torch is None
    assert plan.guards == ("numpy==2.4.6", "SimpleITK==2.5", "torch==2.9.0+cu126")  # the CUDA build is kept
    assert "monai (>=1.6,<1.7 needed, version 1.5.2 installed)" in plan.message
    # a PyTorch below the lower bound: the extension installs a newer one, nothing else
    old_torch = resolve(release_environment("5.12", torch="2.7.1+cu118", packages=everything))
    assert old_torch.torch == ">=2.8" and old_torch.pip == () and "torch" not in " ".join(old_torch.guards)


def test_pytorch_cases_that_are_refused():
    no_extension = resolve(release_environment("5.10", pytorch_extension=False))
    assert no_extension.refused and "install 'PyTorch' from the Extensions Manager" in no_extension.message
    loaded = Environment("3.12.10", {**wh.SLICER_RELEASES["5.10"].packages(), "torch": "2.5.1"}, torch_loaded=True)
    plan = resolve(loaded)
    assert plan.refused and "PyTorch 2.5.1 is loaded in this Slicer session" in plan.message
    assert "Restart Slicer" in plan.message


def test_install_runs_pytorch_first_then_one_pip_call_without_a_second_question():
    plan = resolve(release_environment("5.10"))
    calls = []
    versions = {"torch": "2.9.1+cu128"}
    requested = install(plan, lambda args: calls.append(("pip", args)),
                        lambda spec: calls.append(("torch", spec)), version_of=versions.get)
    assert calls[0] == ("torch", ">=2.8") and calls[1][0] == "pip" and len(calls) == 2
    assert calls[1][1] == [*plan.pip, "numpy==2.0.2", "SimpleITK==2.5.2", "torch==2.9.1+cu128"]
    assert requested == ["torch>=2.8", *plan.pip]
    failed = subprocess.CalledProcessError(1, ["pip"], output="ERROR: network is unreachable")
    with pytest.raises(deps.DependencyError, match=r"Installing from the internet \(PyPI\) failed.*wheelhouse"):
        install(plan, lambda args: (_ for _ in ()).throw(failed), lambda spec: None, version_of=versions.get)
    with pytest.raises(deps.DependencyError, match="through the PyTorch extension failed.*--with-torch"):
        install(plan, calls.append, lambda spec: (_ for _ in ()).throw(OSError("no internet")))
    # the module asks once: PyTorchUtils is called without its own confirmation
    source = (REPO / "NeuroRADFM" / "NeuroRADFM.py").read_text()
    assert "askConfirmation=False" in source and "askConfirmation=True" not in source


def test_the_running_environment():
    assert missing_packages() == []  # this environment has everything (the tests run the core)
    assert deps.check().ready
    environment = deps.current_environment()
    assert environment.platform == wh.host_platform() and environment.packages["numpy"]
    requirements = [Requirement("torch", ">=2.8"), Requirement("numpy", ">=2.0", provided=True),
                    Requirement("monai", ">=1.6,<1.7", "1.6.1"), Requirement("slicerio", ">=1.4,<1.5", "1.4.0")]
    installed = {"torch": None, "numpy": "2.0.2", "monai": "1.5.0", "slicerio": "1.4.2"}
    missing = missing_packages(requirements, version_of=installed.get)
    assert [m.requirement.name for m in missing] == ["torch", "monai"]
    assert "torch (>=2.8 needed, not installed)" in describe_missing(missing)
    old = missing_packages(requirements, version_of={**installed, "numpy": "1.26.4"}.get)
    assert describe_missing(old).startswith("NeuroRAD-FM needs Slicer 5.10 or newer")


def test_where_the_wheel_folder_comes_from(tmp_path):
    assert deps.wheelhouse_folder({}, "") is None
    assert deps.wheelhouse_folder({}, "/media/usb/wheels") == "/media/usb/wheels"
    assert deps.wheelhouse_folder({"NEURORADFM_WHEELHOUSE": "/srv/wheels"}, "/media/usb") == "/srv/wheels"
    with pytest.raises(deps.DependencyError, match=re.escape(f"{tmp_path / 'none'} does not exist")):
        deps.offline_source(tmp_path / "none")
    with pytest.raises(deps.DependencyError, match="holds no wheels"):
        deps.offline_source(tmp_path)
    assert deps.pypi_reachable(timeout=2, url="http://127.0.0.1:9/") is False


def test_the_slicer_side_files_keep_to_python_3_9_syntax():
    for path in ("NeuroRADFM/NeuroRADFMLib/dependencies.py", "NeuroRADFM/neuroradfm/wheelhouse.py",
                 "NeuroRADFM/neuroradfm/errors.py", "NeuroRADFM/NeuroRADFMWidgets/dependency_dialog.py"):
        ast.parse((REPO / path).read_text(), feature_version=(3, 9))


def test_minimum_slicer_agrees_with_the_version_gate():
    from NeuroRADFMLib.compatibility import MINIMUM_PYTHON, MINIMUM_SLICER

    assert wh.minimum_slicer().version == ".".join(map(str, MINIMUM_SLICER))
    assert wh.REQUIRES_PYTHON == MINIMUM_PYTHON


# --- wheels made here, and a fake pip -----------------------------------------------------------------------

def make_wheel(folder: Path, name: str, version: str, requires=(), tag: str = "py3-none-any") -> Path:
    """A small installable wheel: one module ``<name>`` with VERSION, METADATA with Requires-Dist, RECORD."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


class FakePip:
    """Answers `pip download` / `pip wheel` from an in-memory index, like pip: markers evaluated for THIS computer
    (not the target), -c constraints honoured, a package with only a source archive is 'No matching distribution'."""

    def __init__(self, index, source_only=()):
        from packaging.requirements import Requirement as Parsed

        self.parse = Parsed
        self.index = index  # {name: {version: [requires]}}
        self.source_only = set(source_only)
        self.calls = []  # (command, the -r file's lines)

    def best(self, requirement, constraints, extra_wheels):
        requirement = self.parse(requirement)
        name = wh.normalize(requirement.name)
        specifier = requirement.specifier & constraints.get(name, "")
        built = {wh.wheel_name_version(w)[1] for w in extra_wheels if wh.wheel_name_version(w)[0] == name}
        versions = [v for v in built | (set() if name in self.source_only else set(self.index.get(name, {})))
                    if v in specifier]
        return (name, max(versions, key=wh._release)) if versions else (name, None)

    def __call__(self, command):
        lines = []
        if "-r" in command:
            lines = Path(command[command.index("-r") + 1]).read_text().split()
        self.calls.append((list(command), lines))
        if command[3] == "wheel":
            name, version = self.best(command[-1], {}, [])
            if name not in self.source_only:
                return 1, "no source"
            version = max(self.index[name], key=wh._release)
            make_wheel(Path(command[command.index("--wheel-dir") + 1]), name, version, self.index[name][version])
            return 0, "built"
        dest = Path(command[command.index("--dest") + 1])
        constraints = {}
        if "-c" in command:
            for line in Path(command[command.index("-c") + 1]).read_text().split():
                parsed = self.parse(line)
                constraints[wh.normalize(parsed.name)] = parsed.specifier
        built = list(Path(command[command.index("--find-links") + 1]).glob("*.whl")) if "--find-links" in command \
            else []
        queue, chosen = list(lines), set()
        while queue:
            text = queue.pop(0)
            name, version = self.best(text, constraints, built)
            if version is None:
                return 1, f"ERROR: Could not find a version\nERROR: No matching distribution found for {text}\n"
            if name in chosen:  # the first requirement of a name decides (the pins come first)
                continue
            chosen.add(name)
            requires = self.index[name][version]
            make_wheel(dest, name, version, requires)
            if "--no-deps" not in command:
                queue += [str(r).split(";")[0] for r in map(self.parse, requires)
                          if r.marker is None or r.marker.evaluate({"extra": ""})]
        return 0, "Saved"


INDEX = {
    "monai": {"1.6.1": ["torch>=2.8.0", "numpy<3.0,>=1.24"]},
    "deepbet": {"1.0.2": ["torch (>=1.11.0)", "tqdm", "fill_voids"]},
    "fill-voids": {"2.1.2": ["numpy"]},
    "tqdm": {"4.70.1": ['colorama; platform_system == "Windows"']},
    "colorama": {"0.4.6": []},
    "lifelines": {"0.30.3": ["autograd-gamma>=0.3", "numpy>=1.14.0"]},
    "autograd-gamma": {"0.5.0": []},
    "numpy": {"2.0.2": [], "2.4.6": []},
    "torch": {"2.13.0": ["sympy", 'nvidia-cublas; platform_system == "Linux"'],
              "2.13.0+cpu": ["sympy"]},
    "sympy": {"1.14.0": []},
    "nvidia-cublas": {"12.9": []},
}
LISTING = """numpy>=2.0  # provided by Slicer
SimpleITK>=2.5,<2.6  # provided by Slicer
torch>=2.8  # install 2.13.0
monai>=1.6,<1.7  # install 1.6.1
deepbet==1.0.2  # install 1.0.2
tqdm>=4.70  # install 4.70.1
lifelines>=0.30,<0.31  # install 0.30.3
"""


@pytest.fixture
def listing(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(LISTING)
    return path


def test_wheelhouse_commands_leave_out_pytorch_and_slicers_packages(tmp_path, listing):
    pip = FakePip(INDEX, source_only={"autograd-gamma"})
    out = tmp_path / "wheels"
    manifest_path = wh.build_wheelhouse(out, "win_amd64", "5.10", requirements_file=listing, run=pip,
                                        python="/py/python")
    first, pins = pip.calls[0]
    assert first[:4] == ["/py/python", "-m", "pip", "download"] and "--only-binary=:all:" in first
    for flag, value in (("--platform", "win_amd64"), ("--python-version", "3.12"), ("--implementation", "cp")):
        assert first[first.index(flag) + 1] == value
    assert "--no-deps" in first and first[first.index("-c") + 1].endswith("constraints.txt")
    assert pins == ["monai==1.6.1", "deepbet==1.0.2", "tqdm==4.70.1", "lifelines==0.30.3"]  # no torch, no numpy
    second, roots = pip.calls[1]
    assert "--no-deps" not in second
    # what needs PyTorch (monai, deepbet) came without dependencies; their other dependencies are asked for
    assert roots == ["tqdm==4.70.1", "lifelines==0.30.3", "tqdm", "fill_voids"]
    assert [c[0][3] for c in pip.calls].count("wheel") == 1  # autograd-gamma: a source archive built into a wheel
    assert not any("torch" in line for _, lines in pip.calls for line in lines)
    names = sorted(p.name for p in out.glob("*.whl"))
    assert names == ["autograd_gamma-0.5.0-py3-none-any.whl", "colorama-0.4.6-py3-none-any.whl",
                     "deepbet-1.0.2-py3-none-any.whl", "fill_voids-2.1.2-py3-none-any.whl",
                     "lifelines-0.30.3-py3-none-any.whl", "monai-1.6.1-py3-none-any.whl",
                     "tqdm-4.70.1-py3-none-any.whl"]  # colorama: Windows only, found although pip ran on Linux
    manifest = json.loads(manifest_path.read_text())
    assert manifest_path == out / wh.MANIFEST
    assert {k: manifest[k] for k in ("platform", "slicer", "python", "numpy", "with_torch")} == {
        "platform": "win_amd64", "slicer": "5.10", "python": "3.12", "numpy": "2.0.2", "with_torch": False}
    assert manifest["requirements"] == pins and manifest["provided_by_slicer"] == ["SimpleITK", "numpy"]
    assert [f["name"] for f in manifest["files"]] == names
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((out / entry["name"]).read_bytes()).hexdigest()
    assert (out / "requirements.txt").read_text().split("\n")[3:] == [*pins, ""]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, wh.MANIFEST, "requirements.txt"])


def test_wheelhouse_with_torch_and_numpy_of_the_release(tmp_path, listing):
    pip = FakePip(INDEX, source_only={"autograd-gamma"})
    out = tmp_path / "wheels"
    wh.build_wheelhouse(out, "win_amd64", "5.12", with_torch=True, requirements_file=listing, run=pip)
    command, pins = pip.calls[0]
    assert pins[0] == "torch==2.13.0+cpu" and "--no-deps" not in command
    assert command[command.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    names = {p.name.split("-")[0] for p in out.glob("*.whl")}
    assert {"torch", "sympy", "monai", "colorama"} <= names and "nvidia_cublas" not in names
    assert "numpy" not in names  # downloaded for the resolution, never shipped: Slicer's own
    manifest = json.loads((out / wh.MANIFEST).read_text())
    assert manifest["numpy"] == "2.4.6" and manifest["with_torch"] is True


def test_wheelhouse_refuses_a_file_or_a_foreign_folder_and_replaces_its_own(tmp_path, listing):
    pip = FakePip(INDEX, source_only={"autograd-gamma"})
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(Exception, match="is a file"):
        wh.build_wheelhouse(a_file, "manylinux", requirements_file=listing, run=pip)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("x")
    with pytest.raises(Exception, match="not an earlier result"):
        wh.build_wheelhouse(foreign, "manylinux", requirements_file=listing, run=pip)
    assert pip.calls == [] and (foreign / "holiday.jpg").is_file() and a_file.read_text() == "mine"
    out = tmp_path / "wheels"
    wh.build_wheelhouse(out, "manylinux", requirements_file=listing, run=pip)
    assert not (out / "colorama-0.4.6-py3-none-any.whl").exists()  # Linux: tqdm needs no colorama
    wh.build_wheelhouse(out, "win_amd64", requirements_file=listing, run=pip)  # its own folder: replaced
    assert json.loads((out / wh.MANIFEST).read_text())["platform"] == "win_amd64"
    assert (out / "colorama-0.4.6-py3-none-any.whl").is_file()
    (out / "mine.txt").write_text("x")
    with pytest.raises(Exception, match="mine.txt"):
        wh.build_wheelhouse(out, "win_amd64", requirements_file=listing, run=pip)


def test_wheelhouse_failures_say_why(tmp_path, listing):
    offline = FakePip({}, ())  # nothing found: as without internet
    with pytest.raises(wh.WheelhouseError, match=r"found no monai==1.6.1 for win_amd64 / Python 3.12 \(no internet"):
        wh.build_wheelhouse(tmp_path / "w1", "win_amd64", requirements_file=listing, run=offline)
    assert not (tmp_path / "w1").exists() or not any((tmp_path / "w1").iterdir())
    compiled = FakePip(INDEX, source_only={"autograd-gamma"})
    real_call = compiled.__call__

    def platform_wheel(command):  # a compiled package: the wheel built here is for this computer only
        if command[3] == "wheel":
            make_wheel(Path(command[command.index("--wheel-dir") + 1]), "autograd-gamma", "0.5.0",
                       tag="cp312-cp312-linux_x86_64")
            return 0, "built"
        return real_call(command)

    with pytest.raises(wh.WheelhouseError, match="is not pure Python"):
        wh.build_wheelhouse(tmp_path / "w2", "win_amd64", requirements_file=listing, run=platform_wheel)
    pulls_torch = FakePip({**INDEX, "fill-voids": {"2.1.2": ["torch"]}}, source_only={"autograd-gamma"})
    with pytest.raises(wh.WheelhouseError, match="pulls PyTorch in.*--with-torch"):
        wh.build_wheelhouse(tmp_path / "w3", "manylinux", requirements_file=listing, run=pulls_torch)


def test_cli_wheelhouse(tmp_path, listing, monkeypatch, capsys):
    pip = FakePip(INDEX, source_only={"autograd-gamma"})
    monkeypatch.setattr(wh, "run_streaming", pip)
    assert "wheelhouse" in cli.commands()
    out = tmp_path / "wheels"
    assert cli.main(["wheelhouse", "--out", str(out), "--platform", "macos", "--slicer", "5.12",
                     "--requirements", str(listing)]) == 0
    assert f"wheel folder: {out} (macos, Slicer 5.12" in capsys.readouterr().out
    command = pip.calls[0][0]
    assert command[command.index("--platform") + 1] == "macosx_14_0_arm64"
    assert (out / wh.MANIFEST).is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["wheelhouse", "--out", str(a_file), "--requirements", str(listing)]) == cli.EXIT_BAD_INPUT
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["wheelhouse", "--out", str(out), "--slicer", "5.8"])  # not a choice: Python 3.9
    help_text = cli._parser()._subparsers._group_actions[0].choices["wheelhouse"].format_help()
    assert "--with-torch" in help_text and "PyTorch extension" in " ".join(help_text.split())


# --- offline install with the real pip --------------------------------------------------------------------------

TINY_INDEX = {"nrfm-alpha": {"1.2.0": ["nrfm-beta>=0.5"]}, "nrfm-beta": {"0.5.1": []}}
TINY = [Requirement("nrfm-alpha", ">=1.0", "1.2.0")]


def real_pip(target: Path):
    """slicer.util.pip_install's stand-in: the real pip of this Python, into ``target``, no network."""
    def pip_install(arguments):
        assert isinstance(arguments, list)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # no find-links of ours
        environment["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir",
                        "--target", str(target), *arguments], capture_output=True, text=True, check=True,
                       env=environment)
    return pip_install


@pytest.fixture
def tiny_wheelhouse(tmp_path):
    listing = tmp_path / "tiny-requirements.txt"
    listing.write_text("nrfm-alpha>=1.0  # install 1.2.0\n")
    folder = tmp_path / "wheels"
    wh.build_wheelhouse(folder, HOST, "5.10", requirements_file=listing, run=FakePip(TINY_INDEX))
    return folder


def test_offline_install_from_a_wheel_folder_with_the_real_pip(tmp_path, tiny_wheelhouse):
    environment = deps.current_environment(TINY)
    assert "nrfm-alpha" not in environment.packages
    source = deps.offline_source(tiny_wheelhouse)
    assert source.pins == {"nrfm-alpha": "1.2.0"} and source.platform == HOST and source.python == "3.12"
    plan = resolve(Environment("3.12.10", {}, HOST), TINY, source)
    assert plan.action == deps.INSTALL and plan.pip == ("nrfm-alpha==1.2.0",)
    assert f"Installing offline from {tiny_wheelhouse}" in plan.message
    assert deps.pip_arguments(plan) == ["--no-index", "--find-links", str(tiny_wheelhouse), "nrfm-alpha==1.2.0"]
    target = tmp_path / "site"
    assert install(plan, real_pip(target)) == ["nrfm-alpha==1.2.0"]
    assert "VERSION = '1.2.0'" in (target / "nrfm_alpha" / "__init__.py").read_text()
    assert (target / "nrfm_beta" / "__init__.py").is_file()  # its dependency, from the folder too


def test_offline_install_names_the_folder_and_the_missing_package(tmp_path, tiny_wheelhouse):
    environment = Environment("3.12.10", {}, HOST)
    (tiny_wheelhouse / "nrfm_beta-0.5.1-py3-none-any.whl").unlink()  # a dependency missing: pip says so
    plan = resolve(environment, TINY, deps.offline_source(tiny_wheelhouse))
    with pytest.raises(deps.DependencyError) as failed:
        install(plan, real_pip(tmp_path / "site"))
    assert str(failed.value).startswith(f"Installing offline from {tiny_wheelhouse} failed: the folder has no wheel "
                                        "of nrfm-beta>=0.5 for this computer")
    (tiny_wheelhouse / "nrfm_alpha-1.2.0-py3-none-any.whl").unlink()  # a listed package missing: said before pip
    make_wheel(tiny_wheelhouse, "nrfm-other", "1.0")
    plan = resolve(environment, TINY, deps.offline_source(tiny_wheelhouse))
    assert plan.refused and plan.message.startswith(
        f"Cannot install offline from {tiny_wheelhouse}: it has no wheel of nrfm-alpha 1.2.0.")
    older = [Requirement("nrfm-alpha", ">=2.0", "2.1.0")]  # a folder made for an older module version
    plan = resolve(environment, older, deps.offline_source(tiny_wheelhouse))
    assert plan.refused and "it has nrfm-alpha 1.2.0, NeuroRAD-FM needs >=2.0" in plan.message


def test_offline_folder_of_another_platform_or_without_pytorch_is_refused(tmp_path, tiny_wheelhouse):
    other = "win_amd64" if HOST != "win_amd64" else "manylinux"
    source = deps.offline_source(tiny_wheelhouse)
    plan = resolve(Environment("3.12.10", {}, other), TINY, source)
    assert plan.refused and f"it was made for {HOST}, this computer is {other}" in plan.message
    plan = resolve(Environment("3.11.2", {}, HOST), TINY, source)
    assert plan.refused and "made for Python 3.12, this Slicer has Python 3.11" in plan.message
    with_torch = [*TINY, Requirement("torch", ">=2.8", "2.13.0")]
    plan = resolve(Environment("3.12.10", {}, HOST), with_torch, source)
    assert plan.refused and "it holds no PyTorch" in plan.message and "--with-torch" in plan.message
    # a folder with PyTorch's CPU build: pip installs it from there, the PyTorch extension is not asked
    make_wheel(tiny_wheelhouse, "torch", "2.13.0+cpu")
    (tiny_wheelhouse / "requirements.txt").write_text("nrfm-alpha==1.2.0\ntorch==2.13.0+cpu\n")
    plan = resolve(Environment("3.12.10", {}, HOST, pytorch_extension=False), with_torch,
                   deps.offline_source(tiny_wheelhouse))
    assert plan.action == deps.INSTALL and plan.torch is None and "torch==2.13.0+cpu" in plan.pip
    loaded = Environment("3.12.10", {"torch": "2.5.1"}, HOST, torch_loaded=True)  # not even from the folder
    plan = resolve(loaded, with_torch, deps.offline_source(tiny_wheelhouse))
    assert plan.refused and "is loaded in this Slicer session" in plan.message


def test_a_hand_made_folder_without_a_list_uses_the_modules_pins(tmp_path):
    folder = tmp_path / "hand"
    make_wheel(folder, "nrfm-alpha", "1.2.0", ["nrfm-beta>=0.5"])
    make_wheel(folder, "nrfm-beta", "0.5.1")
    plan = resolve(Environment("3.12.10", {}, HOST), TINY, deps.offline_source(folder))
    assert plan.pip == ("nrfm-alpha==1.2.0",)
    target = tmp_path / "site"
    install(plan, real_pip(target))
    assert (target / "nrfm_alpha").is_dir() and (target / "nrfm_beta").is_dir()
