"""A control variate that takes the minibatch noise out of a subsampled ELBO's gradient.

With a plate of N rows subsampled B at a time, the ELBO's likelihood term is the minibatch
estimate (N / B) sum_{i in b} l_i(z). Its noise is what makes stochastic VI on a large data set
slow: in the posterior's own scale (sd ~ 1 / sqrt(N)) the gradient's noise grows like
sqrt(N / B), so the steps must shrink as N grows. The fix of Bardenet, Doucet & Holmes (2017,
"On Markov chain Monte Carlo methods for tall data") and Baker et al. (2019, "Control variates
for stochastic gradient MCMC") is a first-order Taylor expansion of every l_i about one point
z0 near the posterior's center: the estimate

    (N / B) sum_{i in b} [l_i(z) - l_i(z0) - g_i(z0) . (z - z0)]  +  L(z0) + G(z0) . (z - z0)

(L, G: the full data's sum and gradient at z0, computed once) has the same expectation over
minibatches, and its noise is that of the expansion's remainder, of order |z - z0|^2 per row:
in the posterior's scale it no longer grows with N. Per step it costs one model run at z0 on
the step's minibatch (and its gradient); L and G cost one pass over the data, in chunks
(:mod:`pyro_nf.densities.full_data`).

``fit`` without ``num_steps`` attaches it to its ELBO for a guide over the packed latent
(``AutoContinuous``: AutoFlow) of a model with one subsampled plate, z0 being the mean of the
guide's draws where the optimization starts (AutoFlow: its Gaussian anchor).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_nf.densities.logdensity import LogDensity


class _Indices(Messenger):
    """Keeps the indices a run of the model draws in the plate ``name`` (Pyro's ELBOs prune
    the plate's subsample site from the traces they return)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.value = name, None

    def _postprocess_message(self, msg: Any) -> None:
        if msg["type"] == "sample" and msg["name"] == self.name \
                and isinstance(msg["fn"], _Subsample):
            self.value = msg["value"]


class ControlVariate:
    """h(z, b) = L(z0) + G . (z - z0) - (N / B) sum_{i in b} [l_i(z0) + g_i(z0) . (z - z0)]:
    zero in expectation over the minibatch b, added to a subsampled ELBO (module docstring).

    Args:
        log_density: the model's :class:`~pyro_nf.densities.logdensity.LogDensity` (with its
            subsampled plate, ``log_density.chunks``).
        center: z0, a packed unconstrained point (D,).
        latent: the name of the guide's packed latent site (``_<name>_latent``).
    """

    def __init__(self, log_density: LogDensity, center: torch.Tensor, latent: str) -> None:
        if log_density.chunks is None:
            raise ValueError("ControlVariate: the model subsamples no plate")
        self.log_density, self.latent = log_density, latent
        self.center = center.detach().to(log_density.dtype)
        self.full, self.full_grad = self._value_and_grad(None)

    def _value_and_grad(self, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        point = self.center.clone().requires_grad_(True)
        with torch.enable_grad():
            value = self.log_density.plate_log_density(point, indices)
            grad, = torch.autograd.grad(value, point)
        return value.detach(), grad.detach()

    def __call__(self, model_trace: Any, guide_trace: Any) -> torch.Tensor | None:
        """h summed over the particles of one (possibly vectorized) trace pair, or None where
        the traces lack the packed latent or the plate's subsample."""
        site = guide_trace.nodes.get(self.latent)
        indices = getattr(model_trace, "pyro_nf_indices", None)
        if site is None or indices is None or site["type"] != "sample":
            return None
        value, grad = self._value_and_grad(indices)
        step = site["value"] - self.center.to(site["value"].dtype)
        slope = (self.full_grad - grad).to(step.dtype)
        offset = (self.full - value).to(step.dtype)
        return ((step * slope).sum(-1) + offset).sum()

    def attach(self, elbo: Trace_ELBO) -> Trace_ELBO:
        """``elbo`` (a ``Trace_ELBO``, STL or not) with h added to every particle's ELBO:
        the same value in expectation, far less minibatch noise in its gradient."""
        original, get_trace = elbo._differentiable_loss_particle, elbo._get_trace

        def traced(model: Any, guide: Any, args: tuple, kwargs: dict) -> Any:
            indices = _Indices(self.log_density.chunks.name)
            model_trace, guide_trace = get_trace(indices(model), guide, args, kwargs)
            model_trace.pyro_nf_indices = indices.value
            return model_trace, guide_trace

        def with_control_variate(model_trace: Any, guide_trace: Any) -> Any:
            loss, surrogate = original(model_trace, guide_trace)
            h = self(model_trace, guide_trace)
            if h is None:
                return loss, surrogate
            return loss - float(h.detach()), surrogate - h

        elbo._differentiable_loss_particle = with_control_variate
        elbo._get_trace = traced
        elbo.pyro_nf_control_variate = self
        return elbo
