"""Learned non-centering of a model's hierarchical Normal sites, on the guide's side.

A site ``theta ~ N(m, s)`` whose location m or scale s depends on other latent sites (a
hierarchical "centered" parametrization) gives a funnel: as s shrinks, theta concentrates on m,
and a flow over (..., log s, theta) must learn a scale exponential in another coordinate.
Written as ``theta = m + s * eta`` (non-centered) the funnel disappears, but where the data are
informative the centered form is the better geometry. Gorinova, Moore & Hoffman (2020),
*Automatic Reparameterization of Probabilistic Programs*, interpolate between the two with a
centering lambda in [0, 1] learned with the variational parameters (VIP):

    theta = m + s^(1 - lambda) (eta - lambda m),        log|d theta / d eta| = (1 - lambda) log s,

lambda = 1 is the model's own (centered) parametrization and lambda = 0 the non-centered one.
Each element's lambda starts at the share of the likelihood in theta's conditional precision at
the initial values (:func:`initial_centering`: near 0 where the data are weak, near 1 where they
pin theta) and is learned with the flow, on a logit scale stretched by :data:`CENTERING_RATE`.

Here the map is the *last layer of the guide's flow*: the flow's output eta (the packed vector
of every latent site, unconstrained) goes through :class:`Centering`, which runs the model's
prior, site by site in the model's order, so that each hierarchical site's m and s are computed
from the values already given to the sites before it. The model stops as soon as the last latent
site has its value (nothing after it, likelihood included, is evaluated), and nothing it does is
recorded (``poutine.block``). Pyro's model-side equivalent is ``LocScaleReparam(centered=None)``;
this guide-side form leaves the model untouched, so every site keeps its name and meaning.

AutoFlow holds this as one component, ``guide.centering``, a :class:`LearnedCentering`: the
layout that :func:`find_centering` finds at set-up (which sites, where they sit in the packed
vector) and the learned lambda, from which it makes the :class:`Centering` layer at each call.
"""

from __future__ import annotations

import inspect
import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import biject_to, constraints

from pyro_nf.densities.pinning import fill

CENTERINGS = ("model", "learn")
#: lambda's starting values are kept within [CENTERING_BOUND, 1 - CENTERING_BOUND]
CENTERING_BOUND = 0.01
#: lambda = sigmoid(CENTERING_RATE * r) for the learned parameter r: the optimizer's steps in r
#: move lambda's logit this many times faster (its gradient is weak and noisy)
CENTERING_RATE = 10.0


@dataclass(frozen=True)
class SiteSlot:
    """Where a latent site sits in the packed vector, and how to shape its value so that the
    sample batch lies left of every plate dimension."""

    name: str
    pos: int
    size: int
    shape: tuple[int, ...]  # unconstrained shape, plate dimensions included
    pad: int  # ones to insert between the batch and ``shape``
    centering: slice | None  # the site's entries of the lambda vector (hierarchical sites)
    #: ``(index, values)`` of a site with pinned coordinates (:mod:`pyro_nf.densities.pinning`):
    #: ``size`` counts its free ones, and :func:`fill` puts the pinned ones back
    pinned: tuple[torch.Tensor, torch.Tensor] | None = None


class _Stop(BaseException):  # not an Exception: a model's own `except Exception` lets it pass
    """Raised once the last latent site has its value: the rest of the model is not needed."""


def _normal_of(fn: Any) -> dist.Normal | None:
    """The Normal under Pyro's wrappers (Independent, expanded, masked), or None."""
    while not isinstance(fn, torch.distributions.Normal) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


def _real_support(fn: Any) -> bool:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class _Fill(Messenger):
    """Give every latent site of the prototype its value, in the model's order:
    ``visit(name, fn)`` returns it, with ``fn`` the site's prior as the model built it from the
    values given before. Raises :class:`_Stop` after the last one."""

    def __init__(self, names: list[str], visit: Callable) -> None:
        super().__init__()
        self.names, self.visit = set(names), visit
        self.last = names[-1]

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["name"] not in self.names or msg["is_observed"]:
            return
        msg["value"] = self.visit(msg["name"], msg["fn"])
        msg["is_observed"] = True
        msg["done"] = True

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] == self.last:
            raise _Stop


