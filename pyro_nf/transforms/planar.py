"""Planar flow (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
Sec. 4.1 and Appendix A.1).

    f(z) = z + u_hat h(w^T z + b),   h = tanh,

with u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 and m(a) = -1 + softplus(a), so that
w^T u_hat = m(w^T u) > -1 for any raw u, w: the map is invertible. By the matrix determinant
lemma, log|det J| = log|1 + h'(w^T z + b) u_hat^T w|.

The inverse is numerical: with a = w^T z + b, w^T y + b = a + (w^T u_hat) tanh(a) =: g(a) is
increasing in a, with its root inside [c - |w^T u_hat|, c + |w^T u_hat|] for c = w^T y + b; a
bracketed Newton solve gives a, then z = y - u_hat tanh(a). Gradients through the inverse are
the implicit ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import Flow, implicit_newton_step, softplus_inverse, solve_monotone
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


@register("planar", paper="Rezende & Mohamed (2015), Variational Inference with Normalizing "
          "Flows: planar flow", inverse="numerical", kind="residual")
class Planar(Flow):
    """Planar flow f(z) = z + u_hat tanh(w^T z + b) (see the module docstring).

    Starts exactly at the identity: w ~ N(0, 1/D), b = 0 and u = c w / ||w||^2 with
    softplus(c) = 1, which makes u_hat = 0 (u = 0 would not: m(0) = -1 + log 2 != 0); u_hat
    depends on u and w, so gradients reach every parameter from the first step.
    """

    kind = "residual"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        w = torch.randn(dim) / dim ** 0.5
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(softplus_inverse(1.0) * w / (w @ w))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> tuple[Tensor, Tensor]:
        """(u_hat, w^T u_hat) with w^T u_hat = -1 + softplus(w^T u) > -1."""
        w, u = self.w, self.u
        wu = w @ u
        w_norm_sq = (w @ w).clamp_min(torch.finfo(w.dtype).tiny)
        m = -1 + F.softplus(wu)
        return u + (m - wu) * w / w_norm_sq, m

    def _log_det(self, a: Tensor, wu_hat: Tensor) -> Tensor:
        deriv = 1 - torch.tanh(a) ** 2
        return torch.log((1 + deriv * wu_hat).clamp_min(torch.finfo(a.dtype).tiny))

    def forward_and_log_det(self, x):
        u_hat, wu_hat = self.u_hat()
        a = x @ self.w + self.b
        return x + u_hat * torch.tanh(a)[..., None], self._log_det(a, wu_hat)

    def inverse_and_log_det(self, y):
        u_hat, wu_hat = self.u_hat()
        c = y @ self.w + self.b
        k = wu_hat.detach()

        def g(a):
            t = torch.tanh(a)
            return a + k * t, 1 + k * (1 - t * t)

        spread = k.abs().expand_as(c)
        a_star = solve_monotone(g, c, c - spread - 1e-6, c + spread + 1e-6, layer=self._name())
        t_star = torch.tanh(a_star)
        residual = a_star + wu_hat * t_star - c  # graph to w, u, b and y
        a = implicit_newton_step(a_star, residual, 1 + wu_hat * (1 - t_star * t_star))
        return y - u_hat * torch.tanh(a)[..., None], self._log_det(a, wu_hat)
