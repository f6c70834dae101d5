"""Householder flow: a learnable orthogonal map as a product of Householder reflections.

Tomczak & Welling (2016), "Improving Variational Auto-Encoders using Householder Flow":

    y = H_K ... H_2 H_1 x,   H_k = I - 2 v_k v_k^T / ||v_k||^2.

Each H_k is a reflection (symmetric, orthogonal, H_k^{-1} = H_k, det H_k = -1), so the product
is orthogonal: volume preserving (log|det J| = 0 when K is even) with the exact inverse
x = H_1 H_2 ... H_K y. Any orthogonal matrix of size D is a product of at most D reflections.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_nf.transforms.base import Flow
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def _default_reflections(dim: int) -> int:
    return min(2 * math.ceil(dim / 2), 16)


@register("householder", paper="Tomczak & Welling (2016), Improving Variational Auto-Encoders "
          "using Householder Flow", inverse="exact", kind="linear", volume_preserving=True)
class Householder(Flow):
    """y = H_K ... H_1 x with H_k = I - 2 v_k v_k^T / ||v_k||^2 (orthogonal, log|det J| = 0).

    Parameter ``vectors`` of shape (K, D) holds v_1..v_K (only their directions matter).

    Starts exactly at the identity: K must be even and the vectors are initialized in equal
    pairs, v_{2j} = v_{2j+1} = a random direction, so H_{2j+1} H_{2j} = H^2 = I. The pairs are
    separate parameters, so gradients are non-zero from the start (moving one vector of a pair
    rotates the input). An odd K cannot start at the identity (det = -1), hence the error.
    A zero vector v_k is treated as H_k = I (no NaN, no inf, in values or gradients).

    Args:
        dim: the event size D.
        reflections: the even number K of reflections (default min(2 ceil(D/2), 16)). Every
            rotation (orthogonal, det +1) is a product of an even number <= D of reflections,
            so K >= 2 ceil(D/2) reaches them all; the cap at 16 trades that for speed.
    """

    kind = "linear"
    volume_preserving = True

    def __init__(self, dim: int, reflections: int | None = None) -> None:
        super().__init__(dim)
        if reflections is None:
            reflections = _default_reflections(dim)
        if isinstance(reflections, bool) or not isinstance(reflections, int):
            raise TypeError(f"Householder: reflections must be an int, got {reflections!r}")
        if reflections % 2:
            raise ValueError(
                f"Householder: reflections must be even, got {reflections}; a product of an "
                "odd number of reflections has determinant -1, so it can never be the "
                "identity, and the layer must start at the identity (reflections are "
                "initialized in equal pairs that cancel)"
            )
        if reflections < 2:
            raise ValueError(f"Householder: reflections must be a positive even integer, got "
                             f"{reflections}")
        self.reflections = reflections
        directions = torch.randn(reflections // 2, dim)
        self.vectors = nn.Parameter(directions.repeat_interleave(2, dim=0))

    def unit_vectors(self) -> Tensor:
        """u_k = v_k / ||v_k|| (rows; a zero row stays zero, i.e. H_k = I).

        Each row is first divided by its (detached) largest |entry|; H_k depends only on the
        direction of v_k, so this changes neither values nor gradients, but keeps ||v||^2 free
        of overflow and underflow for any finite v.
        """
        v = self.vectors
        big = v.detach().abs().amax(-1, keepdim=True)
        w = v / torch.where(big > 0, big, torch.ones_like(big))
        sq = (w * w).sum(-1, keepdim=True)  # in [1, D], or 0 for a zero row
        return w * torch.rsqrt(torch.where(sq > 0, sq, torch.ones_like(sq)))

    @property
    def matrix(self) -> Tensor:
        """The (D, D) orthogonal matrix H_K ... H_1."""
        eye = torch.eye(self.dim, dtype=self.vectors.dtype, device=self.vectors.device)
        return self.forward_and_log_det(eye)[0].mT  # rows of the output are H e_i

    @staticmethod
    def _reflect(x: Tensor, u: Tensor) -> Tensor:
        return x - 2.0 * (x @ u).unsqueeze(-1) * u

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = H_K ... H_1 x; log|det J| = 0."""
        units = self.unit_vectors()
        for k in range(self.reflections):
            x = self._reflect(x, units[k])
        return x, x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """x = H_1 ... H_K y (each reflection is its own inverse); log|det J| = 0."""
        units = self.unit_vectors()
        for k in reversed(range(self.reflections)):
            y = self._reflect(y, units[k])
        return y, y.new_zeros(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reflections={self.reflections}"
