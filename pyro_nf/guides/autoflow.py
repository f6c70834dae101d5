"""AutoFlow: a normalizing-flow autoguide over all of a model's (global) latent sites.

Like every :class:`~pyro.infer.autoguide.AutoContinuous` guide, AutoFlow packs the model's
latent sites, each mapped to unconstrained space by ``biject_to(support)``, into one vector
z in R^D. Its posterior over z is

    b ~ base (N(0, I); or N(0, W W^T + diag(d)) with ``base="lowrank"``; or N(0, L L^T) with
    ``base="full"``),   u = f_K o ... o f_1 (b),   z = A(loc + scale * u[order]),

with A(v) = mu + L v the Gaussian anchor (:mod:`pyro_nf.guides.anchor`; the identity without
one), so log q(z) = log base(b) - sum_k log|det J_k| - sum_i log scale_i - log|det L|
(change of variables);
``order`` is the permutation undoing the net reordering of the flow's fixed permutation layers
(coupling stacks have them; consecutive autoregressive layers vary their MADE's order instead
and move no data, so for an IAF stack ``order`` is the identity and costs nothing).
The flow acts on standardized coordinates, where its layers' active ranges (spline bounds,
tanh kinks) are meaningful, and the elementwise affine map puts the result where the posterior
is. Flow layers start at the identity, so before any step the guide is the Gaussian its
``start`` strategy chose (:mod:`pyro_nf.guides.start`): the anchor N(mu, L L^T) (loc = 0,
scale = 1), a fitted Gaussian guide, or mean ``loc`` (from ``init_loc_fn``) and spread
``init_scale``.

For a model with hierarchical Normal sites (theta ~ N(m, s) with m or s depending on other
latent sites) the default ``centering="learn"`` adds a last layer, z = C(z'), that re-centers
those sites with a learned centering lambda (``guide.centering``,
:mod:`pyro_nf.guides.centering`); the statement above then holds for z' (the sites' "eta"
coordinates), whose mean is the initial location mapped by C^{-1}. With ``centering="model"``,
or without such sites, z' = z.

The set-up (the guide's first call, with the model's arguments) reads top to bottom: the
centering (which sites, and the initial location in eta), the start (loc, scale, the base's
parameters, the anchor), then the flow.

References: Rezende & Mohamed (2015), Variational Inference with Normalizing Flows; Kucukelbir
et al. (2017), Automatic Differentiation Variational Inference (the packing).
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.distributions.transforms import ComposeTransform
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam
from torch import nn

from pyro_nf.approximations.pathfinder import LowRankSqrt
from pyro_nf.densities.initialization import init_to_median_or_uniform
from pyro_nf.densities.pinning import PinnedPacking
from pyro_nf.guides.centering import CENTERINGS, LearnedCentering, find_centering
from pyro_nf.guides.checks import check_global_continuous
from pyro_nf.guides.start import Initial, as_start
from pyro_nf.guides.summaries import SummariesMixin
from pyro_nf.transforms.permutation import Permutation
from pyro_nf.transforms.registry import build_flow, expand_spec

#: The default flow of :class:`AutoFlow`; see docs/guides.md for how it was chosen.
DEFAULT_FLOW = "iaf*3"
BASES = ("diagonal", "lowrank", "full")


def net_permutation(flow: ComposeTransformModule) -> torch.Tensor | None:
    """The index vector ``order`` with ``flow(x) = x[..., order]`` at initialization (every
    layer but the fixed permutations starts at the identity), or None if it is the identity."""
    order = None
    for part in flow.parts:
        if isinstance(part, Permutation):
            order = part.perm if order is None else order[part.perm]
    if order is None or torch.equal(order, torch.arange(len(order), device=order.device)):
        return None
    return order


class LocScale(torch.distributions.Transform):
    """z = loc + scale * u[..., argsort(order)] (event_dim 1): AutoFlow's output map.

    The flow's fixed permutations reorder coordinates to ``b[..., order]`` at initialization;
    indexing with ``argsort(order)`` undoes that, so the whole map b -> z starts exactly at
    ``loc + scale * b``. A light transform with fixed class-level
    domain/codomain: building it every step costs nothing.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, order: torch.Tensor | None,
                 cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.loc, self.scale, self.order = loc, scale, order
        self.inv_order = None if order is None else torch.argsort(order)

    def _call(self, u):
        if self.order is not None:  # the flow gave b[..., order]: put b back in place
            u = u[..., self.inv_order]
        return self.loc + self.scale * u

    def _inverse(self, z):
        u = (z - self.loc) / self.scale
        return u if self.order is None else u[..., self.order]

    def log_abs_det_jacobian(self, u, z):
        return torch.log(self.scale).sum(-1).expand(u.shape[:-1])


