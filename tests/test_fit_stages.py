"""fit's stages, each on its own: the learning-rate schedule, the convergence test, the guarded
step and the fixed-schedule run's guard memory."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_nf.training.engine import Guard, converged
from pyro_nf.training.optim import JointAdam, Snapshot
from pyro_nf.training.result import FitResult
from pyro_nf.training.schedules import FixedSchedule
from pyro_nf.training.step import NonFiniteLossError, guarded_step


def test_schedule_ramps_up_then_decays_to_lr_decay_times_the_rate():
    warm = FixedSchedule(100, lr_decay=None, warmup_steps=10)
    assert warm.lr_factor(0) == pytest.approx(0.1)  # warm-up: (step + 1) / 10
    assert warm.lr_factor(9) == pytest.approx(1.0)
    decay = FixedSchedule(100, lr_decay=0.1, warmup_steps=0)
    assert decay.lr_factor(50) == pytest.approx(0.1 ** 0.5)
    assert decay.lr_factor(100) == pytest.approx(0.1)
    user = FixedSchedule(100, lr_decay=0.1, warmup_steps=0, lr_schedule=lambda step: 0.5)
    assert user.lr_factor(50) == pytest.approx(0.5 * 0.1 ** 0.5)
    assert FixedSchedule(1000).warmup == 50 and FixedSchedule(10 ** 5).warmup == 200


def test_converged_on_a_stationary_loss_not_on_a_trend_nor_non_finite_values():
    rng = np.random.default_rng(0)
    flat = list(10 + rng.normal(size=400))
    assert converged(flat, 200, 1e-4)
    assert not converged(flat[:399], 200, 1e-4)  # not yet two whole windows
    trend = list(10 + 0.05 * np.arange(400) + rng.normal(size=400))
    assert not converged(trend, 200, 1e-4)
    assert not converged(flat[:-1] + [math.inf], 200, 1e-4)


def _normal_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


def _setup():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(_normal_model)
    guide()
    return guide, JointAdam({"lr": 0.1}), Snapshot()


def test_guarded_step_takes_a_finite_step_and_a_non_finite_one_restores_the_last_good_point():
    """A bad step puts back the parameters from before the last update (the last ones whose
    loss was finite: the update may be what broke the loss)."""
    guide, optim, snapshot = _setup()
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    loss, skipped = guarded_step(Trace_ELBO(), _normal_model, guide, (), {}, optim, 1.0, 10.0,
                                 snapshot, started=True)
    assert math.isfinite(loss) and skipped is None
    moved = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    assert any(not torch.equal(moved[k], before[k]) for k in before)

    def broken():  # the loss is not finite
        pyro.sample("x", dist.Normal(torch.tensor(math.nan), 1.0))

    with pyro.validation_enabled(False):
        loss, skipped = guarded_step(Trace_ELBO(), broken, guide, (), {}, optim, 1.0, 10.0,
                                     snapshot, started=True)
    assert math.isnan(loss) and skipped is not None and skipped[0] == "gradients"
    for name, value in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(value.detach(), before[name], rtol=0, atol=0)


def test_guard_halves_the_learning_rate_per_bad_step_and_stops_after_max_bad_steps():
    guide, optim, _ = _setup()

    def broken():
        pyro.sample("x", dist.Normal(torch.tensor(math.nan), 1.0))

    guard, result = Guard(max_bad_steps=3), FitResult(guide=guide)
    with pyro.validation_enabled(False):
        for expected in (0.5, 0.25):
            loss, skipped = guarded_step(Trace_ELBO(), broken, guide, (), {}, optim,
                                         guard.lr_factor, 10.0, guard.snapshot, started=True)
            guard.skipped(result, skipped, loss)
            assert guard.lr_factor == expected
        loss, skipped = guarded_step(Trace_ELBO(), broken, guide, (), {}, optim,
                                     guard.lr_factor, 10.0, guard.snapshot, started=True)
        with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
            guard.skipped(result, skipped, loss)
    assert result.skipped_steps == 3
