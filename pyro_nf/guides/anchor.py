"""AutoFlow's Gaussian anchor: the best Gaussian found before any flow step.

The flow of :class:`~pyro_nf.AutoFlow` acts on whitened coordinates of this Gaussian,
z = mu + L (loc + scale * flow(b)), with loc = 0, scale = 1 and the flow at the identity at
the start, so the guide starts as exactly the anchor N(mu, L L^T). Whitening removes what a
flow of a few layers learns slowly or not at all from a standard normal start: scales that
span orders of magnitude, strong correlations, intercepts far from the prior's centre.

Two candidates, and the one with the higher ELBO (Monte Carlo, on common draws) wins:

- Pathfinder (Zhang et al., 2022): the best normal approximation along L-BFGS paths,
  low-rank plus diagonal (:mod:`pyro_nf.approximations.pathfinder`);
- Laplace at the mode those paths found: the inverse of the negative Hessian, when it is
  positive definite and D is at most ``LAPLACE_MAX_DIM`` (a dense D x D factor).

It needs a log density that is the same function at every call. A model that subsamples a
plate is read over all that plate's rows, in chunks (:mod:`pyro_nf.densities.full_data`), so its
anchor is the full data's. A model whose density is random at fixed latent values in another
way (an ``AutoGuideList`` member: the other members' sites are hidden by ``poutine.block`` and
drawn from their priors) is anchored with fixed random numbers where the draws only add a
constant to it; where they change its shape (a hidden assignment that a likelihood reads) the
guide has no anchor, starts from ``init_loc_fn``, and ``guide.anchor_reason`` says why. Both
are the usual cases of composed guides, so neither warns.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_nf.approximations.gaussian import log_weights, standard_normal
from pyro_nf.approximations.pathfinder import F64, LowRankSqrt, resolution, run_paths
from pyro_nf.densities.logdensity import LogDensity

ANCHORS = ("auto", "pathfinder", "laplace", None)
#: Laplace needs a dense Hessian: D autograd passes and a D x D factor.
LAPLACE_MAX_DIM = 1000
#: Monte Carlo draws of each candidate's ELBO, at most; drawn in rounds of ``ELBO_ROUND``, the
#: same standard normal draws for every candidate, until the best is clear (to within
#: ``ELBO_TOLERANCE``) and its ELBO known to ``ELBO_PRECISION`` nats (one standard error).
ELBO_DRAWS = 256
ELBO_ROUND = 64
ELBO_PRECISION = 0.01
#: Candidates whose ELBOs may differ by this much are as good as each other (the fit's last
#: check recommends the anchor over the flow only beyond the same slack).
ELBO_TOLERANCE = 0.05


@dataclass
class Anchor:
    """The chosen Gaussian: its square-root map, which method gave it, and the ELBOs."""

    sqrt: LowRankSqrt
    method: str
    elbos: dict[str, float]
    gradient_evaluations: int


class _Target:
    """log p in the flow's coordinates: with a centering layer C, log p(C(eta)) + log|J_C|."""

    def __init__(self, log_density: LogDensity, centering: Any | None) -> None:
        self.log_density, self.centering = log_density, centering
        self.dim = log_density.dim

    def __call__(self, eta: torch.Tensor) -> torch.Tensor:
        if self.centering is None:
            return self.log_density(eta)
        x = eta.to(self.log_density.dtype)
        with pyro.validation_enabled(False):  # an invalid value: a non-finite density
            theta = self.centering(x)
            ladj = self.centering.log_abs_det_jacobian(x, theta)
        return (self.log_density(theta) + ladj).to(eta.dtype)


