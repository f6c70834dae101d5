"""Starting and fitting models that Pyro's defaults cannot: flat (ImproperUniform) priors,
factor-only densities, models written for one particle, sites the centering cannot handle."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import LONG_SEEDS, SEEDS, mean_tolerance, sd_ratio_tolerance
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import InitMessenger
from torch.distributions import biject_to

from pyro_nf import AutoFlow, NonFiniteLossError, fit
from pyro_nf.densities.initialization import STAN_RADIUS, init_to_median_or_uniform
from pyro_nf.training.particles import particle_problem

SUPPORTS = {"real": constraints.real, "positive": constraints.positive,
            "interval": constraints.interval(-1.0, 3.0), "simplex": constraints.simplex}


@pytest.mark.parametrize("name", list(SUPPORTS))
def test_flat_priors_start_uniformly_in_unconstrained_space(name):
    support = SUPPORTS[name]
    event = (3,) if name == "simplex" else ()

    def model():
        with pyro.plate("p", 4):
            pyro.sample("x", dist.ImproperUniform(support, (4,), event))

    pyro.set_rng_seed(0)
    with InitMessenger(init_to_median_or_uniform):
        value = pyro.poutine.trace(model).get_trace().nodes["x"]["value"]
    assert value.shape == (4,) + event and bool(support.check(value).all())
    u = biject_to(support).inv(value)
    assert bool((u.abs() < STAN_RADIUS).all()) and u.std() > 0.1


def test_sampleable_priors_keep_the_prior_median():
    pyro.set_rng_seed(0)
    site = {"fn": dist.Normal(7.0, 0.01), "is_observed": False, "name": "a", "value": None}
    assert abs(float(init_to_median_or_uniform(site)) - 7.0) < 0.01


def flat_normal(y):
    """y_i ~ N(mu, sigma) with flat priors on mu (real) and sigma (positive): Stan's default."""
    mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("n", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def factor_only():
    """A density given only by pyro.factor: x ~ N((1, -2), diag(0.5, 3)^2) exactly."""
    x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), (2,)))
    pyro.factor("density", dist.Normal(torch.tensor([1.0, -2.0]),
                                       torch.tensor([0.5, 3.0])).log_prob(x).sum(-1))


def test_a_factor_only_density_fits_to_its_known_answer():
    """Over SEEDS; each mean within 0.1 sd plus 4 Monte Carlo standard errors of the 4000
    draws' mean (mean_tolerance), each sd within 12% (the fit's allowance on a flat start)
    plus 4 standard errors of the sample sd."""
    sd = torch.tensor([0.5, 3.0])
    for seed in SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoFlow(factor_only, flow="iaf")
        fit(factor_only, guide, num_steps=600, lr=0.02, num_particles=8, seed=seed,
            progress=False)
        draws = guide.sample_posterior(4000)["x"]
        error = (draws.mean(0) - torch.tensor([1.0, -2.0])).abs()
        assert bool((error < mean_tolerance(sd, 4000)).all()), (seed, error)
        ratio = draws.std(0) / sd
        assert bool(((ratio - 1).abs() < sd_ratio_tolerance(4000, bias=0.12)).all()), \
            (seed, ratio)


@pytest.mark.slow
def test_flat_priors_fit_with_the_default_guide():
    """Over LONG_SEEDS. Flat priors: mu | y is Student-t around the sample mean with scale
    s / sqrt(n) and n - 2 degrees of freedom; its mean within 0.1 sd plus 4 Monte Carlo
    standard errors, its sd within 25% (a t's tails from a fixed 800-step fit)."""
    y = torch.tensor([2.1, 3.4, 1.7, 2.8, 3.9, 2.2, 2.6, 3.1])
    n, s = len(y), float(y.std())
    t_sd = s / math.sqrt(n) * math.sqrt((n - 2) / (n - 4))  # t with n - 2 dof (flat sigma)
    for seed in LONG_SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoFlow(flat_normal)
        fit(flat_normal, guide, y, num_steps=800, lr=0.02, num_particles=8, seed=seed,
            progress=False)
        draws = guide.sample_posterior(4000, y)["mu"]
        error = abs(float(draws.mean()) - float(y.mean()))
        assert error < mean_tolerance(t_sd, 4000), (seed, error / t_sd)
        assert abs(float(draws.std()) / t_sd - 1) < 0.25, (seed, float(draws.std()) / t_sd)


# ---------------------------------------------------------------------------------------------
GROUP = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
Y = torch.tensor([0.2, -0.3, 1.8, 2.2, 1.5, -1.1, -0.7, 0.4, 2.0, -1.3])


