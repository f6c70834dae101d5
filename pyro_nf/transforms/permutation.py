"""Fixed permutations of the coordinates, put between coupling and autoregressive layers so
that every dimension is eventually transformed conditioned on every other. Built with a context
(``context_dim=C > 0``, as :func:`~pyro_nf.transforms.build_flow` with ``context_dim`` builds
the ones it names or inserts) a permutation is the same map for every context; it checks the
context and broadcasts against it like every conditioned layer."""

from __future__ import annotations

import torch

from pyro_nf.transforms.base import check_permutation, permutation_sign
from pyro_nf.transforms.context import ContextFlow
from pyro_nf.transforms.registry import register

Tensor = torch.Tensor


def broadcast_to_context(out: tuple[Tensor, Tensor],
                         context: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(v, log|det J|)`` of a context-free map expanded to the batch shape it shares with
    ``context`` (unchanged without one)."""
    if context is None:
        return out
    v, ladj = out
    batch = torch.broadcast_shapes(v.shape[:-1], context.shape[:-1])
    return v.expand(batch + v.shape[-1:]), ladj.expand(batch)


class Permutation(ContextFlow):
    """y = x[..., perm]; volume preserving (log|det J| = 0) with exact inverse x = y[..., inv].

    The permutation is a buffer: it follows ``.to(device)`` and is saved in the state dict.

    Args:
        dim: the event size D.
        permutation: a permutation of ``range(D)``.
        context_dim: the context size C of a conditional stack (the map ignores the context);
            0 (default) for an unconditional layer.
    """

    volume_preserving = True
    kind = "permutation"

    def __init__(self, dim: int, permutation: Tensor, *, context_dim: int = 0) -> None:
        super().__init__(dim, context_dim=context_dim)
        perm = check_permutation(permutation, dim, f"{type(self).__name__}: permutation")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @property
    def sign(self) -> int:
        return permutation_sign(self.perm)

    def forward_with(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return broadcast_to_context((x[..., self.perm], x.new_zeros(x.shape[:-1])), context)

    def inverse_with(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return broadcast_to_context((y[..., self.inv_perm], y.new_zeros(y.shape[:-1])),
                                    context)


@register("reverse", paper="Dinh, Sohl-Dickstein & Bengio (2017), RealNVP (alternating masks)",
          inverse="exact", kind="permutation", volume_preserving=True)
class Reverse(Permutation):
    """Reverses the order of the coordinates: y_i = x_{D-1-i} (whatever the context)."""

    def __init__(self, dim: int, *, context_dim: int = 0) -> None:
        super().__init__(dim, torch.arange(dim - 1, -1, -1) if dim > 0 else torch.arange(0),
                         context_dim=context_dim)


@register("permute", paper="Papamakarios, Pavlakou & Murray (2017), MAF (random orderings)",
          inverse="exact", kind="permutation", volume_preserving=True)
class RandomPermutation(Permutation):
    """A random permutation drawn once from ``seed`` (reproducible, independent of the global
    RNG state; the same for every context)."""

    def __init__(self, dim: int, seed: int = 0, *, context_dim: int = 0) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        super().__init__(dim, torch.randperm(dim, generator=gen), context_dim=context_dim)
        self.seed = int(seed)
