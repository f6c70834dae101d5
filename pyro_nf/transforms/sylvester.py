"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference", Sec. 3 and 4).

    f(z) = z + Q R tanh(R~ Q^T z + b),

with Q a D x M matrix of orthonormal columns (1 <= M <= D), R and R~ upper-triangular M x M and
b in R^M: planar flow's residual map with M hidden units instead of one, whose log-det is a sum
of M terms. diag R diag R~ >= -1 + 1e-4 keeps it invertible for any raw parameters; the inverse
is numerical (back-substitution of M scalar solves with implicit gradients). The numerics are
in :mod:`pyro_nf.transforms._sylvester_ops`.

Three registry entries keep Q orthonormal three ways: ``sylvester_orthogonal`` (Björck's
iteration on a free D x M matrix), ``sylvester_householder`` (the first M columns of K
Householder reflections) and ``sylvester_triangular`` (a fixed permutation). Their conditional
forms (the paper's amortized flows, Sec. 4) take R, R~, b and the raw material of Q per data
point from a hypernetwork of a context h, under the same constraints for every h; the
triangular one keeps its fixed Q.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_nf.transforms._sylvester_ops import DIAGONAL_MARGIN as DIAGONAL_MARGIN
from pyro_nf.transforms._sylvester_ops import (
    bjorck,
    check_m,
    householder_q,
    sylvester_forward,
    sylvester_init,
    sylvester_inverse,
    sylvester_triangles,
)
from pyro_nf.transforms.base import ResidualFlow, check_dim, check_positive_int
from pyro_nf.transforms.context import ConditionalFlow, HyperNet, hyper_hidden
from pyro_nf.transforms.registry import register, register_conditional

Tensor = torch.Tensor

_PAPER = "van den Berg, Hasenclever, Tomczak & Welling (2018), Sylvester Normalizing Flows"


class Sylvester(ResidualFlow):
    """Base of the three Sylvester variants, f(z) = z + Q R tanh(R~ Q^T z + b); subclasses
    define :meth:`q`, the D x M matrix with orthonormal columns.

    Parameters: ``r_diag``/``rt_diag`` (raw diagonals a, c: R_ii = tanh(a_i),
    R~_ii = (1 - 1e-4) tanh(c_i)), ``r_upper``/``rt_upper`` (the strictly upper triangles,
    packed row by row) and ``b``.

    Initialisation: exactly the identity. R = 0 (a = 0 and a zero upper triangle) so that
    f(z) = z and log|det J| = 0; R~ is small and random (diagonal raw ~ 0.1 N(0, 1), upper
    entries ~ 0.1 N(0, 1) / sqrt(M)), b = 0 and Q orthonormal, so that h(R~ Q^T z + b) != 0
    and the gradients reach R (diagonal and upper triangle) from the first step; R~, b and Q
    receive gradients once R != 0.

    Args:
        dim: the event size D.
        m: the number of orthonormal columns M, 1 <= M <= D (default min(D, 16)). With the
            fixed-permutation Q of :class:`TriangularSylvester`, M < D leaves D - M coordinates
            untouched.
    """

    def __init__(self, dim: int, m: int | None = None) -> None:
        super().__init__(dim)
        self.m = m = check_m(m, self.dim, type(self).__name__)
        rows, cols = torch.triu_indices(m, m, offset=1)
        self.register_buffer("triu_rows", rows, persistent=False)
        self.register_buffer("triu_cols", cols, persistent=False)
        for name, value in sylvester_init(m).items():
            setattr(self, name, nn.Parameter(value))

    # -- parametrisation -------------------------------------------------------------------
    def q(self) -> Tensor:
        """The D x M matrix Q with orthonormal columns."""
        raise NotImplementedError

    def triangles(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(R, R~, diag R, diag R~, k)`` with k = 1 + diag R * diag R~ > 0
        (:func:`~pyro_nf.transforms._sylvester_ops.sylvester_triangles`)."""
        return sylvester_triangles(self.r_diag, self.r_upper, self.rt_diag, self.rt_upper,
                                   self.triu_rows, self.triu_cols)

    # -- the two passes --------------------------------------------------------------------
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r, rt, rd, rtd, k = self.triangles()
        return sylvester_forward(x, self.q(), r, rt, self.b, rd, rtd, k)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r, rt, rd, rtd, k = self.triangles()
        return sylvester_inverse(y, self.q(), r, rt, self.b, rd, rtd, k, layer=self._name())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, m={self.m}"


@register("sylvester_orthogonal", paper=f"{_PAPER}: orthogonal", inverse="numerical",
          kind="residual")
class OrthogonalSylvester(Sylvester):
    """Sylvester flow with Q orthonormalised by Björck's iteration (van den Berg et al., 2018,
    Sec. 3.2 "orthogonal Sylvester flows").

    Q is the orthonormal polar factor of a free D x M parameter ``q_raw`` = A: A / ||A||_F
    (singular values in (0, 1]) is iterated with Q <- Q (I + (I - Q^T Q) / 2) until
    ||Q^T Q - I||_F < sqrt(eps), then two more steps, which bring Q^T Q - I to rounding level
    (quadratic convergence) and the derivative with it; gradients flow through all steps. A
    singular value s grows by about 1.5x per step while small, so convergence takes about
    log_1.5(||A||_F / s_min(A)) + 6 steps: ``max_iter = 30`` accepts
    ||A||_F / s_min(A) up to about 10^4.

    Initialisation: see :class:`Sylvester` (the identity); A is the orthonormal Q factor of a
    Gaussian matrix.

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        max_iter: the most Björck steps before giving up.

    Raises:
        RuntimeError: from :meth:`q` (so from any pass), when A is numerically rank-deficient
            or not finite and the iteration does not converge in ``max_iter`` steps.
    """

    #: extra Björck steps after the tolerance is met
    polish_steps = 2

    def __init__(self, dim: int, m: int | None = None, max_iter: int = 30) -> None:
        super().__init__(dim, m)
        self.max_iter = check_positive_int(max_iter, "max_iter", type(self).__name__)
        self.q_raw = nn.Parameter(torch.linalg.qr(torch.randn(self.dim, self.m))[0])

    def q(self) -> Tensor:
        return bjorck(self.q_raw, max_iter=self.max_iter, polish_steps=self.polish_steps,
                      layer=self._name())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_iter={self.max_iter}"


@register("sylvester_householder", paper=f"{_PAPER}: Householder", inverse="numerical",
          kind="residual")
class HouseholderSylvester(Sylvester):
    """Sylvester flow with Q the first M columns of H_1 H_2 ... H_K, H_k = I - 2 u_k u_k^T,
    u_k = v_k / ||v_k|| (van den Berg et al., 2018, Sec. 3.2 "Householder Sylvester flows").

    A product of reflections is orthogonal for any v_k, so Q^T Q = I up to rounding. A v_k of
    (numerically) zero norm is treated as no reflection.

    Initialisation: see :class:`Sylvester` (the identity); v_k ~ N(0, I).

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        reflections: the number K of reflections (default min(D, 8)).
    """

    def __init__(self, dim: int, m: int | None = None, reflections: int | None = None) -> None:
        super().__init__(dim, m)
        n = min(self.dim, 8) if reflections is None else reflections
        self.reflections = check_positive_int(n, "reflections", type(self).__name__)
        self.vectors = nn.Parameter(torch.randn(n, self.dim))

    def q(self) -> Tensor:
        return householder_q(self.vectors, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reflections={self.reflections}"


@register("sylvester_triangular", paper=f"{_PAPER}: triangular", inverse="numerical",
          kind="residual")
class TriangularSylvester(Sylvester):
    """Sylvester flow with a fixed permutation for Q (van den Berg et al., 2018, Sec. 3.2
    "triangular Sylvester flows"): the first M columns of the identity, or with
    ``reverse=True`` of the reversal (Q_{D-1-j, j} = 1). Alternate ``reverse`` between
    consecutive layers so that each direction is transformed conditioned on the other.

    Q is a buffer (it follows ``.to()``/``.double()`` and is saved in the state dict).

    Initialisation: see :class:`Sylvester` (the identity).

    Args:
        dim: the event size D.
        m: the number of columns M of Q, 1 <= M <= D (default min(D, 16)).
        reverse: use the reversal instead of the identity.
    """

    def __init__(self, dim: int, m: int | None = None, reverse: bool = False) -> None:
        super().__init__(dim, m)
        if not isinstance(reverse, bool):
            raise TypeError(f"{type(self).__name__}: reverse must be a bool, got {reverse!r}")
        self.reverse = reverse
        perm = torch.eye(self.dim)
        if reverse:
            perm = perm.flip(1)
        self.register_buffer("q_fixed", perm[:, : self.m].contiguous())

    def q(self) -> Tensor:
        return self.q_fixed

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reverse={self.reverse}"


# ----------------------------------------------------------------------------- conditional forms
SylvesterParams = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
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

    def flow_parameters(self, context: Tensor) -> SylvesterParams:
        """(Q, R, R~, b, diag R, diag R~, 1 + diag R diag R~) per data point."""
        p = self.hyper(context)
        r, rt, rd, rtd, k = sylvester_triangles(p["r_diag"], p["r_upper"], p["rt_diag"],
                                                p["rt_upper"], self.triu_rows, self.triu_cols)
        return self.q(p), r, rt, p["b"], rd, rtd, k

    def forward_and_log_det(self, x: Tensor, params: SylvesterParams) -> tuple[Tensor, Tensor]:
        return sylvester_forward(x, *params)

    def inverse_and_log_det(self, y: Tensor, params: SylvesterParams) -> tuple[Tensor, Tensor]:
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
        self.max_iter = check_positive_int(max_iter, "max_iter", type(self).__name__)
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
        self.reflections = check_positive_int(n, "reflections", type(self).__name__)
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
