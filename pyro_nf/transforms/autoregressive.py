"""Autoregressive layers with a MADE conditioner: MAF and IAF as the two directions of one
affine autoregressive layer, and the rational-quadratic spline autoregressive layer.

The core map G(u)_i = T(u_i; MADE(u)_i), where MADE(u)_i depends on u_{<i} only, has a
triangular Jacobian (log|det J_G| = sum_i log T'(u_i)) and is computed in one pass; G^{-1} needs
D sequential passes (pass i fixes coordinate i). ``direction`` chooses which of the two a
layer's forward (sampling) map is:

* ``"iaf"``: forward = G (fast sampling, Kingma et al., 2016), inverse in D passes;
* ``"maf"``: forward = G^{-1} (D passes), inverse = G (fast density, Papamakarios et al., 2017).

Gradients flow through all D passes, so the slow direction is differentiable too.

Built with a context (``context_dim=C > 0``), a layer feeds the context h to the MADE unmasked,
to its first hidden layer (IAF's context, Kingma et al., 2016, Sec. 4):
G(u; h)_i = T(u_i; MADE(u_{<i}, h)_i) depends on all of h and still only on u_{<i}, so the
Jacobian in u is triangular for every h; the passes are the same :func:`autoregressive_pass`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.context import ContextFlow
from pyro_nf.transforms.nets import MADE, hidden_widths
from pyro_nf.transforms.registry import register
from pyro_nf.transforms.transformers import Affine, RationalQuadraticSpline, Transformer

Tensor = torch.Tensor

DIRECTIONS = ("iaf", "maf")


def check_direction(direction: str, layer: str) -> str:
    """Validate an autoregressive layer's direction (``"iaf"`` or ``"maf"``)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"{layer}: direction must be 'iaf' (fast sampling) or 'maf' (fast "
                         f"density), got {direction!r}")
    return direction


def _one_pass(u: Tensor, transformer: Transformer, made: MADE,
              context: Tensor | None) -> tuple[Tensor, Tensor]:
    v, ladj = transformer.forward(u, made(u, context))
    return v, ladj.sum(-1)


def _sequential_inverse(v: Tensor, transformer: Transformer, made: MADE,
                        context: Tensor | None) -> tuple[Tensor, Tensor]:
    # After pass i, coordinates <= i are exact; the last pass's log-det is exact everywhere.
    batch = v.shape[:-1] if context is None else torch.broadcast_shapes(v.shape[:-1],
                                                                         context.shape[:-1])
    u = v.new_zeros(batch + v.shape[-1:])
    for _ in range(v.shape[-1]):
        u, ladj = transformer.inverse(v, made(u, context))
    return u, ladj.sum(-1)


def autoregressive_pass(v: Tensor, transformer: Transformer, made: MADE, direction: str,
                        context: Tensor | None = None, *,
                        inverse: bool) -> tuple[Tensor, Tensor]:
    """The forward (``inverse=False``) or inverse pass of an autoregressive layer
    ``G(u)_i = T(u_i; MADE(u_{<i}[, h])_i)``: ``(output, log|det J_f|)``, the log-det of the
    layer's forward map at the pre-image.

    ``direction="iaf"`` makes the forward map G (one pass) and the inverse D passes;
    ``"maf"`` the other way round. ``context`` h (a conditional layer's, fed to the MADE's
    first hidden layer) broadcasts against ``v``'s batch dimensions."""
    one_pass = (direction == "iaf") != inverse
    if one_pass:
        out, ladj = _one_pass(v, transformer, made, context)
    else:
        out, ladj = _sequential_inverse(v, transformer, made, context)
    return out, (ladj if direction == "iaf" else -ladj)


