"""Mode search: the distinct local modes of a posterior, each with a Gaussian and its mass.

Reverse KL is mode-seeking, so a guide fitted to a posterior with separated modes keeps one
of them, and PSIS k-hat cannot see the others (no draw of the guide goes there). This module
looks for them independently of any guide:

1. **Multi-start L-BFGS** in the packed unconstrained space (float64): the model's initial
   point and ``num_starts - 1`` starts drawn uniformly from ``[-init_radius, init_radius]^D``
   (Stan's rule, widened), by the L-BFGS of :mod:`pyro_nf.approximations.pathfinder`; the later
   paths whitened by the first mode's Gaussian, each stopped on reaching a known mode.
2. **A Gaussian per mode**: Newton's method with the exact Hessian from each end point (up to
   ``NEWTON_MAX_DIM`` dimensions; above, the path's Pathfinder approximation), and Laplace at
   the mode it converges to; an end point where it does not converge (a path down a funnel's
   neck, along a ridge: the density has no maximum there) is no mode. Modes within sqrt(D) + 1
   whitened units (in either one's Gaussian) of a higher one are the same.
3. **Each mode's mass** by importance sampling: draws from every mode's Gaussian in equal
   numbers (the equal-weight mixture as proposal), weights p / q_mixture smoothed by PSIS
   (Vehtari et al., 2024), each draw credited to the mode whose Gaussian is densest there;
   k-hat >= 0.7 marks the masses unreliable.

:func:`missed_modes` then credits a guide's draws to the modes in the same way and reports the
modes that hold a noticeable share of the posterior but almost none of the guide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_nf.approximations.pathfinder import LowRankSqrt, lbfgs_path, normal_of
from pyro_nf.densities.logdensity import LogDensity

F64 = torch.float64
#: Newton with exact Hessians (D backward passes each) up to this dimension, above it the
#: path's Pathfinder Gaussian; above ``MANY_NEWTON_DIM`` only a few Newton steps, from an end
#: point that L-BFGS has already brought close.
NEWTON_MAX_DIM = 1000
MANY_NEWTON_DIM = 200


@dataclass
class Mode:
    """One local mode: where it is (packed unconstrained, float64), its Gaussian, the log
    density there and its estimated share of the posterior mass."""

    location: torch.Tensor
    gaussian: LowRankSqrt
    log_density: float
    mass: float = math.nan


@dataclass
class ModeSearch:
    """What :func:`find_modes` found: the modes by decreasing mass, the PSIS k-hat of the
    mass estimate's weights (above 0.7 the masses are rough), and the cost."""

    modes: list[Mode]
    khat: float
    log_density: LogDensity = field(repr=False)
    gradient_evaluations: int = 0

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """For points ``z`` of shape (N, D): the index of the mode whose Gaussian is densest
        at each."""
        scores = torch.stack([normal_of(m.gaussian).log_prob(z.to(F64)) for m in self.modes],
                             -1)
        return scores.argmax(-1)

    def sites(self, k: int) -> dict[str, torch.Tensor]:
        """Mode ``k``'s location as constrained site values."""
        return {name: v.detach() for name, v in
                self.log_density.unpack(self.modes[k].location).items()}

    @property
    def masses_reliable(self) -> bool:
        """False where the mass estimate's k-hat is 0.7 or more (the modes' Gaussians are poor
        proposals, as Pathfinder's can be above ``NEWTON_MAX_DIM``): then every mode counts as
        possibly heavy."""
        return not self.khat >= 0.7

    def relabellings(self) -> list[list[int]]:
        """Groups (of two or more) of modes that are relabellings of one another: the same
        log density, and every site's values the same up to a permutation. This is the
        label switching of mixture models with exchangeable components: K! copies of one
        posterior, of which a guide need (and can) keep only one."""
        groups: list[list[int]] = []
        for k in range(len(self.modes)):
            for group in groups:
                if _permuted(self, group[0], k):
                    group.append(k)
                    break
            else:
                groups.append([k])
        return [g for g in groups if len(g) > 1]

    def __str__(self) -> str:
        if not self.modes:
            return ("no local mode: no path converged to a maximum (the density is unbounded "
                    "or flat along some direction, as in a funnel's neck)")
        lines = [f"{len(self.modes)} mode(s) after {self.gradient_evaluations} gradients"
                 + (f", mass estimate's k-hat {self.khat:.2f}" if self.khat == self.khat
                    else "")]
        for k, mode in enumerate(self.modes):
            lines.append(f"  mode {k}: mass {mode.mass:.3f}, log density "
                         f"{mode.log_density:.2f}, at {_where(self.sites(k))}")
        for group in self.relabellings():
            lines.append(f"  modes {group} are relabellings of one another (label switching): "
                         "their sites' values are the same up to a permutation")
        return "\n".join(lines)


