"""Where an AutoFlow starts: the strategies of its one ``start`` argument.

All flow layers start at the identity, so before its first step an AutoFlow is the Gaussian
z = A(loc + scale * b), b ~ base, with A the Gaussian anchor's map (the identity without one).
A start strategy chooses that Gaussian at the guide's set-up (its first call, with the model's
arguments): ``loc``, ``scale``, the base's parameters and the anchor.

- :class:`GaussianAnchor` (the default, ``start="auto"``; ``"pathfinder"``, ``"laplace"``):
  the best Gaussian found by Pathfinder (Zhang et al., 2022) or a Laplace approximation at the
  mode; the flow then works in its whitened coordinates (:mod:`pyro_nf.guides.anchor`).
- :class:`FromGuide` (``start=FromGuide(fitted)``): another fitted Gaussian guide of the same
  model (:mod:`pyro_nf.guides.warm_start`).
- :class:`InitPoint` (``start=None``): the initial point of ``init_loc_fn`` with a spread of
  ``init_scale``.

A strategy also gives the defaults it needs of the guide's other options (``base``,
``centering``) and refuses the ones it cannot go with, when the guide is built.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide

from pyro_nf.guides.anchor import ANCHOR_METHODS, Anchor, find_anchor
from pyro_nf.guides.warm_start import gaussian_of, infer_base

#: The shorthands ``start=`` accepts besides a strategy: the anchor's methods, and None.
START_SHORTHANDS = (*ANCHOR_METHODS, None)


@dataclass
class Initial:
    """Where a guide starts: its affine map's ``loc`` and ``scale``, the base's parameters
    (``cov_factor`` and ``cov_diag``, or ``scale_tril``, where the start fixes them), and the
    Gaussian ``anchor`` its flow is whitened by (None: none; ``reason`` says why where one
    was asked for)."""

    loc: torch.Tensor
    scale: torch.Tensor
    base_params: dict[str, torch.Tensor] = field(default_factory=dict)
    anchor: Anchor | None = None
    reason: str | None = None


class Start:
    """A start strategy of :class:`~pyro_nf.AutoFlow` (module docstring). ``initial`` is
    called once, at the guide's set-up, with the guide (its prototype run done), the initial
    location in the flow's coordinates and the model's arguments."""

    #: the guide's ``base`` where none is given
    base = "diagonal"
    #: the guide's ``centering`` where none is given
    centering = "learn"

    def check(self, centering: str) -> None:
        """Raise ``ValueError`` where this start cannot go with the guide's ``centering``."""

    def initial(self, guide: Any, loc: torch.Tensor, args: tuple, kwargs: dict) -> Initial:
        raise NotImplementedError


def init_point(guide: Any, loc: torch.Tensor) -> Initial:
    """``loc`` with a spread of the guide's ``init_scale`` in every coordinate."""
    return Initial(loc, torch.full_like(loc, guide._init_scale))


@dataclass(frozen=True)
class InitPoint(Start):
    """Start at the initial point: ``loc`` from ``init_loc_fn`` (the prior median by default)
    and ``scale`` at ``init_scale``, with no anchor, as ADVI does (Kucukelbir et al., 2017,
    Automatic Differentiation Variational Inference). Shorthand: ``start=None``."""

    def initial(self, guide: Any, loc: torch.Tensor, args: tuple, kwargs: dict) -> Initial:
        return init_point(guide, loc)


