"""Finite mixtures: low_dim_gauss_mix (two ordered Gaussian components)."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .data import Built, flat, tensor


def low_dim_gauss_mix(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """mu (2) ordered (mu_1 < mu_2) with mu_k ~ N(0, 2) on that region, sigma_k ~
    HalfNormal(2), theta ~ Beta(5, 5); y_n ~ theta N(mu_1, sigma_1) + (1 - theta)
    N(mu_2, sigma_2).

    mu is flat on the ordered cone plus the N(0, 2) density through ``pyro.factor``."""
    y = tensor(data["y"], dtype)
    two = torch.tensor(2.0, dtype=dtype)

    def model() -> None:
        mu = pyro.sample("mu", flat(constraints.ordered_vector, 2, dtype=dtype))
        pyro.factor("mu_prior", dist.Normal(0 * two, two).log_prob(mu).sum(-1))
        sigma = pyro.sample("sigma", dist.HalfNormal(two.expand(2)).to_event(1))
        theta = pyro.sample("theta", dist.Beta(2.5 * two, 2.5 * two))
        weights = torch.stack([theta, 1 - theta], -1)
        mixture = dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                         dist.Normal(mu, sigma))
        with pyro.plate("data", y.shape[0], dim=-1):
            pyro.sample("y", mixture, obs=y)

    return Built(model, "ordered mu (flat on the ordered cone + N(0, 2) factor)")
