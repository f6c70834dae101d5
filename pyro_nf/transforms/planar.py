"""Planar flow (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
Sec. 4.1 and Appendix A.1).

    f(z) = z + u_hat h(w^T z + b),   h = tanh,

with parameters u, w in R^D and b in R. Appendix A.1 makes f invertible for *any* raw u, w by
replacing u with

    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2,   m(x) = -1 + softplus(x),

so that w^T u_hat = m(w^T u) > -1 (>= -1 once softplus underflows). Here m(x) - x is computed as
softplus(-x) - 1, which has no cancellation for large x. For w = 0 (||w||^2 below the square
root of the dtype's smallest normal number) the correction is dropped: f(z) = z + u tanh(b) is
then a translation, invertible for any u.

Log-determinant, by the matrix determinant lemma (psi(z) = h'(w^T z + b) w):

    log|det J| = log|1 + u_hat^T psi(z)| = log(1 + h'(a) w^T u_hat),   a = w^T z + b.

With q = 1 + w^T u_hat = softplus(w^T u) >= 0 and h'(a) = sech^2(a) = 1 - tanh^2(a), the
argument is written tanh^2(a) + sech^2(a) q: a sum of two non-negative terms, accurate even
where w^T u_hat is close to -1, and clamped at the dtype's smallest normal number so that
log|det J| stays finite when softplus underflows (q = 0, a = 0: a singular Jacobian).

Inverse (numerical). With a = w^T z + b, the output satisfies

    c := w^T y + b = a + k tanh(a) =: g(a),   k = w^T u_hat >= -1

(k is computed from u_hat as the forward map uses it, so the root is that map's own even where
rounding separates it from q - 1), and g'(a) = tanh^2(a) + q sech^2(a) >= 0, so g is
increasing and its root lies in [c - |k|, c + |k|] (because |k tanh(a)| <= |k|). The root is
found by the bracketed Newton solver :func:`~pyro_nf.transforms.base.solve_monotone` without
autograd, and given its implicit gradients (da = -(dg/dtheta) / g'(a), with respect to u, w, b
and y) by :func:`~pyro_nf.transforms.base.implicit_newton_step`. Then z = y - u_hat tanh(a).

With a context (``Planar(D, context_dim=C)``, Rezende & Mohamed's Sec. 4: the inference
network outputs the flow parameters): u(h), w(h), b(h) are outputs of a hypernetwork of the
context h, and the same constraint, log-det and inverse (the functions below, batched over data
points) make f(. ; h) invertible for every context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.base import (
    implicit_newton_step,
    sech2,
    softplus_exact,
    softplus_inverse,
    solve_monotone,
)
from pyro_nf.transforms.context import ResidualFlow
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def planar_constrain(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """(u_hat, q) for raw u, w of shape (..., D): u_hat = u + (m(w^T u) - w^T u) w / ||w||^2
    and q = 1 + w^T u_hat = softplus(w^T u) >= 0 (q = 1 and u_hat = u where w = 0).

    Batched over the leading dimensions, so an unconditional layer (shape (D,)) and a
    hypernetwork's per-data-point parameters (shape (N, D)) share the same constraint."""
    wu = torch.linalg.vecdot(w, u)
    norm_sq = torch.linalg.vecdot(w, w)
    # below sqrt(tiny), 1/||w||^2 and its gradient (1/||w||^4) would overflow: treat as w = 0
    nonzero = norm_sq > torch.finfo(w.dtype).tiny ** 0.5
    safe_norm_sq = torch.where(nonzero, norm_sq, torch.ones_like(norm_sq))
    shift = torch.where(nonzero, softplus_exact(-wu) - 1, torch.zeros_like(wu))  # m(wu) - wu
    u_hat = u + (shift / safe_norm_sq)[..., None] * w
    q = torch.where(nonzero, softplus_exact(wu), torch.ones_like(wu))
    return u_hat, q


