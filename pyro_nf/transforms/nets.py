"""Conditioner networks: a plain MLP for coupling layers and MADE for autoregressive layers.

A conditioner maps the part of the input a layer may look at (and an optional context vector,
for a conditional layer) to the parameters of a univariate transformer per dimension. The last
layer starts at zero, so every flow built on a conditioner starts at its transformer's identity.
The default activation is ELU: smooth conditioners fit the smoothly varying scales of
hierarchical posteriors (eight schools, Neal's funnel) markedly better than ReLU's kinks in our
measurements (see docs/guides.md), at a negligible cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_nf.transforms.base import check_permutation

Tensor = torch.Tensor

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU,
                "leaky_relu": nn.LeakyReLU}


def default_hidden(dim: int, *, factor: int = 4, minimum: int = 32, maximum: int = 256) -> int:
    """Default hidden width for a conditioner of a D-dimensional flow: ``clip(4 D, 32, 256)``.

    Grows linearly in D and is capped, so a layer has O(D) parameters per hidden unit instead of
    Pyro's O(D^2) defaults.
    """
    return int(min(max(factor * dim, minimum), maximum))


def hidden_widths(hidden: int | Sequence[int] | None, dim: int,
                  depth: int = 2) -> tuple[int, ...]:
    """The hidden widths of a conditioner: ``hidden`` (an int repeated ``depth`` times, or a
    list), by default :func:`default_hidden` of ``dim`` ``depth`` times."""
    if hidden is None:
        return (default_hidden(dim),) * depth
    if isinstance(hidden, int):
        hidden = (hidden,) * depth
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must be a positive int or a non-empty list of them, got {hidden}")
    return hidden


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """Fully connected network ``in_dim (+ context_dim) -> hidden... -> out_dim``.

    The output layer is initialized at zero (weights and bias), so the conditioner initially
    outputs zeros whatever its input.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int], *,
                 context_dim: int = 0, activation: str = "elu") -> None:
        super().__init__()
        sizes = [in_dim + context_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _activation(activation)]
        last = nn.Linear(sizes[-1], out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.context_dim = context_dim

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is not None:
            batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat([x.expand(batch + x.shape[-1:]),
                           context.expand(batch + context.shape[-1:])], dim=-1)
        return self.net(x)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Output ``[..., p, i]`` (parameter p of dimension i) depends only on the inputs that come
    before i in the autoregressive ``order`` (by default the natural order, so on
    ``x[..., :i]``), so the Jacobian of any transformer driven by it is triangular up to that
    order. Input ``order[k]`` gets degree k + 1; hidden units get degrees 1..D-1 cyclically
    (for D = 1 they get degree 0 and the single output is a learned constant).

    :meth:`set_order` changes the order of an untrained MADE by recomputing its masks: a flow
    then varies the order from layer to layer without moving any data (``build_flow`` does
    this instead of inserting permutation layers between autoregressive layers).

    Args:
        dim: D.
        params_per_dim: P, parameters of the univariate transformer per dimension.
        hidden: widths of the hidden layers.
        context_dim: size of an optional context vector fed (unmasked) to the first layer.
    """

    def __init__(self, dim: int, params_per_dim: int, hidden: Sequence[int], *,
                 context_dim: int = 0, activation: str = "elu") -> None:
        super().__init__()
        self.dim, self.params_per_dim = dim, params_per_dim
        self.hidden = tuple(hidden)
        masks = self._masks(torch.arange(dim))
        layers: list[nn.Module] = []
        for k, mask in enumerate(masks[:-1]):
            layers.append(MaskedLinear(mask.shape[1], mask.shape[0], mask))
            if k == 0 and context_dim:
                self.context = nn.Linear(context_dim, mask.shape[0], bias=False)
            layers.append(_activation(activation))
        last = MaskedLinear(masks[-1].shape[1], masks[-1].shape[0], masks[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.layers = nn.ModuleList(layers)
        self.context_dim = context_dim
        self.register_buffer("order", torch.arange(dim))

    def _masks(self, order: Tensor) -> list[Tensor]:
        dim = self.dim
        in_deg = torch.empty(dim, dtype=torch.long)
        in_deg[order] = torch.arange(1, dim + 1)
        degrees = [in_deg]
        for h in self.hidden:
            if dim > 1:
                degrees.append(torch.arange(h) % (dim - 1) + 1)
            else:
                degrees.append(torch.zeros(h, dtype=torch.long))
        masks = [(d_out[:, None] >= d_in[None, :]).float()
                 for d_in, d_out in zip(degrees[:-1], degrees[1:])]
        out_deg = in_deg.repeat(self.params_per_dim)  # output unit p * D + i: degree of input i
        masks.append((out_deg[:, None] > degrees[-1][None, :]).float())
        return masks

    @torch.no_grad()
    def set_order(self, order: Tensor) -> None:
        """Make ``order[0]`` the first coordinate, ``order[1]`` the second, ...: recompute the
        masks in place (on their device and dtype)."""
        order = check_permutation(order, self.dim, "MADE.set_order: order")
        masked = [m for m in self.layers if isinstance(m, MaskedLinear)]
        for layer, mask in zip(masked, self._masks(order)):
            layer.mask.copy_(mask)
        self.order.copy_(order)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.layers[0](x)
        if context is not None:
            h = h + self.context(context)
        for layer in self.layers[1:]:
            h = layer(h)
        return h.unflatten(-1, (self.params_per_dim, self.dim))
