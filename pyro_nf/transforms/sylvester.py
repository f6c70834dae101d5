"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference", Sec. 3 and 4).

    f(z) = z + Q R tanh(R~ Q^T z + b),

with Q a D x M matrix of orthonormal columns (1 <= M <= D), R and R~ upper-triangular M x M and
b in R^M: planar flow's residual map with M hidden units instead of one, whose log-det is a sum
of M terms. diag R diag R~ >= -1 + 1e-4 keeps it invertible for any raw parameters; the inverse
is numerical (back-substitution of M scalar solves with implicit gradients). The numerics are
in :mod:`pyro_nf.transforms.sylvester_ops`.

Three registry entries keep Q orthonormal three ways: ``sylvester_orthogonal`` (Björck's
iteration on a free D x M matrix), ``sylvester_householder`` (the first M columns of K
Householder reflections) and ``sylvester_triangular`` (a fixed permutation). Built with a
context (``context_dim=C > 0``, the paper's amortized flows, Sec. 4), each takes R, R~, b and
the raw material of Q per data point from a hypernetwork of the context h, under the same
constraints for every h; the triangular one keeps its fixed Q.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pyro_nf.transforms.base import check_dim, check_positive_int
from pyro_nf.transforms.context import ResidualFlow
from pyro_nf.transforms.registry import register
from pyro_nf.transforms.sylvester_ops import DIAGONAL_MARGIN as DIAGONAL_MARGIN
from pyro_nf.transforms.sylvester_ops import (
    bjorck,
    check_m,
    householder_q,
    sylvester_forward,
    sylvester_init,
    sylvester_inverse,
    sylvester_triangles,
)

Tensor = torch.Tensor
SylvesterParams = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]

_PAPER = "van den Berg, Hasenclever, Tomczak & Welling (2018), Sylvester Normalizing Flows"


