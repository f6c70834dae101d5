"""Hierarchical and latent-Gaussian models: eight schools (centered and noncentered) and
gp_pois_regr. Per-unit latents live in the observation plate (dim -1), so
``vectorize_particles=True`` works."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from .data import Built, tensor


def _schools(data: dict[str, Any], dtype: torch.dtype):
    return tensor(data["y"], dtype), tensor(data["sigma"], dtype), int(data["J"])


def _hyper(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    five = torch.tensor(5.0, dtype=dtype)
    mu = pyro.sample("mu", dist.Normal(0 * five, five))
    tau = pyro.sample("tau", dist.HalfCauchy(five))
    return mu, tau


def eight_schools_noncentered(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_trans_j ~ N(0, 1); theta = mu + tau
    theta_trans (deterministic); y_j ~ N(theta_j, sigma_j)."""
    y, sigma, n = _schools(data, dtype)

    def model() -> None:
        mu, tau = _hyper(dtype)
        with pyro.plate("school", n, dim=-1):
            trans = pyro.sample("theta_trans", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
            theta = pyro.deterministic("theta", mu + tau * trans)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    def to_latent(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, tau = ref["mu"], ref["tau"]
        trans = (ref["theta"] - mu[..., None]) / tau[..., None]
        return {"mu": mu, "tau": tau, "theta_trans": trans}

    return Built(model, "theta is deterministic (latent theta_trans)", to_latent)


def eight_schools_centered(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j)."""
    y, sigma, n = _schools(data, dtype)

    def model() -> None:
        mu, tau = _hyper(dtype)
        with pyro.plate("school", n, dim=-1):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    return Built(model, "funnel in tau; reference from the noncentered form")


def _gp_cholesky(x: torch.Tensor, rho: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """cholesky(alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-10 I). ``rho`` and ``alpha``
    are scalars or carry a trailing singleton (the data plate's dim): shape (..., 1)."""
    sq = (x[:, None] - x[None, :]) ** 2
    rho, alpha = rho.unsqueeze(-1), alpha.unsqueeze(-1)
    k = alpha**2 * torch.exp(-sq / (2 * rho**2))
    k = k + 1e-10 * torch.eye(x.shape[0], dtype=x.dtype)
    return torch.linalg.cholesky(k)


def gp_pois_regr(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """rho ~ Gamma(25, rate 4), alpha ~ HalfNormal(2), f_tilde_i ~ N(0, 1); f = cholesky(K)
    f_tilde (deterministic) with K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-10 [i=j];
    k_i ~ Poisson(exp(f_i)). Data field y unused."""
    x = tensor(data["x"], dtype)
    counts = tensor(np.asarray(data["k"], float), dtype)
    n = x.shape[0]

    def model() -> None:
        rho = pyro.sample("rho", dist.Gamma(torch.tensor(25.0, dtype=dtype), 4.0))
        alpha = pyro.sample("alpha", dist.HalfNormal(torch.tensor(2.0, dtype=dtype)))
        with pyro.plate("data", n, dim=-1):
            f_tilde = pyro.sample("f_tilde", dist.Normal(torch.zeros((), dtype=dtype), 1.0))
            chol = _gp_cholesky(x, rho, alpha)
            f = pyro.deterministic("f", (chol @ f_tilde[..., None]).squeeze(-1))
            pyro.sample("k", dist.Poisson(torch.exp(f)), obs=counts)

    def to_latent(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        chol = _gp_cholesky(x, ref["rho"][..., None], ref["alpha"][..., None])
        f_tilde = torch.linalg.solve_triangular(chol, ref["f"][..., None], upper=False)
        return {"rho": ref["rho"], "alpha": ref["alpha"], "f_tilde": f_tilde.squeeze(-1)}

    return Built(model, "f is deterministic (latent f_tilde); y unused", to_latent)