def _where(sites: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.cpu().double().numpy().round(3).tolist()}"
                     for k, v in sites.items())


def _permuted(search: ModeSearch, i: int, j: int) -> bool:
    a, b = search.modes[i], search.modes[j]
    if abs(a.log_density - b.log_density) > 1e-3 * max(1.0, abs(a.log_density)):
        return False
    sa, sb = search.sites(i), search.sites(j)
    moved = False
    for name in sa:
        x, y = sa[name].flatten().double(), sb[name].flatten().double()
        if not torch.allclose(x.sort().values, y.sort().values, rtol=0.02, atol=0.02):
            return False
        moved |= not torch.allclose(x, y, rtol=0.02, atol=0.02)
    return moved


@dataclass
class MissedMode:
    """A mode that holds ``mass`` of the posterior but only ``guide_mass`` of the guide;
    ``relabelling`` when it is a label-switched copy of a mode the guide does hold."""

    location: dict[str, torch.Tensor]
    mass: float
    guide_mass: float
    relabelling: bool = False
    mass_reliable: bool = True

    def __str__(self) -> str:
        held = f"{self.mass:.0%}" if self.mass_reliable else "an uncertain share"
        text = (f"a mode at {_where(self.location)} holds {held} of the posterior but "
                f"{self.guide_mass:.1%} of the guide")
        if self.relabelling:
            text += (" (a relabelling of a mode the guide holds: label switching; summaries "
                     "of the permuted sites mix the components unless the model orders them)")
        return text


def find_modes(model: Callable, *args: Any, num_starts: int = 20, init_radius: float = 4.0,
               max_iters: int = 100, num_draws: int = 4000, seed: int = 0, **kwargs: Any
               ) -> ModeSearch:
    """Search the posterior of ``model`` for its distinct local modes and their masses (module
    docstring). A path that comes within the region of a mode already found stops there, so a
    unimodal posterior costs about one full L-BFGS run and ``num_starts - 1`` short ones;
    where the first two paths find no maximum the search ends. L-BFGS only has to bring a
    path near a mode (relative tolerance 1e-7, at most ``max_iters`` iterations): Newton's
    method finishes it.
    Returns a :class:`ModeSearch`; one without modes where no path converged to a maximum
    (a funnel's neck, a ridge: the density is unbounded or flat along some direction)."""
    if num_starts < 1:
        raise ValueError(f"find_modes: num_starts must be at least 1, got {num_starts}")
    generator = torch.Generator().manual_seed(seed)
    modes: list[Mode] = []
    grads, reached = 0, False
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        log_density = LogDensity(model, *args, **kwargs)
        for k in range(num_starts):
            start = log_density.init.to(F64) if k == 0 else \
                (torch.rand(log_density.dim, dtype=F64, generator=generator) * 2 - 1) * init_radius
            target = _Whitened(log_density, modes[0].gaussian) \
                if modes and log_density.dim <= NEWTON_MAX_DIM else _Whitened(log_density)
            path = lbfgs_path(target, target.inverse(start.to(log_density.init.device)),
                               history=6, max_iters=max_iters, tol=1e-7, num_elbo_draws=25,
                               generator=generator, score=log_density.dim > NEWTON_MAX_DIM,
                               stop=lambda u, t=target: _known(modes, t.forward(u)))
            grads += path.gradient_evaluations
            reached |= path.last is not None and math.isfinite(path.last_log_density)
            if not path.stopped and path.last is not None:
                _add_mode(log_density, target.forward(path.last), path, modes)
            if k >= 1 and not modes:  # two paths and no maximum: the density has none
                break
    if not reached:
        raise ValueError("find_modes: no start reached a point where the model's log density "
                         "is finite; check the model at its initial values")
    modes.sort(key=lambda m: -m.log_density)
    khat = _masses(log_density, modes, num_draws, generator)
    modes.sort(key=lambda m: -m.mass)
    return ModeSearch(modes, khat, log_density, grads)


