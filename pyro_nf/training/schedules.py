"""Schedules: what drives the :class:`~pyro_nf.training.engine.Engine`.

A schedule decides how many steps the engine takes, at which learning rates, and when it
stops. Two are provided; :func:`~pyro_nf.fit` picks :class:`FixedSchedule` when given
``num_steps`` and :class:`SelfTuningSchedule` otherwise, and an option of one passed to the
other is an error that names it.

:class:`FixedSchedule`: ``num_steps`` steps of an optimizer (default
:class:`~pyro_nf.training.optim.JointAdam`) with a linear warm-up and an exponential decay,
a convergence rule that may end it early, checkpoints and data-parallel ranks.

:class:`SelfTuningSchedule`: a fit that chooses its step size and stops by itself, in stages:

1. **pilot**: from the same start, a short run at each of ``PILOT_LRS``; the step size whose
   run ends with the highest ELBO, estimated on the same fixed draws for every candidate
   (common random numbers, so the comparison is not drowned in Monte Carlo noise), wins.
2. **optimize**: Adam in windows of ``WINDOW`` steps. Once the loss is stationary (the means of
   the last two windows agree within their standard errors: the iterates only bounce around
   the optimum, Dhaka et al., 2020, "Robust, accurate stochastic optimization for variational
   inference"; at the first learning rate, windows twice as long), the learning rate is
   halved, ``HALVINGS`` times in all (Welandawe et al., 2024,
   "A framework for improving the reliability of black-box variational inference").
3. **average**: at the smallest learning rate, the parameters are averaged over the last
   ``AVERAGE_WINDOWS`` windows (Polyak & Juditsky, 1992) and the average is returned: it has
   a fraction of a single iterate's Monte Carlo error.

Before the first step and whenever the loss has become stationary, a guide over the packed
latent is checked by importance sampling (:mod:`~pyro_nf.training.checks`, "accurate early"):
once every posterior mean is provably within ``accuracy`` guide sds of the guide's, training
further cannot improve what a user reads off the draws, and the fit stops. An AutoFlow whose
Gaussian anchor is already that close (a regression, a posterior that is Gaussian) stops before
its first step. The run stops there, or at ``max_steps``;
:class:`~pyro_nf.training.result.FitResult` says which (``stage``, ``stop_reason``), and the
last check compares the fitted guide with its Gaussian anchor.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import pyro
import pyro.optim
import torch
from pyro.infer import Trace_ELBO

from pyro_nf.densities.control_variate import ControlVariate
from pyro_nf.densities.full_data import reads_all_rows
from pyro_nf.training.checks import (
    ACCURACY,
    SCORE_PARTICLES,
    AccuracyCheck,
    fixed_draw_elbo,
    full_data_elbo,
    last_check,
)
from pyro_nf.training.compiled import compiled_elbo
from pyro_nf.training.engine import Convergence, Engine, converged, particles_that_work
from pyro_nf.training.optim import JointAdam
from pyro_nf.training.refinement import last_stage
from pyro_nf.training.result import FitResult
from pyro_nf.training.step import not_positive_definite, numerics_error
from pyro_nf.utils.rng import forked_rng

PILOT_LRS = (0.01, 0.005, 0.002)
PILOT_STEPS = 75
WINDOW = 200
HALVINGS = 4
AVERAGE_WINDOWS = 2
MAX_STEPS = 10000


def schedule_options(schedule: type) -> tuple[str, ...]:
    """The options (dataclass fields) of a schedule class."""
    return tuple(f.name for f in fields(schedule))


@dataclass(frozen=True)
class FixedSchedule:
    """``num_steps`` steps of ``optim`` (module docstring).

    Args:
        num_steps: total number of steps (a resumed run continues up to this many).
        lr: the learning rate of the default optimizer.
        optim: a ``pyro.optim`` optimizer (default :class:`~pyro_nf.training.optim.JointAdam`
            ``({"lr": lr})``, Adam over all tensors in one fused step).
        lr_schedule: ``step -> factor`` multiplying the optimizer's learning rate.
        lr_decay: the learning rate decays exponentially to ``lr_decay`` times its initial
            value at the last step; None or 1 keeps it constant.
        warmup_steps: a linear learning-rate warm-up over this many first steps (default
            ``min(200, num_steps // 20)``; 0 turns it off).
        convergence_window: the loss has converged when the means of its last two windows of
            this many steps differ by less than ``convergence_tol * (|mean| + 1)`` or twice
            their standard error (``FitResult.converged``).
        convergence_tol: the relative tolerance of that rule.
        stop_when_converged: end the run once the loss has converged.
    """

    num_steps: int
    lr: float = 5e-3
    optim: pyro.optim.PyroOptim | None = None
    lr_schedule: Callable[[int], float] | None = None
    lr_decay: float | None = 0.1
    warmup_steps: int | None = None
    convergence_window: int = 200
    convergence_tol: float = 1e-4
    stop_when_converged: bool = False

    #: what the engine does for this schedule that the other does not
    supports: ClassVar[frozenset] = frozenset({"checkpoint", "resume", "distributed"})
    #: particles of an ELBO the engine makes, unless ``num_particles`` is given
    default_particles: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 0:
            raise ValueError(f"FixedSchedule: num_steps must be a non-negative integer, got "
                             f"{self.num_steps!r}")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ValueError(f"FixedSchedule: lr_decay must be in (0, 1] or None, got "
                             f"{self.lr_decay!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int)
                                              or self.warmup_steps < 0):
            raise ValueError("FixedSchedule: warmup_steps must be a non-negative integer or "
                             f"None, got {self.warmup_steps!r}")
        if self.optim is not None and not isinstance(self.optim, pyro.optim.PyroOptim):
            raise TypeError("FixedSchedule: optim must be a pyro.optim optimizer such as "
                            f"pyro.optim.Adam({{'lr': 0.01}}), got {type(self.optim).__name__}")

    @property
    def warmup(self) -> int:
        """The warm-up length (``warmup_steps``, or its default)."""
        if self.warmup_steps is None:
            return min(200, self.num_steps // 20)
        return self.warmup_steps

    def lr_factor(self, step: int) -> float:
        """The learning-rate factor at ``step``: the user's schedule, the decay, the warm-up."""
        factor = self.lr_schedule(step) if self.lr_schedule is not None else 1.0
        if self.lr_decay is not None and self.num_steps > 0:
            factor *= self.lr_decay ** (step / self.num_steps)
        if step < self.warmup:
            factor *= (step + 1) / self.warmup
        return factor

    def run(self, engine: Engine, resume: bool = False) -> FitResult:
        """Run the engine for ``num_steps`` (from the checkpoint with ``resume``)."""
        optim = self.optim if self.optim is not None else JointAdam({"lr": self.lr})
        engine.join_world()
        engine.open_progress(self.num_steps)
        convergence = Convergence(self.convergence_window, self.convergence_tol,
                                  self.stop_when_converged)
        try:
            return engine.run(self.num_steps, optim, self.lr_factor, convergence=convergence,
                              resume=resume)
        finally:
            engine.close_progress()


@dataclass(frozen=True)
class SelfTuningSchedule:
    """A fit that chooses its step size and stops by itself (module docstring).

    Args:
        accuracy: stop once an importance check proves every posterior mean within
            ``accuracy`` guide sds (chi^2(p || q) <= accuracy^2, k-hat < 0.5); None turns the
            check off.
        max_steps: the most steps the fit may take: a budget; the result's ``stop_reason``
            says when it was the reason to stop.
        certify: run the checks behind ``FitResult.verdict`` on the fitted guide (a mode
            screen and the mass and moments checks of :mod:`~pyro_nf.training.certify`);
            False leaves the verdict "not checked".
        refine: where the verdict is "unreliable", draw exact samples by HMC in the fitted
            guide's coordinates (:func:`~pyro_nf.training.refinement.refine`, its default
            budget: 16 chains, at most 100 + 2000 iterations) into ``FitResult.refined``.
    """

    accuracy: float | None = ACCURACY
    max_steps: int = MAX_STEPS
    certify: bool = True
    refine: bool = True

    supports: ClassVar[frozenset] = frozenset()
    default_particles: ClassVar[int] = 8

    def __post_init__(self) -> None:
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"SelfTuningSchedule: max_steps must be a positive integer, got "
                             f"{self.max_steps!r}")
        if self.accuracy is not None and not (isinstance(self.accuracy, (int, float))
                                              and self.accuracy > 0):
            raise ValueError(f"SelfTuningSchedule: accuracy must be a positive number or None, "
                             f"got {self.accuracy!r}")

    def run(self, engine: Engine, resume: bool = False) -> FitResult:
        """Run the stages (module docstring) on the engine."""
        if resume or engine.path is not None:
            raise ValueError("SelfTuningSchedule: checkpoints and resume are not supported (the "
                             "fit chooses its own schedule); use a FixedSchedule")
        started = time.perf_counter()
        _set_up(engine)
        check = AccuracyCheck(engine.model, engine.guide, engine.args, engine.kwargs,
                              self.accuracy)
        checked = None  # the ELBO once its particles are known to broadcast (or run in turn)
        engine.open_progress(self.max_steps)
        try:
            if check.reached():  # the start (AutoFlow: its Gaussian anchor) is that close
                total = FitResult(guide=engine.guide, stage="start",
                                  stop_reason=check.reason())
            else:
                checked = _prepare_loss(engine, check)
                lr, pilot_scores = _pilot(engine, check.log_density)
                total = _Optimization(engine, check, self.max_steps).run(lr, pilot_scores)
        finally:
            engine.close_progress()
        _report(total, engine, check, checked)
        if self.certify:
            last_stage(total, engine.model, engine.guide, engine.args, engine.kwargs,
                       check.log_density, refine_draws=self.refine)
        else:
            total.verdict = "not checked: SelfTuningSchedule(certify=False)"
        total.seconds = time.perf_counter() - started
        return total


def _set_up(engine: Engine) -> None:
    """The guide's set-up (AutoFlow: its anchor), with a clear error for a covariance that is
    not positive definite."""
    try:
        with torch.no_grad():
            pyro.poutine.block(engine.guide)(*engine.args, **engine.kwargs)
    except (torch.linalg.LinAlgError, ValueError) as exc:
        if not_positive_definite(exc):
            raise numerics_error(exc) from exc
        raise


def _prepare_loss(engine: Engine, check: AccuracyCheck) -> Any:
    """The engine's ELBO with particles that work, the control variate of a subsampled model,
    compiled where exact (the default ELBO); returns the ELBO as checked, before those."""
    engine.loss_fn = checked = particles_that_work(engine.loss_fn, engine.model, engine.guide,
                                                   engine.args, engine.kwargs)
    if engine.elbo_spec is None or isinstance(engine.elbo_spec, str):  # the fit's own ELBO
        engine.loss_fn = _with_control_variate(engine, check.log_density)
    if engine.compile:  # the default: compiled where that is exact
        engine.loss_fn = compiled_elbo(engine.loss_fn, engine.model, engine.guide, engine.args,
                                       engine.kwargs)
        engine.compile = False
    return checked


def _report(total: FitResult, engine: Engine, check: AccuracyCheck, checked: Any) -> None:
    """The last check; a fit that stopped at its start is still the guide the first check
    saw. A failure of the check warns: a finished fit is not thrown away for it."""
    try:
        last_check(total, engine.model, engine.guide, engine.args, engine.kwargs,
                   check.log_density, checked, check.last if total.stage == "start" else None)
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"fit: the last check against the anchor failed ({type(error).__name__}: "
                      f"{next(iter(str(error).splitlines()), '')})", RuntimeWarning,
                      stacklevel=4)


