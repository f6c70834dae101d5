"""Block neural autoregressive flow onto the reals (after De Cao, Titov & Aziz, 2019,
"Block Neural Autoregressive Flow").

A BNAF network g: R^D -> R^D stacks block-masked linear layers: hidden layer l has
``hidden_factor`` units per input dimension, its weight is lower block-triangular, diagonal
blocks are positive (exp of free parameters) and blocks below the diagonal are free, with tanh
between layers. Then g_i depends on x_{<=i} only and is strictly increasing in x_i: the
Jacobian is triangular and its diagonal dg_i/dx_i > 0 is carried through the layers in log
space (a log-matrix product of the diagonal blocks, never exponentiating large numbers).

Pyro's BNAF ends in a bounded activation, so its range is a bounded box. Here the output is

    y = s * x + gain * g(x),   s = exp(log_s) > 0,   gain = softplus(raw_gain) > 0,

with g's last layer linear, so |g_i| <= sum_j |W_ij| + |b_i| is bounded and y is strictly
increasing per coordinate with slope at least s_i: f maps R^D onto R^D (inputs of 1e3 give
outputs of order 1e3). log|det J| = sum_i log(s_i + gain_i dg_i/dx_i), a logaddexp.

The inverse is numerical: D sequential 1-D monotone roots (coordinate i given the solved
x_{<i}), each bracketed by the bound on g and given implicit gradients on the graph of the
coordinates already solved, which gives the exact gradients of the triangular system.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import Flow, implicit_newton_step, solve_monotone
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def _log_tanh_derivative(h: Tensor) -> Tensor:
    """log(1 - tanh(h)^2), stable for large |h|."""
    return 2 * (math.log(2.0) - h - F.softplus(-2 * h))


class BlockLinear(nn.Module):
    """Lower block-triangular linear map from D blocks of ``b_in`` to D blocks of ``b_out``
    units, with positive diagonal blocks."""

    def __init__(self, dim: int, b_in: int, b_out: int) -> None:
        super().__init__()
        self.dim, self.b_in, self.b_out = dim, b_in, b_out
        rows = torch.arange(dim).repeat_interleave(b_out)
        cols = torch.arange(dim).repeat_interleave(b_in)
        self.register_buffer("diag_mask", (rows[:, None] == cols[None, :]).float())
        self.register_buffer("lower_mask", (rows[:, None] > cols[None, :]).float())
        weight = torch.randn(dim * b_out, dim * b_in) / math.sqrt(b_in * (dim + 1) / 2)
        # diagonal blocks hold log-weights: start them near log(1 / sqrt(fan-in))
        weight = weight * self.lower_mask + self.diag_mask * (
            -0.5 * math.log(b_in) + 0.1 * torch.randn_like(weight))
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(dim * b_out))

    def matrix(self) -> Tensor:
        return torch.exp(self.weight) * self.diag_mask + self.weight * self.lower_mask

    def log_diag_blocks(self) -> Tensor:
        """log of the diagonal blocks, shape (D, b_out, b_in)."""
        w = self.weight.view(self.dim, self.b_out, self.dim, self.b_in)
        return torch.diagonal(w, dim1=0, dim2=2).permute(2, 0, 1)

    def forward(self, h: Tensor, log_j: Tensor) -> tuple[Tensor, Tensor]:
        """(W h + b, log of the diagonal Jacobian blocks), ``log_j`` of shape (..., D, b_in)."""
        out = F.linear(h, self.matrix(), self.bias)
        log_j = torch.logsumexp(self.log_diag_blocks() + log_j[..., None, :], dim=-1)
        return out, log_j


@register("bnaf", paper="De Cao, Titov & Aziz (2019), Block Neural Autoregressive Flow "
          "(with an affine skip so the map is onto R^D)", inverse="numerical",
          kind="autoregressive")
class BlockNeuralAutoregressive(Flow):
    """BNAF onto R^D: y = s * x + gain * g(x) (see the module docstring).

    Args:
        dim: D.
        hidden_factor: hidden units per dimension in each hidden layer (a in the paper).
        layers: number of hidden layers.

    Starts near the identity: s = 1 and gain = softplus(-7) ~ 9e-4, so
    |f(x) - x| <= 9e-4 sup|g| (about 1e-3 at initialisation).
    """

    kind = "autoregressive"

    def __init__(self, dim: int, hidden_factor: int = 8, layers: int = 2) -> None:
        super().__init__(dim)
        if not isinstance(hidden_factor, int) or hidden_factor < 1:
            raise ValueError(f"BlockNeuralAutoregressive: hidden_factor must be a positive "
                             f"integer, got {hidden_factor!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"BlockNeuralAutoregressive: layers must be a positive integer, "
                             f"got {layers!r}")
        sizes = [1] + [hidden_factor] * layers + [1]
        self.blocks = nn.ModuleList(BlockLinear(dim, a, b) for a, b in zip(sizes[:-1],
                                                                            sizes[1:]))
        self.log_s = nn.Parameter(torch.zeros(dim))
        self.raw_gain = nn.Parameter(torch.full((dim,), -7.0))

    def _network(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(g(x), log dg_i/dx_i)."""
        h = x
        log_j = x.new_zeros(x.shape + (1,))
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            h, log_j = block(h, log_j)
            if k < last:
                log_j = log_j + _log_tanh_derivative(h).view(log_j.shape)
                h = torch.tanh(h)
        return h, log_j.squeeze(-1)

    def _per_dim(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(y, log dy_i/dx_i) per coordinate."""
        g, log_dg = self._network(x)
        gain = F.softplus(self.raw_gain)
        y = torch.exp(self.log_s) * x + gain * g
        return y, torch.logaddexp(self.log_s.expand_as(log_dg), torch.log(gain) + log_dg)

    def forward_and_log_det(self, x):
        y, log_diag = self._per_dim(x)
        return y, log_diag.sum(-1)

    def _bound(self) -> Tensor:
        """sup |gain_i g_i|: tanh units are bounded by 1."""
        last = self.blocks[-1]
        return F.softplus(self.raw_gain) * (last.matrix().abs().sum(-1) + last.bias.abs())

    def inverse_and_log_det(self, y):
        s = torch.exp(self.log_s)
        bound = self._bound().detach()
        cols: list[Tensor] = []
        zeros = y.new_zeros(y.shape[:-1] + (self.dim,))
        for i in range(self.dim):
            solved = torch.stack(cols, -1).detach() if cols else zeros[..., :0]
            rest = zeros[..., i + 1:]

            def fn(xi, i=i, solved=solved, rest=rest):
                full = torch.cat([solved, xi[..., None], rest], -1)
                out, log_diag = self._per_dim(full)
                return out[..., i], torch.exp(log_diag[..., i])

            with torch.no_grad():
                s_i = s[i].detach()
                lo = (y[..., i].detach() - bound[i]) / s_i
                hi = (y[..., i].detach() + bound[i]) / s_i
                x_star = solve_monotone(fn, y[..., i], lo - 1e-6, hi + 1e-6,
                                        layer=self._name())
            graph = torch.stack(cols, -1) if cols else zeros[..., :0]
            full = torch.cat([graph, x_star[..., None], rest], -1)
            out, log_diag = self._per_dim(full)
            residual = out[..., i] - y[..., i]
            cols.append(implicit_newton_step(x_star, residual, torch.exp(log_diag[..., i])))
        x = torch.stack(cols, -1)
        return x, self._per_dim(x)[1].sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, blocks={[ (b.b_in, b.b_out) for b in self.blocks]}"
