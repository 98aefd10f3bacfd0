"""Distributed set-up for training under ``torchrun``: which rank this process is, its device, and
a hash of a model replica (every rank's hash is stored in the checkpoint; differing replicas are an
error). Used by :mod:`injcert.tasks.train`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return _Dist(), dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if is_cuda else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local, here), dev


def _replica_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
