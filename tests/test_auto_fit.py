"""fit without num_steps: the pilot, the stopping rule on a model whose optimum is known, the
averaged parameters and the last check against AutoFlow's Gaussian anchor."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_nf.infer.auto as auto
from pyro_nf import AutoFlow, fit
from pyro_nf.infer.quasi_newton import normal_of

DATA = torch.tensor([1.3, 0.2, 2.1, 1.7, 0.9, 1.1, 2.4, 0.5])


def conjugate(x=DATA):
    """mu ~ N(0, 1), x_i ~ N(mu, 1): mu | x ~ N(sum x / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


POST_MEAN = float(DATA.sum()) / (len(DATA) + 1)
POST_SD = 1 / math.sqrt(len(DATA) + 1)


@pytest.fixture(autouse=True)
def _short_windows(monkeypatch):
    """Shorter stages than the defaults, so the test runs in seconds; the rule is the same."""
    monkeypatch.setattr(auto, "WINDOW", 100)
    monkeypatch.setattr(auto, "PILOT_STEPS", 40)
    pyro.clear_param_store()


def test_stops_by_itself_at_the_known_optimum_with_averaged_parameters():
    guide = AutoNormal(conjugate)
    result = fit(conjugate, guide, seed=0)
    assert result.stage == "average" and "stationary" in result.stop_reason
    assert result.steps < auto.MAX_STEPS and result.converged
    assert result.lr in auto.PILOT_LRS and set(result.pilot) == {str(v) for v in auto.PILOT_LRS}
    mu_loc = pyro.param("AutoNormal.locs.mu").item()
    mu_scale = pyro.param("AutoNormal.scales.mu").item()
    # the averaged iterate sits at the exact optimum to well within one posterior sd
    assert abs(mu_loc - POST_MEAN) < 0.1 * POST_SD
    assert abs(mu_scale / POST_SD - 1) < 0.1
    assert result.elbo_estimate is not None and result.recommendation is None


def test_explicit_num_steps_keeps_the_fixed_schedule():
    result = fit(conjugate, AutoNormal(conjugate), num_steps=30, seed=0, progress=False)
    assert result.steps == 30 and result.stage == "fixed" and result.lr is None


def test_without_num_steps_checkpoints_and_optimisers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="explicit num_steps"):
        fit(conjugate, AutoNormal(conjugate), checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="num_steps to use your optimiser"):
        fit(conjugate, AutoNormal(conjugate), optim=pyro.optim.Adam({"lr": 0.01}))


def test_the_last_check_recommends_the_anchor_when_the_flow_is_worse():
    guide = AutoFlow(conjugate, flow="iaf")
    guide()
    anchor = normal_of(guide.anchor_transform())
    with torch.no_grad():  # a flow far from the identity: a much too narrow guide
        guide.scale = torch.full_like(guide.scale, 0.2)
    result = fit(conjugate, guide, num_steps=0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto._last_check(result, conjugate, guide, (), {})
    assert result.recommendation == "anchor" and result.khat > 0.7 > result.anchor_khat
    assert any("reset_to_anchor" in str(w.message) for w in caught)
    guide.reset_to_anchor()
    z = torch.randn(8, 1)
    with torch.no_grad():
        torch.testing.assert_close(guide.get_posterior().log_prob(z), anchor.log_prob(z),
                                   rtol=1e-5, atol=1e-5)
