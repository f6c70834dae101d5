"""Fixed permutations of the coordinates, put between coupling and autoregressive layers so
that every dimension is eventually transformed conditioned on every other. In conditional
stacks they are the same for every context (:class:`~pyro_nf.transforms.context.ContextFree`),
so that :func:`~pyro_nf.transforms.build_flow` with ``context_dim`` can name and insert them."""

from __future__ import annotations

import torch

from pyro_nf.transforms.base import Flow, check_permutation, permutation_sign
from pyro_nf.transforms.context import ContextFree
from pyro_nf.transforms.registry import register, register_conditional

Tensor = torch.Tensor


class Permutation(Flow):
    """y = x[..., perm]; volume preserving (log|det J| = 0) with exact inverse x = y[..., inv].

    The permutation is a buffer: it follows ``.to(device)`` and is saved in the state dict.
    """

    volume_preserving = True
    kind = "permutation"

    def __init__(self, dim: int, permutation: Tensor) -> None:
        super().__init__(dim)
        perm = check_permutation(permutation, dim, f"{type(self).__name__}: permutation")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @property
    def sign(self) -> int:
        return permutation_sign(self.perm)

    def forward_and_log_det(self, x):
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(self, y):
        return y[..., self.inv_perm], y.new_zeros(y.shape[:-1])


@register("reverse", paper="Dinh, Sohl-Dickstein & Bengio (2017), RealNVP (alternating masks)",
          inverse="exact", kind="permutation", volume_preserving=True)
class Reverse(Permutation):
    """Reverses the order of the coordinates: y_i = x_{D-1-i}."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, torch.arange(dim - 1, -1, -1) if dim > 0 else torch.arange(0))


@register("permute", paper="Papamakarios, Pavlakou & Murray (2017), MAF (random orderings)",
          inverse="exact", kind="permutation", volume_preserving=True)
class RandomPermutation(Permutation):
    """A random permutation drawn once from ``seed`` (reproducible, independent of the global
    RNG state)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        super().__init__(dim, torch.randperm(dim, generator=gen))
        self.seed = int(seed)


@register_conditional("reverse", paper="Dinh, Sohl-Dickstein & Bengio (2017), RealNVP "
                      "(alternating masks); the same for every context")
def conditional_reverse(dim: int, context_dim: int) -> ContextFree:
    """Reverses the coordinates, whatever the context."""
    return ContextFree(Reverse(dim), context_dim)


@register_conditional("permute", paper="Papamakarios, Pavlakou & Murray (2017), MAF (random "
                      "orderings); the same for every context")
def conditional_permute(dim: int, context_dim: int, seed: int = 0) -> ContextFree:
    """A random permutation drawn once from ``seed``, the same for every context."""
    return ContextFree(RandomPermutation(dim, seed), context_dim)
