"""``fit``: one call that builds the :class:`~pyro_nf.training.engine.Engine` and runs a
schedule (:mod:`~pyro_nf.training.schedules`) on it; ``docs/fit.md`` gives the reasons behind
each default, with references."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro

from pyro_nf.training import distributed as data_parallel
from pyro_nf.training.engine import Engine
from pyro_nf.training.refinement import last_stage
from pyro_nf.training.result import FitResult
from pyro_nf.training.schedules import FixedSchedule, SelfTuningSchedule, schedule_options
from pyro_nf.training.step import NonFiniteLossError

__all__ = ["fit", "FitResult", "NonFiniteLossError"]

Schedule = FixedSchedule | SelfTuningSchedule


def fit(
    model: Callable,
    guide: Callable,
    *args: Any,
    schedule: Schedule | None = None,
    model_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    elbo: Any = None,
    num_particles: int | None = None,
    vectorize_particles: bool = True,
    clip_norm: float | None = 10.0,
    max_bad_steps: int = 10,
    progress: bool = True,
    callback: Callable[[int], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    distributed: bool = False,
    **schedule_kwargs: Any,
) -> FitResult:
    """Fit ``guide`` to ``model``'s posterior: ``fit(model, guide, *args)``.

    Without ``num_steps`` the fit tunes and stops itself (:class:`SelfTuningSchedule`); with
    ``num_steps`` it takes that many steps (:class:`FixedSchedule`). ``docs/fit.md`` gives
    the reasons behind each default, with references.

    Args:
        model: a Pyro model.
        guide: a guide for it (AutoFlow, AutoFlowMixture, AmortizedFlow, any Pyro guide).
        *args: the positional arguments of both, as for ``pyro.infer.SVI``.
        schedule: a :class:`FixedSchedule` or :class:`SelfTuningSchedule`; without it, one
            built from ``schedule_kwargs`` (``num_steps`` picks the fixed one).
        model_kwargs: the keyword arguments of both.
        seed: ``pyro.set_rng_seed(seed)`` first, so runs are reproducible.
        elbo: an ELBO, ``"trace"``, ``"stl"`` or None (``Trace_ELBO``, compiled where exact).
        num_particles: particles per step (default 1 fixed, 8 self-tuning).
        vectorize_particles: as one batch, where the model broadcasts over them.
        clip_norm: clip each parameter tensor's gradient norm to this (None: no clipping).
        max_bad_steps: non-finite steps in a row that raise :class:`NonFiniteLossError`.
        progress: a tqdm bar (when stderr is a terminal).
        callback: called with the number of steps taken after every taken step.
        checkpoint: (fixed schedule) a file for parameters, optimizer and RNG states.
        checkpoint_every: steps between checkpoints (default 500).
        resume: continue exactly where the checkpoint file stopped.
        distributed: (fixed schedule) data-parallel SVI under ``torchrun``.
        **schedule_kwargs: the schedule's options when ``schedule`` is not given; one the
            chosen schedule does not use is an error naming it.

    Returns:
        a :class:`FitResult`.
    """
    schedule = _schedule_from(schedule, schedule_kwargs)
    _check_engine_options(schedule, checkpoint, checkpoint_every, resume, distributed)
    options = {"elbo": elbo, "num_particles": num_particles or schedule.default_particles,
               "vectorize_particles": vectorize_particles, "clip_norm": clip_norm,
               "max_bad_steps": max_bad_steps, "progress": progress, "callback": callback,
               "checkpoint": checkpoint, "distributed": distributed,
               "checkpoint_every": 500 if checkpoint_every is None else checkpoint_every}
    return _fit(model, guide, args, _model_kwargs(model_kwargs), schedule, options, seed,
                resume)


def _fit(model: Callable, guide: Callable, args: tuple, kwargs: dict, schedule: Schedule,
         options: dict[str, Any], seed: int | None, resume: bool) -> FitResult:
    """The schedule run on an engine for the guide; for a mixture of flows, on one engine per
    component (:meth:`~pyro_nf.guides.mixture.AutoFlowMixture.fit_components`)."""
    if options["distributed"]:
        data_parallel.check_fit(guide)
    if hasattr(guide, "fit_components"):
        if options["checkpoint"] is not None:
            raise ValueError("fit: checkpoints are not supported for a mixture of flows "
                             "(AutoFlowMixture); drop checkpoint=")
        certifies = getattr(schedule, "certify", False)
        each = dataclasses.replace(schedule, certify=False) if certifies else schedule
        result = guide.fit_components(
            lambda one: _run(each, Engine(model, one, args, kwargs, **options), seed),
            args, kwargs)
        if certifies:  # the mixture as a whole, against the search that made it
            last_stage(result, model, guide, args, kwargs, None, search=guide.search,
                       refine_draws=schedule.refine, stacklevel=5)
        return result
    return _run(schedule, Engine(model, guide, args, kwargs, **options), seed, resume)


def _run(schedule: Schedule, engine: Engine, seed: int | None, resume: bool = False
         ) -> FitResult:
    if seed is not None:
        pyro.set_rng_seed(seed)
    return schedule.run(engine, resume=resume)


def _schedule_from(schedule: Schedule | None, options: dict[str, Any]) -> Schedule:
    """``schedule``, or the one ``options`` build; an option that does not belong to it is a
    one-line error naming the schedule."""
    if schedule is not None:
        if not isinstance(schedule, (FixedSchedule, SelfTuningSchedule)):
            raise TypeError(f"fit: schedule must be a FixedSchedule or SelfTuningSchedule, got "
                            f"{type(schedule).__name__}")
        if options:
            raise ValueError(f"fit: {', '.join(sorted(options))} given beside "
                             f"schedule={type(schedule).__name__}(...): set them on the "
                             "schedule")
        return schedule
    kind = FixedSchedule if "num_steps" in options else SelfTuningSchedule
    other = SelfTuningSchedule if kind is FixedSchedule else FixedSchedule
    for name in options:
        if name in schedule_options(kind):
            continue
        if name in schedule_options(other):
            how = ("drop num_steps to let the fit tune itself" if kind is FixedSchedule else
                   "pass num_steps= to run a fixed number of steps")
            raise ValueError(f"fit: {name} is an option of {other.__name__}, not of "
                             f"{kind.__name__}, the schedule this call runs; {how}")
        raise TypeError(f"fit: unknown option {name!r}; the model's keyword arguments go in "
                        "model_kwargs={...}")
    return kind(**options)


def _model_kwargs(model_kwargs: Any) -> dict[str, Any]:
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"fit: model_kwargs must be a dict of the model's keyword arguments, "
                        f"got {type(model_kwargs).__name__}")
    return dict(model_kwargs)


def _check_engine_options(schedule: Schedule, checkpoint: Any, checkpoint_every: Any,
                          resume: bool, distributed: bool) -> None:
    """What the chosen schedule cannot do is an error naming it; ``resume`` and
    ``checkpoint_every`` need a checkpoint file."""
    name = type(schedule).__name__
    asked = {"checkpoint": checkpoint is not None, "resume": resume,
             "distributed": distributed and data_parallel.launched()}
    for option, given in asked.items():
        if given and option not in schedule.supports:
            raise ValueError(f"fit: {option} is not supported by {name} (the self-tuning fit "
                             "chooses its own schedule); pass num_steps= for a FixedSchedule")
    for option, given in (("resume=True", resume), ("checkpoint_every", checkpoint_every)):
        if given not in (None, False) and checkpoint is None:
            raise ValueError(f"fit: {option} needs checkpoint=<file>")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"fit: checkpoint_every must be a positive integer, got "
                         f"{checkpoint_every!r}")
