"""Permutations in conditional stacks: the unconditional :class:`~pyro_nf.transforms.Reverse`
and :class:`~pyro_nf.transforms.RandomPermutation`, context-independent (y = x[..., perm] for
every context h), wrapped so that :func:`build_conditional_flow` can name them and insert them
between consecutive coupling/autoregressive layers."""

from __future__ import annotations

from pyro_nf.transforms.conditional.base import ContextFree
from pyro_nf.transforms.permutation import RandomPermutation, Reverse
from pyro_nf.transforms.registry import register_conditional


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
