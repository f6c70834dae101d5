"""Time series: arK, arma11, garch11, hmm_example.

These models have no plate: parameters may carry any leading batch shape (...), the
observed series is one event of shape (T,), so ``vectorize_particles=True`` works with
``max_plate_nesting=0``.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .data import Built, flat, tensor


def ark(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """arK: alpha ~ N(0, 10), beta_k ~ N(0, 10) (k = 1..K), sigma ~ HalfCauchy(2.5);
    y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma) for t = K+1..T."""
    y = tensor(data["y"], dtype)
    lags, length = int(data["K"]), int(data["T"])
    # lagged[i, k] = y_{t-k-1} for t = K + i (0-based): the k+1-th lag
    lagged = torch.stack([y[lags - k - 1:length - k - 1] for k in range(lags)], dim=-1)
    target = y[lags:]
    ten = torch.tensor(10.0, dtype=dtype)

    def model() -> None:
        alpha = pyro.sample("alpha", dist.Normal(0 * ten, ten))
        beta = pyro.sample("beta", dist.Normal(torch.zeros(lags, dtype=dtype), ten).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfCauchy(torch.tensor(2.5, dtype=dtype)))
        loc = alpha[..., None] + (lagged * beta[..., None, :]).sum(-1)
        pyro.sample("y", dist.Normal(loc, sigma[..., None]).to_event(1), obs=target)

    return Built(model, "conditional likelihood (first K observations not modeled)")


def arma(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """arma11: mu ~ N(0, 10), phi ~ N(0, 2), theta ~ N(0, 2), sigma ~ HalfCauchy(2.5);
    nu_1 = mu + phi mu, nu_t = mu + phi y_{t-1} + theta err_{t-1}, err_t = y_t - nu_t;
    err_t ~ N(0, sigma), written as y_t ~ N(nu_t, sigma)."""
    y = tensor(data["y"], dtype)
    two = torch.tensor(2.0, dtype=dtype)

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(0 * two, 5 * two))
        phi = pyro.sample("phi", dist.Normal(0 * two, two))
        theta = pyro.sample("theta", dist.Normal(0 * two, two))
        sigma = pyro.sample("sigma", dist.HalfCauchy(1.25 * two))
        # c_1 = y_1 - mu - phi mu, c_t = y_t - mu - phi y_{t-1}; err_t = c_t - theta err_{t-1}
        c = torch.cat([(y[0] - mu - phi * mu)[..., None],
                       y[1:] - mu[..., None] - phi[..., None] * y[:-1]], -1)
        err = linear_recursion(c, -theta)
        pyro.sample("y", dist.Normal(y - err, sigma[..., None]).to_event(1), obs=y)

    return Built(model, "error recursion solved as one triangular matrix product")


def linear_recursion(c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_1 = c_1, x_t = c_t + b x_{t-1}, i.e. x_t = sum_{s <= t} b^(t-s) c_s, for c of shape
    (..., T) and b of shape (...), as one lower-triangular matrix product (no Python loop, so
    cheap to differentiate). b^k = sign^k exp(k log|b|) with log|b| clamped at -700."""
    length = c.shape[-1]
    steps = torch.arange(length, dtype=c.dtype)
    lag = steps[:, None] - steps[None, :]  # t - s
    lower = lag >= 0
    lag = lag.clamp(min=0)
    b = b[..., None, None]
    magnitude = torch.exp(lag * b.abs().log().clamp(min=-700.0))
    odd = torch.remainder(lag, 2) == 1
    powers = torch.where((b < 0) & odd, -magnitude, magnitude)
    powers = torch.where(lower, powers, torch.zeros((), dtype=c.dtype))
    return (powers @ c[..., None]).squeeze(-1)


