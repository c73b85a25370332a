"""Devices the model can run on: CPU and each CUDA GPU by name (values for the CLI's ``--device``)."""

from __future__ import annotations


def list_devices(torch_module=None) -> list[tuple[str, str]]:
    """``[(device, label)]``: each CUDA GPU (``cuda:N``, its name and memory), then ``cpu``.

    Without PyTorch installed yet (first use in Slicer) only the CPU is listed.
    """
    if torch_module is None:
        try:
            import torch as torch_module
        except ImportError:
            return [("cpu", "CPU")]
    devices = []
    if torch_module.cuda.is_available():
        for index in range(torch_module.cuda.device_count()):
            properties = torch_module.cuda.get_device_properties(index)
            memory = properties.total_memory / 2**30
            devices.append((f"cuda:{index}", f"GPU {index}: {properties.name} ({memory:.0f} GiB)"))
    devices.append(("cpu", "CPU"))
    return devices