def _seeded(target: _Target, point: torch.Tensor, seed: int) -> float:
    """The density at ``point`` with torch's random stream at ``seed``."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return float(target(point.to(F64)))


class _FixedDraws:
    """A density made a fixed function by running it with the same random numbers at every
    call: the draws of sites hidden from the guide are then the same at every point."""

    def __init__(self, target: _Target, seed: int = 1) -> None:
        self.target, self.seed, self.dim = target, seed, target.dim
        self.log_density = target.log_density

    def __call__(self, eta: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.target(eta)


def _density_problem(target: _Target, point: torch.Tensor) -> tuple[str | None, Any]:
    """``(problem, target)``: why the density cannot anchor a guide (None where it can), and
    the density to anchor with.

    A density that is random at fixed latent values (an ``AutoGuideList`` member whose model
    hides the other members' sites, which are then drawn from their priors) can still anchor
    the guide when the randomness only adds a constant: when the difference between two
    points is the same under two seeds (a hidden site read only by an observed one, the
    usual case). Then the density with fixed random numbers (:class:`_FixedDraws`) has the
    same shape and is used. Where the hidden draws move the shape (a hidden discrete
    assignment in a mixture), no Gaussian found at one draw is the guide's start."""
    here = [_seeded(target, point, seed) for seed in (1, 2)]
    if not math.isfinite(here[0]):
        return f"the model's log density at the initial values is {here[0]}", target
    if here[0] == here[1]:
        return None, target
    generator = torch.Generator().manual_seed(0)
    step = torch.randn(point.shape, generator=generator, dtype=F64).to(point.device)
    there = [_seeded(target, point.to(F64) + 0.1 * step, seed) for seed in (1, 2)]
    shift = [a - b for a, b in zip(here, there)]
    if all(math.isfinite(v) for v in shift) and \
            abs(shift[0] - shift[1]) <= 1e-6 * (1.0 + abs(shift[0])):
        return None, _FixedDraws(target)
    return ("the model's log density at fixed latent values changes shape with random "
            "draws it makes itself (sites hidden from this guide, e.g. by poutine.block "
            "inside an AutoGuideList, that other sites read)"), target


def _laplace(target: _Target, mode: torch.Tensor) -> LowRankSqrt | None:
    """N(mode, (-Hessian)^-1), centred by one Newton step: on a subsampled float32 model's
    full data, L-BFGS stops where the density's changes fall below its float resolution,
    which can leave the point a fair fraction of a posterior sd from the mode (the sd shrinks
    as 1/sqrt(N)). The step is kept where it does not lower the density by more than that
    resolution."""
    if target.dim > LAPLACE_MAX_DIM:
        return None
    mode = mode.detach().to(F64).requires_grad_(True)
    value = target(mode).to(F64)
    (grad,) = torch.autograd.grad(value, mode)
    mode = mode.detach()
    hess = torch.autograd.functional.hessian(lambda v: target(v).to(F64), mode)
    precision = -(hess + hess.T) / 2
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None  # not positive definite at the mode (a funnel's neck, a flat direction)
    cov = torch.cholesky_inverse(chol)
    newton = mode + cov @ grad
    with torch.no_grad():
        slack = resolution(target) * abs(float(value))
        if bool(torch.isfinite(newton).all()) and float(target(newton)) >= float(value) - slack:
            mode = newton
    return LowRankSqrt.dense(mode, cov)


def find_anchor(model: Any, args: tuple, kwargs: dict, init: torch.Tensor, method: str,
                centering: Any | None = None, num_paths: int = 2, seed: int = 0
                ) -> Anchor | str | None:
    """The anchor of ``method`` (``"auto"``: Pathfinder or Laplace, the higher ELBO), in
    float64; where the model's density does not allow one, the reason (a string), or None
    where no candidate was usable."""
    log_density = LogDensity(model, *args, **kwargs)
    if log_density.dim != len(init):
        return (f"the model's density packs {log_density.dim} coordinates where the guide "
                f"has {len(init)}")
    problem, target = _density_problem(_Target(log_density, centering), init)
    if problem is not None:
        return problem
    generator = torch.Generator().manual_seed(seed)
    paths = run_paths(target, init, num_paths, generator)
    grads = sum(p.gradient_evaluations for p in paths)
    candidates: dict[str, LowRankSqrt] = {}
    usable = [p for p in paths if p.approximation is not None]
    if usable and method in ("auto", "pathfinder"):
        candidates["pathfinder"] = max(usable, key=lambda p: p.elbo).approximation
    ends = [p for p in paths if p.last is not None and math.isfinite(p.last_log_density)]
    if ends and method in ("auto", "laplace"):
        laplace = _laplace(target, max(ends, key=lambda p: p.last_log_density).last)
        if laplace is not None:
            candidates["laplace"] = laplace
    if not candidates:
        return None
    elbos = candidate_elbos(target, candidates, generator)
    best = max(elbos, key=elbos.get)
    if not math.isfinite(elbos[best]):
        return None
    return Anchor(candidates[best], best, elbos, grads)


def candidate_elbos(target: _Target, candidates: dict[str, LowRankSqrt],
                    generator: torch.Generator) -> dict[str, float]:
    """Each candidate's Monte Carlo ELBO (-inf where a draw's density is not finite), on common
    draws: the same u ~ N(0, I) through every candidate's square root, so that their paired
    difference, not each ELBO's own spread, decides which is higher. Rounds of
    :data:`ELBO_ROUND` draws until that is settled (:func:`_settled`) or :data:`ELBO_DRAWS`
    draws: each draw of a large data set's density reads all its rows, and two Gaussians
    near the mode of such a posterior usually differ by many nats, which the first round
    settles."""
    some = next(iter(candidates.values()))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in candidates}
    lost: set[str] = set()
    while True:
        u = standard_normal(ELBO_ROUND, some, generator)
        for name, sqrt in candidates.items():
            lw = None if name in lost else log_weights(target, sqrt, u)
            if lw is None:
                lost.add(name)
            else:
                parts[name].append(lw)
        lw = {name: torch.cat(parts[name]) for name in candidates if name not in lost}
        if not lw or len(next(iter(lw.values()))) >= ELBO_DRAWS or _settled(lw):
            return {name: float(lw[name].mean()) if name in lw else -math.inf
                    for name in candidates}


