"""Radial flow (Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
Sec. 4.1 and Appendix A.2).

    f(z) = z + beta h(alpha, r) (z - z0),   r = ||z - z0||,   h(alpha, r) = 1 / (alpha + r),

with a learnable center z0 in R^D, alpha = softplus(raw_alpha) > 0 and
beta = -alpha + softplus(raw_beta) >= -alpha for any raw parameters (Appendix A.2's condition
for invertibility). Writing s = alpha + beta = softplus(raw_beta) >= 0, the map scales z - z0
by the positive factor

    1 + beta h = (r + s) / (alpha + r),

which is how it is computed (no cancellation when beta is close to -alpha). alpha is floored at
the square root of the dtype's smallest normal number, so 1 / (alpha + r) stays finite even
where softplus(raw_alpha) underflows.

Log-determinant. The Jacobian is (1 + beta h) I + beta h'(r) (z - z0)(z - z0)^T / r with
h'(r) = -1 / (alpha + r)^2: D - 1 eigenvalues 1 + beta h and one 1 + beta h + beta h' r, so

    log|det J| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)
               = (D - 1) log((r + s) / (alpha + r)) + log((r (2 alpha + r) + alpha s)
                                                          / (alpha + r)^2),

the last factor being 1 + beta alpha / (alpha + r)^2 with the -alpha^2 canceled by hand.

Inverse (exact). Taking norms of y - z0 = (1 + beta h)(z - z0) gives r_y = r (1 + beta / (alpha
+ r)), i.e. the quadratic

    r^2 + B r - alpha r_y = 0,   B = alpha + beta - r_y = s - r_y,

with product of roots -alpha r_y <= 0: exactly one non-negative root. It is taken in the form
without cancellation, (-B + sqrt(disc)) / 2 when B <= 0 and 2 alpha r_y / (B + sqrt(disc))
when B > 0 (disc = B^2 + 4 alpha r_y); then z = z0 + (y - z0) (alpha + r) / (r + s).

At the center (r = 0) the norm is not differentiable, and sqrt(sum v^2) has a NaN gradient
there (0/0); :func:`safe_norm` gives it the subgradient 0 instead, with which autograd
reproduces the true Jacobian of f at z0, (1 + beta / alpha) I (f is differentiable there), and
the inverse is finite at y = z0 in value and gradient.

With a context (``Radial(D, context_dim=C)``, Rezende & Mohamed's Sec. 4): z0(h) and the raw
alpha(h), beta(h) are outputs of a hypernetwork of the context h, with the same constraints,
log-det and exact inverse (the functions below, batched over data points), so f(. ; h) is
invertible for every context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_nf.transforms.base import softplus_exact, softplus_inverse
from pyro_nf.transforms.context import ResidualFlow
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def safe_norm(v: Tensor) -> Tensor:
    """||v|| over the last dimension, with gradient 0 (not NaN) where v = 0: torch's
    ``vector_norm`` backward masks the zero norm (a plain ``sqrt(sum v^2)`` would give NaN)."""
    return torch.linalg.vector_norm(v, dim=-1)


def _safe_sqrt(v: Tensor) -> Tensor:
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(),
                       torch.zeros_like(v))


def radial_alpha_s(raw_alpha: Tensor, raw_beta: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, s) with alpha = softplus(raw_alpha) > 0 (floored at sqrt(tiny)) and
    s = alpha + beta = softplus(raw_beta) >= 0, elementwise (any batch shape)."""
    floor = torch.finfo(raw_alpha.dtype).tiny ** 0.5
    return softplus_exact(raw_alpha).clamp_min(floor), softplus_exact(raw_beta)


def _radial_log_det(r: Tensor, alpha: Tensor, s: Tensor, dim: int) -> Tensor:
    tiny = torch.finfo(r.dtype).tiny
    log_denom = torch.log(alpha + r)
    log_scale = torch.log((r + s).clamp_min(tiny)) - log_denom  # log(1 + beta h)
    log_last = torch.log((r * (2 * alpha + r) + alpha * s).clamp_min(tiny)) - 2 * log_denom
    return (dim - 1) * log_scale + log_last