def run_prior(model: Callable, args: tuple, kwargs: dict, names: list[str],
              visit: Callable) -> None:
    """Run ``model`` up to its last latent site, ``visit`` choosing each latent value."""
    try:
        with poutine.block(), _Fill(names, visit):
            model(*args, **kwargs)
    except _Stop:
        return
    except TypeError as error:
        try:
            inspect.signature(model).bind(*args, **kwargs)
        except (TypeError, ValueError):  # the arguments are missing: say so
            raise RuntimeError(
                f"AutoFlow(centering='learn') runs the model's prior to place each "
                f"hierarchical site, and the model could not be called with these arguments "
                f"({error}); pass the model's arguments (get_posterior(*args), "
                "get_transform(*args), sample_posterior(n, *args))") from error
        raise
    raise RuntimeError(f"AutoFlow(centering='learn'): the model returned before reaching all "
                       f"of its latent sites {names}; a model whose latent sites change from "
                       "run to run needs centering='model'")


def hierarchical_normal_sites(model: Callable, args: tuple, kwargs: dict, trace: Any,
                              notes: list[str] | None = None) -> list[str]:
    """The latent sites whose prior is a Normal (on the real line) with a location or scale
    that depends on the value of another latent site: found by differentiating the location
    and scale with respect to the prototype's values.

    The model runs twice, under two seeds: a site whose location or scale changes between the
    runs depends on something random that the guide does not give (a site hidden by
    ``poutine.block`` inside the model, as in an ``AutoGuideList`` member), so re-centering it
    would make log q random; it is left as the model wrote it, and a line saying so goes to
    ``notes`` (an ``AutoGuideList`` member's usual case, not a warning), or is a warning
    where no ``notes`` list is given."""
    values = {name: site["value"].detach().clone().requires_grad_(True)
              for name, site in trace.iter_stochastic_nodes()}
    # a masked site (the unobserved part of obs_mask) has elements without any density: a
    # centering cannot place them, and the guide keeps the model's form there
    masked = {name for name, site in trace.iter_stochastic_nodes()
              if site.get("mask") is not None and not bool(torch.as_tensor(site["mask"]).all())}
    found: list[str] = []
    seen: list[dict[str, torch.Tensor]] = [{}, {}]

    def visit(run: int, name: str, fn: Any) -> torch.Tensor:
        normal = _normal_of(fn)
        if normal is not None and _real_support(fn):
            seen[run][name] = torch.cat([normal.loc.detach().reshape(-1),
                                         normal.scale.detach().reshape(-1)])
            params = [t for t in (normal.loc, normal.scale) if t.requires_grad]
            others = [v for other, v in values.items() if other != name]
            if run == 0 and params and others and name not in masked:
                grads = torch.autograd.grad(sum(p.sum() for p in params), others,
                                            allow_unused=True, retain_graph=True)
                if any(g is not None for g in grads):
                    found.append(name)
        return values[name]

    with torch.enable_grad():
        run_prior(model, args, kwargs, list(values), lambda name, fn: visit(0, name, fn))
    with torch.random.fork_rng(devices=[]):  # the second run leaves the global RNG as it was
        torch.manual_seed(torch.initial_seed() + 1)
        run_prior(model, args, kwargs, list(values), lambda name, fn: visit(1, name, fn))
    random = [name for name in found
              if seen[0][name].shape != seen[1][name].shape
              or not torch.equal(seen[0][name], seen[1][name])]
    if random:
        note = (f"centering: the prior location or scale of {random} changes from run to run "
                "with the same latent values (a latent site the guide does not see, e.g. one "
                "hidden with poutine.block), so these sites keep the model's parametrization")
        if notes is None:
            warnings.warn(f"AutoFlow: {note}", UserWarning, stacklevel=7)
        else:
            notes.append(note)
    return [name for name in found if name not in random]


def vectorization_problem(layer: Centering, x0: torch.Tensor) -> str | None:
    """Check that the model broadcasts over a leading batch dimension, as the centering layer
    (like Pyro's vectorized particles) needs: a batch of n points around ``x0`` (n equal to
    no site dimension, so that a missing plate cannot broadcast silently) must map as the
    points do one by one. Returns what went wrong, or None."""
    dims = {d for slot in layer.slots.values() for d in slot.shape}
    n = next(k for k in range(2, len(dims) + 3) if k not in dims)
    gen = torch.Generator(device=x0.device).manual_seed(0)
    x = x0 + 0.1 * torch.randn((n,) + x0.shape, generator=gen, device=x0.device,
                               dtype=x0.dtype)
    with torch.no_grad():
        try:
            batched = layer._run(x, inverse=False)[0]
        except Exception as error:  # a model that cannot take a batch
            return f"{type(error).__name__}: {error}"
        rows = torch.cat([layer._run(x[i:i + 1], inverse=False)[0] for i in range(n)])
    if not torch.allclose(batched, rows, rtol=1e-4, atol=1e-5):
        return "a batch of draws gives other values than the draws one by one"
    return None