def _settled(lw: dict[str, torch.Tensor]) -> bool:
    """Whether the best of the log weights ``lw`` (common draws) is known, its ELBO to
    :data:`ELBO_PRECISION`: no other candidate's ELBO can be higher than the best's by more
    than :data:`ELBO_TOLERANCE` (three standard errors of the paired difference)."""
    best = max(lw, key=lambda name: float(lw[name].mean()))
    n = len(lw[best])
    if float(lw[best].std()) / math.sqrt(n) > ELBO_PRECISION:
        return False
    for other in lw.values():
        diff = lw[best] - other
        if 3 * float(diff.std()) / math.sqrt(n) - float(diff.mean()) > ELBO_TOLERANCE:
            return False
    return True


class AnchorMixin:
    """AutoFlow's anchor methods: finding it at set-up, and the anchor as a map and as a
    distribution. Kept here with the anchor's search; AutoFlow inherits them."""

    def _set_anchor(self, init_loc: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        """Find the Gaussian anchor (:mod:`pyro_nf.guides.anchor`) and keep it as buffers;
        False where the model allows none."""
        centering = self._centering_transform(args, kwargs, detach=True) if self._slots \
            else None
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        try:
            # its own seed: the anchor is a function of the model, and the caller's random
            # stream (the fit's draws) is the same with or without it
            # blocked and with gradients: the set-up may run inside an ELBO's trace or under
            # no_grad, and the anchor's own model runs must reach neither
            with torch.random.fork_rng(devices=devices), poutine.block(), \
                    torch.enable_grad():
                torch.manual_seed(0)
                anchor = find_anchor(self._centering_model, args, kwargs, init_loc,
                                     self._anchor_method, centering,
                                     num_paths=getattr(self, "_anchor_paths", 2))
        except Exception as error:  # noqa: BLE001 - any failure: the flow starts as before
            warnings.warn(f"AutoFlow: no Gaussian anchor ({type(error).__name__}: "
                          f"{next(iter(str(error).splitlines()), '')}); the flow starts from "
                          "init_loc_fn", UserWarning, stacklevel=5)
            return False
        if not isinstance(anchor, Anchor):
            # a composed guide's usual case (module docstring): quiet, and said here
            self.anchor_reason = anchor or "no Gaussian candidate had a finite ELBO"
            self.setup_notes.append(f"no Gaussian anchor: {self.anchor_reason}")
            return False
        for name, value in zip(LowRankSqrt.PARTS, anchor.sqrt.to(init_loc.dtype).parts()):
            self.register_buffer(f"anchor_{name.lstrip('_')}", value.to(init_loc.device))
        if self._slots:  # the anchor lives in the eta coordinates of the initial lambda
            # (the buffer keeps its first spelling: it is a key of saved state and checkpoints)
            self.register_buffer("anchor_centring_logit",
                                 self.centering_logit.detach().clone())
        self.anchor_info = {"method": anchor.method, "elbos": anchor.elbos,
                            "gradient_evaluations": anchor.gradient_evaluations}
        return True

    def anchor_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The anchor alone as a distribution over the packed latent z (through the centering
        layer where there is one): what the guide was before its first step."""
        parts = [self.anchor_transform()]
        if parts[0] is None:
            raise ValueError("AutoFlow.anchor_posterior: this guide has no Gaussian anchor "
                             "(anchor=None, from_guide, or a model that allows none)")
        if self._slots:
            parts.append(self._centering_transform(args, kwargs, detach=True,
                                                   logit=self.anchor_centring_logit))
        zeros = parts[0].loc.new_zeros(self.latent_dim)
        return dist.TransformedDistribution(dist.Normal(zeros, 1.0).to_event(1), parts)

    @torch.no_grad()
    def reset_to_anchor(self) -> None:
        """Put the flow back at the identity, loc and scale at 0 and 1, the base at N(0, I) and
        the centering's lambda where it started: the guide is its anchor again (what
        :func:`~pyro_nf.fit`'s last check recommends when the fitted flow's k-hat or ELBO is
        worse than the anchor's)."""
        if self.anchor_transform() is None:
            raise ValueError("AutoFlow.reset_to_anchor: this guide has no Gaussian anchor")
        self.flow.load_state_dict(self._flow_at_start)
        self.loc.zero_()
        self.scale = torch.ones_like(self.scale)
        if self._slots:
            self.centering_logit.copy_(self.anchor_centring_logit)
        if self._base_kind == "lowrank":
            self.cov_factor.zero_()
            self.cov_diag = torch.ones_like(self.cov_diag)
        elif self._base_kind == "full":
            self.scale_tril = torch.eye(self.latent_dim, dtype=self.loc.dtype,
                                        device=self.loc.device)

    def anchor_transform(self) -> LowRankSqrt | None:
        """The anchor's map v -> mu + L v, or None for a guide without an anchor."""
        if not self.anchor_info:
            return None
        return LowRankSqrt.from_parts(*(getattr(self, f"anchor_{name.lstrip('_')}")
                                        for name in LowRankSqrt.PARTS), cache_size=1)

