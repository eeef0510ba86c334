"""The process group of the learner's ranks: torchrun's environment, or a world of one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from asympo.models.loading import pick_device
from asympo.runtime.ports import free_port

# Ranks wait for each other at every step and through pauses that may last hours; a short collective
# timeout would kill a paused job.
COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class World:
    """This rank's place among the learner's ranks."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 talks to the outside world: dispatch, publishing, job state, gRPC."""
        return self.rank == 0


def init_world(device: str = "auto") -> World:
    """Join torchrun's process group (or make a group of one), with gloo on CPU and NCCL on GPU."""
    device = pick_device(device).type
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            # A single process still gets a process group: FSDP2 and the collectives need one.
            os.environ.update(
                {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}
            )  # fmt: skip
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    rank, size = dist.get_rank(), dist.get_world_size()
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return World(rank, size, dev)


def broadcast(obj, world: World, src: int = 0):
    """Rank src's picklable object, on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sums over ranks (float64 on CPU: exact for counts)."""
    if world.size == 1:
        return list(values)
    t = torch.tensor(
        values, dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t)
    return t.tolist()


def all_min(value: float, world: World) -> float:
    """The smallest value over ranks."""
    if world.size == 1:
        return value
    t = torch.tensor(
        [value], dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.size > 1:
        dist.barrier()


def shutdown(together: bool = True) -> None:
    """Leave the process group; `together` waits for every rank first (a rank tearing gloo down while a
    peer still talks aborts the peer). After a failure, leave at once: the peers may never arrive."""
    if dist.is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def gather(obj, world: World) -> list:
    """Every rank's object, in rank order, on every rank."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def local_part(t: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's part of a parameter or gradient: a DTensor's local shard (FSDP2), any other tensor itself."""
    if t is None:
        return None
    return t.to_local() if hasattr(t, "to_local") else t
