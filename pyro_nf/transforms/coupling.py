"""Coupling layers: NICE additive coupling, RealNVP affine coupling and neural-spline coupling.

The input splits into x_a = x[:d] (passed through) and x_b = x[d:], transformed elementwise by a
monotone transformer whose parameters a conditioner network computes from x_a:
y_a = x_a, y_b = T(x_b; NN(x_a)). The Jacobian is block triangular, so
log|det J| = sum_i log T'(x_b,i) and the inverse is exact in one pass.

The conditional forms (``ConditionalCoupling`` and its three subclasses) also feed a context h
to the conditioner, concatenated to x_a: y_b = T(x_b; NN([x_a, h])), as in conditional density
estimators built on these layers. The Jacobian is block triangular for every h, and the passes
are the same :func:`coupling_pass`, with h broadcast against the batch dimensions of x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.base import Flow
from pyro_nf.transforms.context import ConditionerFlow
from pyro_nf.transforms.nets import MLP, _hidden_tuple
from pyro_nf.transforms.registry import register, register_conditional
from pyro_nf.transforms.transformers import (
    Additive,
    Affine,
    RationalQuadraticSpline,
    Transformer,
)

Tensor = torch.Tensor


def check_split(dim: int, split: int | None, layer: str) -> int:
    """Validate a coupling layer's D >= 2 and split d in [1, D - 1] (default D // 2)."""
    if dim < 2:
        raise ValueError(f"{layer}: coupling layers need dim >= 2, got {dim}")
    split = dim // 2 if split is None else int(split)
    if not 1 <= split < dim:
        raise ValueError(f"{layer}: split must be in [1, {dim - 1}], got {split}")
    return split


def coupling_pass(v: Tensor, split: int, transformer: Transformer, conditioner: MLP,
                  context: Tensor | None = None, *, inverse: bool) -> tuple[Tensor, Tensor]:
    """One coupling pass: ``(y, log|det J|)`` with y_a = v_a and y_b = T(v_b; NN(v_a[, h])),
    or the inverse (``inverse=True``; log-det of the forward map at the pre-image).

    ``conditioner`` maps ``v[..., :split]`` (and the ``context`` h, concatenated, for a
    conditional layer) to the flat parameters of ``transformer``; batch dimensions of ``v``
    and ``context`` broadcast."""
    va, vb = v[..., :split], v[..., split:]
    params = conditioner(va, context).unflatten(-1, (-1, v.shape[-1] - split))
    step = transformer.inverse if inverse else transformer.forward
    out_b, ladj = step(vb, params)
    va = va.expand(out_b.shape[:-1] + va.shape[-1:])
    return torch.cat([va, out_b], -1), ladj.sum(-1)


class Coupling(Flow):
    """Generic coupling layer: ``y_b = T(x_b; NN(x_a))`` with ``x_a = x[..., :split]``.

    Args:
        dim: D >= 2.
        transformer: the univariate transformer T.
        hidden: conditioner hidden widths (default ``clip(4 D, 32, 256)`` twice).
        split: the size d of the untouched part (default D // 2).
        activation: conditioner activation.
    Starts at the identity (zero-initialised conditioner output).
    """

    kind = "coupling"

    def __init__(self, dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, split: int | None = None,
                 activation: str = "elu") -> None:
        super().__init__(dim)
        split = check_split(dim, split, type(self).__name__)
        self.split, self.transformer = split, transformer
        self.conditioner = MLP(split, (dim - split) * transformer.num_params,
                               _hidden_tuple(hidden, dim), activation=activation)

    def forward_and_log_det(self, x):
        return coupling_pass(x, self.split, self.transformer, self.conditioner, inverse=False)

    def inverse_and_log_det(self, y):
        return coupling_pass(y, self.split, self.transformer, self.conditioner, inverse=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, split={self.split}, transformer={self.transformer}"


@register("nice", paper="Dinh, Krueger & Bengio (2014), NICE: additive coupling",
          inverse="exact", kind="coupling", volume_preserving=True, min_dim=2)
class AdditiveCoupling(Coupling):
    """NICE additive coupling: y_b = x_b + m(x_a); volume preserving."""

    volume_preserving = True

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu") -> None:
        super().__init__(dim, Additive(), hidden=hidden, split=split, activation=activation)


@register("realnvp", paper="Dinh, Sohl-Dickstein & Bengio (2017), Density estimation using "
          "Real NVP: affine coupling", inverse="exact", kind="coupling", min_dim=2)
class AffineCoupling(Coupling):
    """RealNVP affine coupling: y_b = t(x_a) + exp(log s(x_a)) * x_b (log-space scale)."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> None:
        super().__init__(dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         split=split, activation=activation)


@register("spline_coupling", paper="Durkan, Bekasov, Murray & Papamakarios (2019), Neural "
          "Spline Flows: rational-quadratic coupling", inverse="exact", kind="coupling",
          min_dim=2)
class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling with identity tails outside [-bound, bound]."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu", bins: int = 8,
                 bound: float = 5.0) -> None:
        super().__init__(dim, RationalQuadraticSpline(bins, bound), hidden=hidden, split=split,
                         activation=activation)


# ----------------------------------------------------------------------------- conditional forms
_CONTEXT = ", conditioner with the context as an extra input"


class ConditionalCoupling(ConditionerFlow):
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
    shown = "split"

    def __init__(self, dim: int, context_dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, split: int | None = None,
                 activation: str = "elu") -> None:
        super().__init__(dim, context_dim)
        self.split = check_split(self.dim, split, type(self).__name__)
        self.transformer = transformer
        self.conditioner = MLP(self.split, (dim - self.split) * transformer.num_params,
                               _hidden_tuple(hidden, dim + context_dim),
                               context_dim=context_dim, activation=activation)

    def one_pass(self, v: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return coupling_pass(v, self.split, self.transformer, self.conditioner, context,
                             inverse=inverse)


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
