"""Pathfinder: Gaussian approximations along an L-BFGS path (Zhang, Carpenter, Gelman & Vehtari,
2022, "Pathfinder: Parallel quasi-Newton variational inference", JMLR 23(306)).

One path runs L-BFGS on -log p in the packed unconstrained space, in float64. At every iterate
theta_l the L-BFGS curvature pairs give an inverse-Hessian estimate in low-rank-plus-diagonal
form, Sigma_l = diag(alpha) + B G B^T (Byrd, Nocedal & Schnabel's compact form, started from a
diagonal alpha kept by the diagonal of the BFGS update), and with it the normal approximation
N(mu_l, Sigma_l), mu_l = theta_l + Sigma_l grad log p(theta_l), one Newton step ahead. Each is
scored by a Monte Carlo ELBO; the path returns its best. Several paths from Stan's uniform(-2, 2)
starts are pooled by Pareto-smoothed importance resampling, which also drops the paths that
stopped in a minor mode.

Sampling and scoring cost O(D m^2) per draw: with W = diag(alpha)^{-1/2} B = Q R (thin QR),
Sigma = diag(alpha)^{1/2} (I + Q (M - I) Q^T) diag(alpha)^{1/2}, M = I + R G R^T = U Lambda U^T,
so x = mu + alpha^{1/2} (u + Q (U Lambda^{1/2} U^T - I) Q^T u) for u ~ N(0, I), and
log det Sigma = sum log alpha + sum log Lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous

from pyro_nf.infer.logdensity import LogDensity

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


def _inverse_hessian(theta: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor,
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


def _update_alpha(alpha: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The diagonal of the BFGS update of the Hessian estimate diag(1/alpha) by (s, y):
    1/alpha' = 1/alpha + y^2 / (y^T s) - (s / alpha)^2 / (s^T diag(1/alpha) s). Kept where it
    stays positive and finite."""
    b = 1.0 / alpha
    new = b + y ** 2 / (y @ s) - (b * s) ** 2 / (s @ (b * s))
    ok = torch.isfinite(new) & (new > 0)
    return torch.where(ok, 1.0 / new, alpha)


@dataclass
class PathResult:
    """One path: its best normal approximation and what it cost."""

    approximation: LowRankSqrt | None
    elbo: float
    iterations: int
    gradient_evaluations: int
    best_iteration: int
    elbos: list[float] = field(default_factory=list)
    #: the last iterate (the mode where L-BFGS converged) and its log density
    last: torch.Tensor | None = None
    last_log_density: float = -math.inf
    #: the path ended because its ``stop`` rule said so, not because it converged
    stopped: bool = False


def _two_loop(grad: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
              h0: torch.Tensor) -> torch.Tensor:
    """The L-BFGS direction -H grad (Nocedal & Wright, Algorithm 7.4) from the diagonal H0."""
    q = grad.clone()
    coefs = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        coefs.append(a)
        q = q - a * y
    r = h0 * q
    for (s, y), a in zip(pairs, reversed(coefs)):
        r = r + s * (a - (y @ r) / (y @ s))
    return -r


