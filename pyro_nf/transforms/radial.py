"""Radial flow (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
Sec. 4.1 and Appendix A.2).

    f(z) = z + beta h(alpha, r) (z - z0),   r = ||z - z0||,   h = 1 / (alpha + r),

with alpha = softplus(raw_alpha) > 0 and beta = -alpha + softplus(raw_beta) >= -alpha for any
raw parameters, which makes f invertible. The Jacobian is (1 + beta h) I + beta h'(r) (z - z0)
(z - z0)^T / r, so log|det J| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h' r), and the
last factor is 1 + beta alpha / (alpha + r)^2.

The inverse is exact: the radius r_y = ||y - z0|| = r (1 + beta / (alpha + r)) gives the
quadratic r^2 + (alpha + beta - r_y) r - alpha r_y = 0, whose one non-negative root is taken
in the cancellation-free form; then z = z0 + (y - z0) / (1 + beta / (alpha + r)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import Flow, softplus_inverse
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def _safe_norm(v: Tensor) -> Tensor:
    """||v|| over the last dimension with a finite gradient at v = 0."""
    sq = (v * v).sum(-1)
    tiny = torch.finfo(v.dtype).tiny
    return torch.where(sq > tiny, sq.clamp_min(tiny).sqrt(), torch.zeros_like(sq))


@register("radial", paper="Rezende & Mohamed (2015), Variational Inference with Normalizing "
          "Flows: radial flow", inverse="exact", kind="residual")
class Radial(Flow):
    """Radial flow around a learnable centre z0 (see the module docstring).

    Starts exactly at the identity: alpha = 1, beta = 0 (raw_beta = softplus^-1(alpha)),
    z0 ~ N(0, 0.01^2).
    """

    kind = "residual"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.z0 = nn.Parameter(0.01 * torch.randn(dim))
        self.raw_alpha = nn.Parameter(torch.tensor(softplus_inverse(1.0)))
        self.raw_beta = nn.Parameter(torch.tensor(softplus_inverse(1.0)))

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.raw_alpha)
        return alpha, -alpha + F.softplus(self.raw_beta)

    def _log_det(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        tiny = torch.finfo(r.dtype).tiny
        one_plus = (1 + beta / (alpha + r)).clamp_min(tiny)
        last = (1 + beta * alpha / (alpha + r) ** 2).clamp_min(tiny)
        return (self.dim - 1) * torch.log(one_plus) + torch.log(last)

    def forward_and_log_det(self, x):
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        r = _safe_norm(diff)
        y = x + (beta / (alpha + r))[..., None] * diff
        return y, self._log_det(r, alpha, beta)

    def inverse_and_log_det(self, y):
        alpha, beta = self.alpha_beta()
        diff = y - self.z0
        r_y = _safe_norm(diff)
        B = alpha + beta - r_y
        disc = (B * B + 4 * alpha * r_y).sqrt()
        # the non-negative root of r^2 + B r - alpha r_y = 0, without cancellation
        # (both branches stay finite, so the unused one cannot poison gradients with NaN)
        positive = B > 0
        r = torch.where(positive, 2 * alpha * r_y / torch.where(positive, B + disc, 1.0),
                        (disc - B) / 2)
        scale = (1 + beta / (alpha + r)).clamp_min(torch.finfo(y.dtype).tiny)
        x = self.z0 + diff / scale[..., None]
        return x, self._log_det(r, alpha, beta)
