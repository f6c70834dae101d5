"""AutoFlow: a normalizing-flow autoguide over all of a model's (global) latent sites.

Like every :class:`~pyro.infer.autoguide.AutoContinuous` guide, AutoFlow packs the model's
latent sites, each mapped to unconstrained space by ``biject_to(support)``, into one vector
z in R^D. Its posterior over z is

    b ~ base (N(0, I); or N(0, W W^T + diag(d)) with ``base="lowrank"``; or N(0, L L^T) with
    ``base="full"``),   u = f_K o ... o f_1 (b),   z = A(loc + scale * u[order]),

with A(v) = mu + L v the Gaussian anchor (:mod:`pyro_nf.guides.anchor`; the identity with
``anchor=None``), so log q(z) = log base(b) - sum_k log|det J_k| - sum_i log scale_i - log|det L|
(change of variables);
``order`` is the permutation undoing the net reordering of the flow's fixed permutation layers
(coupling stacks have them; consecutive autoregressive layers vary their MADE's order instead
and move no data, so for an IAF stack ``order`` is the identity and costs nothing).
The flow acts on standardised coordinates, where its layers' active ranges (spline bounds,
tanh kinks) are meaningful, and the elementwise affine map puts the result where the posterior
is. Flow layers start at the identity, so before any step the guide is the anchor N(mu, L L^T)
(loc = 0, scale = 1) or, without an anchor, has mean ``loc`` (from ``init_loc_fn``) and spread
``init_scale``.

For a model with hierarchical Normal sites (theta ~ N(m, s) with m or s depending on other
latent sites) the default ``centering="learn"`` adds a last layer, z = C(z'), that re-centres
those sites with a learned centering lambda (:mod:`pyro_nf.guides.centering`); the statement
above then holds for z' (the sites' "eta" coordinates), whose mean is the initial location
mapped by C^{-1}. With ``centering="model"``, or without such sites, z' = z.

References: Rezende & Mohamed (2015), Variational Inference with Normalizing Flows; Kucukelbir
et al. (2017), Automatic Differentiation Variational Inference (the packing).
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings
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

from pyro_nf.densities.initialization import init_to_median_or_uniform
from pyro_nf.densities.pinning import PinnedPacking
from pyro_nf.guides.anchor import ANCHORS, AnchorMixin
from pyro_nf.guides.centering import (
    CENTERING_RATE,
    CENTERINGS,
    Centering,
    SiteSlot,
    hierarchical_normal_sites,
    initial_centering,
    vectorisation_problem,
)
from pyro_nf.guides.summaries import SummariesMixin
from pyro_nf.transforms.permutation import Permutation
from pyro_nf.transforms.registry import _expand, build_flow

#: The default flow of :class:`AutoFlow`; see docs/guides.md for how it was chosen.
DEFAULT_FLOW = "iaf*3"
BASES = ("diagonal", "lowrank", "full")


def net_permutation(flow: ComposeTransformModule) -> torch.Tensor | None:
    """The index vector ``order`` with ``flow(x) = x[..., order]`` at initialisation (every
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

    The flow's fixed permutations reorder coordinates to ``b[..., order]`` at initialisation;
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


class AutoFlow(AnchorMixin, SummariesMixin, PinnedPacking, AutoContinuous):
    """Normalizing-flow autoguide: ``AutoFlow(model)`` replaces ``AutoNormal(model)``.

    Args:
        model: a Pyro model whose latent sites are continuous and not in subsampled plates.
        flow: a flow spec of :func:`pyro_nf.transforms.build_flow` (``"iaf*4"``,
            ``["planar"] * 8``, ``[("maf", {"hidden": 64})]``, a callable ``dim -> module``).
        init_loc_fn: per-site initialisation (Pyro's ``init_to_*``): where the anchor's
            first L-BFGS path starts, or, without an anchor, ``loc``. The default is the
            prior median, or Stan's uniform(-2, 2) in unconstrained space for priors that
            cannot be sampled (``ImproperUniform``, factor-only densities).
        init_scale: without an anchor, the initial spread (standard deviation in
            unconstrained space; for re-centred sites, of their eta coordinates).
        base: ``"diagonal"`` (N(0, I); scales live in the affine map), ``"lowrank"``
            (a learnable low-rank-plus-diagonal covariance of rank ``rank``) or ``"full"``
            (a learnable Cholesky factor).
        rank: rank of the low-rank base (default ``ceil(sqrt(D))``).
        permutation: passed to ``build_flow`` (``"reverse"``, ``"random"`` or ``None``).
        flow_options: keyword options for every flow layer that accepts them.
        num_quantile_samples: draws used by :meth:`median` and :meth:`quantiles` (Monte Carlo).
        centering: ``"learn"`` (default): every hierarchical Normal site (its location or
            scale depends on another latent site) gets a learned partial non-centering, the
            flow's last layer (:mod:`pyro_nf.guides.centering`; Gorinova et al., 2020). It
            removes the funnel of a centred hierarchical model (eight schools, Neal's funnel)
            at the cost of one partial run of the model's prior per guide call; a model
            without such sites is unaffected. ``"model"``: the model's own parametrisation.
        anchor: ``"auto"`` (default): before the first step the guide finds the best
            Gaussian it can (Pathfinder or Laplace at the mode, the higher ELBO;
            :mod:`pyro_nf.guides.anchor`) and runs the flow in its whitened coordinates,
            z = mu + L (loc + scale * flow(b)), starting exactly at that Gaussian.
            ``"pathfinder"`` or ``"laplace"`` force one; ``None`` starts from
            ``init_loc_fn`` and ``init_scale`` (``from_guide``: the fitted guide).
        modes: ``1`` (default): one flow. ``"auto"`` or K: a mixture of flows, one per mode
            :func:`~pyro_nf.find_modes` finds, each fitted from its mode and weighted by the
            mass it covers (:mod:`pyro_nf.guides.mixture`), for separated modes.

    Works with ``Predictive``, ``NeuTraReparam`` (``get_base_dist``/``get_transform``),
    ``AutoGuideList``, ``poutine.block``, ``psis_diagnostic`` and the param store.
    """

    def __new__(cls, model: Callable = None, flow: Any = DEFAULT_FLOW, *, modes: Any = 1,
                **options: Any) -> AutoFlow:
        if modes == 1:
            return super().__new__(cls)
        from pyro_nf.guides.mixture import AutoFlowMixture

        return AutoFlowMixture(model, flow, modes=modes, **options)

    def __init__(
        self,
        model: Callable,
        flow: Any = DEFAULT_FLOW,
        *,
        modes: int | str = 1,
        init_loc_fn: Callable = init_to_median_or_uniform,
        init_scale: float = 0.1,
        base: str = "diagonal",
        rank: int | None = None,
        permutation: str | None = "reverse",
        flow_options: dict[str, Any] | None = None,
        num_quantile_samples: int = 4000,
        centering: str = "learn",
        anchor: str | None = "auto",
    ) -> None:
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale)
                and init_scale > 0):
            raise ValueError(f"AutoFlow: init_scale must be a positive number, got {init_scale!r}")
        if base not in BASES:
            raise ValueError(f"AutoFlow: base must be one of {BASES}, got {base!r}")
        if centering not in CENTERINGS:
            raise ValueError(f"AutoFlow: centering must be one of {CENTERINGS}, got "
                             f"{centering!r}")
        if anchor not in ANCHORS:
            raise ValueError(f"AutoFlow: anchor must be one of {ANCHORS}, got {anchor!r}")
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"AutoFlow: rank must be a positive integer, got {rank!r}")
        if not callable(flow) or isinstance(flow, nn.Module):
            _expand(flow)  # fail now, with the list of valid names, on a bad spec
        self._flow_spec = flow
        self._init_scale = float(init_scale)
        self._base_kind = base
        self._rank = rank
        self._permutation = permutation
        self._flow_options = dict(flow_options or {})
        self.num_quantile_samples = int(num_quantile_samples)
        self._warm_start: Any = None
        self._shadow: nn.Module | None = None
        self._centering = centering
        self._anchor_method = anchor
        self.anchor_info: dict[str, Any] = {}
        #: why the guide has no Gaussian anchor where ``anchor`` asked for one, or None
        self.anchor_reason: str | None = None
        #: one line for each choice made quietly at set-up (pinned coordinates, no anchor,
        #: sites kept in the model's parametrisation): the usual cases of composed guides
        self.setup_notes: list[str] = []
        # a plain attribute: a PyroModule/nn.Module model must not become a submodule
        object.__setattr__(self, "_centering_model", model)
        self._slots: dict[str, SiteSlot] = {}
        super().__init__(model, init_loc_fn=init_loc_fn)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_guide(cls, model: Callable, fitted_guide: Any, flow: Any = DEFAULT_FLOW,
                   **options: Any) -> AutoFlow:
        """An AutoFlow warm-started from a fitted Gaussian guide of the same model.

        Supported: ``AutoNormal``, ``AutoDiagonalNormal``, ``AutoMultivariateNormal``,
        ``AutoLowRankMultivariateNormal`` and ``AutoLaplaceApproximation``. The flow starts at
        the identity, so the new guide's initial posterior equals the fitted Gaussian (for a
        correlated Gaussian, ``base`` defaults to ``"full"`` or ``"lowrank"`` to keep the
        correlations). The fitted parameters are read when the new guide first runs (with the
        model's arguments, which the Laplace approximation needs for its Hessian).
        """
        from pyro_nf.guides.warm_start import infer_base

        base = infer_base(fitted_guide)  # a clear TypeError for unsupported guides
        options.setdefault("anchor", None)  # the fitted Gaussian is the start
        if options.setdefault("centering", "model") != "model":
            raise ValueError("AutoFlow.from_guide: a warm start keeps the fitted guide's "
                             "(the model's) parametrisation, centering='model'; for a learned "
                             "centering fit AutoFlow(model) from its initial location instead")
        options.setdefault("base", base)
        guide = cls(model, flow, **options)
        # a plain attribute: assigned normally, PyroModule would adopt the fitted guide as a
        # submodule and re-register its parameters under this guide's name
        object.__setattr__(guide, "_warm_start", fitted_guide)
        return guide

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
        from pyro_nf.guides.checks import check_global_continuous

        check_global_continuous(self, self.prototype_trace)
        init_loc = self._init_loc().detach()
        dtype, device = init_loc.dtype, init_loc.device
        self._prototype_tensor = init_loc
        D = self.latent_dim
        if self._centering == "learn":
            try:
                init_loc = self._setup_centering(init_loc, args, kwargs)
            except Exception as error:  # noqa: BLE001 - any site the centering cannot handle
                self._slots = {}
                first = next(iter(str(error).splitlines()), "")
                warnings.warn("AutoFlow(centering='learn') could not set up the centering of "
                              f"this model's hierarchical sites ({type(error).__name__}: "
                              f"{first}); the guide keeps the model's parametrisation "
                              "(centering='model').", UserWarning, stacklevel=4)
        loc, scale = init_loc, torch.full_like(init_loc, self._init_scale)
        if self._anchor_method is not None and self._warm_start is None:
            if self._set_anchor(init_loc, args, kwargs):
                loc, scale = torch.zeros_like(init_loc), torch.ones_like(init_loc)
        base_params: dict[str, torch.Tensor] = {}
        if self._warm_start is not None:
            from pyro_nf.guides.warm_start import gaussian_of

            loc, scale, base_params = gaussian_of(self._warm_start, self, self._base_kind,
                                                  args, kwargs)
            object.__setattr__(self, "_warm_start", None)
        self.loc = nn.Parameter(loc.clone())
        self.scale = PyroParam(scale.clone(), constraint=constraints.softplus_positive)
        if self._base_kind == "lowrank":
            rank = self._rank or max(1, math.ceil(math.sqrt(D)))
            fitted = base_params.get("cov_factor")
            if fitted is not None and self._rank is not None and fitted.shape[-1] != rank:
                raise ValueError(f"AutoFlow.from_guide: rank={rank} was asked for, but the "
                                 f"fitted guide has rank {fitted.shape[-1]}; drop rank= to "
                                 "keep the fitted covariance")
            self.cov_factor = nn.Parameter(base_params.get(
                "cov_factor", init_loc.new_zeros(D, rank)).clone())
            self.cov_diag = PyroParam(base_params.get("cov_diag", torch.ones_like(init_loc)),
                                      constraint=constraints.softplus_positive)
        elif self._base_kind == "full":
            self.scale_tril = PyroParam(base_params.get(
                "scale_tril", torch.eye(D, dtype=dtype, device=device)),
                constraint=constraints.softplus_lower_cholesky)
        flow = build_flow(self._flow_spec, D, permutation=self._permutation,
                          **self._flow_options)
        self.flow = flow.to(dtype=dtype, device=device)
        self._flow_at_start = {k: v.detach().clone() for k, v in self.flow.state_dict().items()}
        order = net_permutation(flow)
        self.register_buffer("output_order", None if order is None else order.to(device))

    def _setup_centering(self, init_loc: torch.Tensor, args: tuple, kwargs: dict
                         ) -> torch.Tensor:
        """Find the hierarchical Normal sites, lay out the packed vector for the prior runs,
        start lambda from the curvature at the initial values (:func:`initial_centering`) and
        return the initial location in the flow's (eta) coordinates."""
        trace = self.prototype_trace
        hierarchical = hierarchical_normal_sites(self.model, args, kwargs, trace,
                                                 notes=self.setup_notes)
        if not hierarchical:  # nothing to re-centre: the guide is AutoFlow(centering="model")
            self._slots = {}
            return init_loc
        start, nesting = initial_centering(self.model, args, kwargs, trace, hierarchical)
        slots, pos, count = {}, 0, 0
        for name, site in trace.iter_stochastic_nodes():
            shape = tuple(self._unconstrained_shapes[name])
            pinned = None if self.pins is None else self.pins.site(name)
            size = math.prod(shape) if pinned is None else len(pinned[0])
            event_dim = site["fn"].event_dim + len(shape) - site["value"].dim()
            centering = None
            if name in hierarchical:
                centering = slice(count, count + size)
                count += size
            slots[name] = SiteSlot(name, pos, size, shape,
                                   nesting - (len(shape) - event_dim), centering, pinned)
            pos += size
        supports = {name: site["fn"].support for name, site in trace.iter_stochastic_nodes()}
        lam = torch.cat([start[name].reshape(-1) for name in slots if name in start])
        lam = lam.to(init_loc)
        probe = Centering(self._centering_model, args, kwargs, slots, supports, lam)
        with torch.no_grad():
            eta = probe.inv(init_loc)
        problem = vectorisation_problem(probe, eta)
        if problem is not None:
            warnings.warn("AutoFlow(centering='learn') runs the model's prior on a batch of "
                          "draws, so it needs a model that broadcasts over a leading batch "
                          f"dimension (as Pyro's vectorised particles do); this one does not "
                          f"({problem}). The guide keeps the model's parametrisation "
                          "(centering='model'); declare the model's batch dimensions with "
                          "pyro.plate to use the centering.", UserWarning, stacklevel=5)
            return init_loc
        self._slots, self._supports = slots, supports
        self.centering_logit = nn.Parameter(torch.logit(lam) / CENTERING_RATE)
        return eta

    @property
    def centering_lambda(self) -> torch.Tensor:
        """lambda = sigmoid(CENTERING_RATE * centering_logit), every re-centred element packed."""
        return torch.sigmoid(CENTERING_RATE * self.centering_logit)

    def set_centering(self, lam: torch.Tensor) -> None:
        """Set every re-centred element's lambda (packed, in (0, 1))."""
        with torch.no_grad():
            self.centering_logit.copy_(torch.logit(torch.as_tensor(lam).to(
                self.centering_logit)) / CENTERING_RATE)

    def _centering_transform(self, args: tuple, kwargs: dict, detach: bool = False,
                             logit: torch.Tensor | None = None) -> Centering:
        if self._centering_model is None:
            raise RuntimeError("AutoFlow(centering='learn') runs the model's prior at every "
                               "call, but this guide was unpickled without its model (it "
                               "could not be pickled): call guide.attach_model(model) first")
        lam = self.centering_lambda if logit is None else torch.sigmoid(CENTERING_RATE * logit)
        return Centering(self._centering_model, args, kwargs, self._slots, self._supports,
                         lam.detach() if detach else lam)

    def centering_weights(self) -> dict[str, torch.Tensor]:
        """Each re-centred site's lambda (1: the model's centred form, 0: non-centred), shaped
        like the site; empty unless ``centering="learn"`` found hierarchical sites."""
        if not self._slots:
            return {}
        lam = self.centering_lambda.detach()
        return {name: lam[slot.centering].reshape(slot.shape)
                for name, slot in self._slots.items() if slot.centering is not None}

    # ------------------------------------------------------------------ the posterior
    def get_base_dist(self) -> dist.TorchDistribution:
        """The base distribution over b (see the module docstring)."""
        zeros = self.loc.new_zeros(self.latent_dim)  # follows .to() / .double() of the guide
        if self._base_kind == "lowrank":
            return dist.LowRankMultivariateNormal(zeros, self.cov_factor, self.cov_diag)
        if self._base_kind == "full":
            return dist.MultivariateNormal(zeros, scale_tril=self.scale_tril)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> ComposeTransform:
        """The map b -> z: the flow's layers, then ``z = loc + scale * u``."""
        return ComposeTransform(self._transforms(args, kwargs))

    def _transforms(self, args: tuple = (), kwargs: dict | None = None) -> list:
        # cache_size=1: log_prob of the sample just drawn finds each layer's input in its cache
        # (the layers compare identities), so a slow inverse (IAF) is never run for it
        parts = [*self.flow.parts, LocScale(self.loc, self.scale, self.output_order)]
        anchor = self.anchor_transform()
        if anchor is not None:
            parts.append(anchor)
        if self._slots:
            parts.append(self._centering_transform(args, kwargs or {}))
        return parts

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The posterior over the packed unconstrained latent z; its ``log_prob`` works at
        any z (the layers' inverses)."""
        return dist.TransformedDistribution(self.get_base_dist(), self._transforms(args, kwargs))

    def detached_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        """The same posterior with every parameter cut from the autograd graph (a shadow copy
        of the flow sharing the parameters' storage): log q of a reparametrised sample then
        carries only the path derivative, as the sticking-the-landing estimator needs."""
        if self._shadow is None:
            self._shadow = copy.deepcopy(self.flow).requires_grad_(False)
        for shadow_p, p in zip(self._shadow.parameters(), self.flow.parameters()):
            shadow_p.data = p.data
        for shadow_b, b in zip(self._shadow.buffers(), self.flow.buffers()):
            shadow_b.data = b.data
        zeros = self.loc.detach().new_zeros(self.latent_dim)
        if self._base_kind == "lowrank":
            base = dist.LowRankMultivariateNormal(zeros, self.cov_factor.detach(),
                                                  self.cov_diag.detach())
        elif self._base_kind == "full":
            base = dist.MultivariateNormal(zeros, scale_tril=self.scale_tril.detach())
        else:
            base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        parts = [*self._shadow.parts,
                 LocScale(self.loc.detach(), self.scale.detach(), self.output_order)]
        anchor = self.anchor_transform()
        if anchor is not None:
            parts.append(anchor)
        if self._slots:
            parts.append(self._centering_transform(args, kwargs, detach=True))
        return dist.TransformedDistribution(base, parts)

    def stl_log_densities(self, *args: Any, **kwargs: Any) -> dict:
        """For :class:`~pyro_nf.STLTrace_ELBO`: this guide's latent site and its
        log-density with detached parameters (``args``: the model's, for ``centering``)."""
        if self.prototype_trace is None:
            return {}
        return {f"_{self._pyro_name}_latent":
                lambda value: self.detached_posterior(*args, **kwargs).log_prob(value)}

    def __getstate__(self):
        state = super().__getstate__()
        state["_shadow"] = None
        # Pyro's guides drop their model when pickled; the centering layer needs it at every
        # call, so keep it where it pickles by reference (a module-level function)
        try:
            pickle.dumps(self._centering_model)
        except Exception:
            state["_centering_model"] = None
        return state

    def attach_model(self, model: Callable) -> None:
        """Give an unpickled guide its model back (``centering="learn"`` runs the model's
        prior at every call; a model that cannot be pickled, such as a lambda or a closure,
        is not saved with the guide)."""
        object.__setattr__(self, "_centering_model", model)

    def flow_spec(self) -> str:
        """The flow spec as a string (for reports and InferenceData attrs)."""
        return self._flow_spec if isinstance(self._flow_spec, str) else repr(self._flow_spec)

