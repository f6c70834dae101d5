"""Conditional radial flow: the radial map of Rezende & Mohamed (2015, Sec. 4.1, App. A.2) with
its parameters produced per data point by a hypernetwork of the context h (their Sec. 4):

    f(z; h) = z + beta(h) / (alpha(h) + ||z - z0(h)||) (z - z0(h)),
    alpha = softplus(a(h)) > 0,   beta = -alpha + softplus(c(h)) >= -alpha,

so f(. ; h) is invertible for every context. Log-det
(D - 1) log(1 + beta h) + log(1 + beta h + beta h' r) and the exact inverse through the radius
quadratic are those of :class:`~pyro_nf.transforms.radial.Radial` (the same functions, batched
over data points).
"""

from __future__ import annotations

import torch

from pyro_nf.transforms.conditional.base import HyperResidual
from pyro_nf.transforms.radial import radial_alpha_s, radial_forward, radial_init, radial_inverse
from pyro_nf.transforms.registry import register_conditional

Tensor = torch.Tensor

ParamsT = tuple[Tensor, Tensor, Tensor]


@register_conditional("radial", paper="Rezende & Mohamed (2015), Variational Inference with "
                      "Normalizing Flows: radial flow, parameters amortized by a network of the "
                      "context")
class ConditionalRadial(HyperResidual):
    """Radial flow whose centre z0 and raw alpha, beta are outputs of an MLP of the context.

    Initialisation: the unconditional :class:`~pyro_nf.transforms.radial.Radial`'s identity map
    (beta = 0) for every context. Arguments: :class:`HyperResidual`'s.
    """

    def initial(self) -> dict[str, Tensor]:
        z0, raw_alpha, raw_beta = radial_init(self.dim)
        return {"z0": z0, "raw_alpha": raw_alpha, "raw_beta": raw_beta}

    def flow_parameters(self, context: Tensor) -> ParamsT:
        """(z0, alpha, s) per data point, alpha > 0 and s = alpha + beta >= 0."""
        p = self.hyper(context)
        return (p["z0"], *radial_alpha_s(p["raw_alpha"], p["raw_beta"]))

    def forward_and_log_det(self, x: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return radial_forward(x, *params)

    def inverse_and_log_det(self, y: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, *params)
