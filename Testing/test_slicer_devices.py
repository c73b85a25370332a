"""The device selector's data (NeuroRADFMLib.devices) and the module start-up checks (NeuroRADFMLib.compatibility):
GPUs by name and memory, a warning for a GPU the installed PyTorch build has no kernels for, a PyTorch that fails to
load with any exception, no PyTorch import at widget set-up, and a Slicer / Python too old for the extension.

The fake torch modules below are test data (a GPU's properties and a build's arch list), not a mock of our code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NeuroRADFM"))  # NeuroRADFMLib, as Slicer finds it

from NeuroRADFMLib.compatibility import (  # noqa: E402
    MINIMUM_PYTHON,
    MINIMUM_SLICER,
    self_test_skip_reason,
    slicer_version_problem,
    version_problem,
)
from NeuroRADFMLib.dependencies import Missing, Requirement  # noqa: E402
from NeuroRADFMLib.devices import (  # noqa: E402
    AUTO,
    CPU,
    arch_problem,
    device_listing,
    list_devices,
    placeholder_choices,
    torch_install_problem,
)

PYTHON39 = Path("/root/.pyenv/versions/3.9.18/bin/python")
BUILD_SM50_SM86 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]
BUILD_SM50_SM90 = [*BUILD_SM50_SM86, "sm_90", "compute_90"]


def fake_torch(gpus=(), arch_list=(), available=None):
    """A torch module as far as device listing reads it: ``gpus`` = [(name, bytes, (major, minor))]."""
    gpus = list(gpus)

    def properties(index):
        name, memory, _ = gpus[index]
        return SimpleNamespace(name=name, total_memory=memory)

    cuda = SimpleNamespace(
        is_available=lambda: bool(gpus) if available is None else available,
        device_count=lambda: len(gpus),
        get_device_properties=properties,
        get_device_capability=lambda index: gpus[index][2],
        get_arch_list=lambda: list(arch_list),
    )
    return SimpleNamespace(cuda=cuda)


def loader(torch):
    return lambda: torch


def raising(error):
    def load(*_):
        raise error

    return load


H100 = ("NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))


def test_no_cuda_lists_the_cpu_only():
    listing = device_listing(loader(fake_torch(available=False)))
    assert listing.choices() == [(CPU, "CPU")]
    assert listing.message is None and listing.torch_loaded
    assert listing.default == CPU and listing.resolve(AUTO) == CPU and listing.resolve("cuda:0") == CPU


def test_a_supported_gpu_is_listed_by_name_and_memory_and_is_the_default():
    listing = device_listing(loader(fake_torch([H100], BUILD_SM50_SM90)))
    assert listing.choices() == [("cuda:0", "GPU 0: NVIDIA H100 80GB HBM3 (80 GiB)"), (CPU, "CPU")]
    assert listing.message is None and listing.problem("cuda:0") is None
    assert listing.default == "cuda:0" and listing.resolve(AUTO) == "cuda:0" and listing.resolve(CPU) == CPU
    assert listing.resolve("cuda:3") == "cuda:0"  # a GPU no longer there
    assert list_devices(fake_torch([H100], BUILD_SM50_SM90)) == listing.choices()  # the older entry point


def test_a_gpu_newer_than_the_build_is_listed_with_a_warning_and_never_the_default():
    listing = device_listing(loader(fake_torch([H100], BUILD_SM50_SM86)))
    problem = listing.problem("cuda:0")
    assert problem == ("GPU 0 (NVIDIA H100 80GB HBM3) is not supported by this PyTorch build (sm_90; built for "
                       "sm_50–sm_86): choose CPU or install a newer PyTorch")
    assert listing.message == problem
    assert listing.choices()[0] == ("cuda:0", "GPU 0: NVIDIA H100 80GB HBM3 (80 GiB) (not supported by this PyTorch)")
    assert listing.devices[0].tooltip == problem
    assert listing.default == CPU and listing.resolve(AUTO) == CPU
    assert listing.resolve("cuda:0") == "cuda:0"  # listed: the user may still pick it (Apply then refuses)


def test_two_gpus_one_unsupported():
    old = ("Tesla K80", 12 * 2**30, (3, 7))
    listing = device_listing(loader(fake_torch([old, H100], BUILD_SM50_SM90)))
    assert [d.device for d in listing.devices] == ["cuda:0", "cuda:1", CPU]
    assert "Tesla K80" in listing.problem("cuda:0") and "sm_37; built for sm_50–sm_90" in listing.problem("cuda:0")
    assert "install a PyTorch build that still supports it" in listing.problem("cuda:0")
    assert listing.problem("cuda:1") is None and listing.default == "cuda:1"


@pytest.mark.parametrize("capability, arch_list, supported", [
    ((9, 0), BUILD_SM50_SM90, True),
    ((9, 0), BUILD_SM50_SM86, False),
    ((9, 0), [*BUILD_SM50_SM86, "compute_86"], True),  # PTX for 8.6: the driver compiles it for a newer GPU
    ((12, 0), BUILD_SM50_SM90, True),  # compute_90 PTX
    ((8, 9), ["sm_80"], True),  # a binary runs on a newer minor version of its major
    ((8, 0), ["sm_86"], False),  # ... not on an older one
    ((3, 7), BUILD_SM50_SM90, False),  # older than the oldest: PTX does not help either
    ((9, 0), ["sm_80", "sm_90a"], True),
    ((10, 0), ["sm_80", "sm_90a"], False),
    ((10, 0), ["sm_90", "sm_100", "sm_120"], True),
    ((7, 5), [], True),  # a build that does not say (CPU build): no warning
    ((7, 5), ["gfx90a", "gfx942"], True),  # ROCm: not CUDA capabilities
])
def test_arch_rules(capability, arch_list, supported):
    assert (arch_problem("GPU 0 (x)", capability, arch_list) is None) == supported


@pytest.mark.parametrize("error", [
    OSError("[WinError 126] The specified module could not be found. Error loading c10_cuda.dll"),
    RuntimeError("CUDA driver version is insufficient for CUDA runtime version"),
    ImportError("libcudnn.so.9: cannot open shared object file"),
    ModuleNotFoundError("No module named 'typing_extensions'", name="typing_extensions"),
    AttributeError("partially initialized module 'torch' has no attribute 'cuda'"),
])
def test_a_torch_that_fails_to_load_offers_the_cpu_with_the_reason(error):
    listing = device_listing(raising(error))
    assert listing.choices() == [(CPU, "CPU")] and not listing.torch_loaded
    assert listing.message.startswith(f"PyTorch could not be loaded: {type(error).__name__}: ")
    assert str(error).splitlines()[0] in listing.message and listing.message.endswith("only the CPU is offered")


def test_torch_not_installed_keeps_the_automatic_choice():
    listing = device_listing(raising(ModuleNotFoundError("No module named 'torch'", name="torch")))
    assert [d.device for d in listing.devices] == [AUTO, CPU] and not listing.torch_loaded
    assert listing.resolve(AUTO) == AUTO and listing.message.startswith("PyTorch is not installed yet")


def test_torch_not_ready_is_not_imported():
    listing = device_listing(raising(AssertionError("must not be imported")),
                             torch_problem="torch (>=2.13,<2.14 needed, version 2.4.0 installed)")
    assert [d.device for d in listing.devices] == [AUTO, CPU] and not listing.torch_loaded
    assert "version 2.4.0 installed" in listing.message
    assert torch_install_problem() is None  # this environment has the required torch


def test_a_driver_that_fails_while_listing_offers_the_cpu():
    torch = fake_torch([H100], BUILD_SM50_SM90)
    torch.cuda.get_device_properties = raising(RuntimeError("CUDA error: initialization error\nmore"))
    listing = device_listing(loader(torch))
    assert listing.choices() == [(CPU, "CPU")] and listing.torch_loaded
    assert listing.message == ("CUDA GPUs could not be listed: RuntimeError: CUDA error: initialization error; "
                               "only the CPU is offered")


def test_before_listing_the_selector_offers_automatic_and_cpu():
    assert [device for device, _ in placeholder_choices()] == [AUTO, CPU]


def test_this_machines_devices_with_the_real_torch():
    import torch

    listing = device_listing()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert [d.device for d in listing.devices] == [*(f"cuda:{i}" for i in range(count)), CPU]
    assert listing.torch_loaded


# --- no torch at widget set-up ---------------------------------------------------------------------------------------

SETUP_TIME = r"""
import sys, tempfile
sys.path.insert(0, sys.argv[1])
from NeuroRADFMLib.compatibility import version_note, version_problem
from NeuroRADFMLib.devices import placeholder_choices
from NeuroRADFMLib.bundles import BundleRegistry, available_bundles
from NeuroRADFMLib.cohorts import source_choices
from NeuroRADFMLib.dependencies import missing_packages, describe_missing
from NeuroRADFMLib.evaluation import SPLITS
from NeuroRADFMLib.sequences import assign_sequences, input_volumes
from NeuroRADFMLib.training import DRO_MODES, SSL_METHODS, pretrain_available
version_note(), version_problem(), placeholder_choices(), list(source_choices()), pretrain_available()
available_bundles(BundleRegistry(tempfile.mkdtemp()))
describe_missing(missing_packages())
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_what_the_widgets_do_at_setup_does_not_import_torch():
    """The NeuroRADFMLib modules both widgets import (and the functions they call) in setup() / enter(), in a fresh
    interpreter: PyTorch stays unloaded (importing it takes seconds, can fail on a broken CUDA install, and would
    lock its files against the PyTorch extension's installer on Windows)."""
    done = subprocess.run([sys.executable, "-c", SETUP_TIME, str(REPO / "NeuroRADFM")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_level_torch_import_in_the_slicer_side():
    for path in (REPO / "NeuroRADFM" / "NeuroRADFMLib").glob("*.py"):
        assert "torch" not in top_level_imports(path), path
    for path in [REPO / "NeuroRADFM" / "NeuroRADFM.py", REPO / "NeuroRADFMTrain" / "NeuroRADFMTrain.py",
                 *(REPO / "NeuroRADFM" / "NeuroRADFMWidgets").glob("*.py")]:
        assert "torch" not in all_imports(path), path  # the Qt files leave PyTorch to NeuroRADFMLib.devices


# --- Slicer / Python versions ----------------------------------------------------------------------------------------

def test_slicer_5_8_is_refused_with_one_message():
    problem = slicer_version_problem((3, 9, 10), (5, 8, 1))
    assert problem.startswith("NeuroRADFM needs 3D Slicer 5.10 or newer (Python 3.10 or newer); this is Slicer 5.8.1 "
                              "with Python 3.9.10.")
    assert "download.slicer.org" in problem


@pytest.mark.parametrize("python, slicer", [((3, 12, 10), (5, 10)), ((3, 12, 10), (5, 10, 0)), ((3, 12, 3), (5, 12)),
                                            ((3, 12), (6, 0)), ((3, 11, 7), None)])
def test_slicer_5_10_and_newer_are_accepted(python, slicer):
    assert slicer_version_problem(python, slicer) is None


@pytest.mark.parametrize("python, slicer", [((3, 12, 10), (5, 9)), ((3, 9, 10), (5, 10)), ((3, 9, 18), None),
                                            ((3, 12, 1), (4, 11))])
def test_either_an_old_slicer_or_an_old_python_is_a_problem(python, slicer):
    assert "needs 3D Slicer 5.10 or newer" in slicer_version_problem(python, slicer)


def test_this_python_outside_slicer_is_fine_and_self_tests_skip_without_packages():
    assert MINIMUM_SLICER == (5, 10) and version_problem() is None
    assert self_test_skip_reason(missing=list) is None
    missing = [Missing(Requirement("torch", ">=2.13,<2.14"), None)]
    reason = self_test_skip_reason(missing=lambda: missing)
    assert "torch (>=2.13,<2.14 needed, not installed)" in reason


def test_the_minimum_agrees_with_the_dependency_check():
    """compatibility.py (Python 3.9-safe, read at start-up) and the core's Slicer release table must agree."""
    wheelhouse = pytest.importorskip("neuroradfm.wheelhouse")
    if not hasattr(wheelhouse, "minimum_slicer"):
        pytest.skip("neuroradfm.wheelhouse has no minimum_slicer()")
    assert wheelhouse.minimum_slicer().version == ".".join(map(str, MINIMUM_SLICER))
    assert tuple(wheelhouse.REQUIRES_PYTHON) == MINIMUM_PYTHON


STARTUP_FILES = [
    "NeuroRADFM/NeuroRADFM.py",
    "NeuroRADFMTrain/NeuroRADFMTrain.py",
    "NeuroRADFM/NeuroRADFMLib/__init__.py",
    "NeuroRADFM/NeuroRADFMLib/compatibility.py",
    "NeuroRADFM/NeuroRADFMWidgets/__init__.py",
    "NeuroRADFM/NeuroRADFMWidgets/device_selector.py",
    "NeuroRADFM/Testing/Python/NeuroRADFMSelfTest.py",
    "NeuroRADFMTrain/Testing/Python/NeuroRADFMTrainSelfTest.py",
]
"""What Slicer imports when it starts (the module files) and what they import before the version check."""


def runtime_union_annotations(path: Path) -> list[int]:
    """Lines of ``X | Y`` annotations that Python 3.9 would evaluate (no ``from __future__ import annotations``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
           for n in tree.body):
        return []
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            annotations += [a.annotation for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                                   arguments.vararg, arguments.kwarg] if a is not None]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return [a.lineno for a in annotations if a is not None
            and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))]


@pytest.mark.parametrize("name", STARTUP_FILES)
def test_startup_files_have_no_annotations_python_3_9_cannot_evaluate(name):
    assert runtime_union_annotations(REPO / name) == []


@pytest.mark.skipif(not PYTHON39.is_file(), reason=f"needs a Python 3.9 interpreter at {PYTHON39} (Slicer 5.8's)")
def test_startup_files_parse_and_the_version_check_runs_on_python_3_9():
    """Slicer 5.8 (Python 3.9) must load the modules and show the version message, not a SyntaxError."""
    compile_all = ("import sys\nfor path in sys.argv[1:]:\n"
                   "    compile(open(path, encoding='utf-8').read(), path, 'exec')\nprint('ok')")
    done = subprocess.run([str(PYTHON39), "-c", compile_all, *(str(REPO / f) for f in STARTUP_FILES)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    check = ("import sys; sys.path.insert(0, sys.argv[1])\n"
             "from NeuroRADFMLib.compatibility import self_test_skip_reason, slicer_version_problem, version_note\n"
             "print(slicer_version_problem(sys.version_info, (5, 8, 1)))\n"
             "assert version_note() and self_test_skip_reason()\n"
             "assert not [m for m in sys.modules if m.startswith(('neuroradfm', 'NeuroRADFMLib.dependencies'))]\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([str(PYTHON39), "-c", check, str(REPO / "NeuroRADFM")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "needs 3D Slicer 5.10 or newer" in done.stdout and "Slicer 5.8.1 with Python 3.9." in done.stdout

