"""The training engine: guarded SVI steps for one model and guide, which a schedule drives.

An :class:`Engine` owns what does not change while a guide trains: the loss (an ELBO of the
fit's own making, with particles that the model broadcasts over, compiled where that is exact:
:mod:`~pyro_nf.training.compiled`), the gradient clipping, the non-finite guard's limit, the
checkpoint file, the data-parallel world and the progress bar. :meth:`Engine.run` takes a number
of steps with an optimizer and a learning-rate factor per step, and returns a
:class:`~pyro_nf.training.result.FitResult`. A schedule (:mod:`~pyro_nf.training.schedules`)
decides how many steps, at which learning rates, and when to stop; it may call ``run`` once
(the fixed schedule) or many times (the self-tuning one: a pilot, windows, halvings).

Each run starts the guard afresh: a step whose loss, gradients or update is not finite is undone
and halves the learning rate (:func:`~pyro_nf.training.step.guarded_step`); ``max_bad_steps`` in
a row raise :class:`~pyro_nf.training.step.NonFiniteLossError`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO

from pyro_nf.densities.full_data import fast_minibatches
from pyro_nf.training import distributed
from pyro_nf.training.checkpoint import restore_checkpoint, save_checkpoint
from pyro_nf.training.compiled import compiled_elbo
from pyro_nf.training.elbo import STLTrace_ELBO
from pyro_nf.training.optim import Snapshot
from pyro_nf.training.particles import particle_problem
from pyro_nf.training.result import FitResult
from pyro_nf.training.step import guarded_step, raise_if_stuck
from pyro_nf.utils.rng import forked_rng

#: The engine warns when the non-finite guard has cut the learning rate this far (7 halvings).
STALLED_LR_FACTOR = 0.5 ** 7


def make_elbo(elbo: Any, num_particles: int, vectorize: bool) -> ELBO:
    """``elbo`` itself when it is an ELBO instance; ``None`` or ``"trace"``: ``Trace_ELBO``;
    ``"stl"``: :class:`~pyro_nf.training.elbo.STLTrace_ELBO`; with ``num_particles``
    particles, vectorized when ``vectorize`` and more than one."""
    if isinstance(elbo, ELBO):
        return elbo
    kwargs = {"num_particles": num_particles,
              "vectorize_particles": bool(vectorize and num_particles > 1)}
    if elbo is None or elbo == "trace":
        return Trace_ELBO(**kwargs)
    if elbo == "stl":
        return STLTrace_ELBO(**kwargs)
    raise ValueError(f"fit: elbo must be a pyro.infer.ELBO instance, 'trace' or 'stl'; got "
                     f"{elbo!r}")


def particles_that_work(loss_fn: ELBO, model: Callable, guide: Callable, args: tuple,
                        kwargs: dict) -> ELBO:
    """``loss_fn``, or a copy with sequential particles when the model does not broadcast over
    vectorized ones (:func:`~pyro_nf.training.particles.particle_problem`), with one warning.
    The check draws under a forked RNG: the fit's random stream is the same with or without
    it."""
    if not getattr(loss_fn, "vectorize_particles", False) or loss_fn.num_particles < 2 \
            or getattr(loss_fn, "_pyro_nf_checked", False):
        return loss_fn
    if loss_fn.max_plate_nesting == float("inf"):
        loss_fn._guess_max_plate_nesting(model, guide, args, kwargs)
    with forked_rng():
        problem = particle_problem(model, guide, args, kwargs, loss_fn.max_plate_nesting)
    loss_fn._pyro_nf_checked = True  # an ELBO reused by several fits is checked once
    if problem is None:
        return loss_fn
    warnings.warn(f"fit: the model does not broadcast over {loss_fn.num_particles} vectorized "
                  f"particles ({problem}), so they run one at a time (slower). To vectorize, "
                  "declare every batch dimension with pyro.plate and index latent tensors "
                  "from the right (x[..., idx]).", UserWarning, stacklevel=4)
    sequential = copy.copy(loss_fn)
    sequential.vectorize_particles = False
    return sequential


def converged(losses: list[float], window: int, tol: float) -> bool:
    """Whether the means of the last two windows of ``losses`` differ by less than
    ``tol * (|mean| + 1)`` or twice their standard error (every value finite)."""
    if len(losses) < 2 * window:
        return False
    a = np.asarray(losses[-2 * window:-window])
    b = np.asarray(losses[-window:])
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return False
    diff = abs(b.mean() - a.mean())
    noise = 2 * math.sqrt((a.var() + b.var()) / window)
    return diff <= max(tol * (abs(a.mean()) + 1.0), noise)


@dataclass
class Guard:
    """The non-finite guard's memory within one run: its learning-rate cut, the bad steps in
    a row, the restore point."""

    max_bad_steps: int
    lr_factor: float = 1.0
    bad_in_a_row: int = 0
    snapshot: Snapshot = field(default_factory=Snapshot)

    def taken(self) -> None:
        self.bad_in_a_row = 0

    def skipped(self, result: FitResult, skipped: tuple, loss: float) -> None:
        """A step not taken: halve the learning rate; raise after too many in a row."""
        self.lr_factor *= 0.5
        self.bad_in_a_row += 1
        result.skipped_steps += 1
        raise_if_stuck(self.bad_in_a_row, self.max_bad_steps, skipped[1], skipped[0], loss,
                       self.lr_factor)


@dataclass
class Convergence:
    """The convergence rule a run records (:func:`converged`) and whether it ends the run."""

    window: int = 200
    tol: float = 1e-4
    stop: bool = False


class Engine:
    """Guarded SVI steps for ``model`` and ``guide`` (module docstring).

    Args:
        model: a Pyro model.
        guide: a guide for it.
        args: the positional arguments of both.
        kwargs: the keyword arguments of both.
        elbo: an ELBO instance, ``"trace"``, ``"stl"`` or None (``Trace_ELBO``, compiled where
            it provably equals the eager one).
        num_particles: particles of an ELBO the engine makes.
        vectorize_particles: draw them as one batch (where the model broadcasts).
        clip_norm: clip each parameter tensor's gradient norm to this (None: no clipping).
        max_bad_steps: non-finite steps in a row that raise ``NonFiniteLossError``.
        checkpoint: save parameters, optimizer and RNG states and losses to this file every
            ``checkpoint_every`` steps and at the end of a run.
        checkpoint_every: steps between checkpoints.
        distributed: under ``torchrun``, data-parallel steps over the processes
            (:mod:`~pyro_nf.training.distributed`); without the launcher, one process.
        progress: a tqdm bar with the running ELBO (only when stderr is a terminal).
        callback: called with the number of steps taken after every taken step.
    """

    def __init__(self, model: Callable, guide: Callable, args: tuple = (),
                 kwargs: dict | None = None, *, elbo: Any = None, num_particles: int = 1,
                 vectorize_particles: bool = True, clip_norm: float | None = 10.0,
                 max_bad_steps: int = 10, checkpoint: str | Path | None = None,
                 checkpoint_every: int = 500, distributed: bool = False, progress: bool = True,
                 callback: Callable[[int], None] | None = None) -> None:
        self.model, self.guide = model, guide
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self.loss_fn = make_elbo(elbo, num_particles, vectorize_particles)
        #: the default ELBO is compiled (once, before the first step) where that is exact
        self.compile = elbo is None
        self.elbo_spec = elbo
        self.clip_norm, self.max_bad_steps = clip_norm, max_bad_steps
        self.path = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        self.distributed = distributed
        self.world: Any = None
        self.progress, self.callback = progress, callback
        self._bar: Any = None

    # ------------------------------------------------------------------ set-up
    def set_up_guide(self) -> None:
        """The guide's parameters created by one guide call under a forked RNG (every ELBO,
        compiled or not, then starts from the same random stream, and a resumed fit
        continues exactly); an error here is left for the first step to raise."""
        try:
            with forked_rng(), torch.no_grad():
                poutine.block(self.guide)(*self.args, **self.kwargs)
        except Exception:  # noqa: BLE001 - the first step raises it, with its own handling
            return

    def prepare(self, num_steps: int, result: FitResult) -> None:
        """Before a run: the particles that work, the guide set up and (the default ELBO, once)
        compiled when steps are left to take, the data-parallel world started."""
        self.loss_fn = particles_that_work(self.loss_fn, self.model, self.guide, self.args,
                                           self.kwargs)
        if num_steps > result.steps:
            self.set_up_guide()
            if self.compile:
                self.loss_fn = compiled_elbo(self.loss_fn, self.model, self.guide, self.args,
                                             self.kwargs)
                self.compile = False
        if self.world is not None:  # every parameter exists now
            params = [p for _, p in pyro.get_param_store().named_parameters()]
            distributed.start(self.world, params, self.guide, result.steps)

    def join_world(self) -> None:
        """Set up the data-parallel world (after seeding) when launched with ``distributed``."""
        if self.distributed and self.world is None:
            self.world = distributed.setup(self.model, self.guide, self.args, self.kwargs)

    @property
    def leader(self) -> bool:
        """The process that shows progress and writes checkpoints (the only one, or rank 0)."""
        return self.world is None or self.world.leader

    # ------------------------------------------------------------------ running
    def run(self, num_steps: int, optim: pyro.optim.PyroOptim,
            lr_factor: Callable[[int], float] = lambda step: 1.0, *,
            convergence: Convergence | None = None, hook: Callable[[int], None] | None = None,
            resume: bool = False, show: bool = True) -> FitResult:
        """Take steps ``result.steps`` to ``num_steps`` with ``optim`` at its learning rate
        times ``lr_factor(step)``; ``hook`` (and the engine's ``callback``) after each taken
        step; with ``resume``, start from the checkpoint file if it exists; ``show``: count
        these steps on the progress bar."""
        convergence = convergence or Convergence()
        result, guard = FitResult(guide=self.guide), Guard(self.max_bad_steps)
        if resume and self.path is not None and self.path.exists():
            guard.lr_factor = restore_checkpoint(self.path, self.model, self.guide,
                                                 self.loss_fn, optim, result, self.args,
                                                 self.kwargs)
        self.prepare(num_steps, result)
        start = time.perf_counter()
        bar = self._bar if show else None
        if bar is not None and result.steps:  # a resumed run: the steps already taken
            bar.update(result.steps)
        for step in range(result.steps, num_steps):
            if not self.step(optim, guard, lr_factor(step), result):
                continue
            self._record(result, step, convergence, hook, bar)
            if result.steps % self.checkpoint_every == 0:
                self._save(optim, result, guard)
            if result.converged and convergence.stop:
                break
        self._save(optim, result, guard)
        return self._finish(result, guard, time.perf_counter() - start)

    def step(self, optim: pyro.optim.PyroOptim, guard: Guard, factor: float,
              result: FitResult) -> bool:
        """One guarded step at ``guard.lr_factor * factor``; False when it was not taken (the
        parameters are as before it, the learning rate halved)."""
        model, guide, reduce = self.model, self.guide, None
        if self.world is not None:
            model, guide = self.world.shard(model), self.world.shard(guide)
            reduce = self.world.average
        with fast_minibatches():  # drawn in O(batch), not O(rows)
            self.loss, skipped = guarded_step(
                self.loss_fn, model, guide, self.args, self.kwargs, optim,
                guard.lr_factor * factor, self.clip_norm, guard.snapshot,
                started=bool(result.losses), reduce=reduce)
        if skipped is None:
            guard.taken()
            return True
        guard.skipped(result, skipped, self.loss)
        return False

    def _record(self, result: FitResult, step: int, convergence: Convergence,
                hook: Callable | None, bar: Any) -> None:
        """A taken step: its loss, the hooks, the convergence flag, the bar."""
        result.losses.append(float(self.loss))
        result.steps = step + 1
        for fn in (hook, self.callback):
            if fn is not None:
                fn(result.steps)
        if not result.converged and converged(result.losses, convergence.window,
                                              convergence.tol):
            result.converged, result.converged_at = True, result.steps
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(elbo=f"{-np.mean(result.losses[-50:]):.4g}")

    def _save(self, optim: pyro.optim.PyroOptim, result: FitResult, guard: Guard) -> None:
        if self.path is not None and self.leader:
            save_checkpoint(self.path, optim, result, guard.lr_factor)

    def _finish(self, result: FitResult, guard: Guard, seconds: float) -> FitResult:
        result.seconds = seconds
        result.lr_factor = guard.lr_factor
        if self.world is not None:
            result.world_size = self.world.size
            result.communication_seconds = self.world.seconds
        warn_if_stalled(result)
        return result

    # ------------------------------------------------------------------ progress
    def open_progress(self, total: int, initial: int = 0) -> None:
        """A progress bar over ``total`` steps (when asked for, on the leader, and stderr is a
        terminal); the runs that follow count their steps on it."""
        if self.progress and self.leader and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="fit", leave=True)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def warn_if_stalled(result: FitResult) -> None:
    """Warn when the guard's halvings left the learning rate :data:`STALLED_LR_FACTOR` or
    less of its value."""
    if result.lr_factor > STALLED_LR_FACTOR:
        return
    warnings.warn(
        f"fit: {result.skipped_steps} non-finite steps were skipped, each halving the "
        f"learning rate, which ended {1 / result.lr_factor:.3g} times lower: the fit has "
        "probably stalled. Lower lr, start the guide closer to the posterior (e.g. from a "
        "Laplace approximation), or look for values in the model that overflow.",
        RuntimeWarning, stacklevel=4)
