"""Sylvester flows against van den Berg, Hasenclever, Tomczak & Welling (2018).

The generic properties (round trips on every batch shape, density normalization, state dicts,
...) are the battery's; here: the paper's formulas, the three ways of building Q, the
invertibility margin, the triangular back-substitution inverse and its implicit gradients, and
the error messages.
"""

from __future__ import annotations

import pytest
import torch
from helpers import InverseModule
from torch.func import functional_call

from pyro_nf.transforms import build_layer
from pyro_nf.transforms.sylvester import (
    DIAGONAL_MARGIN,
    HouseholderSylvester,
    OrthogonalSylvester,
    TriangularSylvester,
)

VARIANTS = ["sylvester_orthogonal", "sylvester_householder", "sylvester_triangular"]
F64 = torch.float64


def _layer(name, dim=5, m=3, dtype=F64, seed=0, scale=1.0, **opts):
    """A layer with every raw parameter moved by scale * N(0, 1)."""
    torch.manual_seed(seed)
    layer = build_layer(name, dim, m=m, **opts).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer


def _naive_forward(layer, z):
    """The paper's formulas, one sample at a time with explicit matrices."""
    q = layer.q().detach()
    r, rt = (t.detach() for t in layer.triangles()[:2])
    b = layer.b.detach()
    ys, ladjs = [], []
    for zi in z.reshape(-1, z.shape[-1]):
        pre = rt @ (q.T @ zi) + b
        ys.append(zi + q @ (r @ torch.tanh(pre)))
        hprime = 1 - torch.tanh(pre) ** 2
        ladjs.append(torch.log(torch.abs(1 + hprime * torch.diag(r) * torch.diag(rt))).sum())
    return torch.stack(ys).reshape(z.shape), torch.stack(ladjs).reshape(z.shape[:-1])


# ----------------------------------------------------------------------------- the formulas
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dim, m", [(5, 3), (4, 4)])
def test_forward_and_log_det_are_the_papers(name, dim, m):
    layer = _layer(name, dim, m)
    r, rt, rd, rtd, k = (t.detach() for t in layer.triangles())
    assert torch.equal(r, torch.triu(r)) and torch.equal(rt, torch.triu(rt))
    torch.testing.assert_close(torch.diag(r), torch.tanh(layer.r_diag.detach()))
    torch.testing.assert_close(torch.diag(rt),
                               (1 - DIAGONAL_MARGIN) * torch.tanh(layer.rt_diag.detach()))
    torch.testing.assert_close(k, 1 + rd * rtd)
    z = 2 * torch.randn(2, 3, dim, dtype=F64)
    y, ladj = layer.forward_and_log_det(z)
    y_paper, ladj_paper = _naive_forward(layer, z)
    assert ladj.shape == (2, 3)
    torch.testing.assert_close(y, y_paper)
    torch.testing.assert_close(ladj, ladj_paper)
    for zi, li in zip(z.reshape(-1, dim)[:3], ladj.reshape(-1)[:3]):
        jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], zi)
        torch.testing.assert_close(torch.linalg.slogdet(jac)[1], li, atol=1e-10, rtol=1e-10)


def test_starts_exactly_at_the_identity_and_gradients_reach_r():
    for name in VARIANTS:
        torch.manual_seed(0)
        layer = build_layer(name, 6).double()
        assert torch.count_nonzero(layer.triangles()[0]) == 0  # R = 0
        assert torch.count_nonzero(layer.triangles()[1]) > 0  # R~ != 0
        z = torch.randn(20, 6, dtype=F64)
        y, ladj = layer.forward_and_log_det(z)
        assert torch.equal(y, z) and torch.equal(ladj, torch.zeros(20, dtype=F64))
        (y.sin().sum() + ladj.sum()).backward()
        assert (layer.r_diag.grad != 0).all(), name
        assert (layer.r_upper.grad != 0).any(), name
        # documented: with R = 0 the output does not depend on R~, b or Q yet
        assert torch.count_nonzero(layer.rt_upper.grad) == 0