def initial_centering(model: Callable, args: tuple, kwargs: dict, trace: Any,
                     names: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Each hierarchical site's starting lambda, element by element, from the prototype (the
    initial values): lambda = h / (h + 1 / s^2), the share of the likelihood in theta's
    conditional precision, with s the prior's scale and h = -d^2/d theta^2 of the log-joint
    without theta's own prior term (the row sums of that Hessian: exact when the model is
    conditionally independent across theta's elements, as in a plate).

    For theta ~ N(m, s), y ~ N(theta, sigma) this is s^2 / (s^2 + sigma^2): theta's
    conditional sd given (m, s) is sqrt(v), v = 1 / (1/s^2 + 1/sigma^2), whose slope in log s
    is sigma^2 / (s^2 + sigma^2) = 1 - lambda, so eta's conditional sd, sqrt(v) / s^(1 -
    lambda), is locally free of s: near 0 (non-centered) where the data are weak, near 1
    (centered) where they pin theta.

    Also returns the model's plate nesting, counted over every sample site of that run,
    observed ones included (the prototype trace holds only the latent sites).
    """
    values = {name: site["value"].detach().clone().requires_grad_(name in names)
              for name, site in trace.iter_stochastic_nodes()}
    out = {}
    with torch.enable_grad():
        tr = poutine.block(poutine.trace(poutine.condition(model, data=values)).get_trace)(
            *args, **kwargs)
        tr.compute_log_prob()
        for name in names:
            theta = values[name]
            rest = sum(site["log_prob_sum"] for other, site in tr.nodes.items()
                       if site["type"] == "sample" and other != name)
            curvature = torch.zeros_like(theta)
            grad = None
            if torch.is_tensor(rest) and rest.requires_grad:  # else: nothing below theta
                (grad,) = torch.autograd.grad(rest, theta, create_graph=True,
                                              allow_unused=True)
            if grad is not None and grad.requires_grad:
                (row_sums,) = torch.autograd.grad(grad.sum(), theta, retain_graph=True,
                                                  allow_unused=True)
                if row_sums is not None:
                    curvature = (-row_sums).clamp(min=0)
            scale = _normal_of(tr.nodes[name]["fn"]).scale.detach().expand(theta.shape)
            lam = curvature.detach() / (curvature.detach() + scale.pow(-2))
            out[name] = lam.clamp(CENTERING_BOUND, 1 - CENTERING_BOUND)
    nesting = max([-f.dim for site in tr.nodes.values() if site["type"] == "sample"
                   for f in site["cond_indep_stack"] if f.vectorized] + [0])
    return out, nesting


class Centering(torch.distributions.Transform):
    """eta -> theta (event_dim 1): the packed flow output to the packed latent, with each
    hierarchical Normal site re-centered by its learned lambda (module docstring).

    Built per call, like AutoFlow's other light transforms; the model runs once per direction
    (``_call``/``_inverse``), and the log-det of that run is kept with the pair of tensors it
    belongs to (``log_abs_det_jacobian`` recomputes it for any other pair).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = 1  # triangular (in the model's order) with diagonal s^(1 - lambda) > 0

    def __init__(self, model: Callable, args: tuple, kwargs: dict, slots: dict[str, SiteSlot],
                 supports: dict[str, Any], lam: torch.Tensor, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.model, self.args, self.kwargs = model, args, kwargs
        self.slots, self.supports, self.lam = slots, supports, lam
        self._memo: tuple | None = None

    def _run(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-1]
        n = math.prod(batch)
        flat = x.reshape(n, x.shape[-1])
        pieces: dict[str, torch.Tensor] = {}
        ladj = flat.new_zeros(n)
        tiny = torch.finfo(x.dtype).tiny

        def visit(name: str, fn: Any) -> torch.Tensor:
            nonlocal ladj
            slot = self.slots[name]
            shape = (n,) + (1,) * slot.pad + slot.shape
            u = flat[:, slot.pos:slot.pos + slot.size]
            if slot.centering is None:  # (a masked site, pinned or not, is never re-centered)
                pieces[name] = u
                if slot.pinned is not None:
                    u = fill(u, *slot.pinned)
                return biject_to(self.supports[slot.name])(u.reshape(shape))
            u = u.reshape(shape)
            normal = _normal_of(fn)
            m = normal.loc.expand(shape)
            log_s = normal.scale.clamp(min=tiny).log().expand(shape)  # no -inf from underflow
            lam = self.lam[slot.centering].reshape(slot.shape)
            if inverse:  # u is theta
                out = lam * m + (u - m) * torch.exp(-(1 - lam) * log_s)
                value = u
            else:  # u is eta
                out = m + torch.exp((1 - lam) * log_s) * (u - lam * m)
                value = out
            ladj = ladj + ((1 - lam) * log_s).reshape(n, -1).sum(-1)
            pieces[name] = out.reshape(n, slot.size)
            return value

        run_prior(self.model, self.args, self.kwargs, list(self.slots), visit)
        if len(pieces) != len(self.slots):
            missing = sorted(set(self.slots) - set(pieces))
            raise RuntimeError(f"AutoFlow(centering='learn'): the model skipped the latent "
                               f"site(s) {missing} of its first run; a model whose latent "
                               "sites change from run to run needs centering='model'")
        y = torch.cat([pieces[name] for name in self.slots], -1).reshape(x.shape)
        return y, ladj.reshape(batch)

    def _call(self, x):
        y, ladj = self._run(x, inverse=False)
        self._memo = (x, y, ladj)
        return y

    def _inverse(self, y):
        x, ladj = self._run(y, inverse=True)
        self._memo = (x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x, y):
        memo = self._memo
        if memo is not None and memo[0] is x and memo[1] is y:
            return memo[2]
        return self._run(x, inverse=False)[1]


@dataclass
class CenteringLayout:
    """What the set-up finds for a learned centering: where each latent site sits in the packed
    vector (``slots``), each site's support, every re-centered element's starting lambda
    (packed) and the initial location in the flow's (eta) coordinates."""

    slots: dict[str, SiteSlot]
    supports: dict[str, Any]
    lam: torch.Tensor
    eta: torch.Tensor


def site_slots(trace: Any, shapes: dict, pins: Any, hierarchical: list[str], nesting: int
               ) -> dict[str, SiteSlot]:
    """Each latent site's :class:`SiteSlot`, in the packed order (``shapes``: the guide's
    unconstrained shapes; ``pins``: its pinned coordinates, or None)."""
    slots, pos, count = {}, 0, 0
    for name, site in trace.iter_stochastic_nodes():
        shape = tuple(shapes[name])
        pinned = None if pins is None else pins.site(name)
        size = math.prod(shape) if pinned is None else len(pinned[0])
        event_dim = site["fn"].event_dim + len(shape) - site["value"].dim()
        centering = None
        if name in hierarchical:
            centering = slice(count, count + size)
            count += size
        slots[name] = SiteSlot(name, pos, size, shape, nesting - (len(shape) - event_dim),
                               centering, pinned)
        pos += size
    return slots


def find_centering(guide: Any, model: Callable, args: tuple, kwargs: dict,
                   init_loc: torch.Tensor, notes: list[str]) -> CenteringLayout | None:
    """The layout of a learned centering for an ``AutoContinuous`` ``guide`` just after its
    prototype run (its ``prototype_trace``, ``_unconstrained_shapes``, ``pins`` and ``model``,
    the one its set-up runs), with ``model`` the user's model (the :class:`Centering` layer
    runs it). None where the guide keeps the model's parametrization: no hierarchical site,
    a model that does not broadcast over a batch, or a site the centering cannot handle (the
    last two with a warning)."""
    try:
        return _layout(guide, model, args, kwargs, init_loc, notes)
    except Exception as error:  # noqa: BLE001 - any site the centering cannot handle
        first = next(iter(str(error).splitlines()), "")
        warnings.warn("AutoFlow(centering='learn') could not set up the centering of "
                      f"this model's hierarchical sites ({type(error).__name__}: "
                      f"{first}); the guide keeps the model's parametrization "
                      "(centering='model').", UserWarning, stacklevel=5)
        return None


def _layout(guide: Any, model: Callable, args: tuple, kwargs: dict, init_loc: torch.Tensor,
            notes: list[str]) -> CenteringLayout | None:
    """:func:`find_centering` without its guard: find the hierarchical Normal sites, lay out
    the packed vector for the prior runs, start lambda from the curvature at the initial
    values (:func:`initial_centering`) and map the initial location to eta."""
    trace = guide.prototype_trace
    hierarchical = hierarchical_normal_sites(guide.model, args, kwargs, trace, notes=notes)
    if not hierarchical:  # nothing to re-center: the guide is AutoFlow(centering="model")
        return None
    start, nesting = initial_centering(guide.model, args, kwargs, trace, hierarchical)
    slots = site_slots(trace, guide._unconstrained_shapes, guide.pins, hierarchical, nesting)
    supports = {name: site["fn"].support for name, site in trace.iter_stochastic_nodes()}
    lam = torch.cat([start[name].reshape(-1) for name in slots if name in start])
    lam = lam.to(init_loc)
    probe = Centering(model, args, kwargs, slots, supports, lam)
    with torch.no_grad():
        eta = probe.inv(init_loc)
    problem = vectorization_problem(probe, eta)
    if problem is not None:
        warnings.warn("AutoFlow(centering='learn') runs the model's prior on a batch of "
                      "draws, so it needs a model that broadcasts over a leading batch "
                      f"dimension (as Pyro's vectorized particles do); this one does not "
                      f"({problem}). The guide keeps the model's parametrization "
                      "(centering='model'); declare the model's batch dimensions with "
                      "pyro.plate to use the centering.", UserWarning, stacklevel=6)
        return None
    return CenteringLayout(slots, supports, lam, eta)


class LearnedCentering(PyroModule):
    """AutoFlow's centering component (module docstring; Gorinova, Moore & Hoffman, 2020): the
    learned lambda of every re-centered element and the :class:`Centering` layer made from it
    at each guide call.

    The guide holds it as ``guide.centering`` (None with ``centering="model"`` or without
    hierarchical sites). lambda = sigmoid(CENTERING_RATE * ``logit``), packed; ``logit`` is
    created by :meth:`initialize` once the component is the guide's submodule, so that Pyro's
    param store names it after the guide (``"AutoFlow.centering.logit"``). The model is kept
    as a plain attribute (a ``PyroModule`` model must not become a submodule), and pickled with
    the guide where it pickles by reference; otherwise :meth:`attach_model` gives it back.
    """

    def __init__(self, model: Callable, layout: CenteringLayout) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)
        self.slots, self.supports = layout.slots, layout.supports

    def initialize(self, lam: torch.Tensor) -> None:
        """Create the parameter, at lambda = ``lam`` (packed, in (0, 1))."""
        self.logit = nn.Parameter(torch.logit(lam) / CENTERING_RATE)

    @property
    def lam(self) -> torch.Tensor:
        """lambda = sigmoid(CENTERING_RATE * logit), every re-centered element packed."""
        return torch.sigmoid(CENTERING_RATE * self.logit)

    def set(self, lam: torch.Tensor) -> None:
        """Set every re-centered element's lambda (packed, in (0, 1))."""
        with torch.no_grad():
            self.logit.copy_(torch.logit(torch.as_tensor(lam).to(self.logit)) / CENTERING_RATE)

    def transform(self, args: tuple, kwargs: dict, detach: bool = False,
                  logit: torch.Tensor | None = None) -> Centering:
        """The centering layer eta -> theta for the model's ``args``; ``detach``: with lambda
        cut from the autograd graph; ``logit``: at another logit (the anchor's)."""
        if self.model is None:
            raise RuntimeError("AutoFlow(centering='learn') runs the model's prior at every "
                               "call, but this guide was unpickled without its model (it "
                               "could not be pickled): call guide.attach_model(model) first")
        lam = self.lam if logit is None else torch.sigmoid(CENTERING_RATE * logit)
        return Centering(self.model, args, kwargs, self.slots, self.supports,
                         lam.detach() if detach else lam)

    def weights(self) -> dict[str, torch.Tensor]:
        """Each re-centered site's lambda (1: the model's centered form, 0: non-centered),
        shaped like the site."""
        lam = self.lam.detach()
        return {name: lam[slot.centering].reshape(slot.shape)
                for name, slot in self.slots.items() if slot.centering is not None}

    def attach_model(self, model: Callable) -> None:
        """Give the component its model back (after unpickling a guide whose model could not
        be pickled)."""
        object.__setattr__(self, "model", model)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        try:
            pickle.dumps(self.model)
        except Exception:  # noqa: BLE001 - a lambda, a closure: attach_model after unpickling
            state["model"] = None
        return state
