"""The mixture of flows (AutoFlow(model, modes=...)) against mixtures with known masses."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_modes import mixture_model

import pyro_nf
from pyro_nf.guides.mixture import AutoFlowMixture, MixtureOfFlows

TWO = ([[-2.0, 0.0], [2.0, 0.0]], (0.3, 0.7), 0.25 * torch.eye(2))
FOUR = ([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], (0.1, 0.2, 0.3, 0.4),
        0.25 * torch.eye(2))


def test_mixture_of_flows_density_and_draws_are_the_mixtures():
    locs = torch.tensor([[-3.0, 0.0], [1.0, 2.0], [4.0, -1.0]])
    scales = torch.tensor([0.5, 1.0, 2.0])
    weights = torch.tensor([0.2, 0.5, 0.3])
    parts = [dist.Normal(loc, s).to_event(1) for loc, s in zip(locs, scales)]
    mixture = MixtureOfFlows(weights.log(), parts)
    exact = dist.MixtureSameFamily(dist.Categorical(weights),
                                   dist.Normal(locs, scales[:, None]).to_event(1))
    z = torch.randn(50, 2) * 3
    assert torch.allclose(mixture.log_prob(z), exact.log_prob(z), atol=1e-5)
    torch.manual_seed(0)
    draws = mixture.sample((20000,))
    mean = (weights[:, None] * locs).sum(0)
    second = (weights[:, None] * (locs ** 2 + scales[:, None] ** 2)).sum(0)
    assert torch.allclose(draws.mean(0), mean, atol=0.06)  # about 3 standard errors
    assert torch.allclose((draws ** 2).mean(0), second, rtol=0.03)
    assert mixture.sample((4, 5)).shape == (4, 5, 2)


def test_modes_argument_picks_the_guide():
    model = mixture_model(*TWO)
    assert type(pyro_nf.AutoFlow(model)) is pyro_nf.AutoFlow
    assert type(pyro_nf.AutoFlow(model, modes=1)) is pyro_nf.AutoFlow
    assert isinstance(pyro_nf.AutoFlow(model, modes="auto"), AutoFlowMixture)
    for bad in (0, -1, "all", 1.5):
        with pytest.raises(ValueError, match="modes must be"):
            pyro_nf.AutoFlow(model, modes=bad)


def test_integer_modes_keeps_the_heaviest_and_starts_each_at_its_mode():
    pyro.clear_param_store()
    model = mixture_model(*FOUR)
    guide = pyro_nf.AutoFlow(model, modes=2)
    guide()
    assert len(guide.components) == 2
    assert guide.weights.tolist() == pytest.approx([4 / 7, 3 / 7], abs=0.02)
    for component, loc in zip(guide.components, ([2.0, 2.0], [2.0, -2.0])):
        start = component.anchor_posterior().sample((2000,)).mean(0)
        assert start.tolist() == pytest.approx(loc, abs=0.1)


def test_auto_modes_fit_puts_each_modes_mass_where_it_belongs():
    """The issue's case: one flow keeps one mode; the mixture keeps both, 0.3 and 0.7."""
    pyro.clear_param_store()
    model = mixture_model(*TWO)
    guide = pyro_nf.AutoFlow(model, modes="auto")
    result = pyro_nf.fit(model, guide, seed=0, progress=False)
    assert len(result.components) == 2 and result.stage == "mixture"
    assert result.khat < 0.5
    assert sorted(guide.weights.tolist()) == pytest.approx([0.3, 0.7], abs=0.05)
    z = guide.sample_posterior(4000)["z"]
    assert float((z[:, 0] < 0).double().mean()) == pytest.approx(0.3, abs=0.05)
    assert guide.median()["z"].shape == (2,)
    assert guide.quantiles([0.1, 0.9])["z"].shape == (2, 2)
    report = pyro_nf.diagnose(model, guide, num_samples=1000, modes=guide.search)
    assert report.missed_modes == [] and report.verdict.startswith("reliable")


def test_one_mode_gives_one_component():
    mean = torch.tensor([1.0, -1.0])

    def model():
        pyro.sample("x", dist.MultivariateNormal(mean, torch.tensor([[1.0, 0.8], [0.8, 1.0]])))

    pyro.clear_param_store()
    guide = pyro_nf.AutoFlow(model, modes="auto")
    guide()
    assert len(guide.components) == 1 and guide.weights.tolist() == [1.0]
    with pytest.raises(NotImplementedError, match="NeuTraReparam"):
        guide.get_transform()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["two_19", "four"])
def test_auto_modes_on_harder_mixtures(case):
    locs, weights, cov = FOUR if case == "four" else (TWO[0], (0.1, 0.9), TWO[2])
    pyro.clear_param_store()
    model = mixture_model(locs, weights, cov)
    guide = pyro_nf.AutoFlow(model, modes="auto")
    pyro_nf.fit(model, guide, seed=0, progress=False)
    z = guide.sample_posterior(8000)["z"].double()
    nearest = (z[:, None, :] - torch.tensor(locs, dtype=torch.float64)).norm(dim=-1).argmin(-1)
    shares = torch.bincount(nearest, minlength=len(locs)) / len(z)
    assert shares.tolist() == pytest.approx(list(weights), abs=0.05)
