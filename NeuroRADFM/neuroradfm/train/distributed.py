"""torch.distributed plumbing: the same code runs in one process and under ``torchrun``.

``torchrun`` sets WORLD_SIZE / RANK / LOCAL_RANK; with WORLD_SIZE > 1 the process group starts with NCCL
when the device is a CUDA GPU and gloo otherwise. Collectives are wrapped so callers never test for
``is_initialized`` themselves: in one process they are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from neuroradfm.models.encoder import resolve_device


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks; returns a tensor on the input's device."""
        if not self.distributed:
            return tensor
        moved = tensor.to(self._comm_device())
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks along dim 0, without gradient (keys, teacher outputs)."""
        if not self.distributed:
            return tensor
        moved = tensor.detach().contiguous().to(self._comm_device())
        parts = [torch.empty_like(moved) for _ in range(self.world_size)]
        dist.all_gather(parts, moved)
        return torch.cat(parts).to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(device: str = "auto") -> Context:
    """One process: the resolved device. Under torchrun: init the process group (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        resolved = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(resolved)
    else:
        resolved = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(rank=rank, world_size=world, local_rank=local_rank, device=resolved, owns_group=owns)


def teardown(context: Context) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
