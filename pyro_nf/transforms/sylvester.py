"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference", Sec. 3).

    f(z) = z + Q R h(R~ Q^T z + b),   h = tanh,

with Q a D x M matrix of orthonormal columns (1 <= M <= D), R and R~ upper-triangular M x M
matrices and b in R^M.

Log-determinant. J = I_D + Q R H R~ Q^T with H = diag(h'(r)), r = R~ Q^T z + b. Sylvester's
determinant identity det(I_D + A B) = det(I_M + B A) and Q^T Q = I_M give
det J = det(I_M + H R~ R); H R~ R is upper triangular with diagonal h'(r_i) R~_ii R_ii, so

    log|det J| = sum_i log|1 + h'(r_i) R_ii R~_ii|.

Invertibility. With 0 < h' <= 1, every factor is positive for all z iff R_ii R~_ii > -1. Here

    R_ii = tanh(a_i),   R~_ii = (1 - delta) tanh(c_i),   delta = 1e-4,

so R_ii R~_ii lies in [-1 + delta, 1) for *any* raw a, c. The margin keeps the bound in
floating point, where tanh(20) rounds to 1 and 1 - |tanh(a)| underflows for large a. The
positive quantity
k_i = 1 + R_ii R~_ii is computed without cancellation (see :func:`_diagonals`), and each factor
is evaluated as the sum of two non-negative terms,

    1 + h'(r_i) R_ii R~_ii = tanh^2(r_i) + sech^2(r_i) k_i   (>= min(1, k_i) > 0),

which also is the derivative used by the inverse. Where R_ii R~_ii >= 0 there is no
cancellation and the log-det term is log1p(h'(r_i) R_ii R~_ii), exactly 0 at initialisation.

Three ways to keep Q orthonormal, three registry entries (all kind ``"residual"``, numerical
inverse), sharing :class:`Sylvester`:

* ``sylvester_orthogonal`` (:class:`OrthogonalSylvester`): a free D x M matrix A, scaled by its
  Frobenius norm (so its singular values are <= 1) and orthonormalised at every use by Björck's
  iteration Q <- Q (I + (I - Q^T Q) / 2) until ||Q^T Q - I||_F < sqrt(eps), followed by two
  more (polishing) steps; gradients flow through the iterations. The limit is the orthonormal
  polar factor of A.
* ``sylvester_householder`` (:class:`HouseholderSylvester`): the first M columns of a product of
  K Householder reflections H_k = I - 2 v_k v_k^T / ||v_k||^2.
* ``sylvester_triangular`` (:class:`TriangularSylvester`): Q fixed, the first M columns of the
  identity or of the reversal permutation (``reverse=True``; alternate it between layers).

Inverse (numerical). Write v = Q^T z. f changes z only inside span(Q): with t = Q^T y,

    t = F(v) := v + R h(R~ v + b),    (I - Q Q^T) z = (I - Q Q^T) y.

As R and R~ are upper triangular, F_i(v) depends only on v_k for k >= i, and
dF_i/dv_i = 1 + R_ii R~_ii h'(r_i) > 0. Back-substitution, i = M - 1 down to 0, solves one
increasing scalar equation per component,

    v_i + R_ii h(R~_ii v_i + c_i) = t_i - sum_{j > i} R_ij h(r_j),
    c_i = b_i + sum_{k > i} R~_ik v_k,

whose root lies within |R_ii| of the right-hand side (|h| <= 1); it is found by
:func:`~pyro_nf.transforms.base.solve_monotone`, batched over the inputs. Each root gets its
implicit gradients from :func:`~pyro_nf.transforms.base.implicit_newton_step`, whose residual is
computed with the graph of the components already solved (c_i and the right-hand side depend on
v_{>i}); chaining the scalar implicit steps gives the exact implicit gradients of the
triangular system with respect to y and every parameter. Then

    z = y + Q (v - Q^T y)   (= y - Q R h(R~ v + b) when F(v) = t exactly),

a form for which f(z) - y = Q (F(v) - t) is exactly the solver's residual (up to the rounding
of the forward pass itself), where y - Q R h(R~ v + b) would give, to first order,
Q R H R~ (F(v) - t).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_nf.transforms.base import Flow, implicit_newton_step, sech2, solve_monotone
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor

#: R_ii R~_ii >= -(1 - DIAGONAL_MARGIN): the invertibility margin of the diagonals.
DIAGONAL_MARGIN = 1e-4

_PAPER = "van den Berg, Hasenclever, Tomczak & Welling (2018), Sylvester Normalizing Flows"


def default_m(dim: int) -> int:
    """The default number of orthonormal columns M: min(D, 16)."""
    return min(dim, 16)


def _one_minus_abs_tanh(a: Tensor) -> Tensor:
    """1 - |tanh(a)| = 2 sigmoid(-2|a|), accurate where tanh(a) rounds to +-1."""
    return 2 * torch.sigmoid(-2 * a.abs())

def _diagonals(a: Tensor, c: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """(diag R, diag R~, k) with R_ii = tanh(a), R~_ii = (1 - margin) tanh(c) and
    k = 1 + R_ii R~_ii > 0 computed without cancellation.

    For a negative product, 1 - |x| |y| (1 - margin) with x = tanh(a), y = tanh(c) is written
    (1 - |x|) + |x| ((1 - |y|) + |y| margin), a sum of non-negative terms.
    """
    x = torch.tanh(a)
    y = torch.tanh(c)
    rd, rtd = x, (1 - margin) * y
    prod = rd * rtd
    ax, ay = x.abs(), y.abs()
    k_neg = _one_minus_abs_tanh(a) + ax * (_one_minus_abs_tanh(c) + ay * margin)
    return rd, rtd, torch.where(prod < 0, k_neg, 1 + prod)


def _factor(pre: Tensor, k: Tensor) -> Tensor:
    """1 + h'(pre) R_ii R~_ii = tanh^2(pre) + sech^2(pre) k, both terms non-negative."""
    th = torch.tanh(pre)
    return th * th + sech2(pre) * k


def _log_factor(pre: Tensor, prod: Tensor, k: Tensor) -> Tensor:
    """log(1 + h'(pre) prod) with prod = R_ii R~_ii and k = 1 + prod: log1p where prod >= 0
    (exactly 0 for prod = 0, as at initialisation), the cancellation-free sum of
    :func:`_factor` where prod < 0."""
    return torch.where(prod >= 0, torch.log1p(sech2(pre) * prod), torch.log(_factor(pre, k)))


def _vecmat(x: Tensor, m: Tensor) -> Tensor:
    """x^T M over the last dimension of ``x`` (..., D) for M (D, K) or batched (..., D, K)."""
    if m.dim() == 2:
        return x @ m
    return (x.unsqueeze(-2) @ m).squeeze(-2)


def sylvester_triangles(r_diag: Tensor, r_upper: Tensor, rt_diag: Tensor, rt_upper: Tensor,
                        rows: Tensor, cols: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(R, R~, diag R, diag R~, k)`` from raw diagonals (..., M) and packed strict upper
    triangles (..., M (M - 1) / 2) at ``(rows, cols)``; k = 1 + diag R * diag R~ > 0 (see
    :func:`_diagonals`). Batched over the leading dimensions."""
    rd, rtd, k = _diagonals(r_diag, rt_diag, DIAGONAL_MARGIN)
    r = torch.diag_embed(rd)
    rt = torch.diag_embed(rtd)
    if r_diag.dim() == 1:
        r = r.index_put((rows, cols), r_upper)
        rt = rt.index_put((rows, cols), rt_upper)
    else:  # a fresh tensor: the in-place write is recorded by autograd
        r[..., rows, cols] = r_upper
        rt[..., rows, cols] = rt_upper
    return r, rt, rd, rtd, k


def sylvester_forward(x: Tensor, q: Tensor, r: Tensor, rt: Tensor, b: Tensor, rd: Tensor,
                      rtd: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(x), log|det J_f(x)|)`` for f(z) = z + Q R tanh(R~ Q^T z + b).

    Q (D, M) or (..., D, M); R, R~ (..., M, M) and the diagonals from
    :func:`sylvester_triangles`; b (..., M); all broadcast against ``x`` (..., D)."""
    pre = _vecmat(_vecmat(x, q), rt.mT) + b  # r = R~ Q^T z + b
    y = x + _vecmat(_vecmat(torch.tanh(pre), r.mT), q.mT)
    return y, _log_factor(pre, rd * rtd, k).sum(-1)


def sylvester_inverse(y: Tensor, q: Tensor, r: Tensor, rt: Tensor, b: Tensor, rd: Tensor,
                      rtd: Tensor, k: Tensor, *, layer: str) -> tuple[Tensor, Tensor]:
    """``(f^{-1}(y), log|det J_f|)`` at the pre-image by back-substitution, one bracketed
    scalar solve per component with implicit gradients (module docstring); shapes as in
    :func:`sylvester_forward`. ``layer`` names the layer in a non-convergence error."""
    t = _vecmat(y, q)  # Q^T y, shape (..., M)
    eps = torch.finfo(y.dtype).eps
    m = t.shape[-1]
    batch = torch.broadcast_shapes(t.shape[:-1], b.shape[:-1], r.shape[:-2])
    t = t.expand(batch + (m,))
    solved: list[Tensor] = []  # v_{i+1}, ..., v_{M-1} (graph-carrying), nearest first
    tanhs: list[Tensor] = []  # h(r_j) for the same components
    for i in range(m - 1, -1, -1):
        if solved:
            later_v = torch.stack(solved[::-1], -1)  # v_{i+1..M-1} in order
            later_h = torch.stack(tanhs[::-1], -1)
            c = b[..., i] + (later_v * rt[..., i, i + 1:]).sum(-1)
            target = t[..., i] - (later_h * r[..., i, i + 1:]).sum(-1)
        else:
            c = b[..., i].expand(batch)
            target = t[..., i]
        rd_i, rtd_i, k_i = rd[..., i], rtd[..., i], k[..., i]
        with torch.no_grad():
            rd_, rtd_, k_, c_, target_ = (rd_i.detach(), rtd_i.detach(), k_i.detach(),
                                          c.detach(), target.detach())

            def g(s: Tensor, rd_=rd_, rtd_=rtd_, k_=k_, c_=c_) -> tuple[Tensor, Tensor]:
                pre_ = rtd_ * s + c_
                return s + rd_ * torch.tanh(pre_), _factor(pre_, k_)

            # |R_ii h| <= |R_ii| brackets the root; a few ulps of slack for the rounding
            slack = rd_.abs() + 8 * eps * target_.abs().clamp_min(1.0)
            v_star = solve_monotone(g, target_, target_ - slack, target_ + slack, layer=layer)
            # keep the Newton polish of implicit_newton_step only where it lowers the
            # residual (where dF_i/dv_i is near its lower bound it could overshoot)
            value, deriv_ = g(v_star)
            polished = v_star - (value - target_) / deriv_
            better = torch.isfinite(polished) & (
                (g(polished)[0] - target_).abs() <= (value - target_).abs())
        pre_star = rtd_i * v_star + c
        residual = v_star + rd_i * torch.tanh(pre_star) - target  # graph to params, y
        residual = torch.where(better, residual, residual - residual.detach())
        v_i = implicit_newton_step(v_star, residual, _factor(pre_star, k_i))
        solved.append(v_i)
        tanhs.append(torch.tanh(rtd_i * v_i + c))
    v = torch.stack(solved[::-1], -1)
    pre = _vecmat(v, rt.mT) + b
    x = y + _vecmat(v - t, q.mT)
    return x, _log_factor(pre, rd * rtd, k).sum(-1)


def sylvester_init(m: int) -> dict[str, Tensor]:
    """Raw parameters of an identity Sylvester map with M columns (see :class:`Sylvester`):
    ``r_diag``, ``r_upper``, ``b`` zero; ``rt_diag`` ~ 0.1 N(0, 1) and ``rt_upper`` ~
    0.1 N(0, 1) / sqrt(M)."""
    n_upper = m * (m - 1) // 2
    return {"r_diag": torch.zeros(m), "r_upper": torch.zeros(n_upper),
            "rt_diag": 0.1 * torch.randn(m), "rt_upper": 0.1 * torch.randn(n_upper) / math.sqrt(m),
            "b": torch.zeros(m)}


def check_m(m: object, dim: int, layer: str) -> int:
    """Validate the number of columns M (default min(D, 16)) and return it."""
    if m is None:
        m = default_m(dim)
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"{layer}: m must be an int, got {m!r}")
    if not 1 <= m <= dim:
        raise ValueError(f"{layer}: m must satisfy 1 <= m <= dim={dim}, got m={m}")
    return m


def bjorck(raw: Tensor, *, max_iter: int, polish_steps: int, layer: str,
           raw_name: str = "q_raw") -> Tensor:
    """The orthonormal polar factor of ``raw`` (D, M) or (..., D, M), by Björck's iteration
    Q <- Q (I + (I - Q^T Q) / 2) from raw / ||raw||_F until the largest ||Q^T Q - I||_F of the
    batch is below sqrt(eps), then ``polish_steps`` more; differentiable through all steps.

    Raises:
        RuntimeError: naming ``layer``, when it does not converge in ``max_iter`` steps.
    """
    norm = torch.linalg.matrix_norm(raw)[..., None, None]
    q = raw / norm.clamp_min(torch.finfo(raw.dtype).tiny)
    m = raw.shape[-1]
    eye = torch.eye(m, dtype=raw.dtype, device=raw.device)
    tol = math.sqrt(torch.finfo(raw.dtype).eps)
    err = float("nan")
    for _ in range(max_iter):
        gram = q.mT @ q
        err = float(torch.linalg.matrix_norm(gram.detach() - eye).max())
        if not math.isfinite(err):
            break
        if err < tol:
            for _ in range(polish_steps):
                q = q @ (1.5 * eye - 0.5 * (q.mT @ q))
            return q
        q = q @ (1.5 * eye - 0.5 * gram)
    raise RuntimeError(
        f"{layer}: Björck orthogonalisation of Q did not converge in {max_iter} iterations "
        f"(||Q^T Q - I||_F = {err:.3g}, tolerance {tol:.2g}); the raw matrix {raw_name} is "
        "numerically rank-deficient or not finite. Re-initialise it with orthonormal columns "
        "(e.g. torch.linalg.qr) or raise max_iter")


def householder_q(vectors: Tensor, m: int) -> Tensor:
    """The first M columns of H_1 ... H_K, H_k = I - 2 u_k u_k^T with u_k = v_k / ||v_k||, for
    ``vectors`` (K, D) or batched (..., K, D); a v_k of (numerically) zero norm is no
    reflection. Returns (D, M) or (..., D, M)."""
    v = vectors
    dim = v.shape[-1]
    sq = (v * v).sum(-1, keepdim=True)
    nonzero = sq > torch.finfo(v.dtype).tiny ** 0.5
    u = torch.where(nonzero, v * torch.rsqrt(torch.where(nonzero, sq, torch.ones_like(sq))),
                    torch.zeros_like(v))
    q = torch.eye(dim, m, dtype=v.dtype, device=v.device)
    for j in range(v.shape[-2] - 1, -1, -1):  # H_1 (H_2 (... (H_K E)))
        uj = u[..., j, :]
        q = q - 2 * uj[..., :, None] * _vecmat(uj, q)[..., None, :]
    return q


class Sylvester(Flow):
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

    kind = "residual"

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
        """``(R, R~, diag R, diag R~, k)`` with k = 1 + diag R * diag R~ > 0 (see
        :func:`_diagonals`)."""
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
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{type(self).__name__}: max_iter must be a positive integer, "
                             f"got {max_iter!r}")
        self.max_iter = max_iter
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
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{type(self).__name__}: reflections must be a positive integer, "
                             f"got {reflections!r}")
        self.reflections = n
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