class Autoregressive(ContextFlow):
    """Generic autoregressive layer ``G(u)_i = T(u_i; MADE(u_{<i}))`` in either direction; with
    a context h, ``G(u; h)_i = T(u_i; MADE(u_{<i}, h))``.

    Args:
        dim: D.
        transformer: the univariate transformer T.
        hidden: MADE hidden widths (default ``clip(4 (D + C), 32, 256)`` twice).
        direction: ``"iaf"`` (fast forward/sampling) or ``"maf"`` (fast inverse/density).
        activation: MADE activation.
        context_dim: the context size C; 0 (default) for an unconditional layer.
    Starts at the identity, for every context (zero-initialized MADE output layer).
    """

    kind = "autoregressive"

    def __init__(self, dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, direction: str = "iaf",
                 activation: str = "elu", context_dim: int = 0) -> None:
        super().__init__(dim, context_dim=context_dim)
        self.direction = check_direction(direction, type(self).__name__)
        self.transformer = transformer
        self.made = MADE(dim, transformer.num_params,
                         hidden_widths(hidden, dim + self.context_dim),
                         context_dim=self.context_dim, activation=activation)

    def forward_with(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return autoregressive_pass(x, self.transformer, self.made, self.direction, context,
                                   inverse=False)

    def inverse_with(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return autoregressive_pass(y, self.transformer, self.made, self.direction, context,
                                   inverse=True)

    def extra_repr(self) -> str:
        order = self.made.order
        shown = "" if torch.equal(order, torch.arange(self.dim, device=order.device)) else \
            f", order={order.tolist()}"
        return (f"{super().extra_repr()}, direction={self.direction!r}, "
                f"transformer={self.transformer}{shown}")


class AffineAutoregressive(Autoregressive):
    """Affine autoregressive layer: G(u)_i = mu_i(u_<i) + exp(log sigma_i(u_<i)) u_i (mu and
    sigma also functions of the context h for a conditional layer).

    ``max_log_scale`` defaults to 6 for an unconditional layer and to 3 (Pyro's) for a
    conditional one (see :class:`~pyro_nf.transforms.transformers.Affine`).
    """

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float | None = None, *,
                 context_dim: int = 0) -> None:
        if max_log_scale is None:
            max_log_scale = 3.0 if context_dim else 6.0
        super().__init__(dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         direction=direction, activation=activation, context_dim=context_dim)


@register("maf", paper="Papamakarios, Pavlakou & Murray (2017), Masked Autoregressive Flow",
          inverse="exact", kind="autoregressive")
def maf(dim: int, hidden: int | Sequence[int] | None = None, activation: str = "elu",
        min_log_scale: float = -5.0, max_log_scale: float | None = None, *,
        context_dim: int = 0) -> AffineAutoregressive:
    """Affine autoregressive layer, MAF direction: one-pass density, D-pass sampling."""
    return AffineAutoregressive(dim, hidden, "maf", activation, min_log_scale, max_log_scale,
                                context_dim=context_dim)


@register("iaf", paper="Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "
          "Inverse Autoregressive Flow", inverse="exact", kind="autoregressive")
def iaf(dim: int, hidden: int | Sequence[int] | None = None, activation: str = "elu",
        min_log_scale: float = -5.0, max_log_scale: float | None = None, *,
        context_dim: int = 0) -> AffineAutoregressive:
    """Affine autoregressive layer, IAF direction: one-pass sampling, D-pass density."""
    return AffineAutoregressive(dim, hidden, "iaf", activation, min_log_scale, max_log_scale,
                                context_dim=context_dim)


@register("spline_autoregressive", paper="Durkan, Bekasov, Murray & Papamakarios (2019), "
          "Neural Spline Flows: rational-quadratic autoregressive", inverse="exact",
          kind="autoregressive")
class SplineAutoregressive(Autoregressive):
    """Rational-quadratic spline autoregressive layer (identity tails outside [-bound, bound]);
    ``direction`` as for MAF/IAF (default ``"iaf"``: one-pass sampling)."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu", bins: int = 8,
                 bound: float = 5.0, *, context_dim: int = 0) -> None:
        super().__init__(dim, RationalQuadraticSpline(bins, bound), hidden=hidden,
                         direction=direction, activation=activation, context_dim=context_dim)
