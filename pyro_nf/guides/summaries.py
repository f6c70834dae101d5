"""Summaries of a guide over the packed latent z: joint draws of every site, Monte Carlo
quantiles and medians. Shared by :class:`~pyro_nf.guides.AutoFlow` and the mixture of flows;
a class using it has ``get_posterior``, ``prototype_trace``, ``_unconstrained_shapes``,
``loc`` (for the device and dtype) and ``num_quantile_samples``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import biject_to


class SummariesMixin:
    """``sample_latent_batch``, ``sample_posterior``, ``unpack_batch``, ``quantiles`` and
    ``median`` for a guide over the packed latent."""

    def sample_latent_batch(self, num_samples: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``num_samples`` draws of the packed unconstrained latent z (no gradient)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        with torch.no_grad():
            return self.get_posterior(*args, **kwargs).sample((num_samples,))

    def sample_posterior(self, num_samples: int, *args: Any, **kwargs: Any
                         ) -> dict[str, torch.Tensor]:
        """``num_samples`` joint draws of every latent site, in constrained space, stacked on a
        leading sample dimension (one vectorized pass; the model runs only for the centering
        layer, up to its last latent site)."""
        latent = self.sample_latent_batch(num_samples, *args, **kwargs)
        return self.unpack_batch(latent)

    def unpack_batch(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a batch of packed unconstrained latents ``(..., D)`` into constrained site
        values of shape ``batch + site shape``."""
        out, pos = {}, 0
        batch = latent.shape[:-1]
        latent = self.full_latent(latent)  # pinned coordinates back in place
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            value = latent[..., pos:pos + size].reshape(batch + shape)
            out[name] = biject_to(site["fn"].support)(value)
            pos += size
        return out

    @torch.no_grad()
    def quantiles(self, quantiles, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior quantiles of each latent site, estimated from ``num_quantile_samples``
        draws made with a fixed seed (so repeated calls agree). Shape ``(len(q),) + site``."""
        devices = [self.loc.device] if self.loc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            samples = self.sample_posterior(self.num_quantile_samples, *args, **kwargs)
        ref = self.loc
        qs = torch.as_tensor(quantiles, dtype=ref.dtype, device=ref.device)
        if qs.dim() != 1 or not bool(((qs >= 0) & (qs <= 1)).all()):
            raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles}")
        return {name: torch.quantile(value, qs, dim=0) for name, value in samples.items()}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of each latent site (Monte Carlo, see :meth:`quantiles`)."""
        return {name: value[0] for name, value in self.quantiles([0.5], *args, **kwargs).items()}

