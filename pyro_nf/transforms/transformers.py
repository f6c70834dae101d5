"""Univariate monotone transformers: the elementwise maps that coupling and autoregressive
layers apply to each dimension, with parameters produced by a conditioner network.

A transformer has ``num_params`` unconstrained parameters per dimension (``params[..., i, :]``)
and maps them to an increasing bijection of R. Raw parameters equal to zero give the identity,
which is why conditioners start with a zero output layer.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

Tensor = torch.Tensor


class Transformer:
    """Interface: an increasing bijection of R parametrized by ``num_params`` raw numbers.

    ``params`` has shape ``x.shape[:-1] + (P, D)`` (parameter-major, so each parameter's slice
    ``params[..., p, :]`` is contiguous).
    """

    num_params: int = 0

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, log dy/dx)`` elementwise."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, log dy/dx at x)`` elementwise."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Additive(Transformer):
    """y = x + t (NICE; Dinh et al., 2014). Volume preserving."""

    num_params = 1

    def forward(self, x, params):
        return x + params[..., 0, :], torch.zeros_like(x)

    def inverse(self, y, params):
        return y - params[..., 0, :], torch.zeros_like(y)


class Affine(Transformer):
    """y = t + exp(log_s) x with log_s = clamp(raw, min_log_scale, max_log_scale).

    Log-space parametrization (RealNVP, Dinh et al., 2017; IAF, Kingma et al., 2016):
    log|dy/dx| = log_s exactly, no log of a small number. The clamp bounds each layer's
    scale; the gradient is zero beyond it. The default [e^-5, e^3] is Pyro's (coupling layers
    and the conditional autoregressive layers keep it); the unconditional IAF/MAF layers
    default to [e^-5, e^6], because an AutoFlow started at scale 0.1 on a wide posterior needs
    its layers to expand by more than e^3: on Neal's funnel the raw log-scales sat beyond 3
    and the funnel's mouth came out too narrow (the run is in
    docs/notes/transform_timings.md). Raw zero gives the identity.
    """

    num_params = 2

    def __init__(self, min_log_scale: float = -5.0, max_log_scale: float = 3.0) -> None:
        if not min_log_scale < 0 < max_log_scale:
            raise ValueError("need min_log_scale < 0 < max_log_scale, got "
                             f"{min_log_scale}, {max_log_scale}")
        self.min_log_scale, self.max_log_scale = float(min_log_scale), float(max_log_scale)

    def log_scale(self, raw: Tensor) -> Tensor:
        # hardtanh is clamp with a one-op backward (zero gradient beyond the bounds, as clamp)
        return F.hardtanh(raw, self.min_log_scale, self.max_log_scale)

    def forward(self, x, params):
        shift, raw = params.unbind(-2)
        log_s = self.log_scale(raw)
        return torch.addcmul(shift, torch.exp(log_s), x), log_s

    def inverse(self, y, params):
        shift, raw = params.unbind(-2)
        log_s = self.log_scale(raw)
        return (y - shift) * torch.exp(-log_s), log_s

    def __repr__(self) -> str:
        return f"Affine(log_scale in [{self.min_log_scale:g}, {self.max_log_scale:g}])"


class RationalQuadraticSpline(Transformer):
    """Monotone rational-quadratic spline on [-B, B] with identity (linear) tails outside
    (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", 2019).

    ``bins`` K bins with widths and heights from softmaxes (each at least ``min_bin``),
    ``K - 1`` interior knot derivatives ``d_min + softplus(raw + c)``; the two boundary
    derivatives are 1 so the map is C^1 and maps R onto R. Inverse in closed form (a quadratic
    per element). Parameters per dimension: 3K - 1.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_bin: float = 1e-3,
                 min_derivative: float = 1e-3) -> None:
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if not 0 < min_bin * bins < 1:
            raise ValueError(f"min_bin * bins must be in (0, 1), got {min_bin * bins}")
        self.bins, self.bound = bins, float(bound)
        self.min_bin, self.min_derivative = min_bin, min_derivative
        self._offset = math.log(math.expm1(1.0 - min_derivative))
        self.num_params = 3 * bins - 1

    def __repr__(self) -> str:
        return f"RationalQuadraticSpline(bins={self.bins}, bound={self.bound:g})"

    def _knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        K, B = self.bins, self.bound
        raw = params.transpose(-1, -2)  # (..., D, 3K - 1)
        scale = 1 - self.min_bin * K
        w = self.min_bin + scale * torch.softmax(raw[..., :K], dim=-1)
        h = self.min_bin + scale * torch.softmax(raw[..., K:2 * K], dim=-1)
        d = self.min_derivative + F.softplus(raw[..., 2 * K:] + self._offset)
        xk = F.pad(torch.cumsum(w, -1), (1, 0)) * (2 * B) - B
        yk = F.pad(torch.cumsum(h, -1), (1, 0)) * (2 * B) - B
        xk[..., -1] = B  # pin the end knot exactly (cumsum rounding)
        yk[..., -1] = B
        return xk, yk, F.pad(d, (1, 1), value=1.0)

    def _apply(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        B = self.bound
        xk, yk, d = self._knots(params)
        inside = (v > -B) & (v < B)
        vc = v.clamp(-B, B)
        knots = yk if inverse else xk
        k = (vc[..., None] >= knots[..., 1:-1]).sum(-1, keepdim=True)

        def at(t: Tensor, shift: int = 0) -> Tensor:
            return t.gather(-1, k + shift).squeeze(-1)

        x0, x1, y0, y1 = at(xk), at(xk, 1), at(yk), at(yk, 1)
        d0, d1 = at(d), at(d, 1)
        w, h = x1 - x0, y1 - y0
        s = h / w
        dsum = d0 + d1 - 2 * s
        if inverse:
            dy = vc - y0
            a = h * (s - d0) + dy * dsum
            b = h * d0 - dy * dsum
            c = -s * dy
            disc = (b * b - 4 * a * c).clamp_min(0)
            xi = (2 * c) / (-b - torch.sqrt(disc))
            xi = xi.clamp(0, 1)
            out = x0 + xi * w
        else:
            xi = (vc - x0) / w
            xi1 = xi * (1 - xi)
            out = y0 + h * (s * xi * xi + d0 * xi1) / (s + dsum * xi1)
        xi1 = xi * (1 - xi)
        denom = s + dsum * xi1
        numer = s * s * (d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2)
        ladj = torch.log(numer) - 2 * torch.log(denom)
        return torch.where(inside, out, v), torch.where(inside, ladj, torch.zeros_like(ladj))

    def forward(self, x, params):
        return self._apply(x, params, inverse=False)

    def inverse(self, y, params):
        return self._apply(y, params, inverse=True)
