"""Conditional planar flow: the planar map of Rezende & Mohamed (2015, Sec. 4.1, App. A.1) with
its parameters produced per data point by a hypernetwork of the context h (their Sec. 4:
amortized inference, the flow parameters output by the inference network):

    f(z; h) = z + u_hat(h) tanh(w(h)^T z + b(h)),
    (u(h), w(h), b(h)) = HyperNet(h),
    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2,   m(x) = -1 + softplus(x),

so that w(h)^T u_hat(h) >= -1 and f(. ; h) is invertible for *every* context. The log-det is
log|1 + h'(a) w^T u_hat| with a = w^T z + b, and the inverse a bracketed scalar Newton solve
with implicit gradients, exactly as for :class:`~pyro_nf.transforms.planar.Planar` (the same
functions, batched over data points).
"""

from __future__ import annotations

import torch

from pyro_nf.transforms.conditional.base import HyperResidual
from pyro_nf.transforms.planar import (
    planar_constrain,
    planar_forward,
    planar_init,
    planar_inverse,
)
from pyro_nf.transforms.registry import register_conditional

Tensor = torch.Tensor

ParamsT = tuple[Tensor, Tensor, Tensor, Tensor]


@register_conditional("planar", paper="Rezende & Mohamed (2015), Variational Inference with "
                      "Normalizing Flows: planar flow, parameters amortized by a network of the "
                      "context")
class ConditionalPlanar(HyperResidual):
    """Planar flow whose u, w, b are outputs of an MLP of the context (one set per data point).

    Initialisation: the unconditional :class:`~pyro_nf.transforms.planar.Planar`'s identity map
    for every context. Arguments: :class:`HyperResidual`'s.
    """

    def initial(self) -> dict[str, Tensor]:
        u, w, b = planar_init(self.dim)
        return {"u": u, "w": w, "b": b}

    def flow_parameters(self, context: Tensor) -> ParamsT:
        """(u_hat, w, b, q) per data point, q = 1 + w^T u_hat = softplus(w^T u) >= 0."""
        p = self.hyper(context)
        u_hat, q = planar_constrain(p["u"], p["w"])
        return u_hat, p["w"], p["b"], q

    def forward_and_log_det(self, x: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return planar_forward(x, *params)

    def inverse_and_log_det(self, y: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return planar_inverse(y, *params, layer=self._name())
