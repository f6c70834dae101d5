"""Data-parallel SVI for :func:`~pyro_nf.fit` on ``torch.distributed``, launched by ``torchrun``.

Each process (rank) holds the whole model and guide and the same parameters (broadcast from
rank 0 at the start). The ranks share one random stream (rank 0's random state, broadcast at
the start), so they draw the same global latents; every subsampled plate draws one
permutation of its indices, as a single process would, and rank r takes the r-th block of
``subsample_size`` indices of it. Each rank's
likelihood is scaled as for the full data, so the average of the ranks' gradients, all-reduced
once per step in a few flat buckets (as DDP does), is the gradient of one step on the union of
their minibatches with the prior and entropy counted once (Hoffman et al., 2013, stochastic VI;
Goyal et al., 2017, for the averaging). The reported loss is that of the union: the mean of
the ranks' losses.

``fit(..., distributed=True)`` uses it when the environment names a world of several
processes (``torchrun`` sets ``RANK`` and ``WORLD_SIZE``); without the launcher it is the usual
one-process fit. Gloo on CPU, NCCL where the parameters live on CUDA.
"""

from __future__ import annotations

import atexit
import datetime
import os
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_nf.training.checkpoint import numpy_state_in, numpy_state_out

#: Largest all-reduce bucket, in elements (DDP's default is 25 MB).
BUCKET_ELEMENTS = 2 ** 22
#: Seconds a rank waits for the others in a collective before it gives up (then the error
#: names the step); ``PYRO_NF_DIST_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT = 300


class DistributedError(RuntimeError):
    """The ranks disagree (model, parameters, plates) or a collective failed (a rank died)."""


def launched() -> bool:
    """Whether the environment names a world of several processes (``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class World:
    """This process's place in the process group: ``rank``, ``size``, and the collectives a
    fit needs. Joins (or reuses) the default process group from ``torchrun``'s environment."""

    def __init__(self, device: torch.device | None = None) -> None:
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():
            cuda = device is not None and torch.device(device).type == "cuda"
            if cuda:  # NCCL wants each process on its own GPU before the group forms
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            timeout = int(os.environ.get("PYRO_NF_DIST_TIMEOUT", DEFAULT_TIMEOUT))
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                                    timeout=datetime.timedelta(seconds=timeout))
            # the group this fit made is closed at exit: a process that leaves gloo's threads
            # running at interpreter shutdown aborts ("terminate called without an active
            # exception")
            atexit.register(_close, dist)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        #: every parameter of the fit, in one order on every rank (set by :func:`start`)
        self.params: list[torch.Tensor] = []
        #: wall seconds spent in collectives (waiting for the other ranks included; with NCCL,
        #: whose collectives are asynchronous, only the time to queue them)
        self.seconds = 0.0
        #: steps averaged so far (what an error names)
        self.steps = 0

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes checkpoints and shows progress."""
        return self.rank == 0

    def shard(self, fn: Callable) -> Callable:
        """``fn`` (a model or guide) with every subsampled plate taking this rank's block."""
        return _ShardPlates(self.rank, self.size)(fn)

    def agree(self, what: str, value: Any) -> None:
        """Raise :class:`DistributedError` unless every rank has the same ``value``."""
        values: list[Any] = [None] * self.size
        self._collective(lambda: self.dist.all_gather_object(values, value), what)
        for rank, other in enumerate(values):
            if other != value:
                raise DistributedError(
                    f"fit(distributed=True): rank {self.rank} and rank {rank} disagree about "
                    f"the {what} ({value!r} against {other!r}); every rank must run the same "
                    "model and guide on the same data")

    def share_random_state(self) -> None:
        """Rank 0's torch (CPU and current CUDA device), Python and NumPy random states on
        every rank."""
        import random

        cuda = torch.cuda.is_initialized()
        state = [(torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None,
                  random.getstate(), numpy_state_out())]
        self._collective(lambda: self.dist.broadcast_object_list(state, src=0),
                         "random state")
        cpu, gpu, python, numpy = state[0]
        torch.set_rng_state(cpu)
        if cuda and gpu is not None:
            torch.cuda.set_rng_state(gpu)
        random.setstate(python)
        numpy_state_in(numpy)

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values of ``params`` on every rank."""
        with torch.no_grad():
            for p in params:
                self._collective(lambda p=p: self.dist.broadcast(p, src=0), "initial values")

    def average(self, loss: float, touched: Any = None) -> tuple[float, list[torch.Tensor]]:
        """All-reduce the gradients of every parameter of the fit (``self.params``: the same
        list on every rank, whatever a step ``touched``) to their mean over the ranks (one that
        no rank gave a gradient keeps none). Returns the mean loss (reduced in float64) and
        ``self.params``, the tensors every rank then steps, saves and restores alike."""
        self.steps += 1
        params = self.params
        ref = params[0] if params else torch.zeros(())
        counts = torch.tensor([p.grad is not None for p in params] + [loss],
                              dtype=torch.float64, device=ref.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            self._collective(lambda flat=flat: self.dist.all_reduce(flat), "gradients")
            flat /= self.size
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        self._collective(lambda: self.dist.all_reduce(counts), "loss")
        for p, g, count in zip(params, grads, counts[:-1].tolist()):
            p.grad = g if count > 0 else None
        return float(counts[-1]) / self.size, params

    def _collective(self, call: Callable[[], Any], what: str) -> None:
        start = time.perf_counter()
        try:
            call()
            self.seconds += time.perf_counter() - start
        except RuntimeError as error:
            first = next(iter(str(error).splitlines()), "")[:200]
            raise DistributedError(
                f"fit(distributed=True): rank {self.rank} of {self.size} could not exchange "
                f"the {what} with the other ranks at step {self.steps} ({first}); a rank has "
                "probably stopped. "
                "Restart the job with resume=True to continue from the last checkpoint."
            ) from error


def _close(dist: Any) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive groups of at most :data:`BUCKET_ELEMENTS` elements (one tensor per group
    when it is larger), one group per dtype and device run."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = out[-1][-1] if out else None
        same = last is not None and (last.dtype, last.device) == (t.dtype, t.device)
        if not same or size + t.numel() > BUCKET_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel()
    return out


def _sharded(fn: _Subsample, rank: int, world: int) -> _Subsample:
    """A plate's subsample for one rank: the rank-th block of ``subsample_size`` indices of
    one permutation that every rank draws alike (the first ``world * subsample_size`` of it are
    the minibatch one process with ``subsample_size * world`` would draw). Still a
    ``_Subsample``, which is how Pyro tells a plate's subsample site from a latent."""
    size, batch = fn.size, fn.subsample_size
    if batch * world > size:
        raise DistributedError(
            f"fit(distributed=True): {world} ranks x subsample_size {batch} exceed the "
            f"plate's size {size}; lower the subsample size or the number of processes")
    out = _Subsample(size, batch, fn.use_cuda, fn.device)

    def sample(sample_shape: Any = ()) -> torch.Tensor:
        block = torch.randperm(size, device=fn.device)[rank * batch:(rank + 1) * batch]
        return block.clone().cuda() if fn.use_cuda else block.clone()

    out.sample = sample
    out.pyro_nf_sharded = True
    return out


