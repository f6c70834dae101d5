"""Sylvester flows against van den Berg et al. (2018)."""

from __future__ import annotations

import pytest
import torch

from pyro_nf.transforms import build_layer

VARIANTS = ["sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]


def _layer(name, dim=5, m=3, seed=0, scale=1.0, **opts):
    torch.manual_seed(seed)
    layer = build_layer(name, dim, m=m, **opts).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_and_log_det_match_the_paper(name):
    layer = _layer(name)
    q = layer.q().detach()
    r, rt, rd, rtd = (t.detach() for t in layer.triangles())
    assert torch.equal(r, torch.triu(r)) and torch.equal(rt, torch.triu(rt))
    z = torch.randn(7, 5, dtype=torch.float64)
    pre = (rt @ q.T @ z.T).T + layer.b.detach()  # R~ Q^T z + b
    y_paper = z + (q @ r @ torch.tanh(pre).T).T  # z + Q R h(.)
    ladj_paper = torch.log((1 + (1 - torch.tanh(pre) ** 2) * rd * rtd).abs()).sum(-1)
    y, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(y, y_paper)
    torch.testing.assert_close(ladj, ladj_paper)
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], z[0])
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[0])


@pytest.mark.parametrize("name", ["sylvester_orthogonal", "sylvester_householder"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_q_has_orthonormal_columns_after_perturbation(name, dtype, tol):
    torch.manual_seed(1)
    layer = build_layer(name, 6, m=4).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    q = layer.q()
    assert q.shape == (6, 4)
    assert float((q.T @ q - torch.eye(4, dtype=dtype)).abs().max()) < tol


@pytest.mark.parametrize("reverse", [False, True])
def test_triangular_q_is_identity_or_reversal(reverse):
    layer = build_layer("sylvester_triangular", 4, m=4, reverse=reverse)
    expected = torch.eye(4).flip(1) if reverse else torch.eye(4)
    assert torch.equal(layer.q(), expected)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("raw", [20.0, -20.0])
def test_invertible_for_saturated_raw_diagonals(name, raw):
    layer = _layer(name)
    with torch.no_grad():
        layer.r_diag.fill_(raw)
        layer.rt_diag.fill_(-raw)  # R_ii R~_ii as close to -1 as the parametrisation allows
    _, _, rd, rtd = layer.triangles()
    assert bool((rd * rtd > -1).all())
    z = torch.randn(50, 5, dtype=torch.float64) * 2
    y, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(ladj).all()
    torch.testing.assert_close(layer.inv(y.clone()), z, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_inverse_round_trip(name, dtype, tol):
    layer = _layer(name, scale=0.5).to(dtype)
    y = torch.randn(100, 5, dtype=dtype) * 2
    x = layer.inv(y)
    torch.testing.assert_close(layer(x.clone()), y, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_through_the_inverse_are_the_implicit_ones(name):
    source = _layer(name, dim=3, m=2, scale=0.5)
    names = [n for n, _ in source.named_parameters()]

    def inverse(y, *values):
        layer = build_layer(name, 3, m=2).double()
        layer.load_state_dict(source.state_dict())
        for n, value in zip(names, values):
            delattr(layer, n)  # plain tensors in place of the parameters
            setattr(layer, n, value)
        return layer.inverse_and_log_det(y)

    y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    values = [p.detach().clone().requires_grad_(True) for p in source.parameters()]
    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[0], (y, *values), atol=1e-6)


def test_orthogonalisation_failure_is_a_clear_error():
    layer = build_layer("sylvester_orthogonal", 4, m=3)
    with torch.no_grad():
        layer.q_raw.zero_()
        layer.q_raw[0, 0] = 1.0  # rank 1
    with pytest.raises(RuntimeError, match="Björck.*did not converge"):
        layer(torch.randn(2, 4))


def test_bad_options():
    with pytest.raises(ValueError, match="m must be"):
        build_layer("sylvester_orthogonal", 3, m=4)
    with pytest.raises(ValueError, match="reflections"):
        build_layer("sylvester_householder", 3, reflections=0)
