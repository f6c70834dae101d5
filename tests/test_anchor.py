"""AutoFlow's Gaussian anchor: the guide starts exactly at the best Gaussian it finds and runs
its flow in that Gaussian's whitened coordinates."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from test_pathfinder import correlated_gaussian, gaussian_model

from pyro_nf import AutoFlow, fit
from pyro_nf.approximations.pathfinder import normal_of
from pyro_nf.guides import FromGuide, GaussianAnchor, InitPoint

X = torch.linspace(-2, 2, 40)
Y = (torch.sigmoid(0.5 + 1.5 * X) > torch.rand(40, generator=torch.Generator().manual_seed(0))
     ).float()


def logistic(x=X, y=Y):
    a = pyro.sample("a", dist.Normal(0.0, 3.0))
    b = pyro.sample("b", dist.Normal(0.0, 3.0))
    with pyro.plate("n", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=a + b * x), obs=y)


SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools(y=SCHOOLS_Y, sigma=SCHOOLS_SIGMA):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(autouse=True)
def _fresh():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def test_the_guide_is_the_anchor_before_the_first_step():
    guide = AutoFlow(logistic)
    guide()
    anchor = guide.anchor_transform()
    assert anchor is not None and guide.anchor_info["method"] in ("pathfinder", "laplace")
    z = torch.randn(16, 2) * 2
    with torch.no_grad():
        torch.testing.assert_close(guide.get_posterior().log_prob(z),
                                   normal_of(anchor).log_prob(z), rtol=1e-5, atol=1e-5)


def test_with_the_centering_the_guide_is_the_anchor_pushed_through_it():
    guide = AutoFlow(schools)
    guide()
    assert guide.centering_weights() and guide.anchor_transform() is not None
    centering = guide.centering.transform((), {}, detach=True)
    with torch.no_grad():
        eta = normal_of(guide.anchor_transform()).sample((8,))
        theta = centering(eta)
        expected = normal_of(guide.anchor_transform()).log_prob(eta) - \
            centering.log_abs_det_jacobian(eta, theta)
        torch.testing.assert_close(guide.get_posterior().log_prob(theta.clone()), expected,
                                   rtol=1e-4, atol=1e-4)


def test_exact_gaussian_d100_default_guide_matches_mean_and_covariance():
    mean, cov = correlated_gaussian(100)
    model = gaussian_model(mean, cov)
    guide = AutoFlow(model)
    guide()  # the set-up finds the anchor; no flow step yet
    assert guide.anchor_info["method"] == "laplace"  # exact for a Gaussian
    n = 4000
    z = guide.sample_latent_batch(n)
    sd = cov.diagonal().sqrt()
    z_mean = (z.mean(0) - mean) / (sd / math.sqrt(n))
    assert float(z_mean.abs().max()) < 5.0
    ratio = z.std(0) / sd
    assert float((ratio - 1).abs().max()) < 0.1  # sd's Monte Carlo error at n = 4000: ~1%
    corr = torch.corrcoef(z.T)
    exact = cov / (sd[:, None] * sd[None, :])
    assert float((corr - exact).abs().max()) < 0.1


def test_init_point_and_warm_starts_have_no_anchor():
    guide = AutoFlow(logistic, start=None, init_scale=0.05)
    assert guide.start == InitPoint()
    guide()
    assert guide.anchor_transform() is None and not guide.anchor_info
    assert torch.allclose(guide.scale, torch.full((2,), 0.05))
    normal = AutoNormal(logistic)
    fit(logistic, normal, num_steps=10, progress=False)
    warm = AutoFlow(logistic, start=FromGuide(normal))
    warm()
    assert warm.anchor_transform() is None
    with pytest.raises(ValueError, match="no Gaussian anchor"):
        warm.anchor_posterior()


def test_start_shorthands_are_the_strategies():
    assert AutoFlow(logistic).start == GaussianAnchor("auto")
    assert AutoFlow(logistic, start="laplace").start == GaussianAnchor("laplace")
    pyro.clear_param_store()
    guide = AutoFlow(logistic, start=GaussianAnchor("laplace", num_paths=1))
    guide()
    assert guide.anchor_info["method"] == "laplace"


def test_float64_models_get_a_float64_anchor():
    def model():
        pyro.sample("x", dist.Normal(torch.tensor([1.0, -1.0], dtype=torch.float64),
                                     torch.tensor([0.5, 2.0], dtype=torch.float64)).to_event(1))

    guide = AutoFlow(model)
    guide()
    assert guide.anchor_loc.dtype == torch.float64
    torch.testing.assert_close(guide.anchor_loc, torch.tensor([1.0, -1.0], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_a_blocked_member_of_a_guide_list_gets_no_anchor_and_still_fits():
    """The hidden thetas, drawn from their prior at each call, move the likelihood's shape in
    mu and tau: no Gaussian found at one draw is the start. Composing guides is everyday
    Pyro: no warning, the reason in anchor_reason and setup_notes."""
    guide = AutoGuideList(schools)
    guide.append(AutoNormal(poutine.block(schools, expose=["theta"])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flow = AutoFlow(poutine.block(schools, hide=["theta"]), flow="iaf")
        guide.append(flow)
        fit(schools, guide, num_steps=50, progress=False)
    assert flow.anchor_transform() is None and "changes shape" in flow.anchor_reason
    assert not any("anchor" in str(w.message) for w in caught)
    assert any("no Gaussian anchor" in note for note in flow.setup_notes)


def test_bad_start_is_a_clear_error():
    with pytest.raises(ValueError, match="start must be"):
        AutoFlow(logistic, start="best")
    with pytest.raises(ValueError, match="method must be one of"):
        GaussianAnchor("best")
    with pytest.raises(ValueError, match="num_paths"):
        GaussianAnchor(num_paths=0)


def test_reset_to_anchor_after_a_fit_with_the_centering_and_a_low_rank_base():
    guide = AutoFlow(schools, base="lowrank")
    guide()
    with torch.no_grad():
        z = guide.get_posterior().sample((6,))
        before = guide.get_posterior().log_prob(z.clone())
        torch.testing.assert_close(guide.anchor_posterior().log_prob(z.clone()), before,
                                   rtol=1e-4, atol=1e-4)
    fit(schools, guide, num_steps=30, progress=False, seed=0)
    with torch.no_grad():
        assert not torch.allclose(guide.get_posterior().log_prob(z.clone()), before)
        guide.reset_to_anchor()
        torch.testing.assert_close(guide.get_posterior().log_prob(z.clone()), before,
                                   rtol=1e-4, atol=1e-4)
