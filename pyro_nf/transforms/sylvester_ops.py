"""The numerics of Sylvester flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference", Sec. 3), shared by the layers of
:mod:`pyro_nf.transforms.sylvester`, with their own parameters or per data point from a
context (batched over data points).

    f(z) = z + Q R h(R~ Q^T z + b),   h = tanh,

Q (D x M) with orthonormal columns, R and R~ upper-triangular M x M, b in R^M.

Log-det. Sylvester's identity det(I_D + A B) = det(I_M + B A) and Q^T Q = I_M give
det J = det(I_M + H R~ R), H = diag(h'(r)), r = R~ Q^T z + b, an upper-triangular matrix:

    log|det J| = sum_i log|1 + h'(r_i) R_ii R~_ii|.

Invertibility. With 0 < h' <= 1 every factor is positive for all z iff R_ii R~_ii > -1. Here
R_ii = tanh(a_i) and R~_ii = (1 - delta) tanh(c_i), delta = 1e-4, so R_ii R~_ii lies in
[-1 + delta, 1) for any raw a, c (the margin keeps the bound in floating point, where tanh(20)
rounds to 1). k_i = 1 + R_ii R~_ii is computed without cancellation (:func:`_diagonals`) and
each factor as tanh^2(r_i) + sech^2(r_i) k_i, a sum of non-negative terms (also the inverse's
derivative); where R_ii R~_ii >= 0 the log-det term is log1p(h'(r_i) R_ii R~_ii), exactly 0 at
initialization.

Inverse (numerical). f changes z only inside span(Q): with v = Q^T z and t = Q^T y,
t = F(v) := v + R h(R~ v + b), where F_i depends only on v_{>=i} and dF_i/dv_i > 0.
Back-substitution, i = M - 1 down to 0, solves one increasing scalar equation per component,

    v_i + R_ii h(R~_ii v_i + c_i) = t_i - sum_{j > i} R_ij h(r_j),
    c_i = b_i + sum_{k > i} R~_ik v_k,

whose root lies within |R_ii| of the right-hand side, with
:func:`~pyro_nf.transforms.base.solve_monotone`; each root gets its implicit gradients from
:func:`~pyro_nf.transforms.base.implicit_newton_step` with the graph of the components already
solved, which chains to the exact implicit gradients of the triangular system. Then
z = y + Q (v - Q^T y), for which f(z) - y = Q (F(v) - t) is exactly the solver's residual
(y - Q R h(R~ v + b) would give Q R H R~ (F(v) - t) to first order).
"""

from __future__ import annotations

import math

import torch

from pyro_nf.transforms.base import implicit_newton_step, sech2, solve_monotone

Tensor = torch.Tensor

#: R_ii R~_ii >= -(1 - DIAGONAL_MARGIN): the invertibility margin of the diagonals.
DIAGONAL_MARGIN = 1e-4


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
    (exactly 0 for prod = 0, as at initialization), the cancellation-free sum of
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
        f"{layer}: Björck orthogonalization of Q did not converge in {max_iter} iterations "
        f"(||Q^T Q - I||_F = {err:.3g}, tolerance {tol:.2g}); the raw matrix {raw_name} is "
        "numerically rank-deficient or not finite. Re-initialize it with orthonormal columns "
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
