"""Conditional coupling layers: NICE, RealNVP and neural-spline coupling whose conditioner also
reads the context h (Dinh et al., 2017, and Durkan et al., 2019, with the context concatenated
to the conditioner input, as in conditional density estimators built on them):

    y_a = x_a,   y_b = T(x_b; NN([x_a, h])),

with x_a = x[..., :d]. The Jacobian is block triangular for every h, so
log|det J| = sum_i log T'(x_b,i) and the inverse is exact in one pass; the passes are those of
:class:`~pyro_nf.transforms.coupling.Coupling` (:func:`~pyro_nf.transforms.coupling.
coupling_pass`), with the context broadcast against the batch dimensions of x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.conditional.base import ConditionalFlow
from pyro_nf.transforms.coupling import check_split, coupling_pass
from pyro_nf.transforms.nets import MLP, _hidden_tuple
from pyro_nf.transforms.registry import register_conditional
from pyro_nf.transforms.transformers import (
    Additive,
    Affine,
    RationalQuadraticSpline,
    Transformer,
)

Tensor = torch.Tensor

_CONTEXT = ", conditioner with the context as an extra input"


class ConditionalCoupling(ConditionalFlow):
    """Generic conditional coupling layer ``y_b = T(x_b; NN(x_a, h))``.

    Args:
        dim: D >= 2.
        context_dim: C.
        transformer: the univariate transformer T.
        hidden: conditioner hidden widths (default ``clip(4 (D + C), 32, 256)`` twice).
        split: the size d of the untouched part (default D // 2).
        activation: conditioner activation.
    Starts at the identity for every context (zero-initialised conditioner output).
    """

    kind = "coupling"

    def __init__(self, dim: int, context_dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, split: int | None = None,
                 activation: str = "elu") -> None:
        super().__init__(dim, context_dim)
        self.split = check_split(self.dim, split, type(self).__name__)
        self.transformer = transformer
        self.conditioner = MLP(self.split, (dim - self.split) * transformer.num_params,
                               _hidden_tuple(hidden, dim + context_dim),
                               context_dim=context_dim, activation=activation)

    def forward_and_log_det(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_pass(x, self.split, self.transformer, self.conditioner, context,
                             inverse=False)

    def inverse_and_log_det(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_pass(y, self.split, self.transformer, self.conditioner, context,
                             inverse=True)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, split={self.split}, "
                f"transformer={self.transformer}")


@register_conditional("nice", paper="Dinh, Krueger & Bengio (2014), NICE: additive coupling"
                      + _CONTEXT)
class ConditionalAdditiveCoupling(ConditionalCoupling):
    """Conditional NICE additive coupling: y_b = x_b + m(x_a, h); volume preserving."""

    volume_preserving = True

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu") -> None:
        super().__init__(dim, context_dim, Additive(), hidden=hidden, split=split,
                         activation=activation)


@register_conditional("realnvp", paper="Dinh, Sohl-Dickstein & Bengio (2017), Density "
                      "estimation using Real NVP: affine coupling" + _CONTEXT)
class ConditionalAffineCoupling(ConditionalCoupling):
    """Conditional RealNVP affine coupling: y_b = t(x_a, h) + exp(log s(x_a, h)) * x_b."""

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> None:
        super().__init__(dim, context_dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         split=split, activation=activation)


@register_conditional("spline_coupling", paper="Durkan, Bekasov, Murray & Papamakarios (2019), "
                      "Neural Spline Flows: rational-quadratic coupling" + _CONTEXT)
class ConditionalSplineCoupling(ConditionalCoupling):
    """Conditional rational-quadratic spline coupling (identity tails outside
    [-bound, bound]); the bins, heights and knot slopes are functions of (x_a, h)."""

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu", bins: int = 8,
                 bound: float = 5.0) -> None:
        super().__init__(dim, context_dim, RationalQuadraticSpline(bins, bound), hidden=hidden,
                         split=split, activation=activation)
