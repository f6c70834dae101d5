"""Layer-specific math of the linear-algebra layers: Glow's LU linear map and ActNorm, and the
Householder flow. The generic properties (round trips, densities, gradients, ...) are in the
registry-driven battery; here are the formulas, the known answers and the edge cases."""

from __future__ import annotations

import io

import pytest
import torch

from pyro_nf.transforms import build_layer, info
from pyro_nf.transforms.householder import Householder
from pyro_nf.transforms.linear import LULinear
from pyro_nf.transforms.normalization import ActNorm

F64 = torch.float64


def _jacobian(fn, x):
    return torch.autograd.functional.jacobian(fn, x)


def _randomise(layer, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


# ------------------------------------------------------------------------------------- LU
def _lu_from_raw_parameters(layer):
    """W = P L (U + diag s) rebuilt from the raw parameters independently of the layer."""
    d = layer.dim
    n = d * (d - 1) // 2
    assert layer.lower_entries.shape == (n,) and layer.upper_entries.shape == (n,)
    lower = torch.eye(d, dtype=F64)
    upper = torch.diag(torch.exp(layer.log_s.detach()))
    k = 0
    for i in range(d):  # tril_indices order: row by row, column ascending
        for j in range(i):
            lower[i, j] = layer.lower_entries[k]
            upper[j, i] = layer.upper_entries[k]
            k += 1
    perm_matrix = torch.zeros(d, d, dtype=F64)
    perm_matrix[torch.arange(d), layer.perm] = 1.0
    return perm_matrix @ lower @ upper


@pytest.mark.parametrize("permutation", ["identity", "random"])
def test_lu_weight_is_p_l_u_plus_diag_s_and_is_what_forward_applies(permutation):
    layer = _randomise(LULinear(5, permutation=permutation, seed=3).double(), 0.7)
    lower, upper, perm_matrix = layer.lower.detach(), layer.upper.detach(), \
        layer.permutation_matrix
    assert torch.equal(torch.diagonal(lower), torch.ones(5, dtype=F64))
    assert torch.equal(lower, lower.tril()) and torch.equal(upper, upper.triu(1))
    assert torch.equal(perm_matrix.sum(0), torch.ones(5, dtype=F64))
    assert torch.equal(perm_matrix.sum(1), torch.ones(5, dtype=F64))
    w_expected = _lu_from_raw_parameters(layer)
    w_layer = perm_matrix @ lower @ (upper + torch.diag(layer.scale.detach()))
    torch.testing.assert_close(w_layer, w_expected, atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(layer.weight.detach(), w_expected, atol=1e-14, rtol=1e-14)
    x = torch.randn(5, dtype=F64)
    jac = _jacobian(lambda v: layer.forward_and_log_det(v)[0], x)
    torch.testing.assert_close(jac, w_expected, atol=1e-13, rtol=1e-13)
    y, ladj = layer.forward_and_log_det(x)
    torch.testing.assert_close(y, w_expected @ x + layer.bias.detach(), atol=1e-13, rtol=1e-13)
    # log|det W| = sum log_s (the permutation and the unit triangle contribute nothing)
    torch.testing.assert_close(ladj, layer.log_s.sum(), atol=0, rtol=0)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(w_expected)[1], atol=1e-12, rtol=0)


def test_lu_log_det_has_the_batch_shape_and_sign_follows_the_permutation():
    layer = _randomise(LULinear(4, permutation="random", seed=1).double())
    for shape in [(), (3,), (4, 3)]:
        x = torch.randn(*shape, 4, dtype=F64)
        _, ladj = layer.forward_and_log_det(x)
        assert ladj.shape == shape
        assert torch.all(ladj == layer.log_s.sum())
    sign = torch.linalg.slogdet(layer.weight.detach())[0]
    assert sign == torch.linalg.det(layer.permutation_matrix)  # det L = 1, diag s > 0


def test_lu_starts_exactly_at_the_identity():
    x = torch.randn(6, 5)
    y, ladj = LULinear(5).forward_and_log_det(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(6))
    layer = LULinear(5, permutation="random", seed=7)
    y, _ = layer.forward_and_log_det(x)
    assert torch.equal(y, x[..., layer.perm])  # with a random P it starts at P


@pytest.mark.parametrize("shape", [(), (3,), (4, 3)])
def test_lu_inverse_is_exact_in_float64(shape):
    layer = _randomise(LULinear(6, permutation="random", seed=2).double(), 0.4, seed=5)
    y = torch.randn(*shape, 6, dtype=F64) * 3
    x, ladj = layer.inverse_and_log_det(y)
    assert x.shape == y.shape and ladj.shape == shape
    w = layer.weight.detach()
    direct = torch.linalg.solve(w, (y - layer.bias.detach()).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(x, direct, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(layer.forward_and_log_det(x)[0], y, atol=1e-12, rtol=1e-12)
    x0 = torch.randn(*shape, 6, dtype=F64)
    torch.testing.assert_close(layer.inverse_and_log_det(layer.forward_and_log_det(x0)[0])[0],
                               x0, atol=1e-12, rtol=1e-12)


def test_lu_random_permutation_is_reproducible_and_options_are_checked():
    a, b = LULinear(8, permutation="random", seed=4), LULinear(8, permutation="random", seed=4)
    assert torch.equal(a.perm, b.perm)
    assert not torch.equal(a.perm, LULinear(8, permutation="random", seed=5).perm)
    assert not torch.equal(a.perm, torch.arange(8))
    with pytest.raises(ValueError, match="LULinear.*permutation"):
        LULinear(3, permutation="reverse")
    with pytest.raises(TypeError, match="LULinear.*seed"):
        LULinear(3, permutation="random", seed=1.5)
    assert info("lu").kind == "linear" and info("lu").inverse == "exact"


def test_lu_is_finite_for_large_inputs_and_large_parameters():
    layer = _randomise(LULinear(5).double(), 3.0)
    x = 1e3 * torch.randn(4, 5, dtype=F64)
    y, ladj = layer.forward_and_log_det(x)
    back, _ = layer.inverse_and_log_det(y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all() and torch.isfinite(back).all()
    torch.testing.assert_close(layer.forward_and_log_det(back)[0], y, rtol=1e-9, atol=1e-6)


# ------------------------------------------------------------------------------------- ActNorm
def _data(shape, dim=4, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shift = torch.tensor([3.0, -7.0, 0.5, 100.0], dtype=dtype)[:dim]
    scale = torch.tensor([5.0, 0.01, 1.0, 40.0], dtype=dtype)[:dim]
    return shift + scale * torch.randn(*shape, dim, generator=gen, dtype=dtype)


@pytest.mark.parametrize("shape", [(500,), (20, 25)])
def test_actnorm_data_init_standardizes_the_inverse_outputs(shape):
    layer = ActNorm(4).double()
    y = _data(shape)
    with torch.no_grad():  # initialization also happens outside autograd
        x = layer.inv(y)
    assert bool(layer.initialized)
    flat = x.reshape(-1, 4)
    torch.testing.assert_close(flat.mean(0), torch.zeros(4, dtype=F64), atol=1e-10, rtol=0)
    yf = y.reshape(-1, 4)
    sd = yf.std(0, correction=0)  # std 1 up to the eps added to the data's std: s / (s + eps)
    torch.testing.assert_close(flat.std(0, correction=0), sd / (sd + layer.eps), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(flat.std(0, correction=0), torch.ones(4, dtype=F64), atol=2e-4,
                               rtol=0)
    torch.testing.assert_close(layer.loc.detach(), yf.mean(0))
    torch.testing.assert_close(layer.log_scale.detach(),
                               torch.log(yf.std(0, correction=0) + layer.eps))
    # the forward map is the inverse of what standardized the data
    torch.testing.assert_close(layer(x.clone()), y, atol=1e-10, rtol=1e-12)
    # log|det J| of the forward map = sum log_scale, checked against autograd
    jac = _jacobian(lambda v: layer.forward_and_log_det(v)[0], flat[0])
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], layer.log_scale.sum().detach())
    # a second, different batch does not re-initialize
    before = [p.detach().clone() for p in layer.parameters()]
    layer.inv(_data((50,), seed=1) * 10)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


def test_actnorm_is_exactly_the_identity_before_init_and_forward_never_initializes():
    layer = ActNorm(4).double()
    y = _data((30,))
    out, ladj = layer.forward_and_log_det(y)
    assert torch.equal(out, y) and torch.equal(ladj, torch.zeros(30, dtype=F64))
    layer(y)
    assert not bool(layer.initialized)
    assert torch.equal(layer.loc.detach(), torch.zeros(4, dtype=F64))


def test_actnorm_init_survives_state_dict_reload():
    source = ActNorm(4).double()
    source.inv(_data((200,)))
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert "initialized" in state and bool(state["initialized"])
    target = ActNorm(4).double()
    target.load_state_dict(state)
    other = _data((64,), seed=3) * 2 - 5
    x_target = target.inv(other)  # must not re-initialize on this different batch
    assert torch.equal(target.loc, source.loc) and torch.equal(target.log_scale,
                                                               source.log_scale)
    assert torch.equal(x_target, source.inv(other.clone()))


def test_actnorm_without_data_init_never_changes():
    layer = ActNorm(4, data_init=False).double()
    y = _data((100,))
    x, ladj = layer.inverse_and_log_det(y)
    layer.inv(y.clone())
    assert torch.equal(x, y) and torch.equal(ladj, torch.zeros(100, dtype=F64))
    assert torch.equal(layer.loc.detach(), torch.zeros(4, dtype=F64))
    assert torch.equal(layer.log_scale.detach(), torch.zeros(4, dtype=F64))
    layer.initialize(y)  # the explicit call still works
    torch.testing.assert_close(layer.inv(y.clone()).mean(0), torch.zeros(4, dtype=F64),
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_actnorm_single_element_batch_is_finite_with_unit_scale(shape):
    layer = ActNorm(3)
    y = torch.tensor([2.0, -1.0, 1e3]).expand(*shape, 3)
    x, ladj = layer.inverse_and_log_det(y)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert torch.equal(layer.log_scale.detach(), torch.zeros(3))
    assert torch.equal(layer.loc.detach(), torch.tensor([2.0, -1.0, 1e3]))
    assert torch.equal(x, torch.zeros_like(y))


def test_actnorm_constant_dimension_falls_back_to_unit_scale():
    layer = ActNorm(2).double()
    y = torch.stack([torch.randn(40, dtype=F64), torch.full((40,), 3.0, dtype=F64)], -1)
    layer.inv(y)
    assert layer.log_scale[1] == 0 and layer.loc[1] == 3.0
    assert torch.isfinite(layer.log_scale).all()


def test_actnorm_keeps_parameters_set_before_the_first_inverse():
    layer = ActNorm(4).double()
    with torch.no_grad():
        layer.loc.fill_(1.0)
        layer.log_scale.fill_(0.5)
    layer.inv(_data((50,)))
    assert bool(layer.initialized)
    assert torch.all(layer.loc == 1.0) and torch.all(layer.log_scale == 0.5)


def test_actnorm_rejects_bad_options_and_non_finite_init_data():
    with pytest.raises(TypeError, match="ActNorm.*data_init"):
        ActNorm(2, data_init=1)
    with pytest.raises(ValueError, match="ActNorm.*eps"):
        ActNorm(2, eps=-1.0)
    layer = ActNorm(2)
    with pytest.raises(ValueError, match="ActNorm.*non-finite"):
        layer.initialize(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="ActNorm.*empty"):
        layer.initialize(torch.zeros(0, 2))
    assert not bool(layer.initialized)


def test_actnorm_large_inputs_are_finite():
    layer = ActNorm(4)
    y = 1e3 * torch.randn(16, 4)
    x, ladj = layer.inverse_and_log_det(y)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    out, ladj = layer.forward_and_log_det(1e3 * torch.randn(16, 4))
    assert torch.isfinite(out).all() and torch.isfinite(ladj).all()


# ------------------------------------------------------------------------------------- Householder
def _explicit_product(vectors):
    d = vectors.shape[-1]
    h = torch.eye(d, dtype=vectors.dtype)
    for v in vectors:
        h = (torch.eye(d, dtype=vectors.dtype) - 2 * torch.outer(v, v) / (v @ v)) @ h
    return h


def test_householder_is_the_product_of_reflections_and_orthogonal():
    torch.manual_seed(0)
    layer = _randomise(Householder(5, reflections=6).double(), 1.0)
    expected = _explicit_product(layer.vectors.detach())
    x = torch.randn(5, dtype=F64)
    jac = _jacobian(lambda v: layer.forward_and_log_det(v)[0], x)
    torch.testing.assert_close(jac, expected, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(layer.matrix.detach(), expected, atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(jac.T @ jac, torch.eye(5, dtype=F64), atol=1e-13, rtol=0)
    assert not torch.allclose(jac, torch.eye(5, dtype=F64), atol=1e-2)
    y, ladj = layer.forward_and_log_det(torch.randn(4, 3, 5, dtype=F64))
    assert torch.equal(ladj, torch.zeros(4, 3, dtype=F64))
    assert info("householder").volume_preserving and info("householder").kind == "linear"


@pytest.mark.parametrize("shape", [(), (3,), (4, 3)])
def test_householder_inverse_is_exact(shape):
    torch.manual_seed(1)
    layer = _randomise(Householder(4).double(), 1.0, seed=2)
    y = torch.randn(*shape, 4, dtype=F64)
    x, ladj = layer.inverse_and_log_det(y)
    assert ladj.shape == shape
    torch.testing.assert_close(x, y @ layer.matrix.detach(), atol=1e-13, rtol=1e-13)  # H^T y
    torch.testing.assert_close(layer.forward_and_log_det(x)[0], y, atol=1e-13, rtol=1e-13)


def test_householder_starts_at_the_identity_with_non_zero_gradients():
    torch.manual_seed(2)
    layer = Householder(5).double()
    v = layer.vectors.detach()
    assert torch.equal(v[0::2], v[1::2]) and not torch.equal(v[0], v[2])
    x = torch.randn(8, 5, dtype=F64)
    y, _ = layer.forward_and_log_det(x)
    torch.testing.assert_close(y, x, atol=1e-13, rtol=1e-13)
    target = torch.randn(8, 5, dtype=F64)
    ((y - target) ** 2).sum().backward()
    assert torch.isfinite(layer.vectors.grad).all()
    assert (layer.vectors.grad.abs().sum(-1) > 1e-6).all()  # every vector gets a gradient


@pytest.mark.parametrize("dim,expected", [(1, 2), (2, 2), (5, 6), (17, 16), (40, 16)])
def test_householder_default_count(dim, expected):
    assert build_layer("householder", dim).reflections == expected


@pytest.mark.parametrize("count", [1, 3, 7])
def test_householder_odd_count_raises(count):
    with pytest.raises(ValueError, match="Householder.*even.*determinant -1"):
        Householder(4, reflections=count)
    with pytest.raises(ValueError, match="Householder.*reflections"):
        Householder(4, reflections=0)
    with pytest.raises(TypeError, match="Householder.*reflections"):
        Householder(4, reflections=2.0)


def test_householder_zero_and_tiny_vectors_are_safe():
    layer = Householder(3, reflections=2).double()
    x = torch.randn(5, 3, dtype=F64)
    with torch.no_grad():
        layer.vectors[0] = 0.0
        # a reflection of coordinate 0, by a vector whose squared norm underflows
        layer.vectors[1] = torch.tensor([1e-200, 0.0, 0.0], dtype=F64)
    y, ladj = layer.forward_and_log_det(x)
    expected = x.clone()
    expected[:, 0] = -expected[:, 0]
    torch.testing.assert_close(y, expected, atol=1e-15, rtol=0)
    y.sum().backward()
    assert torch.isfinite(layer.vectors.grad).all()
    with torch.no_grad():
        layer.vectors.copy_(1e200 * torch.randn(2, 3, dtype=F64))
    y, _ = layer.forward_and_log_det(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_householder_large_inputs_are_finite_and_norm_preserving():
    torch.manual_seed(3)
    layer = _randomise(Householder(6), 1.0)
    x = 1e3 * torch.randn(10, 6)
    y, ladj = layer.forward_and_log_det(x)
    back, _ = layer.inverse_and_log_det(y)
    assert torch.isfinite(y).all() and torch.isfinite(back).all() and torch.all(ladj == 0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-2)


def test_actnorm_initializes_through_log_prob_of_data_not_through_sampling():
    import pyro.distributions as dist

    base = dist.Normal(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)).to_event(1)
    layer = ActNorm(4).double()
    flow = dist.TransformedDistribution(base, [layer])
    flow.rsample((100,))  # base -> data: the forward map, no initialization
    assert not bool(layer.initialized)
    y = _data((300,))
    flow.log_prob(y)  # data arrive through the inverse
    assert bool(layer.initialized)
    torch.testing.assert_close(layer.loc.detach(), y.mean(0))
