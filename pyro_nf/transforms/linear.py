"""Invertible linear layers: Glow's LU-decomposed 1x1 convolution, written for vectors.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions", Sec. 3.2,
parametrize an invertible matrix by its PLU decomposition

    W = P L (U + diag(s)),

with P a fixed permutation, L unit lower triangular, U strictly upper triangular and s a vector
with no zero entry. Then det W = det(P) prod_i s_i, so log|det W| = sum_i log|s_i| costs O(D),
and W^{-1} is applied by two triangular solves. Here s = exp(log_s) is kept positive and
parametrized in log-space, so log|det W| = sum_i log_s_i exactly and W can never be singular.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pyro_nf.transforms.base import Flow, permutation_sign
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor

_PERMUTATIONS = ("identity", "random")


@register("lu", paper="Kingma & Dhariwal (2018), Glow: Generative Flow with Invertible 1x1 "
          "Convolutions, Sec. 3.2 (LU-decomposed invertible linear map)", inverse="exact",
          kind="linear")
class LULinear(Flow):
    """Invertible linear layer y = W x + b with W = P L (U + diag(exp(log_s))) (Glow, LU form).

    * P: a fixed permutation (buffer ``perm``; ``(P v)_i = v[perm[i]]``), the identity by
      default or a random one drawn from ``seed``;
    * L: unit lower triangular; its D(D-1)/2 strictly-lower entries are the parameter
      ``lower_entries``;
    * U: strictly upper triangular, parameter ``upper_entries`` (D(D-1)/2 entries);
    * s = exp(log_s) > 0, parameter ``log_s``; b: parameter ``bias``.

    log|det J| = sum_i log_s_i, the same for every input (returned with the batch shape).
    The inverse is exact: x = (U + diag s)^{-1} L^{-1} P^T (y - b) by two triangular solves.

    Starts exactly at the identity (L = I, U = 0, log_s = 0, b = 0) when
    ``permutation="identity"`` (the default); with ``permutation="random"`` it starts at the
    fixed permutation P.

    Args:
        dim: the event size D.
        permutation: ``"identity"`` or ``"random"`` (the choice of P).
        seed: seed of the random permutation (ignored for ``"identity"``); independent of the
            global RNG.
    """

    kind = "linear"

    def __init__(self, dim: int, permutation: str = "identity", seed: int = 0) -> None:
        super().__init__(dim)
        if permutation not in _PERMUTATIONS:
            raise ValueError(f"LULinear: permutation must be one of {_PERMUTATIONS}, "
                             f"got {permutation!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"LULinear: seed must be an int, got {seed!r}")
        self.permutation = permutation
        self.seed = seed
        if permutation == "identity":
            perm = torch.arange(dim)
        else:
            perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))
        # (row, col) of the strictly-lower entries; swapped they index the strictly-upper ones
        self.register_buffer("_tril", torch.tril_indices(dim, dim, -1), persistent=False)
        n_off = dim * (dim - 1) // 2
        self.lower_entries = nn.Parameter(torch.zeros(n_off))
        self.upper_entries = nn.Parameter(torch.zeros(n_off))
        self.log_s = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    @property
    def sign(self) -> int:
        """det W = det P * prod(s), s > 0: the parity of P."""
        return permutation_sign(self.perm)

    # -- the factors ---------------------------------------------------------------------------
    def _eye(self) -> Tensor:
        return torch.eye(self.dim, dtype=self.log_s.dtype, device=self.log_s.device)

    @property
    def lower(self) -> Tensor:
        """L: unit lower triangular (D, D)."""
        rows, cols = self._tril[0], self._tril[1]
        return self._eye().index_put((rows, cols), self.lower_entries)

    @property
    def upper(self) -> Tensor:
        """U: strictly upper triangular (D, D) (without the diagonal s)."""
        rows, cols = self._tril[0], self._tril[1]
        return torch.zeros_like(self._eye()).index_put((cols, rows), self.upper_entries)

    @property
    def scale(self) -> Tensor:
        """s = exp(log_s), the diagonal of the upper factor."""
        return torch.exp(self.log_s)

    @property
    def permutation_matrix(self) -> Tensor:
        """P as a (D, D) matrix, with P v = v[perm]."""
        return self._eye()[self.perm]

    def _upper_with_diag(self) -> Tensor:
        rows, cols = self._tril[0], self._tril[1]
        return torch.diag_embed(self.scale).index_put((cols, rows), self.upper_entries)

    @property
    def weight(self) -> Tensor:
        """W = P L (U + diag(s)), the (D, D) matrix the forward map applies."""
        return (self.lower @ self._upper_with_diag())[self.perm]

    def _log_det(self, batch_shape: torch.Size) -> Tensor:
        return self.log_s.sum(-1).expand(batch_shape)

    # -- the two passes --------------------------------------------------------------------------
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = W x + b; log|det J| = sum_i log_s_i."""
        return F.linear(x, self.weight, self.bias), self._log_det(x.shape[:-1])

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """x = (U + diag s)^{-1} L^{-1} P^T (y - b), by two triangular solves."""
        z = (y - self.bias)[..., self.inv_perm].reshape(-1, self.dim)  # rows are P^T (y - b)
        # row form: a L^T = z  <=>  L a^T = z^T, then x (U + diag s)^T = a
        a = torch.linalg.solve_triangular(self.lower.mT, z, upper=True, left=False,
                                          unitriangular=True)
        x = torch.linalg.solve_triangular(self._upper_with_diag().mT, a, upper=False,
                                          left=False)
        return x.reshape(y.shape), self._log_det(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, permutation={self.permutation!r}"
