"""Sylvester normalizing flows (van den Berg, Hasenclever, Tomczak & Welling, 2018,
"Sylvester Normalizing Flows for Variational Inference").

    f(z) = z + Q R h(R~ Q^T z + b),   h = tanh,

with Q a D x M matrix of orthonormal columns (M <= D), R and R~ upper-triangular M x M and
b in R^M. By Sylvester's determinant identity, det J = det(I_M + diag(h'(r)) R~ R), a
triangular matrix, so

    log|det J| = sum_i log|1 + h'(r_i) R_ii R~_ii|,   r = R~ Q^T z + b.

The map is invertible when R_ii R~_ii > -1 / sup h' = -1: here R_ii = tanh(a_i) and
R~_ii = (1 - 1e-4) tanh(c_i), so the product lies in (-1 + 1e-4, 1) for any raw a, c (the
margin keeps log|det J| finite where tanh saturates in floating point).

Three ways to keep Q orthonormal, three registry entries:

* ``sylvester_orthogonal``: a free D x M matrix made orthonormal at every use by Björck's
  iteration Q <- Q (I + (I - Q^T Q) / 2), after scaling it by its Frobenius norm;
* ``sylvester_householder``: the first M columns of a product of Householder reflections;
* ``sylvester_triangular``: Q a fixed permutation, the identity or the reversal (alternate
  ``reverse`` between layers).

Inverse (numerical): z splits into its part in span(Q), v = Q^T z, and the orthogonal
complement, which f leaves unchanged. Q^T y = v + R h(R~ v + b), and because R and R~ are upper
triangular, component i involves only v_k for k >= i and is increasing in v_i
(1 + R_ii R~_ii h' > 0): back-substitution from i = M - 1 down to 0, one bracketed 1-D root per
component, each given implicit gradients (a Newton step at the root on the graph of the
components already solved), which makes the gradients those of the whole triangular system.
Then z = y - Q R h(R~ v + b).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_nf.transforms.base import Flow, implicit_newton_step, solve_monotone
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor
_MARGIN = 1e-4


def default_m(dim: int) -> int:
    """The default number of orthonormal columns: min(D, 16)."""
    return min(dim, 16)


class Sylvester(Flow):
    """Base of the three Sylvester variants; subclasses define :meth:`q`.

    Starts exactly at the identity (R = 0), with R~ small and random so that gradients reach
    R from the first step.
    """

    kind = "residual"

    def __init__(self, dim: int, m: int | None = None) -> None:
        super().__init__(dim)
        m = default_m(dim) if m is None else m
        if not isinstance(m, int) or not 1 <= m <= dim:
            raise ValueError(f"{type(self).__name__}: m must be an integer in [1, dim={dim}], "
                             f"got {m!r}")
        self.m = m
        self.r_diag = nn.Parameter(torch.zeros(m))
        self.r_upper = nn.Parameter(torch.zeros(m, m))
        self.rt_diag = nn.Parameter(0.1 * torch.randn(m))
        self.rt_upper = nn.Parameter(0.1 * torch.randn(m, m) / math.sqrt(m))
        self.b = nn.Parameter(torch.zeros(m))
        self.register_buffer("upper_mask", torch.triu(torch.ones(m, m), diagonal=1))

    def q(self) -> Tensor:
        """The D x M matrix with orthonormal columns."""
        raise NotImplementedError

    def triangles(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(R, R~, diag R, diag R~)."""
        rd = torch.tanh(self.r_diag)
        rtd = (1 - _MARGIN) * torch.tanh(self.rt_diag)
        r = self.r_upper * self.upper_mask + torch.diag_embed(rd)
        rt = self.rt_upper * self.upper_mask + torch.diag_embed(rtd)
        return r, rt, rd, rtd

    @staticmethod
    def _log_det(pre: Tensor, rd: Tensor, rtd: Tensor) -> Tensor:
        deriv = 1 - torch.tanh(pre) ** 2
        return torch.log1p(deriv * rd * rtd).sum(-1)

    def forward_and_log_det(self, x):
        q = self.q()
        r, rt, rd, rtd = self.triangles()
        pre = (x @ q) @ rt.T + self.b
        y = x + (torch.tanh(pre) @ r.T) @ q.T
        return y, self._log_det(pre, rd, rtd)

    def inverse_and_log_det(self, y):
        q = self.q()
        r, rt, rd, rtd = self.triangles()
        t = y @ q
        m = self.m
        v = [None] * m  # v[i]: solved components, carrying their graph
        h = [None] * m  # tanh(pre_i) for solved i
        for i in range(m - 1, -1, -1):
            c = self.b[i] + sum((rt[i, k] * v[k] for k in range(i + 1, m)), t.new_zeros(()))
            rest = sum((r[i, j] * h[j] for j in range(i + 1, m)), t.new_zeros(()))
            target = t[..., i] - rest
            rii, rtii = rd[i].detach(), rtd[i].detach()
            c_d, target_d = c.detach(), target.detach()

            def g(vi, rii=rii, rtii=rtii, c_d=c_d):
                th = torch.tanh(rtii * vi + c_d)
                return vi + rii * th, 1 + rii * rtii * (1 - th * th)

            target_d = target_d.expand(t.shape[:-1])
            spread = rii.abs() + 1e-6
            v_star = solve_monotone(g, target_d, target_d - spread, target_d + spread,
                                    layer=self._name())
            th_star = torch.tanh(rtd[i] * v_star + c)
            residual = v_star + rd[i] * th_star - target
            deriv = 1 + rd[i] * rtd[i] * (1 - th_star * th_star)
            v[i] = implicit_newton_step(v_star, residual, deriv)
            h[i] = torch.tanh(rtd[i] * v[i] + c)
        vv = torch.stack(v, -1)
        pre = vv @ rt.T + self.b
        x = y - (torch.tanh(pre) @ r.T) @ q.T
        return x, self._log_det(pre, rd, rtd)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, m={self.m}"


