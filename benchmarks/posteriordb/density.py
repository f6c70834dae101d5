"""Batched log densities of a translated posterior, in constrained and unconstrained space.

``log_joint(post, values)`` evaluates log p(theta, y) (priors, factors and likelihood) for a
batch of latent values at once by running the model inside an outer plate, so it needs no
loop over draws. ``unconstrained_log_density`` adds the log-Jacobian of
``biject_to(support)`` per latent site: the density NUTS and autoguides work with.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from .data import Posterior, is_latent


def latent_sites(post: Posterior) -> dict[str, dict]:
    """The latent sites of one (unbatched) trace of the model."""
    with pyro.validation_enabled(False):
        trace = poutine.trace(post.model).get_trace()
    return {name: site for name, site in trace.nodes.items() if is_latent(site)}


def log_joint(post: Posterior, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(values, y) for latent ``values`` with one leading batch dim B -> shape (B,)."""
    sites = latent_sites(post)
    batch = next(iter(values.values())).shape[0]
    nesting = post.max_plate_nesting
    shaped = {}
    for name, site in sites.items():
        value = values[name]
        pad = nesting - len(site["fn"].batch_shape)
        shaped[name] = value.reshape((batch,) + (1,) * pad + value.shape[1:])
    with pyro.plate("_draws", batch, dim=-(nesting + 1)):
        trace = poutine.trace(poutine.condition(post.model, data=shaped)).get_trace()
    trace.compute_log_prob()
    total = torch.zeros(batch, dtype=next(iter(values.values())).dtype)
    for site in trace.nodes.values():
        if site["type"] == "sample" and "log_prob" in site:
            lp = site["log_prob"]
            lp = lp.expand((batch,) + lp.shape[1:]) if lp.dim() else lp.expand(batch)
            total = total + lp.reshape(batch, -1).sum(-1)
    return total


def to_unconstrained(post: Posterior, values: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """``biject_to(support).inv`` of each latent site's batched values."""
    sites = latent_sites(post)
    return {k: biject_to(s["fn"].support).inv(values[k]) for k, s in sites.items()}


def unconstrained_log_density(post: Posterior, u: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(u | y) + const in unconstrained coordinates (log-Jacobians included), (B,)."""
    sites = latent_sites(post)
    batch = next(iter(u.values())).shape[0]
    values, ladj = {}, 0.0
    for name, site in sites.items():
        transform = biject_to(site["fn"].support)
        values[name] = transform(u[name])
        jac = transform.log_abs_det_jacobian(u[name], values[name])
        ladj = ladj + jac.reshape(batch, -1).sum(-1)
    return log_joint(post, values) + ladj
