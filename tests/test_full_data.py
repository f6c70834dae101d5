"""Subsampled models: the full-data log density read in chunks, the minibatch control variate,
and the self-stopping fit on a minibatched likelihood (pyro_nf.densities.full_data,
pyro_nf.densities.control_variate)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEEDS, mean_tolerance, sd_ratio_tolerance
from pyro.infer import Trace_ELBO
from pyro.poutine.subsample_messenger import SubsampleMessenger

import pyro_nf
from pyro_nf.densities import full_data
from pyro_nf.densities.control_variate import ControlVariate
from pyro_nf.densities.logdensity import LogDensity

N, D = 300, 3


def data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -0.5, 0.25], dtype=x.dtype)),
                        generator=g)
    return x, y


def logistic(x, y, batch=None):
    a = pyro.sample("a", dist.Normal(x.new_zeros(()), 5.0))
    b = pyro.sample("b", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=batch) as i:
        pyro.sample("y", dist.Bernoulli(logits=(x[i] * b).sum(-1) + a), obs=y[i])


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 rows for one draw, so a density spans many chunks and an uneven last one."""
    monkeypatch.setattr(full_data, "CHUNK_ELEMENTS", 7)


def test_full_data_density_is_exact_in_chunks(small_chunks):
    x, y = data()
    full, sub = LogDensity(logistic, x, y), LogDensity(logistic, x, y, batch=20)
    assert full.chunks is None and (sub.chunks.name, sub.chunks.size) == ("data", N)
    theta = torch.randn(5, D + 1, dtype=torch.float64, requires_grad=True)
    for points in (theta, theta[0]):  # batched and one point: the same, every call
        want, got = full(points), sub(points)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(sub(points), got)
        g_want, = torch.autograd.grad(want.sum(), theta)
        g_got, = torch.autograd.grad(got.sum(), theta)
        torch.testing.assert_close(g_got, g_want)
    assert sub.batched


def test_plate_indices_restores_pyro_and_takes_any_length():
    original = SubsampleMessenger.__dict__["_subsample"]
    with pytest.raises(RuntimeError, match="inside"):
        with full_data.plate_indices({"data": torch.arange(7)}):
            with pyro.plate("data", 50, subsample_size=5) as i:
                assert i.tolist() == list(range(7))
            with pyro.plate("other", 50, subsample_size=5) as j:
                assert len(j) == 5  # a plate not named keeps its random minibatch
            raise RuntimeError("inside")
    assert SubsampleMessenger.__dict__["_subsample"] is original


def test_two_subsampled_plates_are_refused():
    def model():
        pyro.sample("m", dist.Normal(0.0, 1.0))
        with pyro.plate("a", 10, subsample_size=2):
            pyro.sample("u", dist.Normal(0.0, 1.0), obs=torch.zeros(2))
        with pyro.plate("b", 10, subsample_size=2):
            pyro.sample("v", dist.Normal(0.0, 1.0), obs=torch.zeros(2))

    with pytest.raises(ValueError, match="plates \\['a', 'b'\\] all subsample"):
        LogDensity(model)


