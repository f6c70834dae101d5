"""The registry-driven battery: every registered flow layer is put through every property here
(the layers that take a context get, built with one, theirs in test_conditional.py, with the
same helpers).

Registering a layer is enough to have it tested. Each layer is built, warmed up with one inverse
pass (so data-dependent initialization such as ActNorm's happens), and its parameters perturbed
away from their initial values before the properties are checked. A layer that cannot meet an
item declares it in its metadata (``min_dim``, ``kind="permutation"`` for layers that are not
near the identity) and the battery checks that claim instead; nothing is skipped.
"""

from __future__ import annotations

import io

import pyro.distributions as dist
import pytest
import torch
from helpers import assert_grads, make_layer, round_trip_tol, standard_normal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_nf.transforms import available, build_layer, info

NAMES = available()
DIMS = (1, 2, 5, 17)
DTYPES = (torch.float32, torch.float64)
BATCH_SHAPES = ((), (3,), (4, 3))


def _cases(dims=DIMS, dtypes=DTYPES, names=None):
    out = []
    for name in names or NAMES:
        for dim in dims:
            if dim >= info(name).min_dim:
                for dtype in dtypes:
                    out.append(pytest.param(name, dim, dtype,
                                            id=f"{name}-D{dim}-{str(dtype)[6:]}"))
    return out


def _smallest_dim(name: str, wanted: int) -> int:
    return max(wanted, info(name).min_dim)


# ----------------------------------------------------------------------------- inverses
@pytest.mark.parametrize("name,dim,dtype", _cases())
def test_inverse_round_trip_on_fresh_tensors(name, dim, dtype):
    layer = make_layer(name, dim, dtype)
    for shape in BATCH_SHAPES:
        x = torch.randn(*shape, dim, dtype=dtype)
        y = layer(x)
        assert y.shape == x.shape and y.dtype == dtype
        x_back = layer.inv(y.clone())  # clone: a fresh tensor, no cache hit
        torch.testing.assert_close(x_back, x, **round_trip_tol(dtype, name))
        y0 = torch.randn(*shape, dim, dtype=dtype) * 2
        torch.testing.assert_close(layer(layer.inv(y0).clone()), y0, **round_trip_tol(dtype, name))


# ----------------------------------------------------------------------------- log-dets
def _autograd_logdet(fn, points):
    out = []
    for p in points:
        jac = torch.autograd.functional.jacobian(fn, p)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("name,dim,dtype", _cases())
def test_log_det_matches_autograd_jacobian(name, dim, dtype):
    layer = make_layer(name, dim, dtype)
    x = torch.randn(3, dim, dtype=dtype)
    y = layer(x)
    ladj = layer.log_abs_det_jacobian(x, y)
    assert ladj.shape == (3,)
    expected = _autograd_logdet(lambda v: layer.forward_and_log_det(v)[0], x)
    tol = {"atol": 1e-8, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-3,
                                                                        "rtol": 1e-3}
    torch.testing.assert_close(ladj, expected, **tol)
    # the inverse's log-det is the negative, at the matching point
    y_fresh = y.detach().clone()[:1]  # one point: the slow directions take D passes
    inv_expected = _autograd_logdet(lambda v: layer.inverse_and_log_det(v)[0], y_fresh)
    torch.testing.assert_close(layer.inv.log_abs_det_jacobian(y_fresh, layer.inv(y_fresh)),
                               inv_expected, **tol)
    torch.testing.assert_close(layer.inverse_and_log_det(y_fresh)[1], ladj[:1],
                               **round_trip_tol(dtype, name))
    if info(name).volume_preserving:
        assert torch.all(ladj == 0)


AUTOREGRESSIVE = [n for n in NAMES if info(n).kind == "autoregressive"
                  and hasattr(getattr(build_layer(n, 3), "made", None), "set_order")]


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_autoregressive_layer_in_any_order(name):
    # build_flow varies the MADE's order between consecutive autoregressive layers
    dim = 5
    layer = make_layer(name, dim)
    order = torch.tensor([3, 0, 4, 2, 1])
    layer.made.set_order(order)
    x = torch.randn(4, dim, dtype=torch.float64)
    y, ladj = layer.forward_and_log_det(x)
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], x[0])
    permuted = jac[order][:, order]  # lower triangular in the new order, not in the old one
    assert torch.all(permuted.triu(1) == 0) and torch.any(jac.triu(1) != 0)
    torch.testing.assert_close(ladj[0], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)
    x_back, ladj_back = layer.inverse_and_log_det(y)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(ladj_back, ladj, atol=1e-9, rtol=1e-7)
    with pytest.raises(ValueError, match="permutation of range\\(5\\)"):
        layer.made.set_order(torch.tensor([0, 0, 1, 2, 3]))