def _radius(dim: int) -> float:
    """Within this whitened distance of a mode a point is in that mode's region: inside its
    Gaussian's typical set (radius about sqrt(D)). A second mode that close would not be a
    separate one: the two would share their mass."""
    return math.sqrt(dim) + 1.0


def _known(modes: list[Mode], x: torch.Tensor) -> bool:
    return any(_whitened_distance(m.gaussian, x) < _radius(len(x)) for m in modes)


class _Whitened:
    """The log density in the coordinates u of a mode's Gaussian, x = mu + L u (the identity
    without one): the later paths of the search run on a problem that the first mode's
    curvature has made well conditioned, as a mass matrix does for HMC."""

    def __init__(self, log_density: LogDensity, gaussian: LowRankSqrt | None = None) -> None:
        self.log_density, self.gaussian, self.dim = log_density, gaussian, log_density.dim

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u if self.gaussian is None else self.gaussian(u)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.gaussian is None else self.gaussian._inverse(x)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.log_density(self.forward(u))


def _add_mode(log_density: LogDensity, end: torch.Tensor, path: Any, modes: list[Mode]
              ) -> None:
    """The mode near a path's end point ``end``, appended to ``modes`` unless it is no maximum
    or lies in the region of one already there (in either one's Gaussian)."""
    if not math.isfinite(path.last_log_density):
        return
    found = _gaussian_at(log_density, end, path)
    if found is None:
        return
    x, gaussian = found
    r = _radius(len(x))
    if any(_whitened_distance(m.gaussian, x) < r or _whitened_distance(gaussian, m.location) < r
           for m in modes):
        return
    with torch.no_grad():
        modes.append(Mode(x, gaussian, float(log_density(x))))


def _newton(log_density: LogDensity, x: torch.Tensor, steps: int = 20
            ) -> tuple[torch.Tensor, LowRankSqrt] | None:
    """Newton's method with the exact Hessian from an L-BFGS end point: the mode and its
    Laplace Gaussian, or None where the point is no mode (the Hessian is not negative definite
    on the way, or the Newton decrement g' H^-1 g stays above 1e-2 after ``steps`` steps: the
    end of a path down a funnel's neck or along a ridge, where the density has no maximum)."""
    def f(v: torch.Tensor) -> torch.Tensor:
        return log_density(v).to(F64)

    x, decrement = x.to(F64), math.inf
    for _ in range(steps):
        g = torch.autograd.functional.jacobian(f, x)
        h = torch.autograd.functional.hessian(f, x)
        chol, info = torch.linalg.cholesky_ex(-(h + h.T) / 2)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            return None
        step = torch.cholesky_solve(g[:, None], chol)[:, 0]
        decrement = float(g @ step)
        if not math.isfinite(decrement):
            return None
        x = x + step
        if decrement < 1e-10:
            break
    if decrement >= 1e-2:
        return None
    return x, LowRankSqrt.dense(x, torch.cholesky_inverse(chol))


def _gaussian_at(log_density: LogDensity, end: torch.Tensor, path: Any
                 ) -> tuple[torch.Tensor, LowRankSqrt] | None:
    """The mode near a path's end and its Gaussian: Newton and Laplace up to
    ``NEWTON_MAX_DIM`` dimensions, above that the path's end and Pathfinder approximation
    (those paths run unwhitened, so both are in the model's coordinates)."""
    if log_density.dim <= NEWTON_MAX_DIM:
        return _newton(log_density, end, 20 if log_density.dim <= MANY_NEWTON_DIM else 3)
    if path.approximation is None:
        return None
    return end.to(F64), path.approximation