@dataclass(frozen=True)
class GaussianAnchor(Start):
    """Start at the best Gaussian found before the first step, and run the flow in its
    whitened coordinates, z = mu + L (loc + scale * flow(b)) with loc = 0 and scale = 1: the
    guide starts as exactly that Gaussian N(mu, L L^T), its *anchor*.

    ``method``: ``"pathfinder"``, the best normal approximation along L-BFGS paths (Zhang,
    Carpenter, Gelman & Vehtari, 2022, "Pathfinder: Parallel quasi-Newton variational
    inference", JMLR 23(306)); ``"laplace"``, the Laplace approximation N(mode, (-Hessian)^-1)
    at the mode those paths found (Laplace, 1774; Tierney & Kadane, 1986; for D up to
    :data:`~pyro_nf.guides.anchor.LAPLACE_MAX_DIM`); ``"auto"`` (the default), the one of the
    two with the higher ELBO. ``num_paths``: the L-BFGS paths, from the initial point.
    Shorthands: ``start="auto"``, ``"pathfinder"``, ``"laplace"``.

    The search draws its random numbers with its own seed, so a fit's random stream is the
    same with or without it. Where the model allows no anchor the guide starts at the initial
    point (:class:`InitPoint`), and ``guide.anchor_reason`` says why
    (:mod:`pyro_nf.guides.anchor`).
    """

    method: str = "auto"
    num_paths: int = 2

    def __post_init__(self) -> None:
        if self.method not in ANCHOR_METHODS:
            raise ValueError(f"GaussianAnchor: method must be one of {ANCHOR_METHODS}, got "
                             f"{self.method!r}")
        if not isinstance(self.num_paths, int) or self.num_paths < 1:
            raise ValueError(f"GaussianAnchor: num_paths must be a positive integer, got "
                             f"{self.num_paths!r}")

    def initial(self, guide: Any, loc: torch.Tensor, args: tuple, kwargs: dict) -> Initial:
        fallback = init_point(guide, loc)
        centering = None if guide.centering is None else \
            guide.centering.transform(args, kwargs, detach=True)
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        try:
            # its own seed: the anchor is a function of the model, and the caller's random
            # stream (the fit's draws) is the same with or without it
            # blocked and with gradients: the set-up may run inside an ELBO's trace or under
            # no_grad, and the anchor's own model runs must reach neither
            with torch.random.fork_rng(devices=devices), poutine.block(), \
                    torch.enable_grad():
                torch.manual_seed(0)
                anchor = find_anchor(guide._raw_model, args, kwargs, loc, self.method,
                                     centering, num_paths=self.num_paths)
        except Exception as error:  # noqa: BLE001 - any failure: the flow starts as before
            warnings.warn(f"AutoFlow: no Gaussian anchor ({type(error).__name__}: "
                          f"{next(iter(str(error).splitlines()), '')}); the flow starts from "
                          "init_loc_fn", UserWarning, stacklevel=5)
            return fallback
        if not isinstance(anchor, Anchor):  # a composed guide's usual case: quiet, and said
            return replace(fallback, reason=anchor or "no Gaussian candidate had a finite ELBO")
        return Initial(torch.zeros_like(loc), torch.ones_like(loc), {}, anchor)  # the anchor


class FromGuide(Start):
    """Start at another fitted Gaussian guide of the same model (a warm start):
    ``AutoNormal``, ``AutoDiagonalNormal``, ``AutoMultivariateNormal``,
    ``AutoLowRankMultivariateNormal`` or ``AutoLaplaceApproximation``.

    The guide starts as exactly the fitted Gaussian: its marginal scales go to the affine map
    and its correlations to the base, which defaults to ``"full"`` for a full covariance
    (``AutoMultivariateNormal``, ``AutoLaplaceApproximation``), ``"lowrank"`` for a low-rank
    one and ``"diagonal"`` otherwise (:mod:`pyro_nf.guides.warm_start`). The fitted guide works
    in the model's parametrization, so the guide's ``centering`` defaults to, and must be,
    ``"model"``. The fitted parameters are read at the guide's first call (with the model's
    arguments, which the Laplace approximation needs for its Hessian). The guide has no
    Gaussian anchor. A guide pickled before that first call loses its fitted guide (pickling a
    Pyro guide drops its model)."""

    centering = "model"

    def __init__(self, fitted: Any) -> None:
        self.base = infer_base(fitted)  # a clear TypeError for an unsupported guide
        self.fitted = fitted

    def check(self, centering: str) -> None:
        if centering != "model":
            raise ValueError("AutoFlow(start=FromGuide(...)): a warm start keeps the fitted "
                             "guide's (the model's) parametrization, centering='model'; for a "
                             "learned centering fit AutoFlow(model) from its initial location "
                             "instead")

    def initial(self, guide: Any, loc: torch.Tensor, args: tuple, kwargs: dict) -> Initial:
        if self.fitted is None:
            raise ValueError("FromGuide: this guide was unpickled before its first call, "
                             "without the fitted guide it starts from; build it again")
        loc, scale, base_params = gaussian_of(self.fitted, guide, guide._base_kind, args,
                                              kwargs)
        return Initial(loc, scale, base_params)

    def __getstate__(self) -> dict[str, Any]:
        return {"base": self.base, "fitted": None}

    def __repr__(self) -> str:
        return f"FromGuide({type(self.fitted).__name__})"


def as_start(start: Any) -> Start:
    """The strategy of ``start=``: a :class:`Start` as it is, or a shorthand (module
    docstring): ``"auto"``, ``"pathfinder"``, ``"laplace"`` or None."""
    if isinstance(start, Start):
        return start
    if start is None:
        return InitPoint()
    if isinstance(start, str) and start in ANCHOR_METHODS:
        return GaussianAnchor(start)
    hint = " (a fitted guide: start=FromGuide(guide))" if isinstance(start, AutoGuide) else ""
    raise ValueError(f"AutoFlow: start must be GaussianAnchor(...), FromGuide(fitted), "
                     f"InitPoint() or one of {START_SHORTHANDS}{hint}, got {start!r}")
