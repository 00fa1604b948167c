"""DDP under `torchrun`: who this process is, the shard of each epoch it trains on, and rank-0-only side effects.

Without torchrun (no WORLD_SIZE in the environment) everything here degrades to one process, one shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(use_cuda: bool) -> World:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a single process joins nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch.distributed as dist

    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def leave(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def epoch_order(n: int, epoch: int, seed: int, world: World) -> torch.Tensor:
    """This process's shuffled share of indices 0..n-1 for `epoch`: DistributedSampler's, so shards never overlap.

    The order depends only on (seed, epoch), which is what lets a resumed run see the batches an
    uninterrupted one would have.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


def mean_over_ranks(value: float, world: World, device) -> float:
    """The mean of a per-process figure across all processes (itself when there is one)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item() / world.size)
