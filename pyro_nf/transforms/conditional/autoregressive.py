"""Conditional autoregressive layers: IAF/MAF and the spline autoregressive layer whose MADE
also reads the context h (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, 2016, IAF
Sec. 4: the autoregressive network takes the encoder's extra output h as an input):

    G(u; h)_i = T(u_i; MADE(u_{<i}, h)_i),

with h fed unmasked to the MADE's first hidden layer, so every output depends on the whole
context and still only on u_{<i}: the Jacobian in u is triangular for every h,
log|det J_G| = sum_i log T'(u_i), G is one pass and G^{-1} D sequential passes.
``direction="iaf"`` makes the forward (sampling) map G, ``"maf"`` its inverse (one-pass
density, Papamakarios et al., 2017); the passes are
:func:`~pyro_nf.transforms.autoregressive.autoregressive_pass`, shared with the unconditional
layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.autoregressive import autoregressive_pass, check_direction
from pyro_nf.transforms.conditional.base import ConditionalFlow
from pyro_nf.transforms.nets import MADE, _hidden_tuple
from pyro_nf.transforms.registry import register_conditional
from pyro_nf.transforms.transformers import Affine, RationalQuadraticSpline, Transformer

Tensor = torch.Tensor

_CONTEXT = ", MADE with the context as an extra (unmasked) input"


class ConditionalAutoregressive(ConditionalFlow):
    """Generic conditional autoregressive layer ``G(u; h)_i = T(u_i; MADE(u_{<i}, h))``.

    Args:
        dim: D.
        context_dim: C.
        transformer: the univariate transformer T.
        hidden: MADE hidden widths (default ``clip(4 (D + C), 32, 256)`` twice).
        direction: ``"iaf"`` (fast forward/sampling) or ``"maf"`` (fast inverse/density).
        activation: MADE activation.
    Starts at the identity for every context (zero-initialised MADE output layer).
    """

    kind = "autoregressive"

    def __init__(self, dim: int, context_dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, direction: str = "iaf",
                 activation: str = "elu") -> None:
        super().__init__(dim, context_dim)
        self.direction = check_direction(direction, type(self).__name__)
        self.transformer = transformer
        self.made = MADE(self.dim, transformer.num_params,
                         _hidden_tuple(hidden, dim + context_dim), context_dim=context_dim,
                         activation=activation)

    def forward_and_log_det(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return autoregressive_pass(x, self.transformer, self.made, self.direction, context,
                                   inverse=False)

    def inverse_and_log_det(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return autoregressive_pass(y, self.transformer, self.made, self.direction, context,
                                   inverse=True)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, direction={self.direction!r}, "
                f"transformer={self.transformer}")


class ConditionalAffineAutoregressive(ConditionalAutoregressive):
    """Conditional affine autoregressive layer:
    G(u; h)_i = mu_i(u_<i, h) + exp(log sigma_i(u_<i, h)) u_i."""

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> None:
        super().__init__(dim, context_dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         direction=direction, activation=activation)


@register_conditional("iaf", paper="Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling "
                      "(2016), Inverse Autoregressive Flow" + _CONTEXT)
def conditional_iaf(dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                    activation: str = "elu", min_log_scale: float = -5.0,
                    max_log_scale: float = 3.0) -> ConditionalAffineAutoregressive:
    """Conditional affine autoregressive layer, IAF direction: one-pass sampling."""
    return ConditionalAffineAutoregressive(dim, context_dim, hidden, "iaf", activation,
                                           min_log_scale, max_log_scale)


@register_conditional("maf", paper="Papamakarios, Pavlakou & Murray (2017), Masked "
                      "Autoregressive Flow" + _CONTEXT)
def conditional_maf(dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                    activation: str = "elu", min_log_scale: float = -5.0,
                    max_log_scale: float = 3.0) -> ConditionalAffineAutoregressive:
    """Conditional affine autoregressive layer, MAF direction: one-pass density."""
    return ConditionalAffineAutoregressive(dim, context_dim, hidden, "maf", activation,
                                           min_log_scale, max_log_scale)


@register_conditional("spline_autoregressive", paper="Durkan, Bekasov, Murray & Papamakarios "
                      "(2019), Neural Spline Flows: rational-quadratic autoregressive" + _CONTEXT)
class ConditionalSplineAutoregressive(ConditionalAutoregressive):
    """Conditional rational-quadratic spline autoregressive layer; ``direction`` as for
    IAF/MAF (default ``"iaf"``: one-pass sampling)."""

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 direction: str = "iaf", activation: str = "elu", bins: int = 8,
                 bound: float = 5.0) -> None:
        super().__init__(dim, context_dim, RationalQuadraticSpline(bins, bound), hidden=hidden,
                         direction=direction, activation=activation)
