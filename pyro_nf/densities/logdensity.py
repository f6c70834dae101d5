"""A Pyro model's log density in the packed unconstrained coordinates of its latent sites.

``LogDensity(model, *args)(theta)`` is log p(x, T(theta)) + log|det J_T(theta)|, with T the
``biject_to`` maps of every latent site packed in the order of Pyro's ``AutoContinuous`` (the
same packing as :class:`~pyro_nf.AutoFlow`, so a point or a Gaussian found here can seed that
guide). ``theta`` may carry batch dimensions: the model then runs once inside a plate over the
draws, or, for a model that does not broadcast over one, once per draw.

A model that subsamples a plate (a minibatch per call) is read over all of that plate's data,
in chunks (:mod:`pyro_nf.densities.full_data`): the density is exact, the same at every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.poutine.util import site_is_subsample

from pyro_nf.densities.full_data import Chunks, plate_indices, subsampled_plate
from pyro_nf.densities.initialization import init_to_median_or_uniform
from pyro_nf.densities.pinning import PinnedPacking

_PLATE = "_pyro_nf_log_density_draws"


class _PointGuide(PinnedPacking, AutoContinuous):
    """An AutoContinuous guide that puts all its mass on ``self.point`` (its Delta sites carry
    the log-Jacobians of the constraining maps). Coordinates without density are pinned as in
    :class:`~pyro_nf.AutoFlow` (:mod:`pyro_nf.densities.pinning`), so the two pack alike."""

    point: torch.Tensor
    _quiet_pins = True  # the guide that uses this density says it once

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.Delta:
        return dist.Delta(self.point, event_dim=1)


def per_draw(lp: torch.Tensor, n: int, pdim: int, exact: bool = False) -> torch.Tensor:
    """Sum everything but the draw dimension (dim ``-pdim``) of a log-prob tensor; a site
    outside the draws' plate counts fully for every draw. ``exact``: the sums in float64
    (:func:`sum64`)."""
    while lp.dim() < pdim:
        lp = lp.unsqueeze(0)
    lp = lp.movedim(-pdim, 0)
    rows = lp.expand((n,) + lp.shape[1:]).reshape(n, -1)
    return sum64(rows) if exact else rows.sum(1)


#: Terms summed in the model's own dtype, block by block, before the float64 total.
SUM_BLOCK = 256


def sum64(t: torch.Tensor) -> torch.Tensor:
    """The sums over the last dimension of ``t``, in float64, without casting every term.

    A float32 model's log likelihood of 10^6 rows is ~10^5-10^6 in size, where float32 resolves
    only ~0.03-0.06 nats: noise in every importance weight. Casting all terms to float64 first
    costs more than the model (a memory-bound pass over draws x rows). Blocks of
    ``SUM_BLOCK`` terms summed in float32 are each ~10^2 in size, resolved to ~10^-5, and
    only the block sums are added in float64: within 10^-3 nats of the float32 terms' exact
    sum at 10^6 rows (a float32 sum: 0.03), at the cost of a float32 sum."""
    if t.dtype == torch.float64 or t.shape[-1] < 2 * SUM_BLOCK:
        return t.to(torch.float64).sum(-1)
    whole = t.shape[-1] // SUM_BLOCK * SUM_BLOCK
    blocks = t[..., :whole].reshape(t.shape[:-1] + (-1, SUM_BLOCK)).sum(-1)
    return blocks.to(torch.float64).sum(-1) + t[..., whole:].to(torch.float64).sum(-1)


class LogDensity:
    """The log density of ``model(*args, **kwargs)`` over the packed unconstrained latent.

    Attributes:
        dim: D, the packed size.
        init: the initial point from ``init_loc_fn`` (prior medians, or Stan's uniform(-2, 2)
            for priors that cannot be sampled).
        dtype: the model's floating dtype (inputs are cast to it, results cast back).
        evaluations: how many points have been evaluated so far.
    """

    def __init__(self, model: Callable, *args: Any, init_loc_fn: Callable =
                 init_to_median_or_uniform, **kwargs: Any) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs
        self.guide = _PointGuide(model, init_loc_fn=init_loc_fn)
        with torch.no_grad():
            self.guide._setup_prototype(*args, **kwargs)
        self.init = self.guide._init_loc().detach()
        self.dim = int(self.init.shape[-1])
        self.dtype = self.init.dtype
        self.sites = {name: site for name, site in
                      self.guide.prototype_trace.iter_stochastic_nodes()}
        self.evaluations = 0
        self._vectorized: bool | None = None
        # the model at its initial values, observed sites included (the prototype trace hides
        # them, and their plates may reach further left than any latent site's)
        model_trace, _ = self._run(self.init)
        plate = subsampled_plate(model_trace)
        #: the subsampled plate read in chunks (None: the model reads all its data at once)
        self.chunks = None if plate is None else Chunks(*plate, device=self.init.device)
        self._pdim = 1 + max((-f.dim for site in model_trace.nodes.values()
                              if site["type"] == "sample"
                              for f in site["cond_indep_stack"] if f.vectorized), default=0)

    @property
    def batched(self) -> bool:
        """Whether a batch of points runs as one batched model run (else one run per point);
        decided at the first batch, by a batch of two at the initial point if need be."""
        if self._vectorized is None:
            with torch.no_grad():
                self(self.init.expand(2, self.dim))
        return bool(self._vectorized)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """log density at ``theta`` of shape (..., D); differentiable in theta."""
        if theta.shape[-1] != self.dim:
            raise ValueError(f"LogDensity: theta has {theta.shape[-1]} coordinates, the model's "
                             f"latent sites pack into {self.dim}")
        out_dtype = theta.dtype
        batch = theta.shape[:-1]
        flat = theta.reshape(-1, self.dim).to(dtype=self.dtype, device=self.init.device)
        n = flat.shape[0]
        self.evaluations += n
        if not batch:
            return self._one(flat[0]).to(out_dtype)
        if self._vectorized is not False and n > 1:
            try:
                values = self._batched(flat)
                if self._vectorized is None:  # check one draw against a one-draw run, once
                    one = self._one(flat[0].detach())
                    if not torch.allclose(values[0].detach(), one, rtol=1e-4, atol=1e-3):
                        raise ValueError("batched and single log densities differ")
                    self._vectorized = True
                return values.reshape(batch).to(out_dtype)
            except Exception:  # noqa: BLE001 - a model that does not broadcast: loop
                self._vectorized = False
        values = torch.stack([self._one(row) for row in flat])
        return values.reshape(batch).to(out_dtype)

    def _run(self, point: torch.Tensor, indices: dict | None = None) -> tuple[Any, Any]:
        self.guide.point = point
        # without validation an invalid parameter (a scale of 0 where an optimizer overshot)
        # gives a non-finite density, which the callers treat as such, instead of an error
        with poutine.block(), pyro.validation_enabled(False), plate_indices(indices or {}):
            guide_trace = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                *self.args, **self.kwargs)
        return model_trace, guide_trace

    def _sum(self, point: torch.Tensor, draws: int, reduce: Callable) -> torch.Tensor:
        """log p(x, T(theta)) + log|J_T| at ``point`` (``draws`` of them, batched when more
        than one), each site's log density summed by ``reduce``: over all the data, chunk by
        chunk, for a subsampled plate."""
        # summed in float64 (sum64): float32 would put noise in every importance weight
        total = point.new_zeros(draws if draws > 1 else (), dtype=torch.float64)
        chunks = [(0, None)] if self.chunks is None else self.chunks(draws)
        for k, chunk in chunks:
            indices = None if chunk is None else {self.chunks.name: chunk}
            model_trace, guide_trace = self._run(point, indices)
            traces = ((model_trace, 1.0), (guide_trace, -1.0)) if k == 0 else \
                ((model_trace, 1.0),)
            for trace, sign in traces:
                for site in trace.nodes.values():
                    if site["type"] != "sample" or site_is_subsample(site):
                        continue
                    weight = sign
                    if chunk is not None and trace is model_trace:
                        if self.chunks.inside(site):
                            weight *= self.chunks.unscale(chunk)
                        elif k > 0:
                            continue  # outside the plate: counted once
                    total = total + weight * reduce(site_log_prob(site))
        return total

    def plate_log_density(self, point: torch.Tensor, indices: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """The subsampled plate's sites' log density at one packed ``point`` (D,): over all
        the plate's rows (``indices`` None, chunk by chunk), or over the rows ``indices`` as
        Pyro scales a minibatch (by size / len(indices))."""
        if self.chunks is None:
            raise ValueError("LogDensity.plate_log_density: the model subsamples no plate")
        total = point.new_zeros((), dtype=torch.float64)
        chunks = self.chunks(1) if indices is None else [(0, indices)]
        for _, chunk in chunks:
            model_trace, _ = self._run(point.to(self.dtype), {self.chunks.name: chunk})
            weight = self.chunks.unscale(chunk) if indices is None else 1.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site) \
                        and self.chunks.inside(site):
                    total = total + weight * sum64(site_log_prob(site).reshape(-1))
        return total

    def _one(self, point: torch.Tensor) -> torch.Tensor:
        return self._sum(point, 1, lambda lp: sum64(lp.reshape(-1)))

    def _batched(self, flat: torch.Tensor) -> torch.Tensor:
        n, pdim = flat.shape[0], self._pdim
        point = flat.reshape((n,) + (1,) * (pdim - 1) + (self.dim,))
        with pyro.plate(_PLATE, n, dim=-pdim):
            return self._sum(point, n, lambda lp: per_draw(lp, n, pdim, exact=True))

    def unpack(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Constrained site values from packed points of shape (..., D)."""
        out, pos = {}, 0
        batch = theta.shape[:-1]
        theta = self.guide.full_latent(theta)
        for name, site in self.sites.items():
            shape = self.guide._unconstrained_shapes[name]
            size = math.prod(shape)
            value = theta[..., pos:pos + size].reshape(batch + shape).to(self.dtype)
            out[name] = torch.distributions.biject_to(site["fn"].support)(value)
            pos += size
        return out


    def pack(self, values: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        """The inverse of :meth:`unpack`: constrained values, each of shape (batch, *site
        shape), as packed unconstrained points of shape (batch, D)."""
        parts = []
        for name, site in self.sites.items():
            if name not in values:
                raise ValueError(f"LogDensity.pack: no values for the latent site '{name}'")
            value = torch.as_tensor(values[name], dtype=self.dtype)
            shape = self.guide._unconstrained_shapes[name]
            free = torch.distributions.biject_to(site["fn"].support).inv(value)
            parts.append(free.reshape(batch, math.prod(shape)))
        full = torch.cat(parts, -1)
        return full if self.guide.pins is None else self.guide.pins.reduce(full)


def site_log_prob(site: dict) -> torch.Tensor:
    """A site's log density as Pyro's ELBOs count it: masked and scaled (subsampling)."""
    lp = site["fn"].log_prob(site["value"])
    mask = site.get("mask")
    if mask is not None:
        lp = lp * mask
    return lp * site.get("scale", 1.0)
