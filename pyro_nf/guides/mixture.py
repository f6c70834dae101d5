"""A mixture of flows, one per mode: ``AutoFlowMixture(model, modes="auto")``.

Reverse KL is mode-seeking: one flow fitted to a posterior with separated modes keeps one of
them, whatever its family. This guide keeps them all:

1. **Modes.** :func:`~pyro_nf.approximations.modes.find_modes` runs at set-up (multi-start L-BFGS,
   Newton and Laplace per mode, masses by importance sampling). ``modes="auto"`` keeps every
   mode holding at least ``min_mass`` of the posterior, at most ``max_modes`` of them; an
   integer K keeps the K heaviest.
2. **Components.** One :class:`~pyro_nf.guides.AutoFlow` per kept mode, its Gaussian anchor
   found from that mode alone (one L-BFGS path that starts there), so each component starts
   as the Laplace/Pathfinder Gaussian of its own mode (with ``start=None``: at the mode, with
   spread ``init_scale``).
3. **Training.** :func:`~pyro_nf.fit` fits each component on its own with its usual pipeline:
   started in a mode's basin, reverse KL keeps it there (the mode-seeking that loses modes
   for one flow is what keeps the components apart), so no component collapses onto another.
4. **Weights.** The components' masses by importance sampling with the equal-weight mixture
   of the fitted components as proposal (the balance heuristic of multiple importance
   sampling, Veach & Guibas, 1995; weights PSIS-smoothed), each draw credited to the
   component densest there: the weights are the posterior mass each component covers, the
   correction of the weights that Morningstar et al. (2021, "Automatic differentiation
   variational inference with mixtures") and Kviman et al. (2023) reach by training them.

``log_prob``, ``sample``, ``median``, ``quantiles``, ``Predictive``, ``to_inference_data`` and
``diagnose`` work on the mixture as on one flow. With one mode found (or none: an unbounded
density, a funnel) the mixture is the default AutoFlow, and costs it plus the search.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous, init_to_value

from pyro_nf.densities.initialization import init_to_median_or_uniform
from pyro_nf.densities.pinning import PinnedPacking
from pyro_nf.guides.autoflow import DEFAULT_FLOW, AutoFlow
from pyro_nf.guides.start import FromGuide, GaussianAnchor, as_start
from pyro_nf.guides.summaries import SummariesMixin

#: ``modes="auto"``: at most this many components, each holding at least MIN_MASS.
MAX_MODES = 8
MIN_MASS = 0.01
#: draws per component for the weights
WEIGHT_DRAWS = 1000


class MixtureOfFlows(dist.TorchDistribution):
    """sum_k w_k q_k(z) over a packed latent of D coordinates; ``components`` are
    distributions with event shape (D,). Sampling picks a component per draw (no
    reparametrized gradient: the mixture is trained component by component)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits: torch.Tensor, components: list, validate_args: Any = None
                 ) -> None:
        self.logits = logits - logits.logsumexp(-1)
        self.components = components
        super().__init__(torch.Size(), components[0].event_shape, validate_args=False)

    def sample(self, sample_shape: tuple = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        if len(self.components) == 1:  # the same draws as the one flow
            return self.components[0].sample(shape)
        with torch.no_grad():
            pick = dist.Categorical(logits=self.logits).sample(shape)
            draws = torch.stack([c.sample(shape) for c in self.components], -2)
            index = pick[..., None, None].expand(shape + (1, draws.shape[-1]))
            return draws.gather(-2, index).squeeze(-2)

    def component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log q_k(z) for each component k, stacked last."""
        return torch.stack([c.log_prob(z) for c in self.components], -1) + self.logits

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.component_log_probs(z).logsumexp(-1)


class AutoFlowMixture(SummariesMixin, PinnedPacking, AutoContinuous):
    """A mixture of AutoFlows, one per separated mode (module docstring), for posteriors with
    several modes: ``AutoFlowMixture(model)`` where one would write ``AutoFlow(model)``.

    Args:
        model: a Pyro model, as for :class:`~pyro_nf.guides.AutoFlow`.
        flow: every component's flow spec.
        modes: ``"auto"`` (default): every mode :func:`~pyro_nf.find_modes` finds with at
            least ``min_mass`` of the posterior, at most ``max_modes`` of them; an integer K:
            the K heaviest.
        max_modes: the most components of ``modes="auto"``.
        min_mass: the smallest mass of a mode that gets a component under ``modes="auto"``.
        search: a :class:`~pyro_nf.approximations.modes.ModeSearch` already run on this model
            (default: one is run at set-up).
        options: every component's other AutoFlow options (``start``, ``base``,
            ``centering``, ...). ``start`` is a Gaussian anchor (default) or the initial point
            (``None``); with several modes each component's anchor starts from its own mode.
            A fitted guide (``FromGuide``) cannot start every component.
    """

    def __init__(self, model: Callable, flow: Any = DEFAULT_FLOW, *, modes: int | str = "auto",
                 max_modes: int = MAX_MODES, min_mass: float = MIN_MASS, search: Any = None,
                 **options: Any) -> None:
        if modes != "auto" and not (isinstance(modes, int) and modes >= 1):
            raise ValueError(f"AutoFlowMixture: modes must be a positive integer or 'auto', got "
                             f"{modes!r}")
        if not (isinstance(max_modes, int) and max_modes >= 1):
            raise ValueError(f"AutoFlowMixture: max_modes must be a positive integer, got "
                             f"{max_modes!r}")
        start = as_start(options.get("start", "auto"))
        if isinstance(start, FromGuide):
            raise ValueError("AutoFlowMixture: a fitted guide cannot start every component "
                             "(each starts at its own mode); use AutoFlow(model, "
                             "start=FromGuide(fitted)), or start=None or a GaussianAnchor here")
        options["start"] = start
        self._modes, self._max_modes, self._min_mass = modes, max_modes, float(min_mass)
        self._flow, self._options = flow, options
        self.search = search
        self.components: list[AutoFlow] = []
        self.num_quantile_samples = int(options.get("num_quantile_samples", 4000))
        # the model itself: AutoContinuous wraps self.model in its own init messenger, which
        # would override each component's start at its mode
        object.__setattr__(self, "_raw_model", model)
        super().__init__(model, init_loc_fn=options.get("init_loc_fn",
                                                         init_to_median_or_uniform))

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        from pyro_nf.approximations.modes import find_modes

        super()._setup_prototype(*args, **kwargs)
        if self.search is None:
            self.search = find_modes(self._raw_model, *args, **kwargs)
        kept = self._kept_modes()
        if len(kept) <= 1:  # one mode (or none: a funnel's unbounded neck): one AutoFlow
            kept, starts = kept[:1], [self._options.get("init_loc_fn")]
        else:
            starts = [init_to_value(values=self.search.sites(k)) for k in kept]
        components = []
        for init in starts:
            options = dict(self._options)
            if init is not None:
                options["init_loc_fn"] = init
            if len(starts) > 1 and isinstance(options["start"], GaussianAnchor):
                # its anchor from its own mode only
                options["start"] = dataclasses.replace(options["start"], num_paths=1)
            component = AutoFlow(self._raw_model, self._flow, **options)
            component._pyro_name = f"{self._pyro_name}_{len(components)}"
            components.append(component)  # set up on first use: inside fit, after its seed
        object.__setattr__(self, "components", components)
        masses = torch.tensor([self.search.modes[k].mass for k in kept] or [1.0])
        self.register_buffer("logits", masses.clamp_min(1e-12).log().to(self._init_loc()))

    def _kept_modes(self) -> list[int]:
        """Indices of the modes that get a component: the heaviest ``modes`` (an integer), or
        those with at least ``min_mass`` up to ``max_modes`` (``"auto"``)."""
        order = list(range(len(self.search.modes)))  # by decreasing mass already
        if self._modes == "auto":  # unreliable masses: every mode, the fit weighs them
            floor = self._min_mass if self.search.masses_reliable else -1.0
            return [k for k in order if self.search.modes[k].mass >= floor][:self._max_modes]
        if len(order) < self._modes:
            warnings.warn(f"AutoFlowMixture(modes={self._modes}): the mode search found "
                          f"{len(order)} mode(s); the mixture has that many components",
                          UserWarning, stacklevel=5)
        return order[:self._modes]

    @property
    def weights(self) -> torch.Tensor:
        """Each component's weight (its share of the posterior mass)."""
        return self.logits.softmax(-1)

    def get_posterior(self, *args: Any, **kwargs: Any) -> MixtureOfFlows:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        for component in self.components:
            if component.prototype_trace is None:
                component._setup_prototype(*args, **kwargs)
        return MixtureOfFlows(self.logits, [c.get_posterior(*args, **kwargs)
                                            for c in self.components])

    def get_base_dist(self) -> dist.TorchDistribution:
        raise NotImplementedError("AutoFlowMixture: a mixture has no single base "
                                  "distribution and transform (NeuTraReparam needs one flow)")

    get_transform = get_base_dist

    # ------------------------------------------------------------------ summaries
    @property
    def loc(self) -> torch.Tensor:  # the device and dtype quantiles() draw on
        return self.components[0].loc

    def flow_spec(self) -> str:
        return f"mixture of {len(self.components)} x {self.components[0].flow_spec()}"

    # ------------------------------------------------------------------ fitting
    def fit_components(self, fit_one: Callable[[Any], Any], args: tuple, kwargs: dict) -> Any:
        """Fit every component with ``fit_one(component)`` (``fit`` with the caller's options),
        then set the weights (module docstring, 4). Returns the :class:`FitResult` of the
        mixture, with each component's in ``components``."""
        start = time.perf_counter()
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        results = [fit_one(component) for component in self.components]
        # one component: nothing to weigh, and the caller's random stream stays the default's
        khat = self._reweight(args, kwargs) if len(results) > 1 else results[0].khat
        return dataclasses.replace(
            results[0], guide=self, components=results, khat=khat, chi2=None,
            losses=[loss for r in results for loss in r.losses],
            steps=sum(r.steps for r in results),
            converged=all(r.converged for r in results),
            skipped_steps=sum(r.skipped_steps for r in results),
            stage="mixture", stop_reason=f"{len(results)} component(s) fitted and weighted",
            elbo_estimate=None, anchor_elbo=None, anchor_khat=None, recommendation=None,
            seconds=time.perf_counter() - start)

    @torch.no_grad()
    def _reweight(self, args: tuple, kwargs: dict) -> float:
        """Set the weights by multiple importance sampling; return the k-hat of the fitted
        mixture's own importance weights."""
        from pyro_nf.approximations.modes import balance_masses
        from pyro_nf.densities.logdensity import LogDensity
        from pyro_nf.utils import arviz_compat

        log_density = LogDensity(self._raw_model, *args, **kwargs)
        posteriors = [c.get_posterior(*args, **kwargs) for c in self.components]
        k = len(posteriors)
        z = torch.cat([q.sample((WEIGHT_DRAWS,)) for q in posteriors])
        masses, _ = balance_masses(log_density(z),
                                   torch.stack([q.log_prob(z) for q in posteriors], -1))
        if masses is not None:
            self.logits.copy_(masses.clamp_min(1e-12).log().to(self.logits))
        fitted = MixtureOfFlows(self.logits, posteriors)
        z = fitted.sample((WEIGHT_DRAWS * k,))
        own = log_density(z).double() - fitted.log_prob(z).double()
        if int(torch.isfinite(own).sum()) < 10:
            return math.inf
        _, khat = arviz_compat.psis(torch.nan_to_num(own, nan=-1e30, posinf=1e30, neginf=-1e30)
                              .cpu().numpy())
        return float(khat)
