"""The hierarchical posterior of benchmarks.big_data: its group intercepts integrated out by
Gauss-Hermite quadrature, and its factor site read over all groups in chunks."""

from __future__ import annotations

import math

import torch

from benchmarks import big_data_models as models
from pyro_nf.densities import full_data
from pyro_nf.densities.logdensity import LogDensity


def _data(groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = models.simulate("hier_logistic", groups * models.ROWS_PER_GROUP)
    return tuple(torch.from_numpy(data[k]).double() for k in ("x", "y"))


def _by_grid(x, y, mu: float, tau: float, b: torch.Tensor) -> float:
    """sum_j log int prod_r Bernoulli(y_jr | x_jr b + a) N(a | mu, tau) da on a dense grid."""
    a = torch.linspace(mu - 10 * tau, mu + 10 * tau, 20001, dtype=torch.float64)
    prior = torch.distributions.Normal(mu, tau).log_prob(a)
    logits = (x @ b)[..., None] + a  # (groups, rows, grid)
    lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y[..., None].expand(logits.shape), reduction="none").sum(1)
    step = float(a[1] - a[0])
    return float((torch.logsumexp(lik + prior, -1) + math.log(step)).sum())


def test_quadrature_integrates_each_groups_intercept_out():
    x, y = _data(40)
    b = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    theta = torch.cat([torch.tensor([-0.5, math.log(0.8)], dtype=torch.float64), b])
    log_density = LogDensity(models.pyro_model("hier_logistic"), x, y)
    prior = (torch.distributions.Normal(0.0, 5.0).log_prob(torch.tensor(-0.5))
             + torch.distributions.HalfNormal(1.0).log_prob(torch.tensor(0.8)) + math.log(0.8)
             + torch.distributions.Normal(0.0, 1.0).log_prob(b).sum())
    got = float(log_density(theta)) - float(prior)
    assert abs(got - _by_grid(x, y, -0.5, 0.8, b)) < 1e-6 * 40


def test_subsampled_groups_are_read_in_chunks_to_the_full_density(monkeypatch):
    monkeypatch.setattr(full_data, "CHUNK_ELEMENTS", 7)  # many chunks, an uneven last one
    x, y = _data(30)
    model = models.pyro_model("hier_logistic")
    full, sub = LogDensity(model, x, y), LogDensity(model, x, y, batch=4)
    assert sub.chunks is not None and sub.chunks.size == 30
    theta = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(sub(theta), full(theta))
    torch.testing.assert_close(sub(theta[0]), full(theta[0]))
