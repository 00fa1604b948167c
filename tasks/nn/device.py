"""Where and how training runs: the device, CPU threads, seeds for determinism, peak memory, device tags."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(choice: str, local_rank: int = 0):
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    import torch

    from tasks.common.errors import ConfigError

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def set_threads(threads: int, device) -> None:
    """On CPU: `threads`, or (0) the cores shared evenly among the processes torchrun started on this machine."""
    import torch

    if device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(threads or max((os.cpu_count() or 1) // local, 1))


def peak_memory_mb(device) -> float:
    """Peak memory of this process: allocated on the GPU for CUDA, resident on the host otherwise."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_tags(device, world) -> dict[str, str]:
    import torch

    tags = {"device": str(device), "world_size": str(world.size)}
    if device.type == "cuda":
        tags["gpu"] = torch.cuda.get_device_name(device)
    else:
        tags["cpu_threads"] = str(torch.get_num_threads())
    return tags
