"""``fit``: the SVI loop users expect, with guards, progress, convergence and checkpoints."""

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
from pyro_nf.training import distributed as _distributed
from pyro_nf.training.checkpoint import restore_checkpoint, save_checkpoint
from pyro_nf.training.elbo import STLTrace_ELBO
from pyro_nf.training.optim import JointAdam, Snapshot
from pyro_nf.training.step import (  # noqa: F401 - NonFiniteLossError: also fit's name for it
    NonFiniteLossError,
    guarded_step,
    not_positive_definite,
    numerics_error,
    raise_if_stuck,
)

#: ``fit`` warns when the non-finite guard has cut the learning rate this far (7 halvings)
STALLED_LR_FACTOR = 0.5 ** 7


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        guide: the fitted guide (the same object that was passed in).
        losses: the loss (negative ELBO estimate) of every step, in order (resumed runs
            include the steps before the checkpoint).
        steps: the number of steps taken in total.
        seconds: wall time of this call.
        converged: whether the smoothed loss stopped changing (see :func:`fit`).
        converged_at: the step at which that was first detected, or None.
        skipped_steps: steps skipped by the non-finite guard.
        lr_factor: what the guard left of the learning rate (each skipped step halves it).
    """

    guide: Any
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    converged: bool = False
    converged_at: int | None = None
    skipped_steps: int = 0
    lr_factor: float = 1.0
    #: without ``num_steps``: the stage that ended the fit ("start": the guide passed the
    #: importance check before any step; "optimise": it passed once the loss was stationary,
    #: or the cap; "average": converged, its parameters averaged) and why, the step size the
    #: pilot chose from its scores (``pilot``: lr -> ELBO), the fitted guide's ELBO on fixed
    #: draws (a subsampled model's: the full-data importance check's draws) and, for an
    #: AutoFlow with a Gaussian anchor, the anchor's (the last check).
    stage: str = "fixed"
    stop_reason: str = "num_steps"
    lr: float | None = None
    pilot: dict[str, float] = field(default_factory=dict)
    elbo_estimate: float | None = None
    anchor_elbo: float | None = None
    #: the last check's PSIS k-hats of the fitted guide (a guide over the packed latent) and of
    #: its anchor, the guide's chi^2(p || q) estimate, and which of guide and anchor it
    #: recommends ("flow" or "anchor"; None without an anchor)
    khat: float | None = None
    chi2: float | None = None
    anchor_khat: float | None = None
    recommendation: str | None = None
    #: for a mixture of flows (``AutoFlow(model, modes=...)``): each component's own result
    #: (the mixture's ``khat`` is that of the weighted mixture, ``steps`` and ``losses``
    #: the components' together)
    components: list | None = None
    #: a data-parallel fit (``distributed=True`` under ``torchrun``): the number of processes
    #: and the seconds this one spent exchanging gradients with the others
    world_size: int = 1
    communication_seconds: float = 0.0

    @property
    def final_elbo(self) -> float:
        """Mean ELBO over the last 10% of steps (at least 1, at most 500)."""
        if not self.losses:
            return float("nan")
        n = min(500, max(1, len(self.losses) // 10))
        return -float(np.mean(self.losses[-n:]))

    def __repr__(self) -> str:
        return (f"FitResult(steps={self.steps}, final_elbo={self.final_elbo:.4g}, "
                f"converged={self.converged}, seconds={self.seconds:.1f}, "
                f"skipped_steps={self.skipped_steps})")


def _make_elbo(elbo: Any, num_particles: int, vectorize: bool) -> ELBO:
    if isinstance(elbo, ELBO):
        return elbo
    kwargs = {"num_particles": num_particles,
              "vectorize_particles": bool(vectorize and num_particles > 1)}
    if elbo is None or elbo == "trace":
        return Trace_ELBO(**kwargs)
    if elbo == "stl":
        return STLTrace_ELBO(**kwargs)
    raise ValueError(f"elbo must be a pyro.infer.ELBO instance, 'trace' or 'stl'; got {elbo!r}")


def _fit_until_converged(model, guide, args, kwargs, optim, lr, elbo, num_particles,
                         vectorize_particles, clip_norm, seed, checkpointing, max_bad_steps,
                         accuracy, max_steps):
    """``fit`` without ``num_steps``: :func:`pyro_nf.training.schedules.auto_fit`."""
    from pyro_nf.training.schedules import auto_fit

    if checkpointing:
        raise ValueError("fit: checkpoint and resume need an explicit num_steps (without it "
                         "the fit chooses its own schedule)")
    if optim is not None:
        raise ValueError("fit: without num_steps the fit tunes its own Adam step size; pass "
                         "num_steps to use your optimiser")
    return auto_fit(model, guide, args, kwargs, fit, num_particles=num_particles or 8,
                    seed=seed, elbo=elbo, vectorize_particles=vectorize_particles,
                    clip_norm=clip_norm, max_bad_steps=max_bad_steps, accuracy=accuracy,
                    **({} if max_steps is None else {"max_steps": max_steps}))


def _particles_that_work(loss_fn: ELBO, model: Callable, guide: Callable, args: tuple,
                         kwargs: dict) -> ELBO:
    """``loss_fn``, or a copy with sequential particles when the model does not broadcast over
    vectorised ones (:func:`~pyro_nf.training.particles.particle_problem`), with one warning.
    The check draws under a forked RNG: the fit's random stream is the same with or without
    it."""
    if not getattr(loss_fn, "vectorize_particles", False) or loss_fn.num_particles < 2 \
            or getattr(loss_fn, "_pyro_nf_checked", False):
        return loss_fn
    from pyro_nf.training.particles import particle_problem

    if loss_fn.max_plate_nesting == float("inf"):
        loss_fn._guess_max_plate_nesting(model, guide, args, kwargs)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        problem = particle_problem(model, guide, args, kwargs, loss_fn.max_plate_nesting)
    loss_fn._pyro_nf_checked = True  # an ELBO reused by several fits is checked once
    if problem is None:
        return loss_fn
    warnings.warn(f"fit: the model does not broadcast over {loss_fn.num_particles} vectorised "
                  f"particles ({problem}), so they run one at a time (slower). To vectorise, "
                  "declare every batch dimension with pyro.plate and index latent tensors "
                  "from the right (x[..., idx]).", UserWarning, stacklevel=3)
    sequential = copy.copy(loss_fn)
    sequential.vectorize_particles = False
    return sequential


def _compile(loss_fn: ELBO, model, guide, args, kwargs, try_jit: bool) -> ELBO:
    """The guide's parameters set up by one guide call under a forked RNG (so that every
    ELBO, compiled or not, starts from the same random stream, and a resumed fit continues
    exactly), then, with ``try_jit`` (the default ELBO),
    :func:`~pyro_nf.training.compiled.compiled_elbo`."""
    from pyro_nf.training.compiled import compiled_elbo

    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            poutine.block(guide)(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the first step raises it, with fit's own handling
        return loss_fn
    return compiled_elbo(loss_fn, model, guide, args, kwargs) if try_jit else loss_fn


def _converged(losses: list[float], window: int, tol: float) -> bool:
    if len(losses) < 2 * window:
        return False
    a = np.asarray(losses[-2 * window:-window])
    b = np.asarray(losses[-window:])
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return False
    diff = abs(b.mean() - a.mean())
    noise = 2 * math.sqrt((a.var() + b.var()) / window)
    return diff <= max(tol * (abs(a.mean()) + 1.0), noise)


#: The arguments of :func:`fit` that a mixture of flows passes on to each component's fit.
_MIXTURE_OPTIONS = ("num_steps", "optim", "lr", "elbo", "num_particles", "vectorize_particles",
                    "clip_norm", "lr_schedule", "lr_decay", "warmup_steps", "progress", "seed",
                    "convergence_window", "convergence_tol", "stop_when_converged",
                    "max_bad_steps", "accuracy", "max_steps")


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_steps: int | None = None,
    optim: pyro.optim.PyroOptim | None = None,
    lr: float = 5e-3,
    elbo: Any = None,
    num_particles: int | None = None,
    vectorize_particles: bool = True,
    clip_norm: float | None = 10.0,
    lr_schedule: Callable[[int], float] | None = None,
    lr_decay: float | None = 0.1,
    warmup_steps: int | None = None,
    progress: bool = True,
    seed: int | None = None,
    convergence_window: int = 200,
    convergence_tol: float = 1e-4,
    stop_when_converged: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    max_bad_steps: int = 10,
    accuracy: float | None = 0.1,
    max_steps: int | None = None,
    distributed: bool = False,
    _step_hook: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> FitResult:
    """Optimise the ELBO of ``guide`` for ``model`` with SVI; ``docs/fit.md`` gives the reasons
    behind each default, with references.

    Args:
        model, guide, *args, **kwargs: as for ``pyro.infer.SVI``; args go to both.
        num_steps: total number of steps (a resumed run continues up to this many). None (the
            default): the fit tunes and stops itself (:mod:`pyro_nf.training.schedules`): a step-size
            pilot, windows until the loss is stationary, four halvings of the learning rate,
            Polyak averaging, and an importance check that may stop it early.
        optim: a ``pyro.optim`` optimiser (default :class:`~pyro_nf.training.optim.JointAdam`
            ``({"lr": lr})``, Adam over all tensors in one fused step); needs ``num_steps``.
        elbo: an ELBO instance, ``"trace"`` (eager ``Trace_ELBO``) or ``"stl"``
            (:class:`~pyro_nf.STLTrace_ELBO`). Default: ``Trace_ELBO`` compiled where it
            provably equals the eager one (:mod:`pyro_nf.training.compiled`). A model that reads
            changing Python state (a global annealing weight) needs ``"trace"``.
        num_particles, vectorize_particles: used when ``elbo`` is not an instance (default 1
            particle with ``num_steps``, else 8); a model that does not broadcast over
            vectorised particles runs them one at a time, with a warning.
        clip_norm: clip each parameter tensor's gradient norm to this (None: no clipping).
        lr_schedule: ``step -> factor`` multiplying the optimiser's learning rate.
        lr_decay: the learning rate decays exponentially to ``lr_decay`` times its initial
            value at the last step; None or 1 keeps it constant.
        warmup_steps: a linear learning-rate warm-up over this many first steps (default
            ``min(200, num_steps // 20)``; 0 turns it off).
        progress: a tqdm bar with the running ELBO (only when stderr is a terminal).
        seed: ``pyro.set_rng_seed(seed)`` first, so runs are reproducible.
        convergence_window, convergence_tol, stop_when_converged: the loss has converged when
            the means of the last two windows differ by less than ``tol * (|mean| + 1)`` or
            twice their standard error; ``stop_when_converged`` then ends the loop.
        checkpoint, checkpoint_every, resume: save the parameters, optimiser and RNG states
            and losses to this file every ``checkpoint_every`` steps and at the end; with
            ``resume=True`` and an existing file the run continues exactly where it stopped.
        max_bad_steps: a step whose loss, gradients or update is not finite is undone and
            halves the learning rate; this many in a row raise :class:`NonFiniteLossError`.
        accuracy: without ``num_steps``, stop once an importance check proves every posterior
            mean within ``accuracy`` guide sds (chi^2(p || q) <= accuracy^2, k-hat < 0.5);
            None turns the check off.
        max_steps: without ``num_steps``, the most steps the fit may take (default 10,000):
            a budget; the result's ``stop_reason`` says when it was the reason to stop.
        distributed: under ``torchrun``, data-parallel SVI over the processes
            (:mod:`pyro_nf.training.distributed`: each takes its block of every subsampled
            plate, gradients averaged every step; needs ``num_steps``); without the launcher
            the usual one-process fit.

    Returns:
        a :class:`FitResult`.
    """
    given = locals()
    if distributed:
        _distributed.check_fit(guide, num_steps)
    if hasattr(guide, "fit_components"):  # a mixture of flows: each component, then weights
        return _fit_mixture(model, guide, args, kwargs, checkpoint,
                            {name: given[name] for name in _MIXTURE_OPTIONS})
    if num_steps is None:
        return _fit_until_converged(model, guide, args, kwargs, optim, lr, elbo, num_particles,
                                    vectorize_particles, clip_norm, seed, checkpoint or resume,
                                    max_bad_steps, accuracy, max_steps)
    if max_steps is not None:
        raise ValueError("fit: max_steps caps the self-tuning fit (num_steps=None); with "
                         "num_steps the fit takes exactly that many")
    warmup_steps, optim = _checked(num_steps, warmup_steps, lr_decay, optim, lr)
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs checkpoint=<file>")
    if seed is not None:
        pyro.set_rng_seed(seed)
    world = _distributed.setup(model, guide, args, kwargs) if distributed else None
    loss_fn = _make_elbo(elbo, 1 if num_particles is None else num_particles,
                         vectorize_particles)
    run = _Run(model, guide, args, kwargs, loss_fn, optim, FitResult(guide=guide),
               max_bad_steps, Path(checkpoint) if checkpoint is not None else None, world)
    run.prepare(num_steps, resume, try_jit=elbo is None)
    start = time.perf_counter()
    bar = _progress_bar(progress and run.leader, run.result.steps, num_steps)
    for step in range(run.result.steps, num_steps):
        factor = _schedule(step, num_steps, lr_schedule, lr_decay, warmup_steps)
        if not run.step(factor, clip_norm):
            continue
        _record(run.result, step, run.loss, _step_hook, convergence_window, convergence_tol,
                bar)
        if run.result.steps % checkpoint_every == 0:
            run.checkpoint()
        if run.result.converged and stop_when_converged:
            break
    return run.finish(bar, time.perf_counter() - start)


@dataclass
class _Run:
    """The state of one fixed-schedule fit: what it fits, with which loss and optimiser,
    and the non-finite guard's memory (its learning-rate cut, bad steps in a row, the
    restore point)."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    loss_fn: ELBO
    optim: pyro.optim.PyroOptim
    result: FitResult
    max_bad_steps: int
    path: Path | None
    world: Any = None  # a distributed.World in a data-parallel fit
    lr_factor: float = 1.0
    bad_in_a_row: int = 0
    loss: float = float("nan")
    snapshot: Snapshot = field(default_factory=Snapshot)

    def prepare(self, num_steps: int, resume: bool, try_jit: bool) -> None:
        """Resume from the checkpoint if asked and it exists; the particles that work; the
        compiled ELBO when steps are left to take."""
        if resume and self.path.exists():
            self.lr_factor = restore_checkpoint(self.path, self.model, self.guide, self.loss_fn,
                                      self.optim, self.result, self.args, self.kwargs)
        self.loss_fn = _particles_that_work(self.loss_fn, self.model, self.guide, self.args,
                                            self.kwargs)
        if num_steps > self.result.steps:
            self.loss_fn = _compile(self.loss_fn, self.model, self.guide, self.args,
                                    self.kwargs, try_jit=try_jit)
        if self.world is not None:  # every parameter exists now
            _distributed.start(self.world, [p for _, p in
                                            pyro.get_param_store().named_parameters()],
                               self.guide, self.result.steps)

    @property
    def leader(self) -> bool:
        """The process that shows progress and writes checkpoints (the only one, or rank 0)."""
        return self.world is None or self.world.leader

    def checkpoint(self) -> None:
        if self.path is not None and self.leader:
            save_checkpoint(self.path, self.optim, self.result, self.lr_factor)

    def step(self, factor: float, clip_norm: float | None) -> bool:
        """One guarded step at ``lr_factor * factor``; False when it was not taken (the
        parameters are as before it, the learning rate halved)."""
        model, guide, reduce = self.model, self.guide, None
        if self.world is not None:
            model, guide = self.world.shard(model), self.world.shard(guide)
            reduce = self.world.average
        with fast_minibatches():  # drawn in O(batch), not O(rows)
            self.loss, skipped = guarded_step(
                self.loss_fn, model, guide, self.args, self.kwargs, self.optim,
                self.lr_factor * factor, clip_norm, self.snapshot,
                started=bool(self.result.losses), reduce=reduce)
        if skipped is None:
            self.bad_in_a_row = 0
            return True
        self.lr_factor *= 0.5
        self.bad_in_a_row += 1
        self.result.skipped_steps += 1
        raise_if_stuck(self.bad_in_a_row, self.max_bad_steps, skipped[1], skipped[0],
                        self.loss, self.lr_factor)
        return False

    def finish(self, bar: Any, seconds: float) -> FitResult:
        if bar is not None:
            bar.close()
        self.checkpoint()
        self.result.seconds = seconds
        self.result.lr_factor = self.lr_factor
        if self.world is not None:
            self.result.world_size = self.world.size
            self.result.communication_seconds = self.world.seconds
        _warn_if_stalled(self.result)
        return self.result


def _fit_mixture(model, guide, args, kwargs, checkpoint, options: dict) -> FitResult:
    """``fit`` of a mixture of flows (``AutoFlow(modes=...)``): each component, then the
    weights (:meth:`~pyro_nf.guides.mixture.AutoFlowMixture.fit_components`)."""
    if checkpoint is not None:
        raise ValueError("fit: checkpoints are not supported for a mixture of flows "
                         "(AutoFlow(modes=...)); drop checkpoint=")
    return guide.fit_components(lambda one: fit(model, one, *args, **options, **kwargs),
                                args, kwargs)


def _checked(num_steps: Any, warmup_steps: Any, lr_decay: Any, optim: Any, lr: float
             ) -> tuple[int, pyro.optim.PyroOptim]:
    """The warm-up length and the optimiser, after the checks of fit's arguments."""
    if lr_decay is not None and not 0 < lr_decay <= 1:
        raise ValueError(f"fit: lr_decay must be in (0, 1] or None, got {lr_decay!r}")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"fit: num_steps must be a non-negative integer, got {num_steps!r}")
    if warmup_steps is None:
        warmup_steps = min(200, num_steps // 20)
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError("fit: warmup_steps must be a non-negative integer or None, got "
                         f"{warmup_steps!r}")
    if optim is None:
        optim = JointAdam({"lr": lr})
    if not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError("fit: optim must be a pyro.optim optimiser such as "
                        f"pyro.optim.Adam({{'lr': 0.01}}), got {type(optim).__name__}")
    return warmup_steps, optim


def _schedule(step: int, num_steps: int, lr_schedule: Callable | None, lr_decay: float | None,
              warmup_steps: int) -> float:
    """The learning-rate factor at ``step``: the user's schedule, the decay, the warm-up."""
    factor = lr_schedule(step) if lr_schedule is not None else 1.0
    if lr_decay is not None and num_steps > 0:
        factor *= lr_decay ** (step / num_steps)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def _progress_bar(progress: bool, initial: int, num_steps: int):
    if not (progress and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=num_steps, initial=initial, desc="fit", leave=True)


def _record(result: FitResult, step: int, loss: float, hook: Callable | None, window: int,
            tol: float, bar: Any) -> None:
    """A taken step: its loss, the hook, the convergence flag, the bar."""
    result.losses.append(float(loss))
    result.steps = step + 1
    if hook is not None:
        hook(result.steps)
    if not result.converged and _converged(result.losses, window, tol):
        result.converged, result.converged_at = True, result.steps
    if bar is not None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(elbo=f"{-np.mean(result.losses[-50:]):.4g}")


def _warn_if_stalled(result: FitResult) -> None:
    if result.lr_factor > STALLED_LR_FACTOR:
        return
    warnings.warn(
        f"fit: {result.skipped_steps} non-finite steps were skipped, each halving the "
        f"learning rate, which ended {1 / result.lr_factor:.3g} times lower: the fit has "
        "probably stalled. Lower lr, start the guide closer to the posterior (e.g. "
        "AutoFlow.from_guide with a Laplace approximation), or look for values in the model "
        "that overflow.", RuntimeWarning, stacklevel=3)
