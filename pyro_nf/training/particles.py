"""Does a model broadcast over Pyro's vectorized particles?

Pyro's ELBOs with ``vectorize_particles=True`` run the model once inside an extra plate on the
left of every batch dimension. A model written for one draw (one that indexes a latent vector,
``rate[group]``, or builds a shape from a latent's ``len``) either raises or, worse, mixes the
particles silently when the sizes happen to match. :func:`particle_problem` runs the model both
ways on the same draws and compares the log joint of every particle, so that :func:`fit` can
fall back to sequential particles instead of failing or fitting the wrong posterior.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_nf.densities.logdensity import per_draw, site_log_prob

_PLATE = "num_particles_vectorized"  # the name Pyro's ELBOs give their particle plate


def _site_dims(trace: Any) -> set[int]:
    return {d for site in trace.nodes.values() if site["type"] == "sample"
            for d in site["value"].shape}


def _log_joint(trace: Any, n: int | None = None, pdim: int = 0) -> torch.Tensor:
    """Sum of every sample site's log density (masked and scaled as the ELBOs count it); per
    draw along dim ``-pdim`` when ``n`` is given."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            lp = site_log_prob(site)
            total = total + (lp.sum() if n is None else per_draw(lp, n, pdim))
    return torch.as_tensor(total)


def particle_problem(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                     max_plate_nesting: int) -> str | None:
    """Run ``model`` on n guide draws inside Pyro's vectorized particle plate and on each draw
    alone; return what went wrong (an error, or log joints that differ), or None when the
    model broadcasts. n is the smallest number of particles equal to no dimension of any site,
    so that a missing plate cannot broadcast by coincidence."""
    with torch.no_grad(), poutine.block():
        single_guide = poutine.trace(guide).get_trace(*args, **kwargs)
        single = poutine.trace(poutine.replay(model, trace=single_guide)).get_trace(
            *args, **kwargs)
        dims = _site_dims(single) | _site_dims(single_guide)
        n = next(k for k in range(2, len(dims) + 4) if k not in dims)
        dim = -max_plate_nesting - 1
        try:
            with pyro.plate(_PLATE, n, dim=dim):
                guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
                model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                    *args, **kwargs)
            batched = _log_joint(model_tr, n, -dim)
        except Exception as error:  # noqa: BLE001 - reported, and fit falls back
            return f"{type(error).__name__}: {str(error).splitlines()[0]}"
        rows = []
        for i in range(n):
            try:
                tr = poutine.trace(poutine.replay(model, trace=_particle(model_tr, single, i,
                                                                         dim))).get_trace(
                    *args, **kwargs)
            except Exception as error:  # noqa: BLE001
                return f"{type(error).__name__}: {str(error).splitlines()[0]}"
            rows.append(_log_joint(tr))
    if batched.shape != (n,):
        return f"the log joint of {n} particles has shape {tuple(batched.shape)}, not ({n},)"
    if not torch.allclose(batched, torch.stack(rows).to(batched), rtol=1e-4, atol=1e-3):
        return f"{n} particles together give other log densities than one at a time"
    return None


def _particle(batched: Any, single: Any, i: int, dim: int) -> Any:
    """A trace to replay: particle ``i`` of every latent site of ``batched`` (its particle
    axis removed and the value shaped as in the one-draw trace ``single``); plate subsamples
    as they were, so both runs see the same data."""
    out = poutine.Trace()
    for name, site in batched.nodes.items():
        if site["type"] != "sample" or name not in single.nodes:
            continue
        value = site["value"]
        if not site["is_observed"] and not site_is_subsample(site):
            axis = value.dim() - site["fn"].event_dim + dim  # the particle axis
            if axis >= 0:
                value = value.select(axis, i)
            value = value.reshape(single.nodes[name]["value"].shape)
        out.add_node(name, **{**site, "value": value})
    return out