@pytest.mark.parametrize("name,bounds", [("iaf", (-5.0, 6.0)), ("maf", (-5.0, 6.0)),
                                         ("realnvp", (-5.0, 3.0))])
def test_affine_layers_clamp_their_log_scale_at_the_documented_bounds(name, bounds):
    """IAF/MAF layers may scale by up to e^6 per layer (an AutoFlow started at scale 0.1
    needs more than Pyro's e^3 on wide posteriors); coupling layers keep [e^-5, e^3]."""
    dim = 4
    layer = build_layer(name, dim).double()
    last = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.randn(3, dim, dtype=torch.float64)
    sign = 1.0 if name != "maf" else -1.0  # MAF's forward map is the inverse of G
    for raw, bound in ((10.0, bounds[1]), (-10.0, bounds[0])):
        with torch.no_grad():
            last.bias[last.bias.numel() // 2:].fill_(raw)  # second half: raw log-scales
        _, ladj = layer.forward_and_log_det(x)
        active = dim if name != "realnvp" else dim - dim // 2  # coupling: the moved half
        torch.testing.assert_close(ladj, torch.full_like(ladj, sign * bound * active))


@pytest.mark.parametrize("name", NAMES)
def test_log_det_right_for_any_pair_not_only_the_cached_one(name):
    dim = _smallest_dim(name, 3)
    layer = make_layer(name, dim)
    x1, x2 = torch.randn(5, dim, dtype=torch.float64), torch.randn(5, dim, dtype=torch.float64)
    y2 = layer(x2).clone()
    layer(x1)  # the memo now holds the pair (x1, f(x1))
    assert torch.allclose(layer.log_abs_det_jacobian(x2, y2), layer.forward_and_log_det(x2)[1])


# ----------------------------------------------------------------------------- densities
@pytest.mark.parametrize("name,dim,dtype", _cases(dims=(1, 2), dtypes=(torch.float64,)))
def test_density_integrates_to_one(name, dim, dtype):
    layer = make_layer(name, dim, dtype)
    flow_dist = dist.TransformedDistribution(standard_normal(dim, dtype), [layer])
    with torch.no_grad():
        s = flow_dist.sample((20000,))
        lo = s.min(0).values - 1.0 * (s.max(0).values - s.min(0).values) - 1
        hi = s.max(0).values + 1.0 * (s.max(0).values - s.min(0).values) + 1
        n = 4001 if dim == 1 else 401
        axes = [torch.linspace(float(lo[i]), float(hi[i]), n, dtype=dtype) for i in range(dim)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        dens = flow_dist.log_prob(grid).exp()
        for i in reversed(range(dim)):
            dens = torch.trapezoid(dens, axes[i], dim=i)
    assert abs(float(dens) - 1.0) < 0.02, float(dens)


# ----------------------------------------------------------------------------- gradients
PARAMETRIZED = [n for n in NAMES if any(True for _ in build_layer(n, _smallest_dim(n, 5))
                                        .parameters())]


def test_only_permutations_have_no_parameters():
    for name in set(NAMES) - set(PARAMETRIZED):
        assert info(name).kind == "permutation", name


@pytest.mark.parametrize("name", PARAMETRIZED)
def test_gradients_reach_every_parameter(name):
    dim = _smallest_dim(name, 5)
    layer = make_layer(name, dim, torch.float64)
    flow_dist = dist.TransformedDistribution(standard_normal(dim, torch.float64), [layer])
    y = flow_dist.rsample((64,))
    loss = (y ** 2).sum() + flow_dist.log_prob(y).sum()
    loss.backward()
    assert_grads(layer, "through sampling")
    layer.zero_grad()
    fresh = torch.randn(64, dim, dtype=torch.float64) * 2
    (-flow_dist.log_prob(fresh).mean()).backward()
    assert_grads(layer, "through log_prob of fresh points")


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name,dim,dtype", _cases(dtypes=(torch.float64,)))
def test_starts_near_identity(name, dim, dtype):
    torch.manual_seed(1)
    layer = build_layer(name, dim).to(dtype)
    x = torch.randn(50, dim, dtype=dtype) * 2
    y, ladj = layer.forward_and_log_det(x)
    if info(name).kind == "permutation":  # the declared exception: a fixed reordering
        assert torch.equal(y.sort(-1).values, x.sort(-1).values) and torch.all(ladj == 0)
        return
    assert torch.all((y - x).abs() <= 1e-2 * (1 + x.abs())), (y - x).abs().max()
    assert torch.all(ladj.abs() <= 1e-2 * dim)


# ----------------------------------------------------------------------------- invertibility
@pytest.mark.parametrize("name", PARAMETRIZED)
def test_invertible_for_arbitrary_raw_parameters(name):
    dim = _smallest_dim(name, 3)
    layer = build_layer(name, dim).double()

    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(scale=st.floats(0.1, 5.0), seed=st.integers(0, 2 ** 16))
    def check(scale, seed):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        x = torch.randn(8, dim, generator=gen, dtype=torch.float64) * 2
        y, ladj = layer.forward_and_log_det(x)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        fwd = lambda v: layer.forward_and_log_det(v)[0]  # noqa: E731
        jacs = torch.stack([torch.autograd.functional.jacobian(fwd, xi) for xi in x])
        sign, logabs = torch.linalg.slogdet(jacs)
        assert torch.all(sign != 0) and torch.allclose(logabs, ladj, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            x_back = layer.inv(y.clone())
            # y-space is the well-conditioned check; in x-space an error dy becomes at most
            # dy / sigma_min(J) (a spline bin of slope 1e-7 loses 7 digits), a fold O(1)
            assert torch.allclose(layer(x_back.clone()), y, rtol=1e-7, atol=1e-7)
            sigma_min = torch.linalg.svdvals(jacs)[:, -1]
            bound = 1e-7 * (1 + y.abs().amax(-1)) / sigma_min + 1e-9
            assert torch.all((x_back - x).abs().amax(-1) <= bound)

    check()


# ----------------------------------------------------------------------------- extremes
@pytest.mark.parametrize("name,dim,dtype", _cases(dims=(5,)))
def test_extreme_inputs_finite_and_unbounded(name, dim, dtype):
    layer = make_layer(name, _smallest_dim(name, dim), dtype)
    d = _smallest_dim(name, dim)
    signs = torch.tensor([1.0, -1.0], dtype=dtype).repeat(d)[:d]
    for x in (1e3 * signs, -1e3 * signs, 1e3 * torch.randn(6, d, dtype=dtype)):
        y, ladj = layer.forward_and_log_det(x)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        assert y.abs().max() > 100, "outputs must be unbounded: R^D onto R^D"
        x_back, ladj_inv = layer.inverse_and_log_det(x)
        assert torch.isfinite(x_back).all() and torch.isfinite(ladj_inv).all()


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_outputs(name):
    dim = _smallest_dim(name, 5)
    source = make_layer(name, dim, torch.float32, seed=0)
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    target = build_layer(name, dim)
    target.load_state_dict(torch.load(buf))
    x = torch.randn(7, dim)
    assert torch.equal(source(x.clone()), target(x.clone()))
    assert torch.equal(source.inv(x.clone()), target.inv(x.clone()))


@pytest.mark.parametrize("name", NAMES)
def test_float64_parity_and_dtype_errors(name):
    dim = _smallest_dim(name, 5)
    layer32 = make_layer(name, dim, torch.float32)
    layer64 = build_layer(name, dim).double()
    layer64.load_state_dict(layer32.state_dict())
    layer64.double()
    x = torch.randn(10, dim, dtype=torch.float64)
    y64, ladj64 = layer64.forward_and_log_det(x)
    y32, ladj32 = layer32.forward_and_log_det(x.float())
    assert y64.dtype == torch.float64 and ladj64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ladj64.float(), ladj32, atol=1e-3, rtol=1e-4)
    if name in PARAMETRIZED:
        with pytest.raises(TypeError, match="float64"):
            layer32(x)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_event_size_is_a_clear_error(name):
    dim = _smallest_dim(name, 3)
    layer = build_layer(name, dim)
    with pytest.raises(ValueError, match=f"dim={dim}"):
        layer(torch.randn(4, dim + 1))


@pytest.mark.parametrize("name", [n for n in NAMES if info(n).min_dim > 1])
def test_min_dim_claim_is_enforced(name):
    with pytest.raises(ValueError, match="dim"):
        build_layer(name, info(name).min_dim - 1)
