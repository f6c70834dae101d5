"""BNAF onto the reals: unbounded, triangular, monotone, invertible."""

from __future__ import annotations

import pytest
import torch

from pyro_nf.transforms import build_layer


def _layer(dim=4, scale=1.0, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = build_layer("bnaf", dim, hidden_factor=4).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_are_unbounded_unlike_pyros_bnaf(dtype):
    layer = _layer(dtype=dtype)
    for sign in (1.0, -1.0):
        x = sign * 1e3 * torch.ones(2, 4, dtype=dtype)
        y, ladj = layer.forward_and_log_det(x)
        assert torch.isfinite(ladj).all()
        assert float((y * sign).min()) > 100  # Pyro's BNAF gives |y| < 1.4 here


@pytest.mark.parametrize("seed", range(5))
def test_jacobian_is_triangular_with_positive_diagonal_for_random_raw_parameters(seed):
    layer = _layer(scale=5.0, seed=seed)
    x = torch.randn(4, dtype=torch.float64) * 3
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], x)
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))
    assert bool((jac.diagonal() > 0).all())
    _, ladj = layer.forward_and_log_det(x)
    torch.testing.assert_close(ladj, torch.log(jac.diagonal()).sum())


def test_inverse_round_trip_and_dimension_one():
    for dim in (1, 4):
        layer = _layer(dim=dim)
        y = torch.randn(50, dim, dtype=torch.float64) * 3
        x = layer.inv(y)
        torch.testing.assert_close(layer(x.clone()), y, atol=1e-9, rtol=1e-9)


def test_gradients_through_the_inverse_are_the_implicit_ones():
    source = _layer(dim=2)
    names = [n for n, _ in source.named_parameters()]

    def inverse(y, *values):
        layer = build_layer("bnaf", 2, hidden_factor=4).double()
        layer.load_state_dict(source.state_dict())
        for n, value in zip(names, values):
            module = layer
            *path, leaf = n.split(".")
            for part in path:
                module = getattr(module, part)
            delattr(module, leaf)  # plain tensors in place of the parameters
            setattr(module, leaf, value)
        return layer.inverse_and_log_det(y)

    y = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    values = [p.detach().clone().requires_grad_(True) for p in source.parameters()]
    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[0], (y, *values), atol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match="hidden_factor"):
        build_layer("bnaf", 3, hidden_factor=0)
    with pytest.raises(ValueError, match="layers"):
        build_layer("bnaf", 3, layers=0)
