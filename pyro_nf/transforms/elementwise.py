"""Elementwise affine layers: the learnable affine map y = loc + scale * x and NICE's diagonal
scaling layer y = scale * x."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import Flow, softplus_inverse
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def _positive(raw: Tensor, offset: float, min_scale: float) -> Tensor:
    return min_scale + F.softplus(raw + offset)


@register("affine", paper="elementwise affine map (e.g. Kingma et al., 2016, the IAF base)",
          inverse="exact", kind="elementwise")
class ElementwiseAffine(Flow):
    """y = loc + scale * x with scale = s_min + softplus(raw) > 0.

    log|det J| = sum_i log scale_i. Starts at the identity (loc = 0, scale = 1).
    """

    kind = "elementwise"

    def __init__(self, dim: int, min_scale: float = 1e-4) -> None:
        super().__init__(dim)
        self.min_scale = float(min_scale)
        self._offset = softplus_inverse(1.0 - self.min_scale)
        self.loc = nn.Parameter(torch.zeros(dim))
        self.raw_scale = nn.Parameter(torch.zeros(dim))

    @property
    def scale(self) -> Tensor:
        return _positive(self.raw_scale, self._offset, self.min_scale)

    def forward_and_log_det(self, x):
        s = self.scale
        return self.loc + s * x, torch.log(s).sum(-1).expand(x.shape[:-1])

    def inverse_and_log_det(self, y):
        s = self.scale
        return (y - self.loc) / s, torch.log(s).sum(-1).expand(y.shape[:-1])


@register("scale", paper="Dinh, Krueger & Bengio (2014), NICE, Sec. 3.3 (diagonal scaling)",
          inverse="exact", kind="elementwise")
class DiagonalScale(Flow):
    """NICE's final diagonal scaling layer: y = S x with S = diag(exp(log_s)).

    Parametrized in log-space, log|det J| = sum_i log_s_i. Starts at the identity (log_s = 0).
    """

    kind = "elementwise"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward_and_log_det(self, x):
        return x * torch.exp(self.log_scale), self.log_scale.sum(-1).expand(x.shape[:-1])

    def inverse_and_log_det(self, y):
        return y * torch.exp(-self.log_scale), self.log_scale.sum(-1).expand(y.shape[:-1])