class Sylvester(ResidualFlow):
    """Base of the three Sylvester variants, f(z) = z + Q R tanh(R~ Q^T z + b); subclasses
    give the raw material of Q (:meth:`q_init`) and build Q from it (:meth:`q`), the D x M
    matrix with orthonormal columns.

    Parameters: ``r_diag``/``rt_diag`` (raw diagonals a, c: R_ii = tanh(a_i),
    R~_ii = (1 - 1e-4) tanh(c_i)), ``r_upper``/``rt_upper`` (the strictly upper triangles,
    packed row by row), ``b`` and the raw material of Q; with ``context_dim=C > 0`` all of them
    are, per data point, outputs of a hypernetwork of the context
    (:class:`~pyro_nf.transforms.context.ResidualFlow`).

    Initialization: exactly the identity (for every context). R = 0 (a = 0 and a zero upper
    triangle) so that f(z) = z and log|det J| = 0; R~ is small and random (diagonal raw
    ~ 0.1 N(0, 1), upper entries ~ 0.1 N(0, 1) / sqrt(M)), b = 0 and Q orthonormal, so that
    h(R~ Q^T z + b) != 0 and the gradients reach R (diagonal and upper triangle) from the first
    step; R~, b and Q receive gradients once R != 0.

    Args:
        dim: the event size D.
        m: the number of orthonormal columns M, 1 <= M <= D (default min(D, 16)). With the
            fixed-permutation Q of :class:`TriangularSylvester`, M < D leaves D - M coordinates
            untouched.
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; default
            ``clip(4 (D + C), 32, 256)`` twice, ``[]`` for a linear map of the context).
        activation: hypernetwork activation (conditional layers only).
    """

    def __init__(self, dim: int, m: int | None = None, *, context_dim: int = 0,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu") -> None:
        super().__init__(dim, context_dim=context_dim)
        self.m = m = check_m(m, self.dim, type(self).__name__)
        rows, cols = torch.triu_indices(m, m, offset=1)
        self.register_buffer("triu_rows", rows, persistent=False)
        self.register_buffer("triu_cols", cols, persistent=False)
        self.hold_raw({**sylvester_init(m), **self.q_init()}, hidden, activation)

    # -- parametrization -------------------------------------------------------------------
    def q_init(self) -> dict[str, Tensor]:
        """Initial values of the raw material of Q, by name (none by default)."""
        return {}

    def q(self, raw: Mapping[str, Tensor] | None = None) -> Tensor:
        """Q, (D, M) or per data point (..., D, M), with orthonormal columns, from the raw
        parameters ``raw`` (default: the unconditional layer's own)."""
        raise NotImplementedError

    def triangles(self, raw: Mapping[str, Tensor] | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(R, R~, diag R, diag R~, k)`` with k = 1 + diag R * diag R~ > 0
        (:func:`~pyro_nf.transforms.sylvester_ops.sylvester_triangles`) from the raw
        parameters ``raw`` (default: the unconditional layer's own)."""
        p = self.raw(None) if raw is None else raw
        return sylvester_triangles(p["r_diag"], p["r_upper"], p["rt_diag"], p["rt_upper"],
                                   self.triu_rows, self.triu_cols)

    def map_parameters(self, context: Tensor | None) -> SylvesterParams:
        """(Q, R, R~, b, diag R, diag R~, 1 + diag R diag R~): the layer's, or per data point
        from the hypernetwork's outputs for ``context``."""
        p = self.raw(context)
        r, rt, rd, rtd, k = self.triangles(p)
        return self.q(p), r, rt, p["b"], rd, rtd, k

    # -- the two passes --------------------------------------------------------------------
    def forward_with(self, x: Tensor, params: SylvesterParams) -> tuple[Tensor, Tensor]:
        return sylvester_forward(x, *params)

    def inverse_with(self, y: Tensor, params: SylvesterParams) -> tuple[Tensor, Tensor]:
        return sylvester_inverse(y, *params, layer=self._name())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@register("sylvester_orthogonal", paper=f"{_PAPER}: orthogonal", inverse="numerical",
          kind="residual")
class OrthogonalSylvester(Sylvester):
    """Sylvester flow with Q orthonormalized by Björck's iteration (van den Berg et al., 2018,
    Sec. 3.2 "orthogonal Sylvester flows").

    Q is the orthonormal polar factor of a free D x M parameter ``q_raw`` = A (with a context,
    a network output A(h)): A / ||A||_F (singular values in (0, 1]) is iterated with
    Q <- Q (I + (I - Q^T Q) / 2) until ||Q^T Q - I||_F < sqrt(eps), then two more steps, which
    bring Q^T Q - I to rounding level (quadratic convergence) and the derivative with it;
    gradients flow through all steps. A singular value s grows by about 1.5x per step while
    small, so convergence takes about log_1.5(||A||_F / s_min(A)) + 6 steps: ``max_iter = 30``
    accepts ||A||_F / s_min(A) up to about 10^4.

    Initialization: see :class:`Sylvester` (the identity); A is the orthonormal Q factor of a
    Gaussian matrix.

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        max_iter: the most Björck steps before giving up.
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; see :class:`Sylvester`).
        activation: hypernetwork activation (conditional layers only).

    Raises:
        RuntimeError: from :meth:`q` (so from any pass), when A is numerically rank-deficient
            or not finite and the iteration does not converge in ``max_iter`` steps.
    """

    #: extra Björck steps after the tolerance is met
    polish_steps = 2

    def __init__(self, dim: int, m: int | None = None, max_iter: int = 30, *,
                 context_dim: int = 0, hidden: int | Sequence[int] | None = None,
                 activation: str = "elu") -> None:
        self.max_iter = check_positive_int(max_iter, "max_iter", type(self).__name__)
        super().__init__(dim, m, context_dim=context_dim, hidden=hidden, activation=activation)

    def q_init(self) -> dict[str, Tensor]:
        return {"q_raw": torch.linalg.qr(torch.randn(self.dim, self.m))[0]}

    def q(self, raw: Mapping[str, Tensor] | None = None) -> Tensor:
        what = "A(h) (the hypernetwork's q_raw output)" if self.context_dim else "q_raw"
        return bjorck((self.raw(None) if raw is None else raw)["q_raw"],
                      max_iter=self.max_iter, polish_steps=self.polish_steps,
                      layer=self._name(), raw_name=what)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_iter={self.max_iter}"


@register("sylvester_householder", paper=f"{_PAPER}: Householder", inverse="numerical",
          kind="residual")
class HouseholderSylvester(Sylvester):
    """Sylvester flow with Q the first M columns of H_1 H_2 ... H_K, H_k = I - 2 u_k u_k^T,
    u_k = v_k / ||v_k|| (van den Berg et al., 2018, Sec. 3.2 "Householder Sylvester flows");
    with a context the v_k are network outputs.

    A product of reflections is orthogonal for any v_k, so Q^T Q = I up to rounding. A v_k of
    (numerically) zero norm is treated as no reflection.

    Initialization: see :class:`Sylvester` (the identity); v_k ~ N(0, I).

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        reflections: the number K of reflections (default min(D, 8)).
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; see :class:`Sylvester`).
        activation: hypernetwork activation (conditional layers only).
    """

    def __init__(self, dim: int, m: int | None = None, reflections: int | None = None, *,
                 context_dim: int = 0, hidden: int | Sequence[int] | None = None,
                 activation: str = "elu") -> None:
        n = min(check_dim(dim, type(self).__name__), 8) if reflections is None else reflections
        self.reflections = check_positive_int(n, "reflections", type(self).__name__)
        super().__init__(dim, m, context_dim=context_dim, hidden=hidden, activation=activation)

    def q_init(self) -> dict[str, Tensor]:
        return {"vectors": torch.randn(self.reflections, self.dim)}

    def q(self, raw: Mapping[str, Tensor] | None = None) -> Tensor:
        return householder_q((self.raw(None) if raw is None else raw)["vectors"], self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reflections={self.reflections}"


@register("sylvester_triangular", paper=f"{_PAPER}: triangular", inverse="numerical",
          kind="residual")
class TriangularSylvester(Sylvester):
    """Sylvester flow with a fixed permutation for Q (van den Berg et al., 2018, Sec. 3.2
    "triangular Sylvester flows"): the first M columns of the identity, or with
    ``reverse=True`` of the reversal (Q_{D-1-j, j} = 1). Alternate ``reverse`` between
    consecutive layers so that each direction is transformed conditioned on the other. With a
    context only R, R~ and b are network outputs.

    Q is a buffer (it follows ``.to()``/``.double()`` and is saved in the state dict).

    Initialization: see :class:`Sylvester` (the identity).

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        reverse: use the reversal instead of the identity.
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; see :class:`Sylvester`).
        activation: hypernetwork activation (conditional layers only).
    """

    def __init__(self, dim: int, m: int | None = None, reverse: bool = False, *,
                 context_dim: int = 0, hidden: int | Sequence[int] | None = None,
                 activation: str = "elu") -> None:
        if not isinstance(reverse, bool):
            raise TypeError(f"{type(self).__name__}: reverse must be a bool, got {reverse!r}")
        super().__init__(dim, m, context_dim=context_dim, hidden=hidden, activation=activation)
        self.reverse = reverse
        perm = torch.eye(self.dim)
        if reverse:
            perm = perm.flip(1)
        self.register_buffer("q_fixed", perm[:, : self.m].contiguous())

    def q(self, raw: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.q_fixed

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reverse={self.reverse}"