def _planar_log_det(a: Tensor, q: Tensor) -> Tensor:
    # log(1 + h'(a) w^T u_hat) = log(tanh^2(a) + sech^2(a) q), both terms >= 0
    value = torch.tanh(a) ** 2 + sech2(a) * q
    return torch.log(value.clamp_min(torch.finfo(a.dtype).tiny))


def planar_forward(x: Tensor, u_hat: Tensor, w: Tensor, b: Tensor,
                   q: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(x), log|det J_f(x)|)`` for f(x) = x + u_hat tanh(w^T x + b).

    ``u_hat``, ``q`` from :func:`planar_constrain`; ``u_hat``, ``w`` of shape (..., D) and
    ``b``, ``q`` of shape (...), broadcast against ``x`` of shape (..., D)."""
    a = torch.linalg.vecdot(x, w) + b
    return x + u_hat * torch.tanh(a)[..., None], _planar_log_det(a, q)


def planar_inverse(y: Tensor, u_hat: Tensor, w: Tensor, b: Tensor, q: Tensor, *,
                   layer: str) -> tuple[Tensor, Tensor]:
    """``(f^{-1}(y), log|det J_f|)`` at the pre-image, by the bracketed scalar solve of the
    module docstring with implicit gradients; shapes as in :func:`planar_forward`. ``layer``
    names the layer in a non-convergence error."""
    # w^T u_hat as the forward map has it (never below -1): equal to q - 1 in exact arithmetic,
    # but a large raw u makes u_hat's rounding (eps |u| |w|) visible, and the root must be the
    # forward map's own
    k = torch.linalg.vecdot(w, u_hat).clamp_min(-1.0)
    c = torch.linalg.vecdot(y, w) + b
    tiny = torch.finfo(y.dtype).tiny
    with torch.no_grad():
        k_, q_, c_ = k.detach(), q.detach(), c.detach()

        def g(a: Tensor) -> tuple[Tensor, Tensor]:
            t = torch.tanh(a)
            return a + k_ * t, t * t + q_ * sech2(a)

        # |k tanh(a)| <= |k| brackets the root; a few ulps of slack for rounding in c -+ |k|
        slack = k_.abs() + 8 * torch.finfo(y.dtype).eps * torch.maximum(
            c_.abs(), k_.abs()).clamp_min(1.0)
        a_star = solve_monotone(g, c_, c_ - slack, c_ + slack, layer=layer)
        # the Newton step inside implicit_newton_step also polishes the value; keep it only
        # where it lowers the residual (a near-singular g' could send it astray)
        value, deriv = g(a_star)
        step = (value - c_) / deriv.clamp_min(tiny)
        polished = a_star - step
        better = torch.isfinite(polished) & ((g(polished)[0] - c_).abs()
                                             <= (value - c_).abs())
    t_star = torch.tanh(a_star)
    residual = a_star + k * t_star - c  # from the detached root, with graph to u, w, b, y
    residual = torch.where(better, residual, residual - residual.detach())
    deriv = (t_star * t_star + q * sech2(a_star)).clamp_min(tiny)
    a = implicit_newton_step(a_star, residual, deriv)
    return y - u_hat * torch.tanh(a)[..., None], _planar_log_det(a, q)


def planar_init(dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Raw (u, w, b) of an identity planar map: w a random unit vector, u = c w with
    softplus(c) = 1 (so w^T u_hat = m(c) = 0 and u_hat = 0), b = 0."""
    direction = torch.randn(dim)
    direction = direction / direction.norm().clamp_min(1e-6)
    return softplus_inverse(1.0) * direction, direction, torch.zeros(())


PlanarParams = tuple[Tensor, Tensor, Tensor, Tensor]


@register("planar", paper="Rezende & Mohamed (2015), Variational Inference with Normalizing "
          "Flows: planar flow", inverse="numerical", kind="residual")
