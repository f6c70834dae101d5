"""Planar and radial flows against Rezende & Mohamed (2015), Appendix A."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.nn import functional as F

from pyro_nf.transforms import InverseNotConvergedError, build_layer, inverse_tolerance


def _planar(dim=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layer = build_layer("planar", dim).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


def test_planar_matches_the_paper_formulas():
    layer = _planar()
    w, u, b = layer.w.detach(), layer.u.detach(), layer.b.detach()
    wu = w @ u
    u_hat = u + (-1 + F.softplus(wu) - wu) * w / (w @ w)  # Appendix A.1
    z = torch.randn(6, 3, dtype=torch.float64)
    a = z @ w + b
    y_paper = z + u_hat * torch.tanh(a)[:, None]
    psi = (1 - torch.tanh(a) ** 2)[:, None] * w  # h'(w^T z + b) w
    ladj_paper = torch.log((1 + psi @ u_hat).abs())
    y, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(y, y_paper)
    torch.testing.assert_close(ladj, ladj_paper)
    assert float(w @ layer.u_hat()[0]) >= -1


def test_planar_stays_invertible_when_raw_w_dot_u_is_very_negative():
    layer = _planar()
    with torch.no_grad():
        layer.u.copy_(-50 * layer.w)  # w^T u << -1 in the raw parameters
    u_hat, wu_hat = layer.u_hat()
    assert float(wu_hat) >= -1 and float(layer.w @ u_hat) >= -1
    z = torch.randn(200, 3, dtype=torch.float64) * 3
    y, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(ladj).all()
    torch.testing.assert_close(layer.inv(y.clone()), z, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planar_inverse_reaches_the_stated_tolerance(dtype):
    layer = _planar(dtype=dtype)
    y = torch.randn(500, 3, dtype=dtype) * 4
    x = layer.inv(y)
    residual = (layer(x.clone()) - y).abs()
    assert float(residual.max()) <= 20 * inverse_tolerance(dtype) * float(y.abs().max())


def test_planar_inverse_gradients_are_the_implicit_ones():
    """gradcheck (finite differences) through the numerical inverse, w.r.t. y and parameters."""
    source = _planar(dim=2)

    def inverse(y_, u, w, b):
        layer = build_layer("planar", 2).double()
        for name, value in (("u", u), ("w", w), ("b", b)):
            delattr(layer, name)  # plain tensors in place of the parameters
            setattr(layer, name, value)
        return layer.inverse_and_log_det(y_)

    y = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    inputs = (y, *[getattr(source, n).detach().clone().requires_grad_(True)
                   for n in ("u", "w", "b")])
    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[0], inputs, atol=1e-6)
    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[1], inputs, atol=1e-6)


def test_planar_density_of_points_never_sampled():
    """Pyro issue 2718: log_prob of a planar flow raised KeyError for fresh points."""
    layer = _planar(dim=2, dtype=torch.float32)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    flow = dist.TransformedDistribution(base, [layer])
    lp = flow.log_prob(torch.randn(10, 2) * 2)
    assert lp.shape == (10,) and torch.isfinite(lp).all()


def test_planar_nonconvergence_is_a_clear_error():
    layer = _planar(dim=2)
    with torch.no_grad():
        layer.b.fill_(float("nan"))
    with pytest.raises(InverseNotConvergedError, match="Planar"):
        layer.inv(torch.randn(4, 2, dtype=torch.float64))


def _radial(dim=3, seed=0, raw_alpha=0.3, raw_beta=-0.4):
    torch.manual_seed(seed)
    layer = build_layer("radial", dim).double()
    with torch.no_grad():
        layer.z0.copy_(torch.randn(dim))
        layer.raw_alpha.fill_(raw_alpha)
        layer.raw_beta.fill_(raw_beta)
    return layer


def test_radial_matches_the_paper_formulas():
    layer = _radial()
    alpha, beta = layer.alpha_beta()
    z0 = layer.z0.detach()
    z = torch.randn(6, 3, dtype=torch.float64)
    r = (z - z0).norm(dim=-1)
    h = 1 / (alpha + r)
    h_prime = -1 / (alpha + r) ** 2
    y_paper = z + (beta * h)[:, None] * (z - z0)
    ladj_paper = 2 * torch.log(1 + beta * h) + torch.log(1 + beta * h + beta * h_prime * r)
    y, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(y, y_paper)
    torch.testing.assert_close(ladj, ladj_paper)


@pytest.mark.parametrize("raw_alpha, raw_beta", [(-30.0, -30.0), (30.0, -30.0), (0.0, 30.0),
                                                 (5.0, -8.0)])
def test_radial_beta_at_least_minus_alpha_and_exact_inverse(raw_alpha, raw_beta):
    layer = _radial(raw_alpha=raw_alpha, raw_beta=raw_beta)
    alpha, beta = layer.alpha_beta()
    assert float(beta) >= -float(alpha)
    z0 = layer.z0.detach()
    z = torch.cat([torch.randn(20, 3, dtype=torch.float64), z0[None],  # the centre itself
                   1e3 * torch.randn(3, 3, dtype=torch.float64)])
    y, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    torch.testing.assert_close(layer.inv(y.clone()), z, atol=1e-9, rtol=1e-12)


def test_radial_gradients_finite_at_the_centre():
    layer = _radial()
    y = layer.z0.detach().clone()[None].requires_grad_(True)
    x, ladj = layer.inverse_and_log_det(y)
    (x.sum() + ladj.sum()).backward()
    assert torch.isfinite(y.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_radial_inverse_is_exact_to_machine_precision():
    layer = _radial(dim=5)
    y = torch.randn(1000, 5, dtype=torch.float64) * 3
    err = (layer(layer.inv(y).clone()) - y).abs().max()
    assert float(err) < 1e-12 * (1 + float(y.abs().max())) * math.sqrt(5) * 10
