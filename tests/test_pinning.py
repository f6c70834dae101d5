"""Coordinates without density (pyro_nf.densities.pinning): an obs_mask site's observed entries are
pinned and left out of the packed vector, and the imputed values match the exact conditional."""

from __future__ import annotations

import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEEDS, mean_tolerance, sd_ratio_tolerance
from pyro.infer.autoguide import AutoNormal

from pyro_nf import AutoFlow, fit
from pyro_nf.approximations.pathfinder import pathfinder
from pyro_nf.densities.logdensity import LogDensity
from pyro_nf.densities.pinning import Pins
from pyro_nf.guides import FromGuide

NOISE = 0.3


def known_noise(x, y, mask):
    """A regression with known noise and missing responses (obs_mask): the posterior of the
    coefficients and of the imputed responses is Gaussian, known exactly."""
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("n", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, NOISE), obs=y, obs_mask=mask)


def data(n: int = 30, missing: tuple[int, ...] = (3, 11, 19, 27)):
    x = torch.linspace(-2, 2, n)
    y = 0.5 + 1.5 * x + NOISE * torch.randn(n, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(n, dtype=torch.bool)
    mask[list(missing)] = False
    return x, y, mask


def exact_imputation(x, y, mask):
    """Mean and covariance of the missing responses given the observed ones (conjugate)."""
    X = torch.stack([torch.ones_like(x), x], -1).double()
    precision = torch.eye(2, dtype=torch.float64) / 25 + X[mask].T @ X[mask] / NOISE ** 2
    cov = torch.linalg.inv(precision)
    mean = cov @ X[mask].T @ y[mask].double() / NOISE ** 2
    Xm = X[~mask]
    return Xm @ mean, Xm @ cov @ Xm.T + NOISE ** 2 * torch.eye(len(Xm), dtype=torch.float64)


def test_the_observed_entries_of_an_obs_mask_site_are_pinned_and_left_out(fresh_store, caplog):
    x, y, mask = data()
    guide = AutoFlow(known_noise)
    with caplog.at_level(logging.WARNING, logger="pyro_nf"):
        guide(x, y, mask)
    assert guide.pins.counts == {"y_unobserved": int(mask.sum())}
    assert guide.latent_dim == 2 + int((~mask).sum())
    lines = [r.getMessage() for r in caplog.records if "carry no density" in r.getMessage()]
    assert len(lines) == 1 and "'y_unobserved'" in lines[0]  # reported once, in one line
    # the density, Pathfinder and the guide pack alike
    assert LogDensity(known_noise, x, y, mask).dim == guide.latent_dim
    approximation = pathfinder(known_noise, x, y, mask, seed=0).guide
    approximation(x, y, mask)
    assert approximation.latent_dim == guide.latent_dim
    # the model still sees the site at its full shape, the missing entries free
    draws = guide.sample_posterior(3, x, y, mask)["y_unobserved"]
    assert draws.shape == (3, len(x))
    assert bool((draws[:, ~mask].std(0) > 0).all())
    assert bool((draws[:, mask] == draws[0, mask]).all())


def test_pins_expand_and_reduce_are_inverse_and_differentiable():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    free = torch.tensor([True, False, True, False, True])
    pins = Pins(values, free, {"a": 2, "b": 3})
    assert pins.dim == 3 and pins.counts == {"a": 1, "b": 1}
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    full = pins.expand(z)
    assert full.dtype == torch.float64 and full.shape == (4, 5)
    torch.testing.assert_close(full[:, ~free], values[~free].double().expand(4, 2))
    torch.testing.assert_close(pins.reduce(full), z)
    (grad,) = torch.autograd.grad(full.sum(), z)
    torch.testing.assert_close(grad, torch.ones_like(z))


def test_a_masked_latent_that_another_site_reads_is_not_pinned(fresh_store):
    """Its own prior is masked out, but the likelihood reads it: it has density there."""
    keep = torch.tensor([True, False, True, False])
    obs = torch.tensor([0.5, -0.3, 1.2, 0.0])

    def model():
        with pyro.plate("i", 4):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(keep))
            pyro.sample("x", dist.Normal(z, 1.0), obs=obs)

    guide = AutoFlow(model)
    guide()
    assert guide.pins is None and guide.latent_dim == 4


def test_a_masked_positive_site_is_pinned_in_its_unconstrained_coordinates(fresh_store):
    keep = torch.tensor([True, False, True])

    def model():
        with pyro.plate("i", 3):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0).mask(keep))
        pyro.sample("x", dist.Normal(0.0, scale[0] + scale[2]), obs=torch.tensor(0.3))

    guide = AutoFlow(model)
    guide()
    assert guide.pins.counts == {"scale": 1} and guide.latent_dim == 2
    assert math.isfinite(float(LogDensity(model)(torch.zeros(2))))


def test_a_fitted_gaussian_guide_warm_starts_an_obs_mask_model(fresh_store):
    x, y, mask = data()
    normal = AutoNormal(known_noise)
    fit(known_noise, normal, x, y, mask, num_steps=50, seed=0, progress=False)
    guide = AutoFlow(known_noise, start=FromGuide(normal))
    guide(x, y, mask)
    start = guide.sample_posterior(2, x, y, mask)
    assert start["y_unobserved"].shape == (2, len(x))
    assert guide.latent_dim == 2 + int((~mask).sum())


@pytest.mark.slow
def test_imputed_responses_match_the_exact_conditional_over_five_seeds():
    """AutoFlow(model) and fit's defaults, over SEEDS: every imputed mean within 0.1
    conditional sd (the fit's own accuracy promise) plus 4 Monte Carlo standard errors of the
    4000 draws' mean, every sd within 10% plus 4 standard errors of the sample sd."""
    x, y, mask = data()
    mean, cov = exact_imputation(x, y, mask)
    sd = cov.diagonal().sqrt()
    for seed in SEEDS:
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoFlow(known_noise)
        fit(known_noise, guide, x, y, mask, seed=seed, progress=False)
        draws = guide.sample_posterior(4000, x, y, mask)["y_unobserved"][:, ~mask].double()
        error = (draws.mean(0) - mean).abs()
        assert bool((error < mean_tolerance(sd, 4000)).all()), (seed, error / sd)
        ratio = draws.std(0) / sd
        assert bool(((ratio - 1).abs() < sd_ratio_tolerance(4000)).all()), (seed, ratio)