def one_particle(y=Y, group=GROUP):
    """Indexes its latent vector from the left: right for one draw, wrong for a batch."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", 3):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta[group], 0.5), obs=y)


def vectorized(y=Y, group=GROUP):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", 3):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta[..., group], 0.5), obs=y)


def test_particle_check_tells_the_two_models_apart():
    for model, broadcasts in ((one_particle, False), (vectorized, True)):
        pyro.clear_param_store()
        guide = AutoFlow(model, flow="iaf", centering="model")
        problem = particle_problem(model, guide, (), {}, max_plate_nesting=1)
        assert (problem is None) == broadcasts, problem


def exact_theta(y=Y, group=GROUP):
    """The exact posterior mean and sd of theta in ``vectorized`` (a linear Gaussian model)."""
    # (mu, theta) ~ N(0, prior); y = A (mu, theta) + N(0, 0.25 I)
    prior = torch.zeros(4, 4, dtype=torch.float64)
    prior[0, 0], prior[0, 1:], prior[1:, 0] = 25.0, 25.0, 25.0
    prior[1:, 1:] = 25.0 + torch.eye(3, dtype=torch.float64)
    A = torch.zeros(len(y), 4, dtype=torch.float64)
    A[torch.arange(len(y)), 1 + group] = 1.0
    cov = torch.linalg.inv(torch.linalg.inv(prior) + A.T @ A / 0.25)
    mean = cov @ A.T @ y.double() / 0.25
    return mean[1:], cov.diagonal()[1:].sqrt()


@pytest.mark.slow
def test_a_model_written_for_one_particle_fits_with_sequential_particles():
    """Over LONG_SEEDS, each model's theta means within 0.1 sd plus 4 Monte Carlo standard errors
    of the exact conjugate posterior's (mean_tolerance of 3000 draws)."""
    mean, sd = exact_theta()
    for seed in LONG_SEEDS:
        for model in (one_particle, vectorized):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = AutoFlow(model, flow="iaf", centering="model")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(model, guide, num_steps=600, lr=0.01, num_particles=4, seed=seed,
                    progress=False)
            broadcast_warnings = [w for w in caught if "does not broadcast" in str(w.message)]
            assert len(broadcast_warnings) == (1 if model is one_particle else 0)
            theta = guide.sample_posterior(3000)["theta"].double().mean(0)
            error = (theta - mean).abs()
            assert bool((error < mean_tolerance(sd, 3000)).all()), \
                (seed, model.__name__, error / sd)


def test_the_check_does_not_move_the_fits_random_stream():
    losses = []
    for _ in range(2):
        pyro.clear_param_store()
        guide = AutoFlow(vectorized, flow="iaf", centering="model")
        losses.append(fit(vectorized, guide, num_steps=5, num_particles=4, seed=3,
                          progress=False).losses)
    pyro.clear_param_store()
    guide = AutoFlow(vectorized, flow="iaf", centering="model")
    plain = fit(vectorized, guide, num_steps=5, num_particles=4, seed=3, progress=False,
                vectorize_particles=True)
    assert losses[0] == losses[1] == plain.losses


def test_a_fit_whose_learning_rate_underflows_stops_with_a_clear_error():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("sometimes_nan", torch.where(x > 0.0, torch.nan, 0.0))

    pyro.clear_param_store()
    guide = AutoFlow(model, flow="iaf")
    with pytest.raises(NonFiniteLossError, match="halved the learning rate"):
        fit(model, guide, num_steps=3000, seed=0, progress=False, max_bad_steps=10 ** 6)


def gp(x, y):
    """A GP regression with Stan's 1e-10 jitter: below float32's resolution at this scale."""
    rho = pyro.sample("rho", dist.LogNormal(0.0, 0.5))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    k = alpha ** 2 * torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / rho ** 2)
    k = k + 1e-10 * torch.eye(len(x), dtype=x.dtype)
    f = pyro.sample("f", dist.MultivariateNormal(torch.zeros_like(x), covariance_matrix=k))
    pyro.sample("y", dist.Normal(f, 0.3).to_event(1), obs=y)


def test_float32_numerics_say_how_to_switch_to_float64():
    x = torch.linspace(0, 1, 40)
    y = torch.sin(6 * x)
    pyro.clear_param_store()
    with pytest.raises(NonFiniteLossError, match="float64"):
        fit(gp, AutoFlow(gp, flow="iaf", start=None), x, y, num_steps=20, progress=False)
    pyro.clear_param_store()
    with pytest.raises(NonFiniteLossError, match="float64"):  # the defaults: fails at set-up
        fit(gp, AutoFlow(gp), x, y)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the documented switch
    try:
        pyro.clear_param_store()
        guide = AutoFlow(gp, flow="iaf", start=None)
        result = fit(gp, guide, x.double(), y.double(), num_steps=20, progress=False)
        assert len(result.losses) == 20 and guide.loc.dtype == torch.float64
    finally:
        torch.set_default_dtype(old)