class Planar(ResidualFlow):
    """Planar flow f(z) = z + u_hat tanh(w^T z + b) (Rezende & Mohamed, 2015, App. A.1).

    Invertible for any raw parameters (w^T u_hat >= -1); the inverse is a one-dimensional
    bracketed Newton solve with implicit gradients (see the module docstring). With
    ``context_dim=C > 0``, f(z; h) = z + u_hat(h) tanh(w(h)^T z + b(h)): u, w, b per data point
    from an MLP of the context (:class:`~pyro_nf.transforms.context.ResidualFlow`), constrained
    the same way.

    Initialization: the identity, up to rounding of order 1e-8 relative (for every context). w
    is a random unit vector, b = 0 and u = c w with softplus(c) = 1, which makes
    w^T u_hat = m(c) = 0 and hence u_hat = 0. (u = 0 would *not* give the identity:
    m(0) = -1 + log 2, so u_hat would be -0.31 w / ||w||^2.) Because u_hat depends on u and w,
    and tanh(w^T z + b) != 0, the gradients reach u, w and b from the first step.

    Parameters: one tensor ``params = [u, w, b]`` of length 2D + 1, with ``u``, ``w`` and
    ``b`` as views of it (a conditional layer's hypernetwork outputs the same vector per data
    point). One tensor instead of three matters for speed: Pyro's optimizers keep one torch
    optimizer per parameter tensor, and three tensors per layer cost a noticeable share of an
    SVI step of a planar AutoFlow (measured side by side with the one-tensor layout; the
    numbers are in docs/notes/transform_timings.md). A state dict of the former layout
    (separate ``u``, ``w``, ``b``) still loads; to set them, write through the views under
    ``torch.no_grad()`` (``layer.u.copy_(...)``), and read gradients from ``params.grad``.

    Args:
        dim: the event size D.
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; default
            ``clip(4 (D + C), 32, 256)`` twice, ``[]`` for a linear map of the context).
        activation: hypernetwork activation (conditional layers only).
    """

    def __init__(self, dim: int, *, context_dim: int = 0,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu") -> None:
        super().__init__(dim, context_dim=context_dim)
        u, w, b = planar_init(dim)
        self.hold_raw({"params": torch.cat([u, w, b.reshape(1)])}, hidden, activation)

    @property
    def u(self) -> Tensor:
        """Raw u (a view of ``params``)."""
        return self.params[:self.dim]

    @property
    def w(self) -> Tensor:
        """w (a view of ``params``)."""
        return self.params[self.dim:2 * self.dim]

    @property
    def b(self) -> Tensor:
        """b, a scalar (a view of ``params``)."""
        return self.params[2 * self.dim]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        keys = [prefix + name for name in ("u", "w", "b")]
        if all(k in state_dict for k in keys) and prefix + "params" not in state_dict:
            u, w, b = (state_dict.pop(k) for k in keys)  # the layout before one ``params``
            state_dict[prefix + "params"] = torch.cat([u, w, b.reshape(1)])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def u_hat(self) -> Tensor:
        """The constrained u_hat = u + (m(w^T u) - w^T u) w / ||w||^2, with w^T u_hat >= -1."""
        return self.map_parameters(None)[0]

    def _constrained(self) -> tuple[Tensor, Tensor]:
        """(u_hat, q) with q = 1 + w^T u_hat = softplus(w^T u) >= 0 (1 where w = 0)."""
        u_hat, _, _, q = self.map_parameters(None)
        return u_hat, q

    def map_parameters(self, context: Tensor | None) -> PlanarParams:
        """(u_hat, w, b, q) for planar_forward / planar_inverse, from one split of the raw
        ``params`` (the layer's, or per data point the hypernetwork's); q = 1 + w^T u_hat =
        softplus(w^T u) >= 0."""
        u, w, b = self.raw(context)["params"].split([self.dim, self.dim, 1], -1)
        u_hat, q = planar_constrain(u, w)
        return u_hat, w, b.squeeze(-1), q

    def forward_with(self, x: Tensor, params: PlanarParams) -> tuple[Tensor, Tensor]:
        return planar_forward(x, *params)

    def inverse_with(self, y: Tensor, params: PlanarParams) -> tuple[Tensor, Tensor]:
        return planar_inverse(y, *params, layer=self._name())
