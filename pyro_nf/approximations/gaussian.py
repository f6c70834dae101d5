"""Normal approximations N(mu, Sigma) with Sigma in low-rank-plus-diagonal form, as a square-root
map x = mu + R u of a standard normal u, and their Monte Carlo ELBOs against a log density.

Pathfinder (:mod:`pyro_nf.approximations.pathfinder`) builds them from L-BFGS curvature pairs (Byrd,
Nocedal & Schnabel's compact form); AutoFlow's anchor (:mod:`pyro_nf.guides.anchor`) also
builds a dense one from a Laplace approximation. Sampling and scoring cost O(D m^2) per draw:
with W = diag(alpha)^{-1/2} B = Q R (thin QR), Sigma = diag(alpha)^{1/2} (I + Q (M - I) Q^T)
diag(alpha)^{1/2}, M = I + R G R^T = U Lambda U^T, so x = mu + alpha^{1/2} (u + Q (U
Lambda^{1/2} U^T - I) Q^T u) and log det Sigma = sum log alpha + sum log Lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

F64 = torch.float64


class LowRankSqrt(torch.distributions.Transform):
    """x = loc + alpha^{1/2} * (u + Q (C - I) Q^T u), C = U diag(lam^{1/2}) U^T (event_dim 1):
    the square root of a Pathfinder covariance, exact inverse and constant log-det."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = 1

    @classmethod
    def dense(cls, loc: torch.Tensor, cov: torch.Tensor) -> LowRankSqrt:
        """N(loc, cov) with a dense covariance (Q = I, alpha = 1: C is cov's square root)."""
        lam, u = torch.linalg.eigh(cov)
        eye = torch.eye(len(loc), dtype=loc.dtype, device=loc.device)
        return cls(loc, torch.ones_like(loc), eye, u, lam)

    def __init__(self, loc: torch.Tensor, sqrt_alpha: torch.Tensor, q: torch.Tensor,
                 eig_u: torch.Tensor, eig_lam: torch.Tensor, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.loc, self.sqrt_alpha, self.q = loc, sqrt_alpha, q
        self.c_minus_i = (eig_u * eig_lam.sqrt()) @ eig_u.T - torch.eye(
            len(eig_lam), dtype=eig_u.dtype, device=eig_u.device)
        self.cinv_minus_i = (eig_u * eig_lam.rsqrt()) @ eig_u.T - torch.eye(
            len(eig_lam), dtype=eig_u.dtype, device=eig_u.device)
        self._log_det = sqrt_alpha.log().sum() + 0.5 * eig_lam.log().sum()

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        v = u + (u @ self.q) @ self.c_minus_i.T @ self.q.T
        return self.loc + self.sqrt_alpha * v

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        v = (x - self.loc) / self.sqrt_alpha
        return v + (v @ self.q) @ self.cinv_minus_i.T @ self.q.T

    def log_abs_det_jacobian(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._log_det.expand(u.shape[:-1])

    PARTS = ("loc", "sqrt_alpha", "q", "c_minus_i", "cinv_minus_i", "_log_det")

    @classmethod
    def from_parts(cls, *parts: torch.Tensor, cache_size: int = 0) -> LowRankSqrt:
        """The map from its stored tensors (``PARTS``, in that order). With ``cache_size=1``
        the inverse of the tensor just returned is looked up, so that ``log_prob`` of a
        guide's own sample never runs the layers below it backwards (an IAF's inverse costs
        D passes)."""
        out = cls.__new__(cls)
        torch.distributions.Transform.__init__(out, cache_size=cache_size)
        for name, value in zip(cls.PARTS, parts):
            setattr(out, name, value)
        return out

    def parts(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.PARTS]

    def to(self, dtype: torch.dtype) -> LowRankSqrt:
        """The same map with its tensors in ``dtype``."""
        return LowRankSqrt.from_parts(*(t.to(dtype) for t in self.parts()))

    def covariance(self) -> torch.Tensor:
        """The dense D x D covariance (for reports and tests)."""
        eye = torch.eye(len(self.loc), dtype=self.loc.dtype, device=self.loc.device)
        root = self.sqrt_alpha[:, None] * (eye + self.q @ self.c_minus_i @ self.q.T)
        return root @ root.T


def normal_of(sqrt: LowRankSqrt) -> dist.TransformedDistribution:
    """N(loc, Sigma) as a transformed standard normal."""
    zeros = torch.zeros_like(sqrt.loc)
    return dist.TransformedDistribution(dist.Normal(zeros, 1.0).to_event(1), [sqrt])


def inverse_hessian(theta: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor,
                     s: torch.Tensor, y: torch.Tensor) -> LowRankSqrt | None:
    """The normal approximation at ``theta`` from the curvature pairs ``s``, ``y`` (D x m, y
    the change of the gradient of -log p) and the diagonal ``alpha``; None where it is not
    positive definite."""
    sqrt_alpha = alpha.sqrt()
    if s.shape[1] == 0:
        q = theta.new_zeros(len(theta), 0)
        eig_u, lam = theta.new_zeros(0, 0), theta.new_zeros(0)
        sqrt = LowRankSqrt(theta, sqrt_alpha, q, eig_u, lam)
    else:
        sy = s.T @ y
        r_inv = torch.linalg.inv(torch.triu(sy))
        ey = torch.diag(torch.diagonal(sy)) + y.T @ (alpha[:, None] * y)
        m = s.shape[1]
        g = theta.new_zeros(2 * m, 2 * m)
        g[:m, m:] = -r_inv
        g[m:, :m] = -r_inv.T
        g[m:, m:] = r_inv.T @ ey @ r_inv
        b = torch.cat([alpha[:, None] * y, s], dim=1)
        q, r = torch.linalg.qr(b / sqrt_alpha[:, None])
        lam, eig_u = torch.linalg.eigh(torch.eye(r.shape[0], dtype=F64, device=r.device)
                                       + r @ g @ r.T)
        if not bool(torch.isfinite(lam).all()) or float(lam.min()) <= 1e-12:
            return None
        sqrt = LowRankSqrt(theta, sqrt_alpha, q, eig_u, lam)
    # one Newton step: mu = theta + Sigma grad log p(theta) (``grad`` is grad log p)
    sqrt.loc = theta + _apply_cov(sqrt, grad)
    return sqrt if bool(torch.isfinite(sqrt.loc).all()) else None


def _apply_cov(sqrt: LowRankSqrt, v: torch.Tensor) -> torch.Tensor:
    """Sigma v through the square root: Sigma = R R^T with R u = alpha^{1/2}(u + Q(C-I)Q^T u)."""
    w = sqrt.sqrt_alpha * v  # R^T v, R^T = (I + Q (C-I) Q^T) alpha^{1/2} (C symmetric)
    w = w + sqrt.q @ (sqrt.c_minus_i @ (sqrt.q.T @ w))
    w = w + sqrt.q @ (sqrt.c_minus_i @ (sqrt.q.T @ w))
    return sqrt.sqrt_alpha * w


def update_alpha(alpha: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The diagonal of the BFGS update of the Hessian estimate diag(1/alpha) by (s, y):
    1/alpha' = 1/alpha + y^2 / (y^T s) - (s / alpha)^2 / (s^T diag(1/alpha) s). Kept where it
    stays positive and finite."""
    b = 1.0 / alpha
    new = b + y ** 2 / (y @ s) - (b * s) ** 2 / (s @ (b * s))
    ok = torch.isfinite(new) & (new > 0)
    return torch.where(ok, 1.0 / new, alpha)


def standard_normal(n: int, approx: LowRankSqrt, generator: torch.Generator) -> torch.Tensor:
    """``n`` standard normal draws u for ``approx``, from a CPU ``generator``, on its device."""
    return torch.randn(n, len(approx.loc), dtype=F64, generator=generator).to(approx.loc.device)


def draw_standardized(approx: LowRankSqrt, n: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    return _at(approx, standard_normal(n, approx, generator))


def _at(approx: LowRankSqrt, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = approx(u) and log q(x) for standard normal draws ``u``."""
    log_q = -0.5 * (u ** 2).sum(-1) - 0.5 * len(approx.loc) * math.log(2 * math.pi) \
        - approx._log_det
    return approx(u), log_q


def log_weights(log_density: Callable, approx: LowRankSqrt, u: torch.Tensor
                ) -> torch.Tensor | None:
    """log p(x) - log q(x) at x = approx(u); None where one is not finite (or the model cannot
    be evaluated at some x)."""
    x, log_q = _at(approx, u)
    try:
        with torch.no_grad():
            log_p = log_density(x).to(F64)
    except (ValueError, RuntimeError):  # the model cannot be evaluated at some draw
        return None
    lw = log_p - log_q
    return lw if bool(torch.isfinite(lw).all()) else None


def _log_weights(log_density: Callable, approx: LowRankSqrt, n: int,
                 generator: torch.Generator) -> torch.Tensor | None:
    return log_weights(log_density, approx, standard_normal(n, approx, generator))


def gaussian_elbo(log_density: Callable, approx: LowRankSqrt, n: int,
          generator: torch.Generator) -> float:
    lw = _log_weights(log_density, approx, n, generator)
    return -math.inf if lw is None else float(lw.mean())


#: An iterate's first draws: when their ELBO, plus three standard errors, is below the best
#: so far, it is not scored further.
PROBE_DRAWS = 8


def elbo_unless_below(log_density: Callable, approx: LowRankSqrt, n: int,
                       generator: torch.Generator, bar: float) -> float:
    """The ELBO of ``approx`` from ``n`` draws, or from :data:`PROBE_DRAWS` of them where
    those put it more than three standard errors below ``bar`` (it cannot be the best)."""
    if not math.isfinite(bar) or n < 2 * PROBE_DRAWS:
        return gaussian_elbo(log_density, approx, n, generator)
    probe = _log_weights(log_density, approx, PROBE_DRAWS, generator)
    if probe is None:
        return -math.inf
    if float(probe.mean() + 3 * probe.std() / math.sqrt(PROBE_DRAWS)) < bar:
        return float(probe.mean())
    rest = _log_weights(log_density, approx, n - PROBE_DRAWS, generator)
    return -math.inf if rest is None else float(torch.cat([probe, rest]).mean())