class AutoFlow(SummariesMixin, PinnedPacking, AutoContinuous):
    """Normalizing-flow autoguide: ``AutoFlow(model)`` replaces ``AutoNormal(model)``.

    Args:
        model: a Pyro model whose latent sites are continuous and not in subsampled plates.
        flow: a flow spec of :func:`pyro_nf.transforms.build_flow` (``"iaf*4"``,
            ``["planar"] * 8``, ``[("maf", {"hidden": 64})]``, a callable ``dim -> module``).
        start: where the guide starts (:mod:`pyro_nf.guides.start`), a strategy or its
            shorthand. ``"auto"`` (default; ``GaussianAnchor()``): before the first step the
            guide finds the best Gaussian it can (Pathfinder or Laplace at the mode, the
            higher ELBO; :mod:`pyro_nf.guides.anchor`) and runs the flow in its whitened
            coordinates, z = mu + L (loc + scale * flow(b)), starting exactly at that
            Gaussian; ``"pathfinder"`` or ``"laplace"`` force one. ``FromGuide(fitted)``:
            at a fitted Gaussian guide of the same model. ``None`` (``InitPoint()``): at
            ``init_loc_fn`` with spread ``init_scale``.
        init_loc_fn: per-site initialization (Pyro's ``init_to_*``): where the anchor's
            first L-BFGS path starts, or, without an anchor, ``loc``. The default is the
            prior median, or Stan's uniform(-2, 2) in unconstrained space for priors that
            cannot be sampled (``ImproperUniform``, factor-only densities).
        init_scale: without an anchor, the initial spread (standard deviation in
            unconstrained space; for re-centered sites, of their eta coordinates).
        base: ``"diagonal"`` (N(0, I); scales live in the affine map), ``"lowrank"``
            (a learnable low-rank-plus-diagonal covariance of rank ``rank``) or ``"full"``
            (a learnable Cholesky factor). Default: the start's (``"diagonal"``; for
            ``FromGuide``, the one that keeps the fitted guide's correlations).
        rank: rank of the low-rank base (default ``ceil(sqrt(D))``).
        permutation: passed to ``build_flow`` (``"reverse"``, ``"random"`` or ``None``).
        flow_options: keyword options for every flow layer that accepts them.
        num_quantile_samples: draws used by :meth:`median` and :meth:`quantiles` (Monte Carlo).
        centering: ``"learn"`` (default): every hierarchical Normal site (its location or
            scale depends on another latent site) gets a learned partial non-centering, the
            flow's last layer (``guide.centering``, :mod:`pyro_nf.guides.centering`; Gorinova
            et al., 2020). It removes the funnel of a centered hierarchical model (eight
            schools, Neal's funnel) at the cost of one partial run of the model's prior per
            guide call; a model without such sites is unaffected. ``"model"``: the model's own
            parametrization (the default, and the only choice, for ``FromGuide``).

    A mixture of flows, one per separated mode, is :class:`~pyro_nf.guides.AutoFlowMixture`.
    Works with ``Predictive``, ``NeuTraReparam`` (``get_base_dist``/``get_transform``),
    ``AutoGuideList``, ``poutine.block``, ``psis_diagnostic`` and the param store.
    """

    def __init__(
        self,
        model: Callable,
        flow: Any = DEFAULT_FLOW,
        *,
        start: Any = "auto",
        init_loc_fn: Callable = init_to_median_or_uniform,
        init_scale: float = 0.1,
        base: str | None = None,
        rank: int | None = None,
        permutation: str | None = "reverse",
        flow_options: dict[str, Any] | None = None,
        num_quantile_samples: int = 4000,
        centering: str | None = None,
    ) -> None:
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale)
                and init_scale > 0):
            raise ValueError(f"AutoFlow: init_scale must be a positive number, got {init_scale!r}")
        #: the start strategy (:mod:`pyro_nf.guides.start`), run at the set-up
        self.start = as_start(start)
        base = self.start.base if base is None else base
        centering = self.start.centering if centering is None else centering
        if base not in BASES:
            raise ValueError(f"AutoFlow: base must be one of {BASES}, got {base!r}")
        if centering not in CENTERINGS:
            raise ValueError(f"AutoFlow: centering must be one of {CENTERINGS}, got "
                             f"{centering!r}")
        self.start.check(centering)
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"AutoFlow: rank must be a positive integer, got {rank!r}")
        if not callable(flow) or isinstance(flow, nn.Module):
            expand_spec(flow)  # fail now, with the list of valid names, on a bad spec
        self._flow_spec = flow
        self._init_scale = float(init_scale)
        self._base_kind = base
        self._rank = rank
        self._permutation = permutation
        self._flow_options = dict(flow_options or {})
        self.num_quantile_samples = int(num_quantile_samples)
        self._shadow: nn.Module | None = None
        self._centering_mode = centering
        #: the centering component (:class:`~pyro_nf.guides.centering.LearnedCentering`),
        #: None with ``centering="model"`` or without hierarchical sites
        self.centering: LearnedCentering | None = None
        self.anchor_info: dict[str, Any] = {}
        #: why the guide has no Gaussian anchor where its start asked for one, or None
        self.anchor_reason: str | None = None
        #: one line for each choice made quietly at set-up (pinned coordinates, no anchor,
        #: sites kept in the model's parametrization): the usual cases of composed guides
        self.setup_notes: list[str] = []
        # a plain attribute: a PyroModule/nn.Module model must not become a submodule
        object.__setattr__(self, "_raw_model", model)
        super().__init__(model, init_loc_fn=init_loc_fn)

    # ------------------------------------------------------------------ set-up
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        try:
            self._build_from_prototype(args, kwargs)
        except Exception:
            # a failed set-up (a bad model, a warm start that cannot be used) is redone on
            # the next call with the same clear error, not left half built
            self.prototype_trace = None
            raise

    def _build_from_prototype(self, args: tuple, kwargs: dict) -> None:
        check_global_continuous(self, self.prototype_trace)
        init_loc = self._init_loc().detach()
        self._prototype_tensor = init_loc
        eta = self._setup_centering(init_loc, args, kwargs)
        initial = self.start.initial(self, eta, args, kwargs)
        self._keep_anchor(initial)
        self._set_parameters(initial)
        flow = build_flow(self._flow_spec, self.latent_dim, permutation=self._permutation,
                          **self._flow_options)
        self.flow = flow.to(dtype=init_loc.dtype, device=init_loc.device)
        self._flow_at_start = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
        order = net_permutation(flow)
        self.register_buffer("output_order", None if order is None else
                             order.to(init_loc.device))

    def _setup_centering(self, init_loc: torch.Tensor, args: tuple, kwargs: dict
                         ) -> torch.Tensor:
        """Build ``self.centering`` where ``centering="learn"`` finds hierarchical sites, and
        return the initial location in the flow's (eta) coordinates."""
        self.centering = None
        if self._centering_mode != "learn":
            return init_loc
        layout = find_centering(self, self._raw_model, args, kwargs, init_loc,
                                self.setup_notes)
        if layout is None:
            return init_loc
        self.centering = LearnedCentering(self._raw_model, layout)
        # a submodule first: its parameter is then named after this guide in the param store
        self.centering.initialize(layout.lam)
        return layout.eta

    def _keep_anchor(self, initial: Initial) -> None:
        """Keep the start's Gaussian anchor as buffers (and why there is none, where the start
        asked for one)."""
        if initial.reason is not None:
            self.anchor_reason = initial.reason
            self.setup_notes.append(f"no Gaussian anchor: {initial.reason}")
        anchor = initial.anchor
        if anchor is None:
            return
        for name, value in zip(LowRankSqrt.PARTS, anchor.sqrt.to(initial.loc.dtype).parts()):
            self.register_buffer(f"anchor_{name.lstrip('_')}", value.to(initial.loc.device))
        if self.centering is not None:  # the anchor lives in the eta of the initial lambda
            self.register_buffer("anchor_centering_logit",
                                 self.centering.logit.detach().clone())
        self.anchor_info = {"method": anchor.method, "elbos": anchor.elbos,
                            "gradient_evaluations": anchor.gradient_evaluations}

    def _set_parameters(self, initial: Initial) -> None:
        """The affine map's ``loc`` and ``scale`` and the base's parameters, at the start's."""
        loc, fitted, D = initial.loc, initial.base_params, self.latent_dim
        self.loc = nn.Parameter(loc.clone())
        self.scale = PyroParam(initial.scale.clone(), constraint=constraints.softplus_positive)
        if self._base_kind == "lowrank":
            rank = self._rank or max(1, math.ceil(math.sqrt(D)))
            factor = fitted.get("cov_factor")
            if factor is not None and self._rank is not None and factor.shape[-1] != rank:
                raise ValueError(f"AutoFlow(start=FromGuide(...)): rank={rank} was asked for, "
                                 f"but the fitted guide has rank {factor.shape[-1]}; drop "
                                 "rank= to keep the fitted covariance")
            self.cov_factor = nn.Parameter(fitted.get(
                "cov_factor", loc.new_zeros(D, rank)).clone())
            self.cov_diag = PyroParam(fitted.get("cov_diag", torch.ones_like(loc)),
                                      constraint=constraints.softplus_positive)
        elif self._base_kind == "full":
            self.scale_tril = PyroParam(fitted.get(
                "scale_tril", torch.eye(D, dtype=loc.dtype, device=loc.device)),
                constraint=constraints.softplus_lower_cholesky)

    def centering_weights(self) -> dict[str, torch.Tensor]:
        """Each re-centered site's lambda (1: the model's centered form, 0: non-centered),
        shaped like the site; empty unless ``centering="learn"`` found hierarchical sites."""
        return {} if self.centering is None else self.centering.weights()

    # ------------------------------------------------------------------ the posterior
    def get_base_dist(self) -> dist.TorchDistribution:
        """The base distribution over b (see the module docstring)."""
        return self._base_dist()

    def _base_dist(self, detach: bool = False) -> dist.TorchDistribution:
        zeros = self.loc.new_zeros(self.latent_dim)  # follows .to() / .double() of the guide
        if self._base_kind == "lowrank":
            factor, diag = self.cov_factor, self.cov_diag
            if detach:
                factor, diag = factor.detach(), diag.detach()
            return dist.LowRankMultivariateNormal(zeros, factor, diag)
        if self._base_kind == "full":
            tril = self.scale_tril
            return dist.MultivariateNormal(zeros, scale_tril=tril.detach() if detach else tril)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> ComposeTransform:
        """The map b -> z: the flow's layers, then ``z = loc + scale * u``."""
        return ComposeTransform(self._transforms(args, kwargs))

    def _transforms(self, args: tuple = (), kwargs: dict | None = None,
                    detach: bool = False) -> list:
        # cache_size=1: log_prob of the sample just drawn finds each layer's input in its cache
        # (the layers compare identities), so a slow inverse (IAF) is never run for it
        if detach:
            flow, loc, scale = self._shadow_flow(), self.loc.detach(), self.scale.detach()
        else:
            flow, loc, scale = self.flow, self.loc, self.scale
        parts = [*flow.parts, LocScale(loc, scale, self.output_order)]
        anchor = self.anchor_transform()
        if anchor is not None:
            parts.append(anchor)
        if self.centering is not None:
            parts.append(self.centering.transform(args, kwargs or {}, detach=detach))
        return parts

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The posterior over the packed unconstrained latent z; its ``log_prob`` works at
        any z (the layers' inverses)."""
        return dist.TransformedDistribution(self.get_base_dist(), self._transforms(args, kwargs))

    def detached_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The same posterior with every parameter cut from the autograd graph (a shadow copy
        of the flow sharing the parameters' storage): log q of a reparametrized sample then
        carries only the path derivative, as the sticking-the-landing estimator needs."""
        base = self._base_dist(detach=True)
        return dist.TransformedDistribution(base, self._transforms(args, kwargs, detach=True))

    def _shadow_flow(self) -> nn.Module:
        """A copy of the flow without gradients, sharing the flow's parameters' storage."""
        if self._shadow is None:
            self._shadow = copy.deepcopy(self.flow).requires_grad_(False)
        for shadow_p, p in zip(self._shadow.parameters(), self.flow.parameters()):
            shadow_p.data = p.data
        for shadow_b, b in zip(self._shadow.buffers(), self.flow.buffers()):
            shadow_b.data = b.data
        return self._shadow

    def stl_log_densities(self, *args: Any, **kwargs: Any) -> dict:
        """For :class:`~pyro_nf.STLTrace_ELBO`: this guide's latent site and its
        log-density with detached parameters (``args``: the model's, for ``centering``)."""
        if self.prototype_trace is None:
            return {}
        return {f"_{self._pyro_name}_latent":
                lambda value: self.detached_posterior(*args, **kwargs).log_prob(value)}

    # ------------------------------------------------------------------ the anchor
    def anchor_transform(self) -> LowRankSqrt | None:
        """The anchor's map v -> mu + L v, or None for a guide without an anchor."""
        if not self.anchor_info:
            return None
        return LowRankSqrt.from_parts(*(getattr(self, f"anchor_{name.lstrip('_')}")
                                        for name in LowRankSqrt.PARTS), cache_size=1)

    def anchor_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The anchor alone as a distribution over the packed latent z (through the centering
        layer where there is one): what the guide was before its first step."""
        parts = [self.anchor_transform()]
        if parts[0] is None:
            raise ValueError("AutoFlow.anchor_posterior: this guide has no Gaussian anchor "
                             "(start=None, FromGuide, or a model that allows none)")
        if self.centering is not None:
            parts.append(self.centering.transform(args, kwargs, detach=True,
                                                  logit=self.anchor_centering_logit))
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
        if self.centering is not None:
            self.centering.logit.copy_(self.anchor_centering_logit)
        if self._base_kind == "lowrank":
            self.cov_factor.zero_()
            self.cov_diag = torch.ones_like(self.cov_diag)
        elif self._base_kind == "full":
            self.scale_tril = torch.eye(self.latent_dim, dtype=self.loc.dtype,
                                        device=self.loc.device)

    # ------------------------------------------------------------------ pickling, reports
    def __getstate__(self):
        state = super().__getstate__()
        state["_shadow"] = None
        # Pyro's guides drop their model when pickled; the anchor's set-up and the centering
        # need it, so keep it where it pickles by reference (a module-level function)
        try:
            pickle.dumps(self._raw_model)
        except Exception:  # noqa: BLE001 - a lambda, a closure: attach_model after unpickling
            state["_raw_model"] = None
        return state

    def attach_model(self, model: Callable) -> None:
        """Give an unpickled guide its model back (``centering="learn"`` runs the model's
        prior at every call; a model that cannot be pickled, such as a lambda or a closure,
        is not saved with the guide)."""
        object.__setattr__(self, "_raw_model", model)
        if self.centering is not None:
            self.centering.attach_model(model)

    def flow_spec(self) -> str:
        """The flow spec as a string (for reports and InferenceData attrs)."""
        return self._flow_spec if isinstance(self._flow_spec, str) else repr(self._flow_spec)
