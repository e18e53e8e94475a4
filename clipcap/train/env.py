"""Where training runs: the device, mixed precision, and the processes torchrun started.

Under torchrun (WORLD_SIZE > 1 in the environment) each process joins the process group (nccl on
CUDA, gloo on the CPU) and, with CUDA, takes the GPU cuda:LOCAL_RANK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from clipcap.models.device import torch_device


def amp_dtype(amp: bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32: amp None means on for CUDA, off on the CPU."""
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@dataclass
class Environment:
    """This process's place: its device and, under torchrun, its rank among world processes."""

    device: torch.device
    world: int = 1
    rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str | torch.device) -> Environment:
        dev = torch_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(dev)
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dev, dist.get_world_size(), dist.get_rank(), owns)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        objs: list[Any] = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