def _window(engine: Engine, optim: Any, steps: int, factor: float, warmup: int = 0,
            hook: Callable | None = None, show: bool = True) -> FitResult:
    """``steps`` engine steps at ``factor`` times ``optim``'s learning rate, after a linear
    warm-up over ``warmup`` steps."""
    def lr_factor(step: int) -> float:
        return factor * ((step + 1) / warmup if step < warmup else 1.0)

    return engine.run(steps, optim, lr_factor, hook=hook, show=show)


def _store_values() -> dict[str, torch.Tensor]:
    return {name: p.detach().clone()
            for name, p in pyro.get_param_store().named_parameters()}


@torch.no_grad()
def _load_values(values: dict[str, torch.Tensor]) -> None:
    params = dict(pyro.get_param_store().named_parameters())
    for name, value in values.items():
        params[name].copy_(value)


def _pilot(engine: Engine, log_density: Any = None) -> tuple[float, dict[str, float]]:
    """Stage 1: the step size whose short run ends with the best fixed-draw ELBO; for a
    subsampled model, the full data's (``log_density`` read in chunks): a minibatch ELBO's
    noise, N / B times a row's, would pick the step size at random."""
    model, guide, args, kwargs = engine.model, engine.guide, engine.args, engine.kwargs
    with torch.no_grad():  # every parameter, the model's own pyro.param too, exists now
        Trace_ELBO().loss(model, guide, *args, **kwargs)
    start = _store_values()
    scores = {}
    for lr in PILOT_LRS:
        _load_values(start)
        try:
            _window(engine, JointAdam({"lr": lr}), PILOT_STEPS, 1.0, PILOT_STEPS // 4,
                    show=False)
        except FloatingPointError:  # NonFiniteLossError: this step size diverges
            scores[lr] = -math.inf
            continue
        if reads_all_rows(log_density):
            elbo = full_data_elbo(log_density, guide.get_posterior(*args, **kwargs))
        else:
            elbo = fixed_draw_elbo(model, guide, args, kwargs, vectorize=engine.loss_fn)[0]
        scores[lr] = elbo if math.isfinite(elbo) else -math.inf
    _load_values(start)
    if not any(math.isfinite(v) for v in scores.values()):
        best = min(scores)  # every step size diverged: the main stage starts at the smallest
    else:
        best = max(scores, key=scores.get)
    return best, {str(k): v for k, v in scores.items()}