# ----------------------------------------------------------------------------- Q
@pytest.mark.parametrize("name", ["sylvester_orthogonal", "sylvester_householder"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (F64, 1e-12)])
@pytest.mark.parametrize("dim, m", [(6, 4), (17, 16), (3, 3)])
def test_q_has_orthonormal_columns_after_perturbation(name, dtype, tol, dim, m):
    layer = _layer(name, dim, m, dtype=dtype, seed=dim, scale=3.0)
    with torch.no_grad():
        q = layer.q()
    assert q.shape == (dim, m) and q.dtype == dtype
    assert float((q.T @ q - torch.eye(m, dtype=dtype)).abs().max()) < tol


def test_orthogonal_q_is_the_polar_factor_of_the_raw_matrix():
    layer = _layer("sylvester_orthogonal", 7, 4, scale=2.0)
    raw = torch.diag(torch.tensor([1.0, 30.0, 0.01, 5.0, 1.0, 1.0, 1.0], dtype=F64))[:, :4]
    with torch.no_grad():
        layer.q_raw.copy_(raw @ torch.linalg.qr(torch.randn(4, 4, dtype=F64))[0]
                          + 1e-3 * torch.randn(7, 4, dtype=F64))
        q = layer.q()
        u, _, vh = torch.linalg.svd(layer.q_raw, full_matrices=False)
    torch.testing.assert_close(q, u @ vh, atol=1e-12, rtol=0)  # condition number ~3e3


def test_householder_q_is_the_product_of_reflections():
    layer = _layer("sylvester_householder", 5, 3, reflections=4)
    v = layer.vectors.detach()
    product = torch.eye(5, dtype=F64)
    for vk in v:
        product = product @ (torch.eye(5, dtype=F64) - 2 * torch.outer(vk, vk) / (vk @ vk))
    torch.testing.assert_close(layer.q().detach(), product[:, :3])
    with torch.no_grad():
        layer.vectors[1] = 0.0  # a zero vector is no reflection, not a NaN
    assert torch.isfinite(layer.q()).all()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("m", [5, 3])
def test_triangular_q_is_identity_or_reversal(reverse, m):
    layer = build_layer("sylvester_triangular", 5, m=m, reverse=reverse)
    eye = torch.eye(5)
    expected = (eye.flip(1) if reverse else eye)[:, :m]
    assert torch.equal(layer.q(), expected)
    assert "q_fixed" in layer.state_dict()
    assert "q_fixed" not in dict(layer.named_parameters())
    assert layer.double().q().dtype == F64  # a buffer: it follows .double()
    if m < 5:  # the D - M coordinates outside span(Q) pass through unchanged
        layer = _layer("sylvester_triangular", 5, m, reverse=reverse)
        z = torch.randn(4, 5, dtype=F64)
        untouched = slice(0, 5 - m) if reverse else slice(m, 5)
        assert torch.equal(layer(z)[:, untouched], z[:, untouched])


# ----------------------------------------------------------------------------- invertibility
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("raw", [20.0, -20.0, 80.0])
def test_invertible_for_saturated_raw_diagonals(name, raw):
    layer = _layer(name, 4, 4, seed=2)
    with torch.no_grad():
        layer.r_diag.fill_(raw)
        layer.rt_diag.fill_(-raw)  # R_ii R~_ii as close to -1 as the parametrization allows
        layer.r_diag[0] = raw / 2  # and one in between
    _, _, rd, rtd, k = layer.triangles()
    assert bool((rd * rtd >= -(1 - DIAGONAL_MARGIN)).all()) and bool((k > 0).all())
    z = torch.randn(30, 4, dtype=F64) * 2
    y, ladj = layer.forward_and_log_det(z)
    assert torch.isfinite(ladj).all()
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], z[0])
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj[0], atol=1e-8, rtol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(layer.inv(y.clone()), z, atol=1e-7, rtol=1e-7)
        # float32: the stable 1 + R_ii R~_ii keeps the log-det at float64's value
        layer32 = _layer(name, 4, 4, seed=2, dtype=torch.float32)
        layer32.load_state_dict(layer.state_dict())
        y32, ladj32 = layer32.forward_and_log_det(z.float())
        torch.testing.assert_close(ladj32.double(), ladj, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(layer32(layer32.inv(y32.clone())), y32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-6), (F64, 1e-12)])