def test_control_variate_is_zero_over_a_partition_of_the_rows():
    x, y = data()
    ld = LogDensity(logistic, x, y, batch=30)
    cv = ControlVariate(ld, torch.zeros(D + 1, dtype=torch.float64), "_latent")
    z = torch.randn(D + 1, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for rows in torch.arange(N).reshape(-1, 30):  # every row in exactly one minibatch
        value, grad = cv._value_and_grad(rows)
        total = total + (cv.full - value) + ((cv.full_grad - grad) * (z - cv.center)).sum()
    assert abs(float(total)) < 1e-8 * float(cv.full.abs())
    full, = torch.autograd.grad(ld.plate_log_density(cv.center.requires_grad_()), cv.center)
    torch.testing.assert_close(cv.full_grad, full)


def _grad_spread(elbo, guide, x, y, repeats: int = 40) -> float:
    grads = []
    for seed in range(repeats):
        torch.manual_seed(seed)
        for p in guide.parameters():
            p.grad = None
        elbo.loss_and_grads(logistic, guide, x, y, batch=10)
        grads.append(torch.cat([p.grad.reshape(-1) for p in guide.parameters()]))
    return float(torch.stack(grads).std(0).norm())


def test_control_variate_cuts_the_minibatch_noise_of_the_gradient():
    """At a guide on the posterior (AutoFlow's full-data anchor), minibatches of 10 of 2000
    rows: the control variate must take most of the gradient's spread away."""
    x, y = data(2000)
    pyro.clear_param_store()
    guide = pyro_nf.AutoFlow(logistic)
    guide(x, y, batch=10)
    assert guide.anchor_info  # the anchor reads all the rows: it exists
    center = guide.get_posterior(x, y, batch=10).sample((256,)).mean(0)
    spread = {}
    for name in ("plain", "cv"):
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        if name == "cv":
            elbo = ControlVariate(LogDensity(logistic, x, y, batch=10), center,
                                  f"_{guide._pyro_name}_latent").attach(elbo)
        spread[name] = _grad_spread(elbo, guide, x, y)
    assert spread["cv"] < 0.2 * spread["plain"], spread


def linear(x, y, batch=None):
    b = pyro.sample("b", dist.Normal(x.new_zeros(D), 1.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=batch) as i:
        pyro.sample("y", dist.Normal((x[i] * b).sum(-1), 0.5), obs=y[i])


def test_fit_on_minibatches_reaches_the_exact_posterior():
    """Bayesian linear regression with known noise: the posterior is Gaussian and exact; the
    self-stopping fit on minibatches of 50 of 3000 rows must land within its accuracy, over
    SEEDS (each mean within 0.1 sd plus 4 Monte Carlo standard errors of the 4000 draws'
    mean, each sd within 10% plus 4 standard errors of the sample sd)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, D, generator=g)
    y = x @ torch.tensor([0.5, -1.0, 2.0]) + 0.5 * torch.randn(3000, generator=g)
    precision = torch.eye(D, dtype=torch.float64) + x.double().T @ x.double() / 0.25
    cov = torch.linalg.inv(precision)
    mean = cov @ (x.double().T @ y.double()) / 0.25
    sd = cov.diagonal().sqrt()
    for seed in SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_nf.AutoFlow(linear)
        result = pyro_nf.fit(linear, guide, x, y, model_kwargs={"batch": 50}, seed=seed,
                             progress=False)
        assert result.khat < 0.5, (seed, result.khat)
        draws = guide.get_posterior(x, y, batch=50).sample((4000,)).double()
        error = (draws.mean(0) - mean).abs()
        assert bool((error < mean_tolerance(sd, 4000)).all()), (seed, error / sd)
        ratio = draws.std(0) / sd
        assert bool(((ratio - 1).abs() < sd_ratio_tolerance(4000)).all()), (seed, ratio)
        assert math.isfinite(result.elbo_estimate)


def test_fast_minibatches_are_uniform_distinct_rows():
    """fit's minibatches: distinct rows, every row equally likely (a chi-square test on 40,000
    rows drawn 4 at a time from 40), Pyro's own sampler back after the block."""
    def model(size=40):
        with pyro.plate("data", size, subsample_size=4) as i:
            return i

    original = full_data._Subsample.sample
    with full_data.fast_minibatches():
        assert full_data._Subsample.sample is not original
        draws = torch.stack([model() for _ in range(10000)])
        assert len(model(10)) == 4  # a plate less than 8 times larger: Pyro's sampler
    assert full_data._Subsample.sample is original
    assert all(len(set(row.tolist())) == 4 for row in draws[:500])
    counts = torch.bincount(draws.reshape(-1), minlength=40).double()
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 80.0  # 39 degrees of freedom: P(chi2 > 80) < 1e-4


def test_max_steps_caps_the_self_tuning_fit():
    x, y = data(400)
    pyro.clear_param_store()
    guide = pyro_nf.AutoFlow(logistic, start=None)
    result = pyro_nf.fit(logistic, guide, x, y, model_kwargs={"batch": 40}, seed=0,
                         max_steps=300, progress=False)
    assert result.steps <= 300 and "cap of 300 steps" in result.stop_reason
    with pytest.raises(ValueError, match="max_steps is an option of SelfTuningSchedule"):
        pyro_nf.fit(logistic, guide, x, y, num_steps=5, max_steps=5, progress=False)
