"""Autoregressive layers with a MADE conditioner: MAF and IAF as the two directions of one
affine autoregressive layer, and the rational-quadratic spline autoregressive layer.

The core map G(u)_i = T(u_i; MADE(u)_i), where MADE(u)_i depends on u_{<i} only, has a
triangular Jacobian (log|det J_G| = sum_i log T'(u_i)) and is computed in one pass; G^{-1} needs
D sequential passes (pass i fixes coordinate i). ``direction`` chooses which of the two a
layer's forward (sampling) map is:

* ``"iaf"``: forward = G (fast sampling, Kingma et al., 2016), inverse in D passes;
* ``"maf"``: forward = G^{-1} (D passes), inverse = G (fast density, Papamakarios et al., 2017).

Gradients flow through all D passes, so the slow direction is differentiable too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.base import Flow
from pyro_nf.transforms.nets import MADE, _hidden_tuple
from pyro_nf.transforms.registry import register
from pyro_nf.transforms.transformers import Affine, RationalQuadraticSpline, Transformer

Tensor = torch.Tensor

DIRECTIONS = ("iaf", "maf")


class Autoregressive(Flow):
    """Generic autoregressive layer ``G(u)_i = T(u_i; MADE(u_{<i}))`` in either direction.

    Args:
        dim: D.
        transformer: the univariate transformer T.
        hidden: MADE hidden widths (default ``clip(4 D, 32, 256)`` twice).
        direction: ``"iaf"`` (fast forward/sampling) or ``"maf"`` (fast inverse/density).
        activation: MADE activation.
    Starts at the identity (zero-initialised MADE output layer).
    """

    kind = "autoregressive"

    def __init__(self, dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, direction: str = "iaf",
                 activation: str = "elu") -> None:
        super().__init__(dim)
        if direction not in DIRECTIONS:
            raise ValueError(f"{type(self).__name__}: direction must be 'iaf' (fast sampling) "
                             f"or 'maf' (fast density), got {direction!r}")
        self.direction, self.transformer = direction, transformer
        self.made = MADE(dim, transformer.num_params, _hidden_tuple(hidden, dim),
                         activation=activation)

    def _one_pass(self, u: Tensor) -> tuple[Tensor, Tensor]:
        v, ladj = self.transformer.forward(u, self.made(u))
        return v, ladj.sum(-1)

    def _sequential_inverse(self, v: Tensor) -> tuple[Tensor, Tensor]:
        # After pass i, coordinates <= i are exact; the last pass's log-det is exact everywhere.
        u = torch.zeros_like(v)
        for _ in range(self.dim):
            u, ladj = self.transformer.inverse(v, self.made(u))
        return u, ladj.sum(-1)

    def forward_and_log_det(self, x):
        if self.direction == "iaf":
            return self._one_pass(x)
        y, ladj_inv = self._sequential_inverse(x)
        return y, -ladj_inv

    def inverse_and_log_det(self, y):
        if self.direction == "iaf":
            return self._sequential_inverse(y)
        x, ladj_inv = self._one_pass(y)
        return x, -ladj_inv

    def extra_repr(self) -> str:
        return f"dim={self.dim}, direction={self.direction!r}, transformer={self.transformer}"


class AffineAutoregressive(Autoregressive):
    """Affine autoregressive layer: G(u)_i = mu_i(u_<i) + exp(log sigma_i(u_<i)) u_i."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> None:
        super().__init__(dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         direction=direction, activation=activation)


@register("maf", paper="Papamakarios, Pavlakou & Murray (2017), Masked Autoregressive Flow",
          inverse="exact", kind="autoregressive")
def maf(dim: int, hidden: int | Sequence[int] | None = None, activation: str = "elu",
        min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> AffineAutoregressive:
    """Affine autoregressive layer, MAF direction: one-pass density, D-pass sampling."""
    return AffineAutoregressive(dim, hidden, "maf", activation, min_log_scale, max_log_scale)


@register("iaf", paper="Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "
          "Inverse Autoregressive Flow", inverse="exact", kind="autoregressive")
def iaf(dim: int, hidden: int | Sequence[int] | None = None, activation: str = "elu",
        min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> AffineAutoregressive:
    """Affine autoregressive layer, IAF direction: one-pass sampling, D-pass density."""
    return AffineAutoregressive(dim, hidden, "iaf", activation, min_log_scale, max_log_scale)


@register("spline_autoregressive", paper="Durkan, Bekasov, Murray & Papamakarios (2019), "
          "Neural Spline Flows: rational-quadratic autoregressive", inverse="exact",
          kind="autoregressive")
class SplineAutoregressive(Autoregressive):
    """Rational-quadratic spline autoregressive layer (identity tails outside [-bound, bound]);
    ``direction`` as for MAF/IAF (default ``"iaf"``: one-pass sampling)."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu", bins: int = 8,
                 bound: float = 5.0) -> None:
        super().__init__(dim, RationalQuadraticSpline(bins, bound), hidden=hidden,
                         direction=direction, activation=activation)
