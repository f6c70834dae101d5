"""Block neural autoregressive flow onto the reals (after De Cao, Titov & Aziz, 2019, "Block
Neural Autoregressive Flow", Sec. 3).

**The network.** BNAF builds the autoregressive structure into one feed-forward network
g: R^D -> R^D. With block sizes b_0 = 1, b_1 = ... = b_L = a (``hidden_factor``) and
b_{L+1} = 1, layer k = 1..L+1 is an affine map z^k = W^k h^{k-1} + c^k from D blocks of b_{k-1}
units to D blocks of b_k units (h^0 = x), followed by tanh for k <= L (h^k = tanh(z^k)) and by
nothing for k = L+1 (g = z^{L+1}). Each W^k is lower block-triangular: block (i, j) is zero for
j > i, free for j < i, and strictly positive for j = i (the exponential of free log-weights).
As in the paper, every row is weight-normalized (Salimans & Kingma, 2016):

    W^k_r = exp(sigma_r) V_r / ||V_r||,   V = blockdiag(exp(omega)) + strictly_lower(U).

Unit r of block i therefore depends on x_{<=i} only, and g_i is strictly increasing in x_i.

**Onto R^D.** Pyro's BNAF is this network alone: a linear layer on tanh units, so its outputs are
bounded (|y_i - c_i| <= sum_r |W_ir|; inputs of +-500 stay in a small box) and it is not onto
R^D. Here

    y = s * x + g(x),   s = exp(log_s) > 0 per dimension,

and, because tanh units lie in (-1, 1), |g_i(x) - c_i| <= sum_r |W^{L+1}_{i r}|: g is bounded,
so y_i - s_i x_i is bounded and f maps R^D *onto* R^D (inputs of 1e3 give outputs of order 1e3).

**Log-determinant.** The Jacobian is lower triangular with diagonal
dy_i/dx_i = s_i + dg_i/dx_i > 0, so

    log|det J| = sum_i logaddexp(log s_i, log dg_i/dx_i).

dg_i/dx_i is the product of the diagonal blocks of the layers' Jacobians (the off-diagonal
blocks never reach the diagonal of a block-triangular product). Its log is carried through the
layers in log space, as in the paper (Eq. 9-10): with G^k_i = log d h^k_i / d x_i (a vector of
b_k entries),

    G^k_i = log sech^2(z^k_i) + logsumexp_r(log W^k_{ii}[:, r] + G^{k-1}_i[r]),

where log W^k_{ii} = sigma - log||V_r|| + omega is exact in log space; nothing large is ever
exponentiated.

**Inverse (numerical).** The map is triangular and strictly increasing per coordinate, so
x = f^{-1}(y) is found coordinate by coordinate: given x_{<i}, the hidden units of blocks < i
are known, block i's pre-activations are z^k_i = ctx^k_i + W^k_{ii} h^{k-1}_i with a fixed
context ctx^k_i = W^k_{i,<i} h^{k-1}_{<i} + c^k_i, and y_i = s_i x_i + g_i is a strictly increasing
1-D function of x_i whose root lies in

    [(y_i - ctx^{L+1}_i - S_i) / s_i, (y_i - ctx^{L+1}_i + S_i) / s_i],
    S_i = sum_r W^{L+1}_{ii, r}  (the final diagonal block is a positive row).

Each root costs a few passes through block i alone (a handful of a x a products), not through
the whole network. The root comes from :func:`~pyro_nf.transforms.base.solve_monotone`, then
:func:`~pyro_nf.transforms.base.implicit_newton_step` attaches its gradients with the residual
computed on the graph of the coordinates already solved: forward substitution through the
triangular system, i.e. the exact implicit gradients dx = J^{-1}(dy - df/dtheta dtheta).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import (
    Flow,
    check_positive_int,
    implicit_newton_step,
    solve_monotone,
)
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor

_LOG2 = math.log(2.0)


def _add_log_sech2(log_j: Tensor, z: Tensor) -> Tensor:
    """log_j + log tanh'(z) - 2 log 2, using log sech^2(z) = 2 log 2 - 2 logaddexp(z, -z) (exact
    for any z; the constants 2 log 2, one per tanh layer, are added once at the end, which is
    valid because logsumexp(v + const) = logsumexp(v) + const)."""
    return torch.add(log_j, torch.logaddexp(z, -z), alpha=-2.0)


class MaskedBlockLinear(nn.Module):
    """Weight-normalized lower block-triangular linear map (De Cao et al., 2019, Eq. 8).

    Maps D blocks of ``b_in`` units to D blocks of ``b_out`` units. Parameters: ``log_diag``
    (D, b_out, b_in) the log-weights omega of the positive diagonal blocks, ``off``
    (D b_out, D b_in) the free weights U of which only the strictly lower blocks are used (absent
    for D = 1), ``log_scale`` (D b_out) the weight-norm gains sigma (row r has Euclidean norm
    exp(sigma_r)) and ``bias``.
    """

    def __init__(self, dim: int, b_in: int, b_out: int, log_scale: Tensor | float = 0.0,
                 bias_range: float = 0.0) -> None:
        super().__init__()
        self.dim, self.b_in, self.b_out = dim, b_in, b_out
        fan_in = b_in * (dim + 1) / 2
        # diagonal blocks: positive weights of size ~ 1/sqrt(fan-in), slightly spread out
        self.log_diag = nn.Parameter(-0.5 * math.log(fan_in)
                                     + 0.2 * torch.randn(dim, b_out, b_in))
        if dim > 1:
            rows = torch.arange(dim).repeat_interleave(b_out)
            cols = torch.arange(dim).repeat_interleave(b_in)
            self.register_buffer("lower", rows[:, None] > cols[None, :], persistent=False)
            # positions of the diagonal blocks' entries, in the order of log_diag.flatten()
            blk, o, c = torch.meshgrid(torch.arange(dim), torch.arange(b_out),
                                       torch.arange(b_in), indexing="ij")
            self.register_buffer("_diag_rows", (blk * b_out + o).flatten(), persistent=False)
            self.register_buffer("_diag_cols", (blk * b_in + c).flatten(), persistent=False)
            self.off = nn.Parameter(torch.randn(dim * b_out, dim * b_in) / math.sqrt(fan_in)
                                    * self.lower)
        else:
            self.register_buffer("lower", None, persistent=False)
            self.register_parameter("off", None)
        self.log_scale = nn.Parameter(torch.zeros(dim * b_out) + log_scale)
        self.bias = nn.Parameter(torch.empty(dim * b_out).uniform_(-bias_range, bias_range)
                                 if bias_range > 0 else torch.zeros(dim * b_out))

    def weights(self) -> tuple[Tensor, Tensor]:
        """(W, log W_diag): the (D b_out, D b_in) matrix and the log of its diagonal blocks,
        shape (D, b_out, b_in).

        Computed in log space: log||V_r||^2 = logaddexp(logsumexp_c 2 omega_rc, log sum_c U_rc^2)
        and log W_diag = omega + sigma - log||V_r|| <= sigma, so exp(omega) is never formed and
        no exp overflows for any omega.
        """
        d, bo, bi = self.dim, self.b_out, self.b_in
        omega = self.log_diag
        log_sq = torch.logsumexp(2.0 * omega, -1).view(-1)  # diagonal part of ||V_r||^2
        off = None
        if self.off is not None:
            off = self.off * self.lower
            off_sq = off.square().sum(-1)
            # rows without free weights (block 0) add log 0 = -inf; the inner where keeps the
            # gradient of log away from 0 (0 * inf = NaN)
            present = off_sq > 0
            log_off = torch.where(present, torch.log(torch.where(present, off_sq, 1.0)),
                                  -math.inf)
            log_sq = torch.logaddexp(log_sq, log_off)
        row_log_scale = torch.add(self.log_scale, log_sq, alpha=-0.5)  # sigma - log||V_r||
        log_w_diag = omega + row_log_scale.view(d, bo, 1)
        diag = torch.exp(log_w_diag)
        if off is None:
            return diag.view(bo, bi), log_w_diag
        # the clamp only bites on rows whose raw weights are all below e^{-88} (float32); it
        # keeps exp finite so that the zeros of block 0's rows (no free weights) stay zeros
        row_scale = torch.exp(row_log_scale.clamp_max(math.log(torch.finfo(off.dtype).max) - 1))
        weight = (off * row_scale.unsqueeze(-1)).index_put(
            (self._diag_rows, self._diag_cols), diag.view(-1))
        return weight, log_w_diag

    def extra_repr(self) -> str:
        return f"dim={self.dim}, b_in={self.b_in}, b_out={self.b_out}"


@register("bnaf", paper="De Cao, Titov & Aziz (2019), Block Neural Autoregressive Flow "
          "(with an affine skip so the map is onto R^D)", inverse="numerical",
          kind="autoregressive")
class BlockNeuralAutoregressive(Flow):
    """BNAF onto R^D: y = s * x + g(x), g a block neural autoregressive network (see the module
    docstring for the math; De Cao, Titov & Aziz, 2019).

    Args:
        dim: D (any D >= 1).
        hidden_factor: hidden units per dimension in each hidden layer (a in the paper).
        layers: number of hidden tanh layers L (>= 1).

    Starts near the identity: s = 1, the last layer's bias is 0 and the weight-norm gain of its
    row i is exp(sigma_i) = 1e-3 / sqrt((i + 1) a), so at construction, for every x,

        |f(x)_i - x_i| = |g_i(x)| <= ||W^{L+1}_i||_2 ||h^L_{<=i}||_2 <= 1e-3,
        0 <= log|det J(x)| <= sum_i dg_i/dx_i <= 1e-3 * D * a^((L - 1) / 2)

    (hidden rows start with norm 1, so each diagonal block has Frobenius norm <= sqrt(a);
    2.9e-3 D for the defaults a = 8, L = 2).
    """

    kind = "autoregressive"
    #: sup_x |f(x) - x| at construction.
    INIT_DEVIATION = 1e-3

    def __init__(self, dim: int, hidden_factor: int = 8, layers: int = 2) -> None:
        super().__init__(dim)
        for name, value in (("hidden_factor", hidden_factor), ("layers", layers)):
            check_positive_int(value, name, "BlockNeuralAutoregressive")
        self.hidden_factor, self.num_layers = hidden_factor, layers
        self.sizes = (1,) + (hidden_factor,) * layers + (1,)
        rows_in_final = torch.arange(1, dim + 1, dtype=torch.get_default_dtype()) * hidden_factor
        final_log_scale = math.log(self.INIT_DEVIATION) - 0.5 * torch.log(rows_in_final)
        blocks = [MaskedBlockLinear(dim, b_in, b_out, bias_range=1.0)
                  for b_in, b_out in zip(self.sizes[:-2], self.sizes[1:-1])]
        blocks.append(MaskedBlockLinear(dim, hidden_factor, 1, log_scale=final_log_scale))
        self.blocks = nn.ModuleList(blocks)
        self.log_s = nn.Parameter(torch.zeros(dim))
        self._sech2_const = 2 * layers * _LOG2  # see _add_log_sech2

    # -- forward --------------------------------------------------------------------------
    def _network(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(g(x), log dg_i/dx_i), both of shape x.shape, in one batched pass."""
        h, log_j = x, None
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            weight, log_w = block.weights()
            z = F.linear(h, weight, block.bias)
            if log_j is None:  # b_in = 1: the first layer's diagonal is a column
                log_j = log_w.squeeze(-1)
            else:  # log-space product of the diagonal blocks
                log_j = torch.logsumexp(log_w + log_j.unsqueeze(-2), dim=-1)
            if k < last:
                log_j = _add_log_sech2(log_j, z.unflatten(-1, (self.dim, block.b_out)))
                h = torch.tanh(z)
        return z, log_j.squeeze(-1) + self._sech2_const

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = exp(log_s) x + g(x), log|det J| = sum_i logaddexp(log s_i, log dg_i/dx_i)."""
        g, log_dg = self._network(x)
        y = torch.addcmul(g, torch.exp(self.log_s), x)
        return y, torch.logaddexp(self.log_s, log_dg).sum(-1)

    # -- inverse --------------------------------------------------------------------------
    def _block_pass(self, ctx: list[Tensor], w_ii: list[Tensor], log_w_ii: list[Tensor],
                    t: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Block i of the network as a function of x_i = t, the other blocks fixed.

        ``ctx[k]`` (..., b_k) holds W^k_{i,<i} h^{k-1}_{<i} + c^k_i, ``w_ii[k]`` and
        ``log_w_ii[k]`` the diagonal block (b_k, b_{k-1}) and its log. Returns
        (g_i, log dg_i/dx_i, [h^1_i, ..., h^L_i]).
        """
        u, log_j, hidden = t.unsqueeze(-1), None, []
        last = len(ctx) - 1
        for k in range(len(ctx)):
            z = F.linear(u, w_ii[k]) + ctx[k]
            if log_j is None:
                log_j = log_w_ii[k].squeeze(-1)
            else:
                log_j = torch.logsumexp(log_w_ii[k] + log_j.unsqueeze(-2), dim=-1)
            if k < last:
                log_j = _add_log_sech2(log_j, z)
                u = torch.tanh(z)
                hidden.append(u)
        return z.squeeze(-1), log_j.squeeze(-1) + self._sech2_const, hidden

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """x = f^{-1}(y), solved one coordinate at a time (see the module docstring)."""
        sizes = self.sizes
        params = [block.weights() for block in self.blocks]
        biases = [block.bias for block in self.blocks]
        log_s = self.log_s
        s = torch.exp(log_s)
        # inputs of layer k for the blocks solved so far: x_{<i}, h^1_{<i}, ..., h^L_{<i}
        solved: list[Tensor | None] = [None] * len(self.blocks)
        xs, ladjs = [], []
        for i in range(self.dim):
            ctx, w_ii, log_w_ii = [], [], []
            for k, (weight, log_w) in enumerate(params):
                b_in, b_out = sizes[k], sizes[k + 1]
                rows = slice(i * b_out, (i + 1) * b_out)
                if solved[k] is None:
                    ctx.append(biases[k][rows])
                else:
                    ctx.append(F.linear(solved[k], weight[rows, :i * b_in], biases[k][rows]))
                w_ii.append(weight[rows, i * b_in:(i + 1) * b_in])
                log_w_ii.append(log_w[i])
            y_i, log_s_i, s_i = y[..., i], log_s[i], s[i]

            fixed = [[v.detach() for v in group] for group in (ctx, w_ii, log_w_ii)]
            log_s_d, s_d = log_s_i.detach(), s_i.detach()

            def fn(t: Tensor, fixed=fixed, log_s_d=log_s_d, s_d=s_d) -> tuple[Tensor, Tensor]:
                g, log_dg, _ = self._block_pass(*fixed, t)
                return s_d * t + g, torch.exp(torch.logaddexp(log_s_d, log_dg))

            with torch.no_grad():
                target = y_i.detach()
                center = target - fixed[0][-1][..., 0]
                half = fixed[1][-1].sum()  # S_i: |g_i - ctx_i| <= S_i
                margin = 1e-2 * (1.0 + target.abs() + center.abs() + half)
                x_star = solve_monotone(fn, target, (center - half - margin) / s_d,
                                        (center + half + margin) / s_d, layer=self._name())
            g, log_dg, _ = self._block_pass(ctx, w_ii, log_w_ii, x_star)
            residual = s_i * x_star + g - y_i
            deriv = torch.exp(torch.logaddexp(log_s_i, log_dg))
            x_i = implicit_newton_step(x_star, residual, deriv)
            # block i at the solution, on the graph: its hidden units feed later contexts
            _, log_dg, hidden = self._block_pass(ctx, w_ii, log_w_ii, x_i)
            ladjs.append(torch.logaddexp(log_s_i, log_dg))
            xs.append(x_i)
            if i + 1 < self.dim:
                for k, new in enumerate([x_i.unsqueeze(-1)] + hidden):
                    solved[k] = new if solved[k] is None else torch.cat([solved[k], new], -1)
        return torch.stack(xs, -1), torch.stack(ladjs, -1).sum(-1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_factor={self.hidden_factor}, "
                f"layers={self.num_layers}")
