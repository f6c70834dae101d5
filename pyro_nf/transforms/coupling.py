"""Coupling layers: NICE additive coupling, RealNVP affine coupling and neural-spline coupling.

The input splits into x_a = x[:d] (passed through) and x_b = x[d:], transformed elementwise by a
monotone transformer whose parameters a conditioner network computes from x_a:
y_a = x_a, y_b = T(x_b; NN(x_a)). The Jacobian is block triangular, so
log|det J| = sum_i log T'(x_b,i) and the inverse is exact in one pass.

Built with a context (``context_dim=C > 0``), a coupling layer also feeds the context h to the
conditioner, concatenated to x_a: y_b = T(x_b; NN([x_a, h])), as in conditional density
estimators built on these layers. The Jacobian is block triangular for every h, and the passes
are the same :func:`coupling_pass`, with h broadcast against the batch dimensions of x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.context import ContextFlow
from pyro_nf.transforms.nets import MLP, hidden_widths
from pyro_nf.transforms.registry import register
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


class Coupling(ContextFlow):
    """Generic coupling layer: ``y_b = T(x_b; NN(x_a))`` with ``x_a = x[..., :split]``; with a
    context h, ``y_b = T(x_b; NN(x_a, h))``.

    Args:
        dim: D >= 2.
        transformer: the univariate transformer T.
        hidden: conditioner hidden widths (default ``clip(4 (D + C), 32, 256)`` twice).
        split: the size d of the untouched part (default D // 2).
        activation: conditioner activation.
        context_dim: the context size C; 0 (default) for an unconditional layer.
    Starts at the identity, for every context (zero-initialized conditioner output).
    """

    kind = "coupling"

    def __init__(self, dim: int, transformer: Transformer, *,
                 hidden: int | Sequence[int] | None = None, split: int | None = None,
                 activation: str = "elu", context_dim: int = 0) -> None:
        super().__init__(dim, context_dim=context_dim)
        split = check_split(dim, split, type(self).__name__)
        self.split, self.transformer = split, transformer
        self.conditioner = MLP(split, (dim - split) * transformer.num_params,
                               hidden_widths(hidden, dim + self.context_dim),
                               context_dim=self.context_dim, activation=activation)

    def forward_with(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return coupling_pass(x, self.split, self.transformer, self.conditioner, context,
                             inverse=False)

    def inverse_with(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return coupling_pass(y, self.split, self.transformer, self.conditioner, context,
                             inverse=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, split={self.split}, transformer={self.transformer}"


@register("nice", paper="Dinh, Krueger & Bengio (2014), NICE: additive coupling",
          inverse="exact", kind="coupling", volume_preserving=True, min_dim=2)
class AdditiveCoupling(Coupling):
    """NICE additive coupling: y_b = x_b + m(x_a) (m(x_a, h) with a context); volume
    preserving."""

    volume_preserving = True

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu", *,
                 context_dim: int = 0) -> None:
        super().__init__(dim, Additive(), hidden=hidden, split=split, activation=activation,
                         context_dim=context_dim)


@register("realnvp", paper="Dinh, Sohl-Dickstein & Bengio (2017), Density estimation using "
          "Real NVP: affine coupling", inverse="exact", kind="coupling", min_dim=2)
class AffineCoupling(Coupling):
    """RealNVP affine coupling: y_b = t(x_a) + exp(log s(x_a)) * x_b (log-space scale); with a
    context, t(x_a, h) and s(x_a, h)."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu",
                 min_log_scale: float = -5.0, max_log_scale: float = 3.0, *,
                 context_dim: int = 0) -> None:
        super().__init__(dim, Affine(min_log_scale, max_log_scale), hidden=hidden,
                         split=split, activation=activation, context_dim=context_dim)


@register("spline_coupling", paper="Durkan, Bekasov, Murray & Papamakarios (2019), Neural "
          "Spline Flows: rational-quadratic coupling", inverse="exact", kind="coupling",
          min_dim=2)
class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling with identity tails outside [-bound, bound]; with a
    context, the bins, heights and knot slopes are functions of (x_a, h)."""

    def __init__(self, dim: int, hidden: int | Sequence[int] | None = None,
                 split: int | None = None, activation: str = "elu", bins: int = 8,
                 bound: float = 5.0, *, context_dim: int = 0) -> None:
        super().__init__(dim, RationalQuadraticSpline(bins, bound), hidden=hidden, split=split,
                         activation=activation, context_dim=context_dim)
