"""Gaussian linear regressions: kidiq, mesquite, nes2000, sblrc, diamonds, earnings,
kilpisjarvi.

Every model observes ``y_n ~ N(mu_n, sigma)`` inside a plate ``"data"`` (dim -1), so
``vectorize_particles=True`` works: scalar parameters then have shape (P, 1) and coefficient
vectors (P, 1, K).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .data import Built, flat, linear, tensor


def _observe(name: str, y: torch.Tensor, loc: torch.Tensor, sigma: torch.Tensor) -> None:
    with pyro.plate("data", y.shape[0], dim=-1):
        pyro.sample(name, dist.Normal(loc, sigma), obs=y)


def _flat_regression(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype,
                     sigma_prior: dist.Distribution | None = None):
    """beta (K) flat on R^K, sigma flat on (0, inf) unless ``sigma_prior``;
    y ~ N(x beta, sigma)."""

    def model() -> None:
        beta = pyro.sample("beta", flat(constraints.real, x.shape[1], dtype=dtype))
        sigma = pyro.sample("sigma", sigma_prior if sigma_prior is not None
                            else flat(constraints.positive, dtype=dtype))
        _observe("y", y, linear(x, beta), sigma)

    return model


def _design(*columns: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A design matrix: an intercept column, then ``columns``."""
    n = len(columns[0])
    return tensor(np.column_stack([np.ones(n), *columns]), dtype)


def kidiq(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """kidscore_momiq: beta (2) flat, sigma ~ HalfCauchy(2.5);
    kid_score_n ~ N(beta_1 + beta_2 mom_iq_n, sigma)."""
    x = _design(np.asarray(data["mom_iq"], float), dtype=dtype)
    y = tensor(data["kid_score"], dtype)
    sigma_prior = dist.HalfCauchy(torch.tensor(2.5, dtype=dtype))
    return Built(_flat_regression(x, y, dtype, sigma_prior), "flat prior on beta")


def mesquite(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """logmesquite_logvolume: beta (2) flat, sigma flat on (0, inf);
    log(weight_n) ~ N(beta_1 + beta_2 log(diam1_n diam2_n canopy_height_n), sigma)."""
    volume = (np.asarray(data["diam1"], float) * np.asarray(data["diam2"], float)
              * np.asarray(data["canopy_height"], float))
    x = _design(np.log(volume), dtype=dtype)
    y = tensor(np.log(np.asarray(data["weight"], float)), dtype)
    return Built(_flat_regression(x, y, dtype), "flat priors; y = log(weight)")


def nes(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """nes: beta (9) flat, sigma flat on (0, inf); partyid7 ~ N(beta_1 + beta_2 real_ideo +
    beta_3 race_adj + beta_{4,5,6} [age_discrete = 2, 3, 4] + beta_7 educ1 + beta_8 gender +
    beta_9 income, sigma)."""
    age = np.asarray(data["age_discrete"])
    cols = [np.asarray(data["real_ideo"], float), np.asarray(data["race_adj"], float),
            (age == 2).astype(float), (age == 3).astype(float), (age == 4).astype(float),
            np.asarray(data["educ1"], float), np.asarray(data["gender"], float),
            np.asarray(data["income"], float)]
    x = _design(*cols, dtype=dtype)
    y = tensor(data["partyid7"], dtype)
    return Built(_flat_regression(x, y, dtype), "flat priors")


def earnings(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """logearn_interaction_z: z = (height - mean) / sd (N - 1), beta (4) flat, sigma flat on
    (0, inf); log(earn) ~ N(beta_1 + beta_2 z + beta_3 male + beta_4 z male, sigma)."""
    height = np.asarray(data["height"], float)
    z = (height - height.mean()) / height.std(ddof=1)
    male = np.asarray(data["male"], float)
    x = _design(z, male, z * male, dtype=dtype)
    y = tensor(np.log(np.asarray(data["earn"], float)), dtype)
    return Built(_flat_regression(x, y, dtype), "flat priors; height standardized (sd N-1)")


def sblrc(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """blr: beta_d ~ N(0, 10) (d = 1..5), sigma ~ HalfNormal(10); y ~ N(X beta, sigma)."""
    x = tensor(data["X"], dtype)
    y = tensor(data["y"], dtype)
    ten = torch.tensor(10.0, dtype=dtype)

    def model() -> None:
        beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[1], dtype=dtype), ten)
                           .to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(ten))
        _observe("y", y, linear(x, beta), sigma)

    return Built(model, "no intercept")


def diamonds(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """diamonds: Xc = columns 2..K of X centered (24); b ~ N(0, 1) (24), Intercept ~
    StudentT(3, 8, 10), sigma ~ HalfStudentT(3, 10); Y ~ N(Intercept + Xc b, sigma)."""
    xfull = np.asarray(data["X"], float)[:, 1:]
    xc = tensor(xfull - xfull.mean(0), dtype)
    y = tensor(data["Y"], dtype)
    one = torch.tensor(1.0, dtype=dtype)

    def model() -> None:
        b = pyro.sample("b", dist.Normal(torch.zeros(xc.shape[1], dtype=dtype), one)
                        .to_event(1))
        intercept = pyro.sample("Intercept", dist.StudentT(3 * one, 8 * one, 10 * one))
        sigma = pyro.sample("sigma", dist.FoldedDistribution(
            dist.StudentT(3 * one, 0 * one, 10 * one)))
        _observe("Y", y, intercept + linear(xc, b), sigma)

    return Built(model, "N=5000, 26 strongly correlated dims; centered predictors")


def kilpisjarvi(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """kilpisjarvi: alpha ~ N(pmualpha, psalpha), beta ~ N(pmubeta, psbeta), sigma flat on
    (0, inf); y_n ~ N(alpha + beta x_n, sigma), x uncentered years."""
    x = tensor(data["x"], dtype)
    y = tensor(data["y"], dtype)
    prior = {k: torch.tensor(float(data[k]), dtype=dtype)
             for k in ("pmualpha", "psalpha", "pmubeta", "psbeta")}

    def model() -> None:
        alpha = pyro.sample("alpha", dist.Normal(prior["pmualpha"], prior["psalpha"]))
        beta = pyro.sample("beta", dist.Normal(prior["pmubeta"], prior["psbeta"]))
        sigma = pyro.sample("sigma", flat(constraints.positive, dtype=dtype))
        _observe("y", y, alpha + beta * x, sigma)

    return Built(model, "alpha, beta almost perfectly correlated (uncentered x); flat sigma")
