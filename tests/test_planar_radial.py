"""Planar and radial flows against Rezende & Mohamed (2015), Appendix A: the paper's formulas
computed by hand, the invertibility constraints for extreme raw parameters, the inverses (exact
for radial, to the stated tolerance with implicit gradients for planar) and the edge cases."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from helpers import InverseModule
from torch.func import functional_call
from torch.nn import functional as F

from pyro_nf.transforms import InverseNotConvergedError, build_layer, inverse_tolerance
from pyro_nf.transforms.base import softplus_inverse

F64 = torch.float64


def _planar(dim=3, dtype=F64, seed=0, scale=1.0):
    torch.manual_seed(seed)
    layer = build_layer("planar", dim).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * torch.randn_like(p))
    return layer


def _paper_planar(z, u, w, b):
    """Appendix A.1 written out: u_hat, f(z) and log|1 + u_hat^T psi(z)|."""
    wu = w @ u
    m = -1 + torch.log1p(torch.exp(wu))
    u_hat = u + (m - wu) * w / (w @ w)
    a = z @ w + b
    y = z + u_hat * torch.tanh(a)[..., None]
    psi = (1 - torch.tanh(a) ** 2)[..., None] * w
    return u_hat, y, torch.log((1 + psi @ u_hat).abs())


# ------------------------------------------------------------------------------------ planar
@pytest.mark.parametrize("shape", [(), (6,), (2, 5)])
def test_planar_matches_the_paper_formulas(shape):
    layer = _planar(dim=4)
    u, w, b = (layer.u.detach(), layer.w.detach(), layer.b.detach())
    z = torch.randn(*shape, 4, dtype=F64) * 1.5
    u_hat, y_paper, ladj_paper = _paper_planar(z, u, w, b)
    y, ladj = layer.forward_and_log_det(z)
    assert y.shape == z.shape and ladj.shape == shape
    torch.testing.assert_close(y, y_paper, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj, ladj_paper, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.u_hat().detach(), u_hat, rtol=1e-12, atol=1e-12)


def test_planar_starts_at_the_identity_and_gradients_reach_u():
    torch.manual_seed(3)
    layer = build_layer("planar", 5)
    assert float(layer.u_hat().detach().abs().max()) < 1e-6  # u_hat = 0 up to rounding
    x = torch.randn(20, 5)
    y, ladj = layer.forward_and_log_det(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    assert float(ladj.detach().abs().max()) < 1e-6
    ((y - 1.0) ** 2).sum().backward()
    grad_u, grad_w, _ = layer.params.grad.split([5, 5, 1])
    for name, grad in (("u", grad_u), ("w", grad_w)):
        assert float(grad.abs().max()) > 1e-3, name


@pytest.mark.parametrize("factor", [-50.0, -1e3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_planar_constraint_holds_and_layer_stays_invertible_for_very_negative_w_dot_u(
        factor, dtype):
    layer = _planar(dim=3, dtype=dtype)
    with torch.no_grad():
        layer.u.copy_(factor * layer.w)  # raw w^T u << -1
    u, w = layer.u.detach(), layer.w.detach()
    u_hat, q = (t.detach() for t in layer._constrained())
    assert float(q) >= 0  # q = 1 + w^T u_hat, the quantity the log-det and inverse use
    # w^T u_hat computed from the vector carries the rounding of u + (...) w / ||w||^2
    rounding = 8 * torch.finfo(dtype).eps * float(u.norm() * w.norm())
    expected = -1 + F.softplus(w @ u)  # m(w^T u), just above -1
    assert float(w @ u_hat) >= -1 - rounding
    assert abs(float(w @ u_hat - expected)) <= rounding
    z = torch.randn(300, 3, dtype=dtype) * 3
    y, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    x_back, ladj_back = layer.inverse_and_log_det(y.clone())
    residual = (layer(x_back.clone()) - y).abs().amax(-1)
    assert torch.all(residual <= inverse_tolerance(dtype) * y.abs().amax(-1).clamp_min(1))
    assert torch.isfinite(ladj_back).all()
    if dtype == F64 and factor == -50.0:  # well away from the fold the points come back
        far = (z @ layer.w.detach() + layer.b.detach()).abs() > 0.5
        torch.testing.assert_close(x_back[far], z[far], rtol=1e-8, atol=1e-8)
        jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0],
                                                 z[0])
        torch.testing.assert_close(ladj[0], torch.linalg.slogdet(jac)[1])


def test_planar_log_det_is_finite_where_the_jacobian_is_singular():
    """softplus(w^T u) underflows to 0 (w^T u_hat = -1) and h'(a) = 1 at a = 0: det J = 0 in
    exact arithmetic; the log-det is clamped at log(tiny) instead of -inf, and the inverse
    of the fold point is the fold point."""
    for dtype in (torch.float32, F64):
        layer = build_layer("planar", 2).to(dtype)
        with torch.no_grad():
            layer.w.copy_(torch.tensor([1.0, 0.0]))
            layer.u.copy_(torch.tensor([-1e3, 0.0]))
            layer.b.zero_()
        torch.testing.assert_close(layer.u_hat().detach(), torch.tensor([-1.0, 0.0],
                                                                        dtype=dtype))
        x = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=dtype)
        y, ladj = layer.forward_and_log_det(x)
        tiny = torch.finfo(dtype).tiny
        assert torch.isfinite(ladj).all() and float(ladj[0].detach()) == pytest.approx(
            torch.log(torch.tensor(tiny, dtype=dtype)).item())
        expected = torch.log(1 - (1 - torch.tanh(x[1, 0]) ** 2))  # = log tanh^2(2)
        torch.testing.assert_close(ladj[1], expected)
        x_back, ladj_back = layer.inverse_and_log_det(y.detach().clone())
        assert torch.isfinite(x_back).all() and torch.isfinite(ladj_back).all()
        torch.testing.assert_close(x_back[0], x[0])
        torch.testing.assert_close(x_back[1], x[1], rtol=1e-4, atol=1e-4)


def test_planar_with_w_zero_is_a_translation():
    layer = _planar(dim=3)
    with torch.no_grad():
        layer.w.zero_()
    z = torch.randn(5, 3, dtype=F64)
    y, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(y, z + layer.u.detach() * torch.tanh(layer.b.detach()))
    assert float(ladj.detach().abs().max()) <= 1e-15
    (y.sum() + ladj.sum() + layer.inv(y.clone()).sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    torch.testing.assert_close(layer.inv(y.clone()), z)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_planar_inverse_reaches_the_stated_tolerance(dtype):
    layer = _planar(dim=3, dtype=dtype, scale=2.0)
    y = torch.cat([torch.randn(400, 3, dtype=dtype) * 4, torch.randn(4, 3, dtype=dtype) * 1e3])
    x = layer.inv(y)
    residual = (layer(x.clone()) - y).abs().amax(-1)
    tol = inverse_tolerance(dtype)
    assert torch.all(residual <= tol * y.abs().amax(-1).clamp_min(1.0)), residual.max()
    # and the log-det returned by the inverse is the forward one at x
    torch.testing.assert_close(layer.inverse_and_log_det(y)[1], layer.forward_and_log_det(x)[1],
                               rtol=10 * tol, atol=10 * tol)


def test_planar_softplus_is_exact_for_large_w_dot_u():
    """w^T u = 25: torch's F.softplus returns 25 there (its linear cut-off at 20), 1.4e-11 off,
    which would make the log-det and the inverse use a w^T u_hat that the map does not have."""
    layer = _planar(dim=3)
    with torch.no_grad():
        w = layer.w.detach()
        layer.u.copy_(25 * w / (w @ w) + torch.tensor([0.3, -0.2, 0.1], dtype=F64))
        layer.u.sub_((w @ layer.u - 25) * w / (w @ w))
    u_hat, q = (t.detach() for t in layer._constrained())
    assert abs(float(w @ u_hat) - (float(q) - 1)) < 1e-13
    assert float(q) - 25 == pytest.approx(1.3887943864964021e-11, rel=1e-6)  # log1p(e^-25)
    y = torch.randn(200, 3, dtype=F64) * 3
    residual = (layer(layer.inv(y).clone()) - y).abs().amax(-1)
    assert torch.all(residual <= 1e-12 * y.abs().amax(-1).clamp_min(1))



def test_planar_inverse_gradients_are_the_implicit_ones():
    """gradcheck (finite differences) through the numerical inverse, w.r.t. y and u, w, b
    (the one ``params`` tensor)."""
    wrapper = InverseModule(_planar(dim=2, seed=1))
    names = ("layer.params",)
    params = [dict(wrapper.named_parameters())[n].detach().clone().requires_grad_(True)
              for n in names]
    y = torch.randn(3, 2, dtype=F64, requires_grad=True)

    def inverse(y_, *ps):
        return functional_call(wrapper, dict(zip(names, ps)), (y_,))

    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[0], (y, *params), atol=1e-6)
    assert torch.autograd.gradcheck(lambda *a: inverse(*a)[1], (y, *params), atol=1e-6)


def test_planar_density_of_points_never_sampled():
    """Pyro issue 2718: log_prob of a planar flow failed for points that were not sampled."""
    layer = _planar(dim=2, dtype=torch.float32)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    flow = dist.TransformedDistribution(base, [layer])
    x = torch.randn(10, 2)
    with torch.no_grad():
        y_fresh = layer(x).clone()  # a new tensor: nothing cached for it
    lp = flow.log_prob(y_fresh)
    expected = base.log_prob(x) - layer.forward_and_log_det(x)[1]
    assert lp.shape == (10,)
    torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-4)
    (-lp.mean()).backward()
    assert all(torch.isfinite(p.grad).all() and (p.grad != 0).any() for p in layer.parameters())


def test_planar_parameters_are_one_tensor_and_the_former_layout_loads():
    """u, w and b are views of one ``params`` tensor (one Adam state instead of three); a
    state dict with separate u, w, b (the layout before) loads into the same map."""
    layer = _planar(dim=3, seed=2)
    assert [name for name, _ in layer.named_parameters()] == ["params"]
    legacy = {"u": layer.u.detach().clone(), "w": layer.w.detach().clone(),
              "b": layer.b.detach().clone()}
    fresh = build_layer("planar", 3).to(F64)
    fresh.load_state_dict(legacy)
    z = torch.randn(4, 3, dtype=F64)
    for a, b in zip(fresh.forward_and_log_det(z), layer.forward_and_log_det(z)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        layer.b.fill_(0.25)  # writing through a view changes the parameter
    assert float(layer.params[-1].detach()) == 0.25


def test_planar_nonconvergence_is_a_clear_error():
    layer = _planar(dim=2)
    with torch.no_grad():
        layer.b.fill_(float("nan"))
    with pytest.raises(InverseNotConvergedError, match="Planar"):
        layer.inv(torch.randn(4, 2, dtype=F64))


# ------------------------------------------------------------------------------------ radial
def _radial(dim=3, seed=0, raw_alpha=0.3, raw_beta=-0.4, dtype=F64):
    torch.manual_seed(seed)
    layer = build_layer("radial", dim).to(dtype)
    with torch.no_grad():
        layer.z0.copy_(torch.randn(dim))
        layer.raw_alpha.fill_(raw_alpha)
        layer.raw_beta.fill_(raw_beta)
    return layer


@pytest.mark.parametrize("dim", [1, 4])
@pytest.mark.parametrize("raw_beta", [-0.4, 2.0])
def test_radial_matches_the_paper_formulas(dim, raw_beta):
    layer = _radial(dim=dim, raw_beta=raw_beta)
    alpha = F.softplus(layer.raw_alpha.detach())
    beta = -alpha + F.softplus(layer.raw_beta.detach())
    z0 = layer.z0.detach()
    z = torch.randn(6, dim, dtype=F64) * 2
    r = (z - z0).norm(dim=-1)
    h = 1 / (alpha + r)
    h_prime = -1 / (alpha + r) ** 2
    y_paper = z + (beta * h)[:, None] * (z - z0)
    ladj_paper = (dim - 1) * torch.log(1 + beta * h) + torch.log(1 + beta * h + beta * h_prime * r)
    y, ladj = layer.forward_and_log_det(z)
    torch.testing.assert_close(y, y_paper, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj, ladj_paper, rtol=1e-12, atol=1e-12)
    a, b = layer.alpha_beta()
    torch.testing.assert_close((a.detach(), b.detach()), (alpha, beta))


def test_radial_starts_at_the_identity():
    torch.manual_seed(0)
    layer = build_layer("radial", 5)
    alpha, beta = layer.alpha_beta()
    assert float(beta.detach()) == 0.0 and float(alpha.detach()) == pytest.approx(1.0)
    x = torch.randn(20, 5) * 3
    y, ladj = layer.forward_and_log_det(x)
    torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    assert float(ladj.detach().abs().max()) < 1e-6


EXTREME = [-1e3, -80.0, 0.0, 80.0, 1e3]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_radial_beta_at_least_minus_alpha_for_extreme_raw_parameters(dtype):
    z = torch.cat([torch.randn(10, 3), 1e3 * torch.randn(2, 3)]).to(dtype)
    for raw_alpha in EXTREME:
        for raw_beta in EXTREME:
            layer = _radial(raw_alpha=raw_alpha, raw_beta=raw_beta, dtype=dtype)
            alpha, beta = (t.detach() for t in layer.alpha_beta())
            assert float(alpha) > 0 and float(beta) >= -float(alpha), (raw_alpha, raw_beta)
            points = torch.cat([z, layer.z0.detach()[None]])  # includes the center
            y, ladj = layer.forward_and_log_det(points)
            x_back, ladj_back = layer.inverse_and_log_det(y)
            for t in (y, ladj, x_back, ladj_back):
                assert torch.isfinite(t).all(), (raw_alpha, raw_beta)


@pytest.mark.parametrize("raw_alpha, raw_beta", [(0.3, -0.4), (1.0, -3.0), (-2.0, 5.0),
                                                 (3.0, 3.0)])
def test_radial_inverse_is_exact(raw_alpha, raw_beta):
    """Round trips at 1e-12 in float64, at the center, next to it, and 1e3 away. (Contraction
    factors far from 1 lose digits to conditioning, not to the inverse: see the test below.)"""
    layer = _radial(raw_alpha=raw_alpha, raw_beta=raw_beta)
    z0 = layer.z0.detach()
    x = torch.cat([torch.randn(50, 3, dtype=F64), z0[None],  # the center itself
                   z0 + 1e-6 * torch.randn(3, 3, dtype=F64),  # next to it
                   1e3 * torch.randn(5, 3, dtype=F64)])  # far away
    y, ladj = layer.forward_and_log_det(x)
    x_back, ladj_back = layer.inverse_and_log_det(y.clone())
    scale = 1 + x.abs().amax(-1, keepdim=True)
    assert torch.all((x_back - x).abs() <= 1e-12 * scale), (x_back - x).abs().max()
    assert torch.equal(x_back[50], z0)
    torch.testing.assert_close(ladj_back, ladj, rtol=1e-12, atol=1e-12)
    # and y -> x -> y, on fresh points, the center included
    y0 = torch.cat([torch.randn(50, 3, dtype=F64) * 3, 1e3 * torch.randn(5, 3, dtype=F64),
                    z0[None]])
    y_back = layer(layer.inv(y0).clone())
    assert torch.all((y_back - y0).abs() <= 1e-12 * (1 + y0.abs().amax(-1, keepdim=True)))


def test_radial_radius_root_has_no_cancellation():
    """alpha = 1e-8, s = alpha + beta = 1 and r ~ alpha: B = s - r_y > 0 with B^2 >> alpha r_y,
    where the textbook root (-B + sqrt(B^2 + 4 alpha r_y)) / 2 keeps only ~8 digits of r, and
    z depends on r through (alpha + r) / (r + s). The inverse must be exact to 1e-12."""
    layer = _radial(raw_alpha=softplus_inverse(1e-8), raw_beta=softplus_inverse(1.0))
    with torch.no_grad():
        layer.z0.zero_()  # so that the tiny offsets below are represented exactly
    x = 1e-8 * torch.randn(8, 3, dtype=F64)
    y = layer(x).detach().clone()
    x_back = layer.inv(y).detach()
    err = (x_back - x).norm(dim=-1) / x.norm(dim=-1)
    assert float(err.max()) < 1e-12, err.max()
    # the same data through the textbook formula: the test can tell the two apart
    alpha, beta = (t.detach() for t in layer.alpha_beta())
    r_y = y.norm(dim=-1)
    B = alpha + beta - r_y
    r_naive = (-B + torch.sqrt(B * B + 4 * alpha * r_y)) / 2
    assert float(((r_naive - x.norm(dim=-1)) / x.norm(dim=-1)).abs().max()) > 1e-10


def test_radial_at_the_center_jacobian_and_gradients():
    """f is differentiable at z0 with J = (1 + beta / alpha) I; no NaN gradients there, in
    either direction."""
    layer = _radial(dim=3)
    alpha, beta = (t.detach() for t in layer.alpha_beta())
    z0 = layer.z0.detach().clone()
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], z0)
    torch.testing.assert_close(jac, (1 + beta / alpha) * torch.eye(3, dtype=F64))
    assert float(layer.forward_and_log_det(z0)[1].detach()) == pytest.approx(
        3 * float(torch.log(1 + beta / alpha)), rel=1e-12)
    for direction in ("forward", "inverse"):
        layer.zero_grad()
        point = z0[None].clone().requires_grad_(True)
        fn = layer.forward_and_log_det if direction == "forward" else layer.inverse_and_log_det
        out, ladj = fn(point)
        torch.testing.assert_close(out.detach(), z0[None])
        (out.sum() + ladj.sum()).backward()
        assert torch.isfinite(point.grad).all(), direction
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters()), direction
