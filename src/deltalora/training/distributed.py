"""Joining and leaving the process group that ``torchrun`` sets up (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

Without torchrun (WORLD_SIZE unset or 1) every function is a no-op and the process is rank 0. Only the
generator is wrapped in DDP (see :mod:`deltalora.training.loop`); these functions only manage the group.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1) join the group once: nccl on GPUs (LOCAL_RANK picks this rank's), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    """This process's rank in the group; 0 outside one."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (no-op outside a group)."""
    if is_distributed():
        dist.barrier()


def leave_distributed() -> None:
    """Destroy the process group (no-op outside one)."""
    if is_distributed():
        dist.destroy_process_group()


__all__ = ["barrier", "init_distributed", "is_distributed", "leave_distributed", "rank"]