def _whitened_distance(gaussian: LowRankSqrt, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(gaussian._inverse(x.to(F64)).norm())


@torch.no_grad()
def _masses(log_density: LogDensity, modes: list[Mode], num_draws: int,
            generator: torch.Generator) -> float:
    """Fill in each mode's mass (module docstring, 3); return the weights' k-hat."""
    if len(modes) <= 1:
        for mode in modes:
            mode.mass = 1.0
        return math.nan
    per = max(1, num_draws // len(modes))
    draws = torch.cat([m.gaussian(torch.randn(per, len(m.location), dtype=F64,
                                              generator=generator)) for m in modes])
    log_q = torch.stack([normal_of(m.gaussian).log_prob(draws) for m in modes], -1)
    masses, khat = balance_masses(log_density(draws), log_q)
    for mode in modes:  # too few finite weights to say: equal, flagged by k-hat inf
        mode.mass = 1.0 / len(modes)
    for mode, mass in zip(modes, [] if masses is None else masses.tolist()):
        mode.mass = mass
    return khat


def balance_masses(log_p: torch.Tensor, log_q: torch.Tensor
                   ) -> tuple[torch.Tensor | None, float]:
    """Each of K components' share of the posterior mass, from draws made in equal numbers
    from every component: ``log_p`` (N,) the model's log density at the draws, ``log_q``
    (N, K) every component's. Weights p / mean_k q_k (the balance heuristic of multiple
    importance sampling, Veach & Guibas, 1995), PSIS-smoothed, each draw credited to the
    component densest there. Returns the K masses (None, with k-hat inf, where fewer than
    ten weights are finite) and the weights' k-hat."""
    from pyro_nf.utils import arviz_compat

    log_p, log_q = log_p.detach().double().cpu(), log_q.detach().double().cpu()
    k = log_q.shape[-1]
    log_w = log_p - (log_q.logsumexp(-1) - math.log(k))
    finite = torch.isfinite(log_w)
    if int(finite.sum()) < 10:
        return None, math.inf
    smoothed, khat = arviz_compat.psis(log_w[finite].numpy())
    weights = torch.from_numpy(smoothed).exp()
    owner = log_q[finite].argmax(-1)
    masses = torch.stack([weights[owner == j].sum() for j in range(k)]) / weights.sum()
    return masses, float(khat)


@torch.no_grad()
def missed_modes(search: ModeSearch, draws: Any, *args: Any, num_draws: int = 2000,
                 min_mass: float = 0.05, max_guide_mass: float = 0.02, **kwargs: Any
                 ) -> list[MissedMode]:
    """The modes of ``search`` that hold at least ``min_mass`` of the posterior but less than
    ``max_guide_mass`` of the draws, with their locations and masses. ``draws``: a fitted
    guide of any kind (ours or Pyro's; ``num_draws`` are taken with ``*args, **kwargs``), an
    InferenceData or a dict of constrained site values of shape (N, *site shape). A missed
    mode that is a relabelling of one the draws hold (label switching) is marked so. Where
    the search's masses are unreliable (``masses_reliable``) every mode the draws miss is
    reported, whatever its estimated mass."""
    values = _draw_values(draws, num_draws, args, kwargs)
    n = len(next(iter(values.values())))
    try:
        z = search.log_density.pack(values, n).to(F64)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"missed_modes: the draws do not fit the searched model's latent "
                         f"sites ({err}); pass draws of the same model") from None
    return missed_by(search, z, min_mass, max_guide_mass)


@torch.no_grad()
def missed_by(search: ModeSearch, z: torch.Tensor, min_mass: float = 0.05,
              max_guide_mass: float = 0.02) -> list[MissedMode]:
    """:func:`missed_modes` for draws ``z`` (N, D) already in the searched model's packed
    unconstrained coordinates."""
    if not search.modes:
        return []
    owner = search.nearest(z.to(F64))
    shares = [float((owner == k).double().mean()) for k in range(len(search.modes))]
    groups = search.relabellings()
    heavy = (lambda mass: mass >= min_mass) if search.masses_reliable else (lambda mass: True)
    out = []
    for k, mode in enumerate(search.modes):
        if heavy(mode.mass) and shares[k] < max_guide_mass:
            kin = next((g for g in groups if k in g), [])
            held = any(shares[j] >= max_guide_mass for j in kin if j != k)
            out.append(MissedMode(search.sites(k), mode.mass, shares[k], held,
                                  mass_reliable=search.masses_reliable))
    return out


def _draw_values(draws: Any, num_draws: int, args: tuple, kwargs: dict
                 ) -> dict[str, torch.Tensor]:
    """Constrained draws as a dict of tensors (N, *shape) from a guide, an InferenceData or
    a dict."""
    if isinstance(draws, dict):
        return {k: torch.as_tensor(v) for k, v in draws.items()}
    if callable(draws):
        import pyro

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = pyro.infer.Predictive(draws, num_samples=num_draws)(*args, **kwargs)
        return {k: v.detach() for k, v in out.items()}
    from pyro_nf.utils import arviz_compat

    posterior = arviz_compat.group(draws, "posterior")
    return {name: torch.as_tensor(arr.values).reshape((-1,) + arr.values.shape[2:])
            for name, arr in posterior.data_vars.items()}