def radial_forward(x: Tensor, z0: Tensor, alpha: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(x), log|det J_f(x)|)`` for f(x) = z0 + (r + s) / (alpha + r) (x - z0).

    ``z0`` of shape (..., D) and ``alpha``, ``s`` (from :func:`radial_alpha_s`) of shape (...)
    broadcast against ``x`` of shape (..., D)."""
    diff = x - z0
    r = safe_norm(diff)
    y = z0 + ((r + s) / (alpha + r))[..., None] * diff
    return y, _radial_log_det(r, alpha, s, x.shape[-1])


def radial_inverse(y: Tensor, z0: Tensor, alpha: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """``(f^{-1}(y), log|det J_f|)`` at the pre-image, through the radius quadratic of the module
    docstring; shapes as in :func:`radial_forward`."""
    diff = y - z0
    r_y = safe_norm(diff)
    B = s - r_y  # alpha + beta - r_y
    root_disc = _safe_sqrt(B * B + 4 * alpha * r_y)
    positive = B > 0
    # both branches are finite everywhere, so the unused one cannot poison gradients
    r = torch.where(positive,
                    2 * alpha * r_y / torch.where(positive, B + root_disc, torch.ones_like(B)),
                    (root_disc - B) / 2)
    denom = r + s  # 0 only when r_y = 0 and s = 0, where diff = 0 anyway
    ok = denom > 0
    inv_scale = torch.where(ok, (alpha + r) / torch.where(ok, denom, torch.ones_like(denom)),
                            torch.ones_like(denom))
    return z0 + inv_scale[..., None] * diff, _radial_log_det(r, alpha, s, y.shape[-1])


def radial_init(dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Raw (z0, raw_alpha, raw_beta) of an identity radial map: z0 ~ N(0, 0.01^2 I), alpha = 1
    and raw_beta = softplus^-1(alpha), so that beta = 0."""
    start = torch.tensor(softplus_inverse(1.0))
    return 0.01 * torch.randn(dim), start, start.clone()


RadialParams = tuple[Tensor, Tensor, Tensor]


@register("radial", paper="Rezende & Mohamed (2015), Variational Inference with Normalizing "
          "Flows: radial flow", inverse="exact", kind="residual")
class Radial(ResidualFlow):
    """Radial flow f(z) = z + beta / (alpha + ||z - z0||) (z - z0) (Rezende & Mohamed, 2015,
    App. A.2), with alpha > 0 and beta >= -alpha for any raw parameters; exact inverse through
    the radius quadratic (see the module docstring). With ``context_dim=C > 0``, the center z0
    and the raw alpha, beta are outputs of an MLP of the context (one set per data point,
    :class:`~pyro_nf.transforms.context.ResidualFlow`), constrained the same way.

    Args:
        dim: the event size D.
        context_dim: the context size C; 0 (default) for an unconditional layer.
        hidden: hypernetwork hidden widths (conditional layers only; default
            ``clip(4 (D + C), 32, 256)`` twice, ``[]`` for a linear map of the context).
        activation: hypernetwork activation (conditional layers only).

    Initialization: the identity (for every context). alpha = 1 and
    raw_beta = softplus^-1(alpha), so beta = 0 and the scale factor (r + s) / (alpha + r) is
    exactly 1; z0 ~ N(0, 0.01^2 I), so that the center is not degenerate with the origin and
    gradients reach every parameter.
    """

    def __init__(self, dim: int, *, context_dim: int = 0,
                 hidden: int | Sequence[int] | None = None, activation: str = "elu") -> None:
        super().__init__(dim, context_dim=context_dim)
        z0, raw_alpha, raw_beta = radial_init(dim)
        self.hold_raw({"z0": z0, "raw_alpha": raw_alpha, "raw_beta": raw_beta}, hidden,
                      activation)

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """(alpha, beta) with alpha > 0 and beta >= -alpha (an unconditional layer's)."""
        _, alpha, s = self.map_parameters(None)
        return alpha, s - alpha

    def map_parameters(self, context: Tensor | None) -> RadialParams:
        """(z0, alpha, s) with alpha > 0 and s = alpha + beta = softplus(raw_beta) >= 0 (the
        layer's, or per data point from the hypernetwork)."""
        p = self.raw(context)
        return (p["z0"], *radial_alpha_s(p["raw_alpha"], p["raw_beta"]))

    def forward_with(self, x: Tensor, params: RadialParams) -> tuple[Tensor, Tensor]:
        return radial_forward(x, *params)

    def inverse_with(self, y: Tensor, params: RadialParams) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, *params)