def garch(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """garch11: mu flat on R, alpha0 flat on (0, inf), alpha1 flat on (0, 1), beta1 flat on
    (0, 1 - alpha1); s_1 = sigma1, s_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1 s_{t-1}^2;
    y_t ~ N(mu, s_t).

    Pyro fixes each site's unconstraining transform at initialization, so a support that
    depends on alpha1 cannot be a sample site. beta1 is deterministic: beta1 = (1 - alpha1) u
    with latent u flat on (0, 1); the Jacobian d beta1 / du = 1 - alpha1 enters through
    ``pyro.factor``, which keeps beta1 flat on (0, 1 - alpha1)."""
    y = tensor(data["y"], dtype)
    sigma1 = float(data["sigma1"])

    def model() -> None:
        mu = pyro.sample("mu", flat(constraints.real, dtype=dtype))
        alpha0 = pyro.sample("alpha0", flat(constraints.positive, dtype=dtype))
        alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval, dtype=dtype))
        frac = pyro.sample("beta1_frac", flat(constraints.unit_interval, dtype=dtype))
        pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
        beta1 = pyro.deterministic("beta1", (1 - alpha1) * frac)
        # s2_1 = sigma1^2; s2_t = a_t + beta1 s2_{t-1}, a_t = alpha0 + alpha1 (y_{t-1} - mu)^2
        first = torch.full_like(mu, sigma1**2)[..., None]
        rest = alpha0[..., None] + alpha1[..., None] * (y[:-1] - mu[..., None]) ** 2
        scale = linear_recursion(torch.cat([first, rest], -1), beta1).sqrt()
        pyro.sample("y", dist.Normal(mu[..., None], scale).to_event(1), obs=y)

    def to_latent(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: ref[k] for k in ("mu", "alpha0", "alpha1")}
        out["beta1_frac"] = ref["beta1"] / (1 - ref["alpha1"])
        return out

    return Built(model, "flat priors; beta1 = (1 - alpha1) * beta1_frac is deterministic "
                 "(dependent support), Jacobian via pyro.factor", to_latent)


def hmm_loglik(y: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor,
               mu: torch.Tensor) -> torch.Tensor:
    """log p(y | theta, mu) of the 2-state Gaussian HMM by the forward algorithm, starting
    from log alpha_1(k) = log N(y_1 | mu_k, 1); batched over leading dims of the parameters.
    The T-1 forward steps are log-space matrix products, reduced pairwise (log2 T rounds)."""
    log_trans = torch.stack([theta1, theta2], -2).log()  # [..., j, k] = log P(k | j)
    emit = dist.Normal(mu[..., None, :], 1.0).log_prob(y[:, None])  # (..., T, 2)
    # step t >= 2 as a log-space matrix M_t[j, k] = log P(k | j) + log N(y_t | mu_k, 1);
    # log p(y) = logsumexp_{j,k} (emit_1[j] + (M_2 ... M_T)[j, k]), multiplied pairwise
    steps = log_trans[..., None, :, :] + emit[..., 1:, None, :]
    while steps.shape[-3] > 1:
        even = steps.shape[-3] // 2 * 2
        paired = _log_matmul(steps[..., 0:even:2, :, :], steps[..., 1:even:2, :, :])
        steps = torch.cat([paired, steps[..., even:, :, :]], -3)
    total = emit[..., 0, :, None] + steps[..., 0, :, :]
    return torch.logsumexp(total.flatten(-2), -1)


def _log_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) @ exp(b)) over the last two dims."""
    return torch.logsumexp(a[..., :, :, None] + b[..., None, :, :], -2)


def hmm(data: dict[str, Any], dtype: torch.dtype) -> Built:
    """hmm_example: theta1, theta2 flat on the 2-simplex (transition rows), mu positive
    ordered (0 < mu_1 < mu_2) with mu_1 ~ N(3, 1), mu_2 ~ N(10, 1) on that region;
    y_t ~ N(mu_{z_t}, 1), states summed out (forward algorithm, uniform start)."""
    y = tensor(data["y"], dtype)
    loc = torch.tensor([3.0, 10.0], dtype=dtype)

    def model() -> None:
        theta1 = pyro.sample("theta1", flat(constraints.simplex, 2, dtype=dtype))
        theta2 = pyro.sample("theta2", flat(constraints.simplex, 2, dtype=dtype))
        mu = pyro.sample("mu", flat(constraints.positive_ordered_vector, 2, dtype=dtype))
        pyro.factor("mu_prior", dist.Normal(loc, 1.0).log_prob(mu).sum(-1))
        pyro.factor("y", hmm_loglik(y, theta1, theta2, mu))

    return Built(model, "positive ordered mu; flat simplex rows; likelihood is a "
                 "pyro.factor (forward algorithm)")
