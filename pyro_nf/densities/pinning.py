"""Latent coordinates without density: found at set-up, pinned, left out of the packed vector.

Pyro's ``obs_mask`` splits a partly observed site ``y`` into an observed ``y_observed`` and a
latent ``y_unobserved`` of the data's full shape. The latent's entries at *observed* positions
are masked out of every log-probability (its mask is ``~obs_mask``) and replaced by the data
downstream (``torch.where``), so they carry no density at all: flat, improper directions of
the packed latent vector of :class:`~pyro.infer.autoguide.AutoContinuous`. A flow fitted by
reverse KL drifts along them until something overflows (whether it does is decided by float
rounding, so by the CPU's kernels), and the Gaussian anchor's Hessian is singular there.

A coordinate is *pinned* when

1. its site's mask (``obs_mask``, ``poutine.mask``, ``Distribution.mask``) zeroes its
   element, and
2. the model's log joint does not depend on it: its gradient is exactly zero at the
   prototype's values and again at values moved along the masked coordinates.

Condition 2 keeps a masked value that another site reads (a latent whose own prior is masked
but that enters a likelihood) in the vector: it has density through that site. A pinned
coordinate keeps the prototype's value, and the guide's posterior is over the coordinates that
have density, a proper one. :class:`PinnedPacking` does this for any ``AutoContinuous``
guide: ``latent_dim`` counts the free coordinates, and ``_unpack_latent`` puts the pinned
values back before the sites are unpacked, so the model sees every site at its full shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from torch.distributions import biject_to

logger = logging.getLogger("pyro_nf")


class Pins:
    """Which coordinates of a packed latent vector are free, and the values of the others.

    Attributes:
        values: the full packed vector (D_full,) holding the pinned coordinates' values
            (zeros at the free ones).
        free: a boolean mask (D_full,) of the free coordinates.
        dim: how many are free (the guide's ``latent_dim``).
        counts: how many coordinates of each site are pinned (sites with any).
        sizes: each latent site's full packed size, in the packing's order.
    """

    def __init__(self, values: torch.Tensor, free: torch.Tensor, sizes: dict[str, int]) -> None:
        self.free = free
        self.values = torch.where(free, torch.zeros_like(values), values)
        self.index = free.nonzero().reshape(-1)
        self.dim = int(free.sum())
        self.sizes = sizes
        bounds = torch.tensor([0, *sizes.values()]).cumsum(0).tolist()
        #: each site's slice of the full packed vector
        self.slices = {name: slice(a, b) for name, a, b in zip(sizes, bounds, bounds[1:])}
        self.counts: dict[str, int] = {}
        for name, part in self.slices.items():
            pinned = part.stop - part.start - int(free[part].sum())
            if pinned:
                self.counts[name] = pinned

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """Free coordinates ``(..., dim)`` to the full packed vector ``(..., D_full)``
        (differentiable in ``z``)."""
        return fill(z, self.index, self.values)

    def reduce(self, full: torch.Tensor) -> torch.Tensor:
        """The free coordinates of full packed vectors ``(..., D_full)``."""
        return full[..., self.index.to(full.device)]

    def site(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(index, values)`` of one site's own coordinates: the positions of its free ones
        and the values of all (zero where free), for :func:`fill`; None if none is pinned."""
        if name not in self.counts:
            return None
        part = self.slices[name]
        return self.free[part].nonzero().reshape(-1), self.values[part]

    def describe(self) -> str:
        """One line: which sites have pinned coordinates, and how many."""
        parts = ", ".join(f"{n} of '{name}'" for name, n in self.counts.items())
        return (f"{parts} latent coordinate(s) carry no density (masked out, e.g. the "
                "observed entries of an obs_mask site, and read by no other site): they are "
                "pinned and left out of the guide's posterior")


def fill(z: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (zero at ``index``) with ``z``'s last dimension put at ``index``: free
    coordinates ``(..., len(index))`` to ``(..., len(values))``, differentiable in ``z``."""
    values = values.to(dtype=z.dtype, device=z.device)
    out = z.new_zeros(z.shape[:-1] + values.shape)
    return out.index_copy(-1, index.to(z.device), z) + values


def _mask_of(site: dict) -> torch.Tensor | None:
    """The site's element mask over its batch shape (False: no density), or None."""
    masks = [site.get("mask")]
    fn = site["fn"]
    if isinstance(fn, MaskedDistribution):
        masks.append(fn._mask)
    batch = site["value"].shape[:site["value"].dim() - fn.event_dim]
    out = None
    for mask in masks:
        if mask is None or mask is True:
            continue
        mask = torch.as_tensor(mask, dtype=torch.bool, device=site["value"].device)
        try:
            mask = torch.broadcast_to(mask, batch)
        except RuntimeError:
            return None  # a mask Pyro broadcasts in a way we do not follow: leave it be
        out = mask if out is None else out & mask
    return None if out is None or bool(out.all()) else out


def _masked_coordinates(trace: Any, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """For each latent site with masked elements, a boolean tensor of its unconstrained shape:
    True at the coordinates whose element is masked out."""
    out = {}
    for name, site in trace.iter_stochastic_nodes():
        mask = _mask_of(site)
        if mask is None:
            continue
        shape = tuple(shapes[name])
        if len(shape) < mask.dim() or tuple(shape[:mask.dim()]) != tuple(mask.shape):
            continue  # the unconstrained value does not keep the batch shape in front
        out[name] = _over_events(~mask, shape)
    return out


def _over_events(batch_mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask over a site's batch shape spread over the event dimensions of its
    unconstrained ``shape`` (every coordinate of an element takes the element's value)."""
    extra = len(shape) - batch_mask.dim()
    return batch_mask.reshape(batch_mask.shape + (1,) * extra).expand(tuple(shape))


def _gradients(model: Callable, args: tuple, kwargs: dict, values: dict[str, torch.Tensor],
               names: list[str]) -> dict[str, torch.Tensor] | None:
    """d log p(x, values) / d values[name] for each of ``names`` (constrained values; masks and
    scales as Pyro's ELBOs count them), or None where the joint is not finite."""
    leaves = {name: value.detach().clone().requires_grad_(name in names)
              for name, value in values.items()}
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), poutine.block(), \
            pyro.validation_enabled(False):
        torch.manual_seed(0)
        trace = poutine.trace(poutine.condition(model, data=leaves)).get_trace(*args, **kwargs)
        total = trace.log_prob_sum()
        if not bool(torch.isfinite(total)):
            return None
        grads = torch.autograd.grad(total, [leaves[name] for name in names], allow_unused=True)
    return {name: torch.zeros_like(leaves[name]) if g is None else g
            for name, g in zip(names, grads)}


def find_pins(model: Callable, trace: Any, shapes: dict[str, torch.Size], args: tuple,
              kwargs: dict) -> Pins | None:
    """The coordinates of the packed latent (in ``AutoContinuous``'s order, with the
    unconstrained ``shapes``) that have no density (module docstring), or None if there are
    none. ``trace`` is the guide's prototype trace (its latent sites at their initial
    values)."""
    candidates = _masked_coordinates(trace, shapes)
    if not candidates:
        return None
    sites = dict(trace.iter_stochastic_nodes())
    values = {name: site["value"].detach() for name, site in sites.items()}
    names = list(candidates)
    flat = {name: torch.ones_like(candidates[name]) for name in names}
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for moved in (False, True):
        point = dict(values)
        if moved:  # move the masked coordinates themselves: zero there is then no accident
            for name in names:
                transform = biject_to(sites[name]["fn"].support)
                free = transform.inv(values[name])
                step = torch.randn(free.shape, generator=generator).to(free)
                point[name] = transform(free + 0.5 * step * candidates[name])
        grads = _gradients(model, args, kwargs, point, names)
        if grads is None:
            continue
        checked += 1
        for name in names:
            flat[name] &= _unconstrained_zero(grads[name], shapes[name], sites[name])
    if not checked:  # the joint was not finite at either point: decide nothing
        return None
    pinned = {name: candidates[name] & flat[name] for name in names}
    if not any(bool(p.any()) for p in pinned.values()):
        return None
    full, free, sizes = [], [], {}
    for name, site in sites.items():
        unconstrained = biject_to(site["fn"].support).inv(values[name])
        full.append(unconstrained.reshape(-1))
        keep = ~pinned[name] if name in pinned else torch.ones_like(unconstrained, dtype=bool)
        free.append(keep.reshape(-1))
        sizes[name] = math.prod(shapes[name])
    return Pins(torch.cat(full), torch.cat(free), sizes)


def _unconstrained_zero(grad: torch.Tensor, shape: torch.Size, site: dict) -> torch.Tensor:
    """Where a constrained gradient is zero, as a boolean tensor of the unconstrained shape
    (an element whose event has any non-zero entry is not zero)."""
    event_dim = site["fn"].event_dim
    zero = grad == 0
    if event_dim:
        zero = zero.flatten(-event_dim).all(-1)
    return _over_events(zero, tuple(shape))


class PinnedPacking:
    """A mixin for ``AutoContinuous`` guides: coordinates without density are pinned at set-up
    and left out of the packed latent vector (module docstring). ``self.pins`` is None for a
    model without such coordinates, and nothing changes then."""

    pins: Pins | None = None

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.pins = find_pins(self.model, self.prototype_trace, self._unconstrained_shapes,
                              args, kwargs)
        if self.pins is not None:
            self.latent_dim = self.pins.dim
            if not getattr(self, "_quiet_pins", False):
                logger.warning("%s: %s", type(self).__name__, self.pins.describe())
            notes = getattr(self, "setup_notes", None)
            if notes is not None:
                notes.append(self.pins.describe())

    def _full_init_loc(self) -> torch.Tensor:
        """The initial packed vector over every coordinate, pinned ones included."""
        parts = [biject_to(site["fn"].support).inv(site["value"].detach()).reshape(-1)
                 for _, site in self.prototype_trace.iter_stochastic_nodes()]
        return torch.cat(parts)

    def _init_loc(self) -> torch.Tensor:
        full = self._full_init_loc()
        return full if self.pins is None else self.pins.reduce(full)

    def _unpack_latent(self, latent: torch.Tensor):
        if self.pins is not None:
            latent = self.pins.expand(latent)
        yield from super()._unpack_latent(latent)

    def full_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Packed latents ``(..., latent_dim)`` with the pinned coordinates put back
        ``(..., D_full)``: the layout of Pyro's ``AutoContinuous``."""
        return latent if self.pins is None else self.pins.expand(latent)
