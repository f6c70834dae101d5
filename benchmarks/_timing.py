"""The SVI timing loops of the benchmarks (guides, speed, scaling, overhead). Not a script.
What it provides:

* :func:`make_model`: the benchmark model, a D-dimensional standard-normal latent ``z`` with one
  Gaussian observation per dimension;
* :func:`prepare_svi`: an ``SVI`` object (Trace_ELBO, one particle, Adam) already stepped a few
  times, so that lazy set-up (prototype trace, parameter creation, Adam state) is not timed;
* :func:`time_interleaved`: seconds per step of several contenders timed round-robin, in blocks,
  so that a change of load on a shared machine hits every contender alike;
  :func:`adaptive_blocks` sizes the blocks, :func:`time_guides` runs it on SVI guides;
* :class:`TimingSettings`: what the timing scripts' command line sets (their ``Settings``
  add their own fields).

The machine header, the command line and the report writer are in :mod:`benchmarks.common`.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO


def make_model(dim: int) -> Callable[[], None]:
    """A model with a D-dimensional latent ``z ~ N(0, I)`` and data ``x ~ N(z, I)`` observed."""
    data = torch.randn(dim)

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)

    return model


def prepare_svi(model: Callable, guide: Callable, *, lr: float = 1e-3, warmup: int = 5) -> SVI:
    """SVI with Trace_ELBO (1 particle) and Adam, stepped ``warmup`` times (not timed)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(warmup):
        svi.step()
    return svi


@dataclass
class TimingSettings:
    """The dimensions measured, the interleaved rounds, the block length (about
    ``block_seconds``, at most ``max_block`` steps) and the untimed warm-up steps."""

    dims: tuple[int, ...] = (10, 100, 1000)
    rounds: int = 15
    block_seconds: float = 0.3
    max_block: int = 50
    warmup: int = 5


@dataclass
class Timing:
    """The times of one contender: ``blocks`` are the mean wall-clock seconds per step of each
    block, ``cpu_blocks`` the mean CPU seconds (``time.process_time``: all threads of this
    process) per step of each block, ``steps`` the wall-clock seconds of each step."""

    blocks: list[float] = field(default_factory=list)
    cpu_blocks: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    @property
    def block_median(self) -> float:
        """Median over blocks of the mean wall-clock seconds per step in a block."""
        return statistics.median(self.blocks)

    @property
    def cpu_block_median(self) -> float:
        """Median over blocks of the mean CPU seconds per step in a block. On a shared machine
        this excludes the time the process waits for a core, so it is the steadier figure."""
        return statistics.median(self.cpu_blocks)

    @property
    def step_median(self) -> float:
        """Median seconds of a single step."""
        return statistics.median(self.steps)

    @property
    def num_steps(self) -> int:
        return len(self.steps)


def time_interleaved(steppers: Mapping[str, Callable[[], Any]], *, rounds: int,
                     block: int | Mapping[str, int]) -> dict[str, Timing]:
    """Time ``rounds`` round-robin blocks: in each round every contender runs ``block`` steps
    (one number, or one per contender) back to back, each step timed with ``perf_counter``.
    The order rotates from round to round, so that no contender always follows the same one;
    garbage is collected between blocks, outside the timed region."""
    times = {name: Timing() for name in steppers}
    names = list(steppers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steppers[name]
            n = block if isinstance(block, int) else block[name]
            gc.collect()
            cpu_start, start = time.process_time(), time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                step()
                times[name].steps.append(time.perf_counter() - t0)
            times[name].blocks.append((time.perf_counter() - start) / n)
            times[name].cpu_blocks.append((time.process_time() - cpu_start) / n)
    return times


def adaptive_blocks(steppers: Mapping[str, Callable[[], Any]], *, block_seconds: float,
                    max_block: int) -> dict[str, int]:
    """Steps per block for each contender so that a block lasts about ``block_seconds``
    (judged from one untimed trial step each; at least 1, at most ``max_block``)."""
    out = {}
    for name, step in steppers.items():
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
        out[name] = int(min(max_block, max(1, round(block_seconds / max(seconds, 1e-6)))))
    return out


def time_guides(model: Callable, makers: Mapping[str, Callable[[], Callable]], steps: int,
                rounds: int = 10) -> dict[str, float]:
    """Median seconds per step of each guide, timed in interleaved blocks (round-robin over
    the guides, ``rounds`` blocks of ``steps / rounds`` steps each) so that a load change on
    the machine hits every guide alike."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svis = {name: prepare_svi(model, make()) for name, make in makers.items()}
    block = max(1, steps // rounds)
    times = time_interleaved({name: svi.step for name, svi in svis.items()}, rounds=rounds,
                             block=block)
    return {name: t.step_median for name, t in times.items()}
