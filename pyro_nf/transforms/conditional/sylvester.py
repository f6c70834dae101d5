"""Conditional (amortized) Sylvester flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference", Sec. 3 and 4: the encoder outputs every
flow parameter per data point):

    f(z; h) = z + Q(h) R(h) tanh(R~(h) Q(h)^T z + b(h)),

with the raw R, R~, b (and the raw material of Q) produced by a hypernetwork of the context h.
For every context the constraints of :class:`~pyro_nf.transforms.sylvester.Sylvester` hold:
R_ii = tanh(a_i(h)) and R~_ii = (1 - 1e-4) tanh(c_i(h)), so R_ii R~_ii >= -1 + 1e-4 and

    log|det J| = sum_i log|1 + h'(r_i) R_ii R~_ii| > -inf,   r = R~ Q^T z + b,

and Q(h) has orthonormal columns:

* ``sylvester_orthogonal``: Q(h) is the orthonormal polar factor of a network output A(h)
  (D x M), by Björck's iteration batched over the data points (as in the paper's amortized
  orthogonal flows);
* ``sylvester_householder``: Q(h) is the first M columns of a product of K reflections whose
  vectors v_k(h) are network outputs;
* ``sylvester_triangular``: Q is a fixed permutation (identity or reversal, ``reverse``), not
  amortized, as in the paper.

The inverse is the back-substitution of bracketed scalar solves with implicit gradients of the
unconditional layers (the same functions, batched over data points).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.base import check_dim
from pyro_nf.transforms.conditional.base import ConditionalFlow, HyperNet, hyper_hidden
from pyro_nf.transforms.registry import register_conditional
from pyro_nf.transforms.sylvester import (
    _PAPER,
    bjorck,
    check_m,
    householder_q,
    sylvester_forward,
    sylvester_init,
    sylvester_inverse,
    sylvester_triangles,
)

Tensor = torch.Tensor

ParamsT = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_AMORTIZED = ", amortized (parameters output by a network of the context)"


class ConditionalSylvester(ConditionalFlow):
    """Base of the conditional Sylvester variants; subclasses give the raw material of Q
    (:meth:`q_init`) and build Q from it (:meth:`q`).

    Initialisation: the unconditional layer's identity map (R = 0) for every context.

    Args:
        dim: the event size D.
        context_dim: the context size C.
        m: the number of orthonormal columns M, 1 <= M <= D (default min(D, 16)).
        hidden: hypernetwork hidden widths (default ``clip(4 (D + C), 32, 256)`` twice; ``[]``
            for a linear map of the context).
        activation: hypernetwork activation.
    """

    kind = "residual"

    def __init__(self, dim: int, context_dim: int, m: int | None = None,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu") -> None:
        super().__init__(dim, context_dim)
        self.m = m = check_m(m, self.dim, type(self).__name__)
        rows, cols = torch.triu_indices(m, m, offset=1)
        self.register_buffer("triu_rows", rows, persistent=False)
        self.register_buffer("triu_cols", cols, persistent=False)
        init = {**sylvester_init(m), **self.q_init()}
        self.hyper = HyperNet(context_dim, init, hyper_hidden(hidden, self.dim + context_dim),
                              activation)

    def q_init(self) -> dict[str, Tensor]:
        """Initial values of the amortized raw material of Q (none by default)."""
        return {}

    def q(self, raw: dict[str, Tensor]) -> Tensor:
        """Q (..., D, M) with orthonormal columns from the hypernetwork's outputs."""
        raise NotImplementedError

    def flow_parameters(self, context: Tensor) -> ParamsT:
        """(Q, R, R~, b, diag R, diag R~, 1 + diag R diag R~) per data point."""
        p = self.hyper(context)
        r, rt, rd, rtd, k = sylvester_triangles(p["r_diag"], p["r_upper"], p["rt_diag"],
                                                p["rt_upper"], self.triu_rows, self.triu_cols)
        return self.q(p), r, rt, p["b"], rd, rtd, k

    def forward_and_log_det(self, x: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return sylvester_forward(x, *params)

    def inverse_and_log_det(self, y: Tensor, params: ParamsT) -> tuple[Tensor, Tensor]:
        return sylvester_inverse(y, *params, layer=self._name())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@register_conditional("sylvester_orthogonal", paper=f"{_PAPER}: orthogonal{_AMORTIZED}")
class ConditionalOrthogonalSylvester(ConditionalSylvester):
    """Conditional Sylvester flow with Q(h) the Björck polar factor of a network output A(h).

    Args:
        dim, context_dim, m, hidden, activation: see :class:`ConditionalSylvester`.
        max_iter: the most Björck steps; a context whose A(h) is numerically rank-deficient
            raises a RuntimeError.
    """

    polish_steps = 2

    def __init__(self, dim: int, context_dim: int, m: int | None = None,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu",
                 max_iter: int = 30) -> None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{type(self).__name__}: max_iter must be a positive integer, "
                             f"got {max_iter!r}")
        self.max_iter = max_iter
        super().__init__(dim, context_dim, m, hidden, activation)

    def q_init(self) -> dict[str, Tensor]:
        return {"q_raw": torch.linalg.qr(torch.randn(self.dim, self.m))[0]}

    def q(self, raw: dict[str, Tensor]) -> Tensor:
        return bjorck(raw["q_raw"], max_iter=self.max_iter, polish_steps=self.polish_steps,
                      layer=self._name(), raw_name="A(h) (the hypernetwork's q_raw output)")


