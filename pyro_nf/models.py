"""Small reference models used by the examples, the demo, the benchmarks and the tests.

Both are classic hard cases for variational inference (Neal, 2003; Gelman et al., 2013).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

#: Eight schools (Rubin, 1981): observed effects and their standard errors.
EIGHT_SCHOOLS_Y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])
EIGHT_SCHOOLS_SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools(y: torch.Tensor | None = EIGHT_SCHOOLS_Y,
                  sigma: torch.Tensor = EIGHT_SCHOOLS_SIGMA) -> None:
    """Eight schools, centered: mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_j ~ N(mu, tau),
    y_j ~ N(theta_j, sigma_j). Its posterior has a funnel between tau and theta."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def neals_funnel(dim: int = 10) -> None:
    """Neal's funnel in ``dim`` dimensions: v ~ N(0, 3), x_i ~ N(0, exp(v / 2)),
    i = 1..dim-1. The marginal of v is N(0, 3^2) exactly."""
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    with pyro.plate("funnel_dims", dim - 1):
        pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)))
