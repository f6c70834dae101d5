"""Random-stream care shared by every layer: a fork of torch's generators (CPU and, once
initialized, the current CUDA device's) so that a check, a probe or a set-up draw leaves the
caller's stream exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def cuda_devices() -> list[int]:
    """The CUDA device whose generator ``torch.manual_seed`` also seeds, to fork it too."""
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def forked_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's random state (seeded with ``seed`` if given); the
    state after the block is the state before it."""
    with torch.random.fork_rng(devices=cuda_devices()):
        if seed is not None:
            torch.manual_seed(seed)
        yield