def _energy_and_grad(log_density: LogDensity, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """-log p(x) and its gradient in float64; (inf, 0) where the model cannot be evaluated."""
    x = x.detach().requires_grad_(True)
    try:
        f = -log_density(x).to(F64)
        if not bool(torch.isfinite(f)):
            return math.inf, torch.zeros_like(x)
        (g,) = torch.autograd.grad(f, x)
    except (ValueError, RuntimeError):  # the model cannot be evaluated there
        return math.inf, torch.zeros_like(x)
    return float(f.detach()), g.detach()


def _armijo(value_and_grad: Callable, x: torch.Tensor, f: float, d: torch.Tensor,
            slope: float) -> tuple[torch.Tensor, float, torch.Tensor] | None:
    """Backtracking from a unit step along ``d`` until the Armijo condition holds (at most 40
    halvings): the accepted point, its value and gradient, or None."""
    t = 1.0
    for _ in range(40):
        x_new = x + t * d
        f_new, g_new = value_and_grad(x_new)
        if math.isfinite(f_new) and f_new <= f + 1e-4 * t * slope \
                and bool(torch.isfinite(g_new).all()):
            return x_new, f_new, g_new
        t *= 0.5
    return None


def _lbfgs_path(log_density: LogDensity, start: torch.Tensor, *, history: int, max_iters: int,
                tol: float, num_elbo_draws: int, generator: torch.Generator,
                stop: Callable[[torch.Tensor], bool] | None = None, score: bool = True
                ) -> PathResult:
    """Minimise -log p by L-BFGS from ``start`` with a backtracking (Armijo) line search, keep
    every accepted iterate with its gradient, and pick the best normal approximation along
    the path. Each trial point costs one gradient evaluation. ``stop(x)`` ends the path early
    (the mode search stops a path that has reached a known mode); ``score=False`` returns the
    end point only, without the approximations."""
    calls = [0]

    def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        calls[0] += 1
        return _energy_and_grad(log_density, x)

    x = start.to(F64).clone()
    f, g = value_and_grad(x)
    if not math.isfinite(f) or not bool(torch.isfinite(g).all()):
        return PathResult(None, -math.inf, 0, calls[0], -1)
    points = [(x, -g, f)]
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    alpha = None  # the diagonal inverse-Hessian estimate, H0 of the two-loop recursion
    for _ in range(max_iters):
        d = _two_loop(g, pairs, alpha) if pairs else -g / max(1.0, float(g.abs().sum()))
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            pairs, d = [], -g / max(1.0, float(g.abs().sum()))
            slope = float(g @ d)
        accepted = _armijo(value_and_grad, x, f, d, slope)
        if accepted is None:
            break
        x_new, f_new, g_new = accepted
        s_vec, y_vec = x_new - x, g_new - g
        if float(s_vec @ y_vec) > 1e-10 * float(y_vec @ y_vec):
            pairs = (pairs + [(s_vec, y_vec)])[-history:]
            if alpha is None:
                alpha = torch.full_like(x, float(s_vec @ y_vec) / float(y_vec @ y_vec))
            alpha = _update_alpha(alpha, s_vec, y_vec)
        converged = abs(f - f_new) <= tol * max(1.0, abs(f_new)) or \
            float(g_new.abs().max()) <= 1e-8
        x, f, g = x_new, f_new, g_new
        points.append((x, -g, f))
        if stop is not None and stop(x):
            return PathResult(None, -math.inf, len(points) - 1, calls[0], -1, last=x,
                              last_log_density=-f, stopped=True)
        if converged:
            break
    if not score:
        return PathResult(None, -math.inf, len(points) - 1, calls[0], -1, last=x,
                          last_log_density=-f)
    return _best_along(log_density, points, history, num_elbo_draws, generator, calls[0])


def _best_along(log_density: LogDensity, points: list, history: int, num_elbo_draws: int,
                generator: torch.Generator, evals: int) -> PathResult:
    dim = log_density.dim
    alpha = torch.ones(dim, dtype=F64, device=points[0][0].device)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    best = PathResult(None, -math.inf, len(points) - 1, evals, -1, last=points[-1][0],
                      last_log_density=-points[-1][2])
    scored = _scored_iterates(len(points))
    for l in range(1, len(points)):
        (t0, g0, _), (t1, g1, _) = points[l - 1], points[l]
        s, y = t1 - t0, -(g1 - g0)  # y: the change of the gradient of -log p
        if float(s @ y) > 2.2e-16 * float(y @ y):
            pairs = (pairs + [(s, y)])[-history:]
            alpha = _update_alpha(alpha, s, y)
        if not pairs or l not in scored:
            continue
        s_mat = torch.stack([p[0] for p in pairs], dim=1)
        y_mat = torch.stack([p[1] for p in pairs], dim=1)
        approx = _inverse_hessian(t1, g1, alpha, s_mat, y_mat)
        if approx is None:
            continue
        elbo = _elbo(log_density, approx, num_elbo_draws, generator)
        best.elbos.append(elbo)
        if elbo > best.elbo:
            best.approximation, best.elbo, best.best_iteration = approx, elbo, l
    return best


#: At most this many iterates of a path get an ELBO estimate: all of a short path; of a long
#: one the last quarter of them, evenly spaced, with the last ten always included (on long
#: paths the best approximation sits near the end, where the curvature pairs are local).
MAX_SCORED = 100


def _scored_iterates(n: int) -> set[int]:
    if n <= MAX_SCORED:
        return set(range(n))
    spread = torch.linspace(n - n // 4, n - 1, MAX_SCORED - 10).round().long().tolist()
    return set(spread) | set(range(n - 10, n))


def _draw(approx: LowRankSqrt, n: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    # the generator is a CPU one: draw there, then move to the approximation's device
    u = torch.randn(n, len(approx.loc), dtype=F64, generator=generator).to(approx.loc.device)
    x = approx(u)
    log_q = -0.5 * (u ** 2).sum(-1) - 0.5 * len(approx.loc) * math.log(2 * math.pi) \
        - approx._log_det
    return x, log_q


def _elbo(log_density: LogDensity, approx: LowRankSqrt, n: int,
          generator: torch.Generator) -> float:
    x, log_q = _draw(approx, n, generator)
    try:
        with torch.no_grad():
            log_p = log_density(x).to(F64)
    except (ValueError, RuntimeError):  # the model cannot be evaluated at some draw
        return -math.inf
    lw = log_p - log_q
    return float(lw.mean()) if bool(torch.isfinite(lw).all()) else -math.inf


@dataclass
class PathfinderResult:
    """What :func:`pathfinder` returns.

    Attributes:
        approximation: the best path's normal approximation (``LowRankSqrt``: ``.loc``,
            ``.covariance()``), in float64 over the packed unconstrained latent.
        guide: a Pyro guide for the model (:class:`AutoPathfinder`) whose posterior is that
            approximation; ``Predictive``, ``to_inference_data`` and ``diagnose`` take it.
        draws: ``num_draws`` packed unconstrained draws, importance-resampled from every
            path's approximation (PSIS; Vehtari et al., 2024) when the pooled weights are
            reliable (k-hat < 0.7); else drawn from the best path's approximation, since
            resampling would repeat a handful of draws.
        samples: the same draws as constrained site values.
        elbo: the best path's ELBO estimate; ``elbos``: each path's best.
        khat: the Pareto k-hat of the pooled importance weights.
        gradient_evaluations: log-density gradient evaluations of every path together.
        density_evaluations: log-density evaluations for the ELBOs and the resampling.
    """

    approximation: LowRankSqrt
    guide: AutoContinuous
    draws: torch.Tensor
    samples: dict[str, torch.Tensor]
    elbo: float
    elbos: list[float]
    khat: float
    gradient_evaluations: int
    density_evaluations: int
    paths: list[PathResult]


def pathfinder(model: Callable, *args: Any, num_paths: int = 4, num_draws: int = 1000,
               history: int = 6, max_iters: int = 1000, tol: float = 1e-10,
               num_elbo_draws: int = 25, init_radius: float = 2.0, seed: int | None = 0,
               **kwargs: Any) -> PathfinderResult:
    """Multi-path Pathfinder for a Pyro model (Zhang et al., 2022).

    Args:
        model, args, kwargs: the model and its arguments.
        num_paths: independent L-BFGS paths, each from Stan's uniform(-init_radius,
            init_radius) start in unconstrained space (the first from the prior median where
            the prior can be sampled).
        num_draws: draws returned, importance-resampled from the paths' approximations.
        history: L-BFGS history size (the rank of the low-rank part is twice this).
        max_iters, tol: each path stops after ``max_iters`` L-BFGS iterations or when the
            objective changes by less than ``tol`` relative.
        num_elbo_draws: Monte Carlo draws per ELBO estimate along the path.
        seed: seeds the starts and the draws (None: from torch's global generator).

    Returns:
        a :class:`PathfinderResult`.
    """
    if num_paths < 1 or num_draws < 1:
        raise ValueError(f"pathfinder: num_paths and num_draws must be positive, got "
                         f"{num_paths} and {num_draws}")
    seed = seed if seed is not None else int(torch.randint(2 ** 31, ()))
    with torch.random.fork_rng(devices=[]):  # the initial point may draw from the prior
        torch.manual_seed(seed)
        log_density = LogDensity(model, *args, **kwargs)
    generator = torch.Generator()
    generator.manual_seed(seed)
    paths = run_paths(log_density, log_density.init, num_paths, generator, history=history,
                      max_iters=max_iters, tol=tol, num_elbo_draws=num_elbo_draws,
                      init_radius=init_radius)
    usable = [p for p in paths if p.approximation is not None]
    if not usable:
        raise RuntimeError("pathfinder: no path produced a usable normal approximation (the "
                           "log density was not finite, or the L-BFGS curvature was never "
                           "positive); check the model's density at its initial values")
    grads = sum(p.gradient_evaluations for p in paths)
    best = max(usable, key=lambda p: p.elbo)
    draws, khat = _resample_paths(log_density, usable, best, num_draws, generator)
    guide = AutoPathfinder(model, best.approximation, log_density)
    return PathfinderResult(
        approximation=best.approximation, guide=guide, draws=draws,
        samples=log_density.unpack(draws), elbo=best.elbo, elbos=[p.elbo for p in paths],
        khat=float(khat), gradient_evaluations=grads,
        density_evaluations=log_density.evaluations - grads, paths=paths)


def _resample_paths(log_density: LogDensity, usable: list[PathResult], best: PathResult,
                    num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Multi-path Pathfinder's importance resampling: draws from every path's approximation,
    Pareto-smoothed weights p / q, resampled where k-hat < 0.7 (else the best path's own
    draws: a few draws would carry all the weight). Returns the draws and k-hat."""
    from pyro_nf.diagnostics import _arviz

    per_path = -(-num_draws // len(usable))
    xs, lws = [], []
    for p in usable:
        x, log_q = _draw(p.approximation, per_path, generator)
        with torch.no_grad():
            log_p = log_density(x).to(F64)
        xs.append(x)
        lws.append(torch.where(torch.isfinite(log_p), log_p - log_q,
                               torch.as_tensor(-math.inf, dtype=F64)))
    x, lw = torch.cat(xs), torch.cat(lws)
    finite = torch.isfinite(lw)
    smoothed, khat = _arviz.psis(lw[finite].numpy())
    if khat >= 0.7:
        return _draw(best.approximation, num_draws, generator)[0], float(khat)
    weights = torch.zeros_like(lw)
    weights[finite] = torch.as_tensor(smoothed).exp()
    index = torch.multinomial(weights / weights.sum(), num_draws, replacement=True,
                              generator=generator)
    return x[index], float(khat)


def run_paths(target: Callable, init: torch.Tensor, num_paths: int, generator: torch.Generator,
              *, history: int = 6, max_iters: int = 1000, tol: float = 1e-10,
              num_elbo_draws: int = 25, init_radius: float = 2.0) -> list[PathResult]:
    """``num_paths`` Pathfinder paths on ``target`` (a log density over R^D with attribute
    ``dim``): the first from ``init``, the others from uniform(-init_radius, init_radius)."""
    paths = []
    for k in range(num_paths):
        start = init.to(F64) if k == 0 else \
            ((torch.rand(target.dim, dtype=F64, generator=generator) * 2 - 1)
             * init_radius).to(init.device)
        paths.append(_lbfgs_path(target, start, history=history, max_iters=max_iters,
                                 tol=tol, num_elbo_draws=num_elbo_draws, generator=generator))
    return paths


def elbo_of(target: Callable, approx: LowRankSqrt, n: int, generator: torch.Generator
            ) -> float:
    """The Monte Carlo ELBO of the normal ``approx`` for ``target`` from ``n`` draws."""
    return _elbo(target, approx, n, generator)


class AutoPathfinder(AutoContinuous):
    """A Pyro guide whose posterior over the packed unconstrained latent is a fitted
    Pathfinder normal approximation (fixed: no parameters to learn)."""

    def __init__(self, model: Callable, approximation: LowRankSqrt,
                 log_density: LogDensity | None = None) -> None:
        super().__init__(model, init_loc_fn=_init_at(approximation, log_density))
        self.approximation = approximation

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        dtype = self._init_loc().dtype if self.prototype_trace is not None else F64
        return normal_of(self.approximation.to(dtype))

    def get_base_dist(self) -> dist.TorchDistribution:
        zeros = self.approximation.loc.new_zeros(len(self.approximation.loc))
        return dist.Normal(zeros, 1.0).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> LowRankSqrt:
        return self.approximation


def _init_at(approximation: LowRankSqrt, log_density: LogDensity | None) -> Callable:
    """An init_loc_fn that starts every site at the approximation's mean."""
    values = {} if log_density is None else log_density.unpack(approximation.loc)

    def init(site: dict) -> torch.Tensor:
        if site["name"] in values:
            return values[site["name"]].detach()
        from pyro_nf.infer.init import init_to_median_or_uniform

        return init_to_median_or_uniform(site)

    return init
