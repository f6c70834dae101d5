"""AutoFlow with real Pyro models: set-up, Pyro integration, warm starts, summaries, errors."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoGuideList,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from pyro.infer.importance import psis_diagnostic
from pyro.infer.reparam import NeuTraReparam

import pyro_nf
from pyro_nf import AutoFlow, fit
from pyro_nf.guides import FromGuide
from pyro_nf.models import EIGHT_SCHOOLS_Y, eight_schools

Y = EIGHT_SCHOOLS_Y
schools = eight_schools


def correlated(dtype=torch.float32):
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 2.0]], dtype=dtype)
    pyro.sample("z", dist.MultivariateNormal(torch.ones(3, dtype=dtype), cov))
    pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=dtype), 0.5))


pytestmark = pytest.mark.usefixtures("fresh_store")


def test_initial_samples_have_init_location_and_scale():
    init = {"mu": torch.tensor(2.0), "tau": torch.tensor(3.0), "theta": torch.arange(8.0)}
    guide = AutoFlow(schools, init_loc_fn=init_to_value(values=init), init_scale=0.2,
                     centering="model",  # "learn" re-centers theta: the spread is eta's
                     start=None)  # with an anchor the guide starts at the anchor instead
    guide(Y)
    z = guide.sample_latent_batch(20000)
    expected = torch.cat([torch.tensor([2.0, math.log(3.0)]), torch.arange(8.0)])
    torch.testing.assert_close(z.mean(0), expected, atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.full((10,), 0.2), atol=0.01, rtol=0)


def test_pyro_machinery_works_unchanged():
    guide = AutoFlow(schools, flow="iaf*2")
    svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(20):
        svi.step(Y)
    names = set(pyro.get_param_store().keys())
    assert {"AutoFlow.loc", "AutoFlow.scale"} <= names
    assert any(n.startswith("AutoFlow.flow") for n in names)
    samples = Predictive(schools, guide=guide, num_samples=50)(Y)
    assert samples["theta"].shape == (50, 8) and samples["obs"].shape == (50, 8)
    fit(schools, guide, Y, num_steps=300, num_particles=4, progress=False, seed=0)
    assert math.isfinite(psis_diagnostic(schools, guide, Y, num_particles=500))
    trace = poutine.trace(poutine.block(guide, hide=["theta"])).get_trace(Y)
    assert "theta" not in trace.nodes and "mu" in trace.nodes


def test_log_prob_of_any_point_and_get_posterior():
    guide = AutoFlow(schools, flow=["planar*2", "iaf"])
    guide(Y)
    posterior = guide.get_posterior()
    points = torch.randn(7, guide.latent_dim) * 3  # never sampled
    lp = posterior.log_prob(points)
    assert lp.shape == (7,) and torch.isfinite(lp).all()


def test_autoguidelist_and_neutra():
    guide = AutoGuideList(schools)
    guide.append(AutoFlow(poutine.block(schools, hide=["theta"]), flow="iaf"))
    guide.append(AutoNormal(poutine.block(schools, expose=["theta"])))
    svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(10):
        assert math.isfinite(svi.step(Y))

    pyro.clear_param_store()
    flow_guide = AutoFlow(schools, flow="iaf")
    svi = SVI(schools, flow_guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(10):
        svi.step(Y)
    neutra = NeuTraReparam(flow_guide.requires_grad_(False))
    reparam_model = poutine.reparam(schools, config=lambda _: neutra)
    trace = poutine.trace(reparam_model).get_trace(Y)
    assert "mu" in trace.nodes and trace.nodes["mu"]["value"].shape == ()
    kernel = pyro.infer.NUTS(reparam_model)
    mcmc = pyro.infer.MCMC(kernel, num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(Y)
    (latent,) = [v for k, v in mcmc.get_samples().items() if k.endswith("_shared_latent")]
    assert latent.shape == (5, 10)


def test_median_and_quantiles_are_consistent_and_deterministic():
    init = {"z": torch.tensor([1.0, -1.0, 0.5]), "s": torch.tensor(2.0)}
    guide = AutoFlow(correlated, init_loc_fn=init_to_value(values=init), init_scale=0.3,
                     num_quantile_samples=20000, start=None)
    guide()
    med = guide.median()
    torch.testing.assert_close(med["z"], init["z"], atol=0.02, rtol=0)
    torch.testing.assert_close(med["s"], init["s"], atol=0.02, rtol=0)
    q = guide.quantiles([0.05, 0.5, 0.95])
    assert q["z"].shape == (3, 3) and q["s"].shape == (3,)
    # at initialization the flow is the identity: z ~ N(init, 0.3^2) elementwise
    torch.testing.assert_close(q["z"][2] - q["z"][0], torch.full((3,), 2 * 1.6449 * 0.3),
                               atol=0.02, rtol=0)
    # s = exp(N(log 2, 0.3^2)): its quantiles are exp of the normal ones
    torch.testing.assert_close(q["s"][0], torch.tensor(2.0 * math.exp(-1.6449 * 0.3)),
                               atol=0.02, rtol=0)
    assert torch.equal(guide.quantiles([0.05, 0.5, 0.95])["z"], q["z"])
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([1.5])


def test_float64_model_gets_float64_guide():
    guide = AutoFlow(lambda: correlated(torch.float64), flow="iaf*2")
    guide()
    assert guide.loc.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in guide.flow.parameters())
    assert guide.sample_posterior(5)["z"].dtype == torch.float64
    samples = Predictive(lambda: correlated(torch.float64), guide=guide, num_samples=4)()
    assert samples["z"].dtype == torch.float64


@pytest.mark.parametrize("base", ["diagonal", "lowrank", "full"])
def test_bases_train(base):
    guide = AutoFlow(correlated, flow="realnvp", base=base)
    result = pyro_nf.fit(correlated, guide, num_steps=30, progress=False)
    assert len(result.losses) == 30 and all(math.isfinite(v) for v in result.losses)


def test_jit_trace_elbo_works():
    guide = AutoFlow(schools, flow="iaf*2")
    guide(Y)  # set up outside the JIT
    svi = SVI(schools, guide, pyro.optim.Adam({"lr": 0.01}),
              JitTrace_ELBO(ignore_jit_warnings=True))
    losses = [svi.step(Y) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)


WARM = {
    "AutoNormal": lambda m: AutoNormal(m),
    "AutoDiagonalNormal": lambda m: AutoDiagonalNormal(m),
    "AutoMultivariateNormal": lambda m: AutoMultivariateNormal(m),
    "AutoLowRankMultivariateNormal": lambda m: AutoLowRankMultivariateNormal(m, rank=2),
    "AutoLaplaceApproximation": lambda m: AutoLaplaceApproximation(m),
}


# tiers marked here: tests/slow_tests.txt and fit_accuracy_tests.txt list the former names
@pytest.mark.slow
@pytest.mark.fit_accuracy
@pytest.mark.parametrize("kind", sorted(WARM))
def test_warm_start_is_the_fitted_gaussian(kind):
    fitted = WARM[kind](correlated)
    svi = SVI(correlated, fitted, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    gaussian = fitted.laplace_approximation() if kind == "AutoLaplaceApproximation" else fitted
    flow_guide = AutoFlow(correlated, "iaf*2", start=FromGuide(fitted))
    flow_guide()
    ours = flow_guide.sample_latent_batch(40000)
    if kind == "AutoNormal":
        mean = torch.cat([gaussian.locs.z, gaussian.locs.s.reshape(1)])
        sd = torch.cat([gaussian.scales.z, gaussian.scales.s.reshape(1)])
        cov = torch.diag(sd ** 2)
    else:
        post = gaussian.get_posterior()
        mean = post.mean
        cov = (torch.diag(post.variance) if kind == "AutoDiagonalNormal"
               else post.covariance_matrix)
    torch.testing.assert_close(ours.mean(0), mean.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(ours.T), cov.detach(), atol=0.04, rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(WARM))
def test_warm_start_first_call_inside_a_vectorized_elbo(kind):
    """The warm start's moments are computed at the guide's first call, which fit makes inside
    the ELBO's trace and particle plate (a regression: the Laplace Hessian's model runs leaked
    into that trace, 'Multiple sample sites')."""
    fitted = WARM[kind](correlated)
    svi = SVI(correlated, fitted, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step()
    flow_guide = AutoFlow(correlated, "iaf*2", start=FromGuide(fitted))
    result = fit(correlated, flow_guide, num_steps=3, num_particles=4, progress=False)
    assert all(math.isfinite(v) for v in result.losses)


def test_warm_start_laplace_without_a_curvature_is_a_clear_error_every_time():
    """At a minimum of the density the Laplace covariance is not positive definite: a
    ValueError saying so, and the same error again on the next call (not a half-built guide)."""
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("bowl", 2.0 * x ** 2)  # log p = 1.5 x^2 near 0: curvature of the wrong sign

    laplace = AutoLaplaceApproximation(model, init_loc_fn=init_to_value(values={
        "x": torch.tensor(0.0)}))
    laplace()
    guide = AutoFlow(model, start=FromGuide(laplace))
    for _ in range(2):
        with pytest.raises(ValueError, match="not positive definite.*degenerate"):
            guide()


def test_warm_start_errors():
    with pytest.raises(TypeError, match="AutoNormal"):
        FromGuide(object())
    with pytest.raises(ValueError, match=r"start=FromGuide\(guide\)"):
        AutoFlow(correlated, start=AutoNormal(correlated))
    guide = AutoFlow(correlated, start=FromGuide(AutoMultivariateNormal(correlated)))
    with pytest.raises(ValueError, match="has not been run"):
        guide()


def test_subsampled_local_latents_are_a_clear_error():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10) as idx:
            z = pyro.sample("z_local", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])

    with pytest.raises(ValueError, match="z_local.*subsampled.*AutoGuideList"):
        AutoFlow(model)(torch.randn(100))


def test_discrete_latent_is_a_clear_error():
    def model():
        pyro.sample("c", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="discrete sample site 'c'"):
        AutoFlow(model)()


@pytest.mark.parametrize("kwargs, match", [
    ({"init_scale": 0.0}, "init_scale"),
    ({"base": "dense"}, "base must be"),
    ({"rank": 0}, "rank"),
    ({"flow": "nosuch*2"}, "available flows"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoFlow(schools, **kwargs)


@pytest.mark.slow
@pytest.mark.fit_accuracy
def test_warm_start_with_random_permutations_keeps_correlations():
    fitted = AutoMultivariateNormal(correlated)
    svi = SVI(correlated, fitted, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    cov = fitted.get_posterior().covariance_matrix.detach()
    # coupling layers: permutation layers move the data, undone by the output map
    flow_guide = AutoFlow(correlated, "realnvp*3", start=FromGuide(fitted), permutation="random")
    flow_guide()
    assert flow_guide.output_order is not None  # a non-trivial net permutation
    ours = flow_guide.sample_latent_batch(40000)
    torch.testing.assert_close(torch.cov(ours.T), cov, atol=0.04, rtol=0.05)
    # autoregressive layers: the MADEs' orders vary instead, nothing is moved
    flow_guide = AutoFlow(correlated, "iaf*3", start=FromGuide(fitted), permutation="random")
    flow_guide()
    assert flow_guide.output_order is None
    assert not torch.equal(flow_guide.flow.parts[1].made.order,
                           torch.arange(flow_guide.latent_dim))
    ours = flow_guide.sample_latent_batch(40000)
    torch.testing.assert_close(torch.cov(ours.T), cov, atol=0.04, rtol=0.05)


def test_guide_follows_double_after_set_up():
    guide = AutoFlow(correlated, flow="iaf*2")
    guide()
    guide.double()
    z = guide.sample_latent_batch(5)
    assert z.dtype == torch.float64
    assert guide.get_posterior().log_prob(z).dtype == torch.float64


def test_warm_start_rank_mismatch_is_an_error():
    fitted = AutoLowRankMultivariateNormal(correlated, rank=2)
    fitted()
    guide = AutoFlow(correlated, start=FromGuide(fitted), rank=3)
    with pytest.raises(ValueError, match="rank=3.*rank 2"):
        guide()