def test_log_det_at_the_invertibility_margin_is_known(name, dtype, rtol):
    """Raw diagonals +-400 (tanh = +-1 to 1e-347) and pre-activation 0 (z = 0, b = 0): every
    factor is 1 + R_ii R~_ii = 1 - (1 - 1e-4) = 1e-4, so log|det J| = M log(1e-4), in float32
    too (a naive 1 + R_ii R~_ii loses 1.7e-4 per factor there; without the margin the factor
    underflows to 0)."""
    layer = _layer(name, 5, 3, dtype=dtype, seed=5)
    with torch.no_grad():
        layer.r_diag.copy_(torch.tensor([400.0, -400.0, 400.0]))
        layer.rt_diag.copy_(-layer.r_diag)
        layer.b.zero_()
        z = torch.zeros(2, 5, dtype=dtype)
        y, ladj = layer.forward_and_log_det(z)
        expected = torch.full((2,), 3 * torch.log(torch.tensor(1e-4, dtype=F64)).item(),
                              dtype=dtype)
        torch.testing.assert_close(ladj, expected, rtol=rtol, atol=0)
        torch.testing.assert_close(layer.inverse_and_log_det(y)[1], expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (F64, 1e-9)])
def test_inverse_round_trip(name, dtype, tol):
    layer = _layer(name, 6, 4, dtype=dtype, seed=3)
    with torch.no_grad():
        x = torch.randn(200, 6, dtype=dtype) * 3
        torch.testing.assert_close(layer.inv(layer(x).clone()), x, atol=tol, rtol=tol)
        y = torch.randn(200, 6, dtype=dtype) * 3
        x_back, ladj_inv = layer.inverse_and_log_det(y)
        y_back, ladj = layer.forward_and_log_det(x_back)
        torch.testing.assert_close(y_back, y, atol=tol, rtol=tol)
        torch.testing.assert_close(ladj_inv, ladj, atol=10 * tol, rtol=10 * tol)
        # f moves z only inside span(Q): the orthogonal complement is untouched
        q = layer.q()
        complement = torch.eye(6, dtype=dtype) - q @ q.T
        torch.testing.assert_close((y - x_back) @ complement, torch.zeros_like(y),
                                   atol=tol, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_through_the_inverse_are_the_implicit_ones(name):
    """gradcheck (finite differences, float64) of f^{-1}(y) and its log-det with respect to y
    and every parameter: the chained scalar implicit steps give the system's exact gradients."""
    wrapper = InverseModule(_layer(name, 3, 2, scale=0.7, seed=4))
    names = [n for n, _ in wrapper.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in wrapper.parameters()]

    def inverse(y, *params):
        return functional_call(wrapper, dict(zip(names, params)), (y,))

    y = (2 * torch.randn(2, 3, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(inverse, (y, *values), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("degenerate", ["zeros", "rank1", "nan"])
def test_orthogonalization_failure_is_a_clear_error(dtype, degenerate):
    layer = build_layer("sylvester_orthogonal", 4, m=3).to(dtype)
    with torch.no_grad():
        if degenerate == "zeros":
            layer.q_raw.zero_()
        elif degenerate == "rank1":
            layer.q_raw.copy_(torch.outer(torch.randn(4), torch.randn(3)))
        else:
            layer.q_raw[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match=r"OrthogonalSylvester\(dim=4\): Björck "
                                           r"orthogonalization of Q did not converge.*q_raw"):
        layer(torch.randn(2, 4, dtype=dtype))


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"OrthogonalSylvester: m must satisfy.*dim=3.*m=4"):
        build_layer("sylvester_orthogonal", 3, m=4)
    for cls in (OrthogonalSylvester, HouseholderSylvester, TriangularSylvester):
        with pytest.raises(ValueError, match=f"{cls.__name__}: m must"):
            cls(3, m=0)
        with pytest.raises(TypeError, match=f"{cls.__name__}: m must be an int"):
            cls(3, m=2.0)
    with pytest.raises(ValueError, match="HouseholderSylvester: reflections"):
        build_layer("sylvester_householder", 3, reflections=0)
    with pytest.raises(ValueError, match="OrthogonalSylvester: max_iter"):
        build_layer("sylvester_orthogonal", 3, max_iter=0)
    with pytest.raises(TypeError, match="TriangularSylvester: reverse"):
        build_layer("sylvester_triangular", 3, reverse="yes")