def _with_control_variate(engine: Engine, log_density: Any) -> Any:
    """The engine's ELBO with :mod:`~pyro_nf.densities.control_variate`'s control variate, for
    a model that subsamples a plate (z0: the mean of 256 draws of the guide as it starts)."""
    if log_density is None or log_density.chunks is None:
        return engine.loss_fn
    guide = engine.guide
    with forked_rng(3), torch.no_grad():
        center = guide.get_posterior(*engine.args, **engine.kwargs).sample(
            (SCORE_PARTICLES,)).mean(0)
    return ControlVariate(log_density, center, f"_{guide._pyro_name}_latent").attach(
        engine.loss_fn)


class _Optimization:
    """Stages 2 and 3: windows until stationary (then the importance check), halvings, then
    the averaged parameters."""

    def __init__(self, engine: Engine, check: AccuracyCheck, max_steps: int) -> None:
        self.engine, self.check, self.max_steps = engine, check, max_steps
        self.average: dict[str, torch.Tensor] | None = None
        self.count = 0

    def accumulate(self, _step: int) -> None:
        """Add the parameters as they stand to the running average."""
        values = _store_values()
        self.count += 1
        if self.average is None:
            self.average = values
        else:
            for name, value in values.items():
                self.average[name] += (value - self.average[name]) / self.count

    def run(self, lr: float, pilot_scores: dict) -> FitResult:
        total = FitResult(guide=self.engine.guide, pilot=pilot_scores, lr=lr)
        optim = JointAdam({"lr": lr})  # one optimizer: its moments carry across windows
        halvings, stage_losses = 0, []
        stage, reason = "optimize", f"the cap of {self.max_steps} steps"
        while total.steps < self.max_steps:
            averaging = halvings == HALVINGS
            steps = min(WINDOW * (AVERAGE_WINDOWS if averaging else 1),
                        self.max_steps - total.steps)
            result = _window(self.engine, optim, steps, 0.5 ** halvings,
                             warmup=50 if total.steps == 0 else 0,
                             hook=self.accumulate if averaging else None)
            _add(total, result)
            stage_losses += result.losses
            if averaging:
                stage = "average"
                reason = (f"the loss was stationary after {HALVINGS} halvings of the learning "
                          f"rate; the parameters are averaged over the last {self.count} steps")
                break
            # the first stage compares windows twice as long: early on the loss still drifts
            # by less than its noise per window while it has far to go
            if converged(stage_losses, WINDOW * (2 if halvings == 0 else 1), 0.0):
                halvings, stage_losses = halvings + 1, []
                total.converged, total.converged_at = True, total.steps
                if self.check.reached():
                    reason = self.check.reason()
                    break
        if self.average is not None:
            _load_values(self.average)
        total.stage, total.stop_reason = stage, reason
        return total


def _add(total: FitResult, result: FitResult) -> None:
    """A window's steps, losses and time added to the fit's."""
    total.losses += result.losses
    total.steps += result.steps
    total.skipped_steps += result.skipped_steps
    total.seconds += result.seconds
