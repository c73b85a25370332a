"""``neuroradfm predict`` under torchrun: each rank predicts its share of a cohort, rank 0 merges the tables.

``torchrun --nproc-per-node 2 -m neuroradfm predict manifest.csv --out OUT`` starts one process per GPU (or per
CPU share); ``neuroradfm.train.distributed.setup`` joins them (NCCL on CUDA with each rank its local GPU, gloo on
the CPU). Rank 0 checks and cleans OUT and finds the finished cases (``--resume``) before any rank starts; the
cases left are dealt rank::world_size in manifest order; each rank writes its case folders (each whole or absent)
and at the end the ranks' results are gathered and rank 0 writes one OUT/predictions.csv, failures.csv and run.json.

The small messages (the checks' outcome, each rank's results) travel over a gloo group of their own, on the CPU
whatever the device, with a long timeout: a rank whose cases all finished earlier waits for the slowest one, which
may take hours on a large cohort (the default group's timeout would end the run). A rank that dies ends the run
(torchrun stops the others): its finished case folders stay valid and a rerun with ``--resume`` skips them.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

GATHER_TIMEOUT = datetime.timedelta(days=7)
"""How long a rank waits for the others at the checks and at the end (see the module docstring)."""


def launched_by_torchrun() -> bool:
    """True in a process torchrun (or any launcher setting WORLD_SIZE > 1) started as one rank of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def processes_per_node() -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE; 1 alone): they share its CPUs."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Shard:
    """This rank's place in the run, and the collectives the cohort needs."""

    rank: int
    world_size: int
    device: str
    """This rank's device: its local GPU, or the CPU."""
    context: Any
    """neuroradfm.train.distributed.Context."""
    group: Any
    """The gloo group the messages go through."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, from its rank on (the same split on every rank)."""
        return list(items[self.rank::self.world_size])

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object, an exception too)."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.group)
        return values


def start_shard(device: str = "auto") -> Shard:
    """Join the torchrun process group (``neuroradfm.train.distributed.setup``) and open the gloo message group."""
    import torch.distributed as dist

    from neuroradfm.train import distributed

    context = distributed.setup(device)
    group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    return Shard(context.rank, context.world_size, str(context.device), context, group)


def stop_shard(shard: Shard) -> None:
    """Leave the process group (``neuroradfm.train.distributed.teardown``)."""
    from neuroradfm.train import distributed

    distributed.teardown(shard.context)
