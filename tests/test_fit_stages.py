"""fit's stages, each on its own: the learning-rate schedule, the convergence test, the guarded
step and the fixed-schedule run's guard memory."""

from __future__ import annotations

import math
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_nf.training.optim import JointAdam, Snapshot
from pyro_nf.training.step import NonFiniteLossError, guarded_step

FIT = sys.modules["pyro_nf.training.fit"]  # the module (pyro_nf.training.fit is also the function)


def test_schedule_ramps_up_then_decays_to_lr_decay_times_the_rate():
    s = FIT._schedule
    assert s(0, 100, None, None, 10) == pytest.approx(0.1)  # warm-up: (step + 1) / 10
    assert s(9, 100, None, None, 10) == pytest.approx(1.0)
    assert s(50, 100, None, 0.1, 0) == pytest.approx(0.1 ** 0.5)
    assert s(100, 100, None, 0.1, 0) == pytest.approx(0.1)
    assert s(50, 100, lambda step: 0.5, 0.1, 0) == pytest.approx(0.5 * 0.1 ** 0.5)


def test_converged_on_a_stationary_loss_not_on_a_trend_nor_non_finite_values():
    rng = np.random.default_rng(0)
    flat = list(10 + rng.normal(size=400))
    assert FIT._converged(flat, 200, 1e-4)
    assert not FIT._converged(flat[:399], 200, 1e-4)  # not yet two whole windows
    trend = list(10 + 0.05 * np.arange(400) + rng.normal(size=400))
    assert not FIT._converged(trend, 200, 1e-4)
    assert not FIT._converged(flat[:-1] + [math.inf], 200, 1e-4)


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


def test_run_halves_the_learning_rate_per_bad_step_and_stops_after_max_bad_steps():
    guide, optim, _ = _setup()

    def broken():
        pyro.sample("x", dist.Normal(torch.tensor(math.nan), 1.0))

    run = FIT._Run(broken, guide, (), {}, Trace_ELBO(), optim, FIT.FitResult(guide=guide),
                   max_bad_steps=3, path=None)
    with pyro.validation_enabled(False):
        assert run.step(1.0, 10.0) is False and run.lr_factor == 0.5
        assert run.step(1.0, 10.0) is False and run.lr_factor == 0.25
        with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
            run.step(1.0, 10.0)
    assert run.result.skipped_steps == 3
