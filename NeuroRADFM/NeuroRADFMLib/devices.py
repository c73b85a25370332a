"""Devices the model can run on: CPU and each CUDA GPU by name (values for the CLI's ``--device``).

Listing imports PyTorch, which the widgets never do in ``setup()``: until the list is asked for (the device
selector's pop-up opened, or Apply / Start training pressed) a selector shows ``placeholder_choices()``. A PyTorch
that fails to load, with any exception (an ``OSError`` for a missing CUDA DLL, a ``RuntimeError``, ...), gives a
listing of the CPU alone and a message saying why. Each GPU whose compute capability the installed PyTorch build
has no kernels for (neither an ``sm_XY`` binary nor a ``compute_XY`` PTX it can compile) is listed with a warning and
is never the default. Pure: the torch module (or its loader) is an argument, so the tests need no GPU.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
CPU = "cpu"
AUTO_LABEL = "Automatic (first usable GPU, else CPU)"
CPU_LABEL = "CPU"


def placeholder_choices() -> list[tuple[str, str]]:
    """What a selector shows before the devices are listed (no PyTorch import): automatic choice, CPU."""
    return [(AUTO, AUTO_LABEL), (CPU, CPU_LABEL)]


@dataclass(frozen=True)
class Device:
    device: str
    """``cuda:N`` or ``cpu`` (the CLI's ``--device``)."""
    label: str
    problem: str | None = None
    """Why this PyTorch build cannot run on this GPU (and what to do), None when it can."""

    @property
    def tooltip(self) -> str:
        return self.problem or self.label


@dataclass(frozen=True)
class DeviceListing:
    devices: tuple[Device, ...]
    """Each CUDA GPU, then the CPU (always there)."""
    message: str | None = None
    """For the status label / tooltip: PyTorch could not be loaded, GPUs could not be listed, or unsupported GPUs."""
    torch_loaded: bool = False
    """False when PyTorch was not (or could not be) imported: list again after installing it."""

    def choices(self) -> list[tuple[str, str]]:
        """``[(device, label)]`` for a combo box; an unsupported GPU's label says so."""
        return [(d.device, d.label + (" (not supported by this PyTorch)" if d.problem else "")) for d in self.devices]

    @property
    def default(self) -> str:
        """The first GPU this PyTorch can use, else the CPU (what ``auto`` should mean for this machine)."""
        return next((d.device for d in self.devices if d.problem is None), CPU)

    def resolve(self, choice: str | None) -> str:
        """The device to select for ``choice``: itself when listed, else (``auto``, nothing, a GPU gone) the default."""
        return choice if choice in {d.device for d in self.devices} else self.default

    def problem(self, device: str | None) -> str | None:
        """The warning for ``device`` (an unsupported GPU), None for a usable one."""
        return next((d.problem for d in self.devices if d.device == device), None)


def import_torch() -> Any:
    return importlib.import_module("torch")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def _capability(number: int) -> tuple[int, int]:
    return number // 10, number % 10


def arch_problem(name: str, capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Why a build with ``arch_list`` (``torch.cuda.get_arch_list()``) cannot run on a GPU of ``capability``.

    A ``sm_XY`` binary runs on GPUs of the same major version X and minor >= Y (``sm_90a``: on 9.0 only); a
    ``compute_XY`` PTX entry is compiled by the driver for any GPU of capability >= X.Y. An empty or non-CUDA list
    (a CPU or ROCm build) gives no warning."""
    entries = [m.groups() for m in map(_ARCH.match, arch_list) if m]
    if not entries:
        return None
    major, minor = capability
    for kind, number, suffix in entries:
        arch_major, arch_minor = _capability(int(number))
        if kind == "compute" and (major, minor) >= (arch_major, arch_minor):
            return None
        if kind == "sm" and major == arch_major and (minor == arch_minor if suffix == "a" else minor >= arch_minor):
            return None
    binaries = sorted({int(number) for kind, number, _ in entries if kind == "sm"}) or \
        sorted({int(number) for _, number, _ in entries})
    built = f"sm_{binaries[0]}" + (f"–sm_{binaries[-1]}" if len(binaries) > 1 else "")
    own = f"sm_{major}{minor}"
    advice = ("install a newer PyTorch" if (major, minor) > _capability(binaries[-1])
              else "install a PyTorch build that still supports it (an older CUDA variant)")
    return f"{name} is not supported by this PyTorch build ({own}; built for {built}): choose CPU or {advice}"


def _gpus(torch: Any) -> list[Device]:
    cuda = torch.cuda
    if not cuda.is_available():
        return []
    try:
        arch_list = list(cuda.get_arch_list())
    except Exception:  # an old torch without it: no check rather than no GPU
        arch_list = []
    gpus = []
    for index in range(cuda.device_count()):
        properties = cuda.get_device_properties(index)
        memory = properties.total_memory / 2**30
        label = f"GPU {index}: {properties.name} ({memory:.0f} GiB)"
        capability = tuple(cuda.get_device_capability(index))
        gpus.append(Device(f"cuda:{index}", label, arch_problem(f"GPU {index} ({properties.name})", capability,
                                                               arch_list)))
    return gpus


def device_listing(load_torch: Callable[[], Any] = import_torch, torch_problem: str | None = None) -> DeviceListing:
    """Each CUDA GPU, then the CPU, and a message when something is wrong.

    ``torch_problem``: why PyTorch should not be imported yet (not installed, or a version the module does not
    accept: importing it would lock its files, and the installer could not replace it on Windows); then, as when it is
    not installed, the automatic choice and the CPU are listed, to be listed again once it is. Otherwise
    ``load_torch()`` is called; any exception it raises is reported, not raised."""
    cpu = Device(CPU, CPU_LABEL)
    not_yet = (Device(AUTO, AUTO_LABEL), cpu)  # installed on first use (Apply / Start): "auto" then finds the GPU
    if torch_problem:
        return DeviceListing(not_yet, f"PyTorch is not ready ({torch_problem}): the GPUs are listed once it is "
                                      "installed")
    try:
        torch = load_torch()
    except ModuleNotFoundError as error:
        if error.name != "torch":
            return DeviceListing((cpu,), f"PyTorch could not be loaded: {_reason(error)}; only the CPU is offered")
        return DeviceListing(not_yet, "PyTorch is not installed yet: the GPUs are listed once it is installed")
    except Exception as error:  # OSError (a CUDA DLL), RuntimeError, ... : a message, not a broken panel
        return DeviceListing((cpu,), f"PyTorch could not be loaded: {_reason(error)}; only the CPU is offered")
    try:
        gpus = _gpus(torch)
    except Exception as error:  # a driver that fails to initialise
        return DeviceListing((cpu,), f"CUDA GPUs could not be listed: {_reason(error)}; only the CPU is offered",
                             torch_loaded=True)
    problems = [g.problem for g in gpus if g.problem]
    return DeviceListing((*gpus, cpu), "; ".join(problems) or None, torch_loaded=True)


def torch_install_problem() -> str | None:
    """Why the installed PyTorch does not meet the module's requirement (``torch (>=2.13,<2.14 needed, not
    installed)``), None when it does; read from package metadata, without importing torch."""
    from NeuroRADFMLib.dependencies import missing_packages

    return next((m.describe() for m in missing_packages() if m.requirement.name.lower() == "torch"), None)


def list_devices(torch_module: Any = None) -> list[tuple[str, str]]:
    """``[(device, label)]``: each CUDA GPU (``cuda:N``, its name and memory), then ``cpu``.

    Without a loadable PyTorch (first use in Slicer, a broken install) only the CPU is listed."""
    return device_listing(import_torch if torch_module is None else lambda: torch_module).choices()