@register_conditional("sylvester_householder", paper=f"{_PAPER}: Householder{_AMORTIZED}")
class ConditionalHouseholderSylvester(ConditionalSylvester):
    """Conditional Sylvester flow with Q(h) from K reflections whose vectors are network
    outputs (orthonormal for every output).

    Args:
        dim, context_dim, m, hidden, activation: see :class:`ConditionalSylvester`.
        reflections: the number K of reflections (default min(D, 8)).
    """

    def __init__(self, dim: int, context_dim: int, m: int | None = None,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu",
                 reflections: int | None = None) -> None:
        n = min(check_dim(dim, type(self).__name__), 8) if reflections is None else reflections
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{type(self).__name__}: reflections must be a positive integer, "
                             f"got {reflections!r}")
        self.reflections = n
        super().__init__(dim, context_dim, m, hidden, activation)

    def q_init(self) -> dict[str, Tensor]:
        return {"vectors": torch.randn(self.reflections, self.dim)}

    def q(self, raw: dict[str, Tensor]) -> Tensor:
        return householder_q(raw["vectors"], self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reflections={self.reflections}"


@register_conditional("sylvester_triangular", paper=f"{_PAPER}: triangular{_AMORTIZED}")
class ConditionalTriangularSylvester(ConditionalSylvester):
    """Conditional Sylvester flow with a fixed permutation for Q (identity, or the reversal
    with ``reverse=True``; alternate it between layers) and amortized R, R~, b.

    Args:
        dim, context_dim, m, hidden, activation: see :class:`ConditionalSylvester`.
        reverse: use the reversal instead of the identity.
    """

    def __init__(self, dim: int, context_dim: int, m: int | None = None,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu",
                 reverse: bool = False) -> None:
        if not isinstance(reverse, bool):
            raise TypeError(f"{type(self).__name__}: reverse must be a bool, got {reverse!r}")
        super().__init__(dim, context_dim, m, hidden, activation)
        self.reverse = reverse
        perm = torch.eye(self.dim)
        if reverse:
            perm = perm.flip(1)
        self.register_buffer("q_fixed", perm[:, : self.m].contiguous())

    def q(self, raw: dict[str, Tensor]) -> Tensor:
        return self.q_fixed

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reverse={self.reverse}"