@register("sylvester_orthogonal", paper="van den Berg, Hasenclever, Tomczak & Welling (2018), "
          "Sylvester Normalizing Flows: orthogonal", inverse="numerical", kind="residual")
class OrthogonalSylvester(Sylvester):
    """Sylvester flow whose Q is orthonormalised by Björck's iteration at every use.

    Raises ``RuntimeError`` if the iteration does not converge (a rank-deficient raw Q).
    """

    def __init__(self, dim: int, m: int | None = None, max_iter: int = 100) -> None:
        super().__init__(dim, m)
        self.max_iter = int(max_iter)
        self.q_raw = nn.Parameter(torch.linalg.qr(torch.randn(dim, self.m))[0])

    def q(self) -> Tensor:
        q = self.q_raw / self.q_raw.norm().clamp_min(torch.finfo(self.q_raw.dtype).tiny)
        eye = torch.eye(self.m, dtype=q.dtype, device=q.device)
        tol = 100 * torch.finfo(q.dtype).eps
        for _ in range(self.max_iter):
            gram = q.T @ q
            err = float((gram - eye).abs().max().detach())
            if err <= tol:
                return q
            q = q @ (eye + 0.5 * (eye - gram))
        raise RuntimeError(
            f"{self._name()}: Björck orthogonalisation of Q did not converge in "
            f"{self.max_iter} iterations (max |Q^T Q - I| = {err:.2g}); the raw Q is "
            "rank-deficient or not finite - re-initialise it (e.g. with a QR factor)")


@register("sylvester_householder", paper="van den Berg, Hasenclever, Tomczak & Welling (2018),"
          " Sylvester Normalizing Flows: Householder", inverse="numerical", kind="residual")
class HouseholderSylvester(Sylvester):
    """Sylvester flow whose Q is the first M columns of H_1 ... H_K, H_k = I - 2 v v^T/|v|^2
    (``reflections`` K, default min(D, 8))."""

    def __init__(self, dim: int, m: int | None = None, reflections: int | None = None) -> None:
        super().__init__(dim, m)
        k = min(dim, 8) if reflections is None else reflections
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"{type(self).__name__}: reflections must be a positive integer, "
                             f"got {reflections!r}")
        self.vectors = nn.Parameter(torch.randn(k, dim))

    def q(self) -> Tensor:
        v = self.vectors
        q = torch.eye(self.dim, self.m, dtype=v.dtype, device=v.device)
        tiny = torch.finfo(v.dtype).tiny
        for k in range(v.shape[0] - 1, -1, -1):
            vk = v[k]
            q = q - (2 / (vk @ vk).clamp_min(tiny)) * torch.outer(vk, vk @ q)
        return q


@register("sylvester_triangular", paper="van den Berg, Hasenclever, Tomczak & Welling (2018), "
          "Sylvester Normalizing Flows: triangular", inverse="numerical", kind="residual")
class TriangularSylvester(Sylvester):
    """Sylvester flow with Q a fixed permutation: the identity, or the reversal with
    ``reverse=True`` (alternate it between layers)."""

    def __init__(self, dim: int, m: int | None = None, reverse: bool = False) -> None:
        super().__init__(dim, m)
        eye = torch.eye(dim)
        perm = eye.flip(1) if reverse else eye
        self.reverse = bool(reverse)
        self.register_buffer("q_fixed", perm[:, : self.m].contiguous())

    def q(self) -> Tensor:
        return self.q_fixed.to(self.r_diag.dtype)