class _ShardPlates(Messenger):
    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world = rank, world

    def _pyro_sample(self, msg: Any) -> None:
        fn = msg["fn"]
        if isinstance(fn, _Subsample) and not getattr(fn, "pyro_nf_sharded", False) \
                and fn.subsample_size is not None and fn.subsample_size < fn.size:
            msg["fn"] = _sharded(fn, self.rank, self.world)


@torch.no_grad()
def subsampled_plates(model: Callable, guide: Callable, args: tuple, kwargs: dict
                      ) -> list[tuple[str, int, int]]:
    """``(name, size, subsample size)`` of every plate the guide or model subsamples."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs)
    found = {}
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            fn = site.get("fn")
            if site["type"] == "sample" and isinstance(fn, _Subsample):
                size, taken = fn.size, len(site["value"])
                if taken < size:
                    found[name] = (name, size, taken)
    return sorted(found.values())


def check_fit(guide: Any) -> None:
    """What a launched data-parallel fit cannot do yet: fit a mixture (the self-tuning
    schedule, whose decisions are not made collectively yet, is refused by ``fit``)."""
    if launched() and hasattr(guide, "fit_components"):
        raise ValueError("fit(distributed=True) does not fit a mixture of flows "
                         "(AutoFlowMixture) yet")


def setup(model: Callable, guide: Callable, args: tuple, kwargs: dict,
          device: torch.device | None = None) -> World | None:
    """The :class:`World` of a launched job after the checks ``fit`` needs, or None without
    the launcher (one process: the usual fit). Call it after seeding: the guide's lazy
    set-up may run here, under a fork of the random state, as it would at the first step."""
    if not launched():
        return None
    if device is None:  # where the data live: CUDA data get NCCL, the rest gloo
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else None
    world = World(device)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with pyro.validation_enabled(False), torch.random.fork_rng(devices=devices):
        plates = subsampled_plates(model, guide, args, kwargs)
    if not plates:
        raise DistributedError(
            "fit(distributed=True): no plate of the model or guide is subsampled, so there is "
            "nothing to share out and every rank would do the same work; use "
            "pyro.plate(..., subsample_size=B)")
    world.agree("subsampled plates (name, size, subsample size)", plates)
    return world


def start(world: World, params: list[torch.Tensor], guide: Any = None, steps: int = 0
          ) -> None:
    """Check that every rank has the same parameters and has taken the same number of steps
    (a resumed job: the checkpoint must be visible to every rank), then give them rank 0's
    parameters, the guide's floating-point buffers (AutoFlow's anchor) and random states, so
    that the ranks share one random stream whatever happened before the fit."""
    store = pyro.get_param_store()
    names = {id(p): n for n, p in store.named_parameters()}
    params = sorted(params, key=lambda p: names.get(id(p), ""))
    world.agree("parameters (name, shape)",
                [(names.get(id(p), "?"), tuple(p.shape)) for p in params])
    world.agree("steps already taken (resume: is the checkpoint visible to every rank?)", steps)
    world.broadcast(params)
    world.params = params
    if isinstance(guide, torch.nn.Module):
        world.broadcast([b for b in guide.buffers() if b.is_floating_point()])
    world.share_random_state()
