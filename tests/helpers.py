"""Helpers shared by the layer tests."""

from __future__ import annotations

from torch import nn


class InverseModule(nn.Module):
    """Wraps a flow layer so that ``forward`` is its inverse pass: with
    ``torch.func.functional_call`` this lets ``gradcheck`` vary the layer's parameters and
    the input of a numerical inverse together."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, y):
        return self.layer.inverse_and_log_det(y)


def assert_grads(layer: nn.Module, what: str) -> None:
    """Every parameter of ``layer`` got a finite gradient that is not all zero."""
    import torch

    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{what}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient in {pname}"
        assert (p.grad != 0).any(), f"{what}: gradient of {pname} is all zero"
