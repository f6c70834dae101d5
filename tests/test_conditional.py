"""Layers with a context: a registry-driven battery over every registered layer that takes one
(``available(conditional=True)``: the family's class built with ``context_dim > 0``), the spec
grammar of build_flow with a context, and the one registry's answers about contexts.

Every layer that takes a context is built with one, its parameters (hypernetwork and
conditioner output layers included) perturbed so that it is not the identity and depends on
the context, and then checked per context value: round trips, log-dets against the autograd
Jacobian (one block per data point, zero blocks between data points), gradients through
rsample and log_prob of a ConditionalTransformedDistribution, different contexts giving
different maps, batched conditioning equal to conditioning on each context separately, and
clear errors. Permutations (kind "permutation") are the declared exception to "depends on the
context" and "starts at the identity".
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_grads, round_trip_tol, standard_normal
from helpers import make_layer as make_any_layer
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransform,
    ConditionalTransformedDistribution,
)
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from torch import nn

import pyro_nf
from pyro_nf.transforms import (
    AffineCoupling,
    ContextFlow,
    Flow,
    FlowAtContext,
    Planar,
    Reverse,
    available,
    build_flow,
    build_layer,
    info,
    register,
    unregister,
)
from pyro_nf.transforms.registry import markdown_table

#: every registered layer that takes a context
NAMES = available(conditional=True)
C = 3
DTYPES = (torch.float32, torch.float64)
F64 = torch.float64


def _dim(name: str, wanted: int) -> int:
    return max(wanted, info(name).min_dim)


def _context_free(name: str) -> bool:
    return info(name).kind == "permutation"


PARAMETRIZED = [n for n in NAMES if not _context_free(n)]


def _cases(dims=(2, 5), dtypes=DTYPES):
    out = []
    for name in NAMES:
        for dim in sorted({_dim(name, d) for d in dims}):
            for dtype in dtypes:
                out.append(pytest.param(name, dim, dtype, id=f"{name}-D{dim}-{str(dtype)[6:]}"))
    return out


def make_layer(name: str, dim: int, dtype=F64, **kwargs):
    """Build a registered layer with a context and perturb every parameter."""
    return make_any_layer(name, dim, dtype, context_dim=C, **kwargs)


# ----------------------------------------------------------------------------- registry
def test_every_family_of_the_issue_takes_a_context_in_its_one_class():
    wanted = {"planar", "radial", "sylvester_orthogonal", "sylvester_householder",
              "sylvester_triangular", "nice", "realnvp", "spline_coupling", "iaf", "maf",
              "spline_autoregressive", "reverse", "permute"}
    assert wanted <= set(NAMES)
    h = torch.randn(2, C)
    for name in NAMES:
        entry = info(name)
        assert entry.conditional
        torch.manual_seed(0)
        plain = build_layer(name, _dim(name, 3))
        layer = build_layer(name, _dim(name, 3), context_dim=C)
        assert type(layer) is type(plain), name
        assert (plain.context_dim, layer.context_dim) == (0, C)
        assert isinstance(plain, TransformModule) and plain.condition(h) is plain
        assert isinstance(layer, ConditionalTransform)
        assert layer.kind == entry.kind and layer.volume_preserving == entry.volume_preserving
        flow = layer.condition(h)
        assert isinstance(flow, FlowAtContext) and isinstance(flow, Flow)
        assert flow.bijective and flow.domain.event_dim == 1 and flow.layer is layer
    for name in ("lu", "bnaf", "actnorm", "householder", "affine", "scale"):
        assert not info(name).conditional and name not in NAMES
    assert set(NAMES) == {n for n in available() if info(n).conditional}
    assert not [n for n in pyro_nf.transforms.__all__ if n.startswith("Conditional")]


def test_flow_info_says_which_options_need_a_context():
    for name in ("planar", "radial", "sylvester_orthogonal"):
        assert info(name).context_options == ("hidden", "activation")
        assert info(name).accepts("hidden", context_dim=C) and not info(name).accepts("hidden")
    assert info("realnvp").context_options == () and info("realnvp").accepts("hidden")
    assert "context_dim" not in info("planar").options
    assert info("iaf").options["max_log_scale"] is None  # 6 without a context, 3 with one


def test_markdown_table_marks_the_layers_that_take_a_context():
    lines = markdown_table().splitlines()
    assert lines[0].split("|")[6].strip() == "context"
    rows = {line.split("|")[1].strip(" `"): line.split("|")[6].strip() for line in lines[2:]}
    assert rows["planar"] == "yes" and rows["lu"] == "no" and rows["iaf"] == "yes"


class _Shift(ContextFlow):
    """y = x + c, with a context y = x + c + scale * A h; volume preserving."""

    kind = "elementwise"
    volume_preserving = True
    context_options = ("bias",)

    def __init__(self, dim: int, scale: float = 1.0, bias: bool = False, *,
                 context_dim: int = 0) -> None:
        super().__init__(dim, context_dim=context_dim)
        self.c = nn.Parameter(torch.zeros(dim))
        self.scale = scale
        if context_dim:
            self.net = nn.Linear(context_dim, dim, bias=bias)

    def map_parameters(self, context):
        return self.c if context is None else self.c + self.scale * self.net(context)

    def forward_with(self, x, shift):
        y = x + shift
        return y, y.new_zeros(y.shape[:-1])

    def inverse_with(self, y, shift):
        x = y - shift
        return x, x.new_zeros(x.shape[:-1])


def test_register_finds_the_context_in_the_constructor_and_its_context_only_options():
    register("ctx_shift_test", paper="test", inverse="exact", kind="elementwise",
             volume_preserving=True)(_Shift)
    try:
        entry = info("ctx_shift_test")
        assert entry.conditional and entry.options == {"scale": 1.0, "bias": False}
        assert entry.context_options == ("bias",) and "ctx_shift_test" in available(True)
        with pytest.raises(ValueError, match=r"no option\(s\) \['bias'\] without a context"):
            build_layer("ctx_shift_test", 3, bias=True)
        with pytest.raises(ValueError, match="accepted by none"):
            build_flow("ctx_shift_test", 3, bias=True)
        flow = build_flow(["ctx_shift_test", "planar"], 3, context_dim=C, scale=2.0, bias=True)
        assert flow.transforms[0].scale == 2.0 and flow.transforms[0].net.bias is not None
        h, x = torch.randn(5, C), torch.randn(5, 3)
        y = flow.transforms[0].condition(h)(x)
        torch.testing.assert_close(y, x + 2.0 * flow.transforms[0].net(h))
    finally:
        unregister("ctx_shift_test")


def test_a_residual_layer_with_a_context_starts_as_the_one_without_from_the_same_seed():
    """The hypernetwork's output bias holds the unconditional layer's initial raw parameters,
    drawn from the same random stream, so a context-free start is the unconditional start."""
    x = torch.randn(6, 4)
    for name in [n for n in NAMES if info(n).kind == "residual"]:
        torch.manual_seed(3)
        plain = build_layer(name, 4)
        torch.manual_seed(3)
        layer = build_layer(name, 4, context_dim=C)
        flat = torch.cat([p.reshape(-1) for p in plain.parameters()])
        assert torch.equal(layer.hyper.net.net[-1].bias, flat), name
        with torch.no_grad():
            y, ladj = layer.condition(torch.randn(6, C)).forward_and_log_det(x)
            y0, ladj0 = plain.forward_and_log_det(x)
        torch.testing.assert_close(y, y0, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ladj, ladj0, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- inverses
@pytest.mark.parametrize("name,dim,dtype", _cases())
def test_round_trip_per_context(name, dim, dtype):
    layer = make_layer(name, dim, dtype)
    for ctx_shape, x_shape in (((), ()), ((4,), (4,)), ((4,), ()), ((), (4,))):
        flow = layer.condition(torch.randn(*ctx_shape, C, dtype=dtype))
        x = torch.randn(*x_shape, dim, dtype=dtype)
        y = flow(x)
        batch = torch.broadcast_shapes(ctx_shape, x_shape)
        assert y.shape == batch + (dim,) and y.dtype == dtype
        tol = round_trip_tol(dtype, name)
        torch.testing.assert_close(flow.inv(y.clone()), x.expand_as(y), **tol)
        y0 = 2 * torch.randn(*x_shape, dim, dtype=dtype)
        torch.testing.assert_close(flow(flow.inv(y0).clone()), y0.expand_as(y), **tol)


# ----------------------------------------------------------------------------- log-dets
@pytest.mark.parametrize("name,dim,dtype", _cases())
def test_log_det_matches_autograd_jacobian_per_data_point(name, dim, dtype):
    layer = make_layer(name, dim, dtype)
    n = 3
    flow = layer.condition(torch.randn(n, C, dtype=dtype))
    x = torch.randn(n, dim, dtype=dtype)
    y = flow(x)
    ladj = flow.log_abs_det_jacobian(x, y)
    assert ladj.shape == (n,)
    tol = {"atol": 1e-8, "rtol": 1e-8} if dtype == F64 else {"atol": 2e-3, "rtol": 1e-3}
    for fn, point, expected_ladj in (
            (lambda v: flow.forward_and_log_det(v)[0], x, ladj),
            (lambda v: flow.inverse_and_log_det(v)[0], y.detach().clone(), -ladj)):
        jac = torch.autograd.functional.jacobian(fn, point)  # (n, D, n, D)
        for i in range(n):
            for j in range(n):
                if i != j:  # a data point's output does not depend on another's input
                    assert torch.all(jac[i, :, j, :] == 0), (i, j)
        blocks = torch.stack([jac[i, :, i, :] for i in range(n)])
        torch.testing.assert_close(torch.linalg.slogdet(blocks)[1], expected_ladj.detach(),
                                   **tol)
    y_fresh = y.detach().clone()
    tol = round_trip_tol(dtype, name)
    torch.testing.assert_close(flow.inverse_and_log_det(y_fresh)[1], ladj, **tol)
    torch.testing.assert_close(flow.inv.log_abs_det_jacobian(y_fresh, flow.inv(y_fresh)),
                               -ladj, **tol)
    if info(name).volume_preserving:
        assert torch.all(ladj == 0)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", PARAMETRIZED)
def test_gradients_reach_every_network_parameter(name):
    dim = _dim(name, 5)
    layer = make_layer(name, dim)
    q = ConditionalTransformedDistribution(standard_normal(dim, F64), [layer])
    context = torch.randn(8, C, dtype=F64)
    y = q.condition(context).rsample((4, 8))  # one draw per context, 4 times
    assert y.shape == (4, 8, dim)
    loss = (y ** 2).sum() + q.condition(context).log_prob(y).sum()
    loss.backward()
    assert_grads(layer, "through rsample")
    layer.zero_grad()
    fresh = 2 * torch.randn(8, dim, dtype=F64)
    (-q.condition(context).log_prob(fresh).mean()).backward()
    assert_grads(layer, "through log_prob of fresh points")


# ----------------------------------------------------------------------------- the context
@pytest.mark.parametrize("name", PARAMETRIZED)
def test_two_contexts_give_two_transforms(name):
    dim = _dim(name, 5)
    layer = make_layer(name, dim)
    x = torch.randn(6, dim, dtype=F64)
    h1, h2 = torch.randn(2, C, dtype=F64).unbind(0)
    with torch.no_grad():
        y1, l1 = layer.condition(h1).forward_and_log_det(x)
        y2, l2 = layer.condition(h2).forward_and_log_det(x)
    assert (y1 - y2).abs().amax(-1).min() > 1e-4
    if not info(name).volume_preserving:
        assert (l1 - l2).abs().min() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_batched_conditioning_equals_looping_over_contexts(name):
    dim = _dim(name, 5)
    layer = make_layer(name, dim)
    tol = {"atol": 1e-10, "rtol": 1e-10}
    for ctx_shape, x_shape in (((4,), (4,)), ((4,), (2, 4)), ((), (4,)), ((4,), ())):
        context = torch.randn(*ctx_shape, C, dtype=F64)
        x = torch.randn(*x_shape, dim, dtype=F64)
        flow = layer.condition(context)
        with torch.no_grad():
            y, ladj = flow.forward_and_log_det(x)
            x_back, ladj_inv = flow.inverse_and_log_det(y)
        batch = torch.broadcast_shapes(ctx_shape, x_shape)
        ctx_flat = context.expand(batch + (C,)).reshape(-1, C)
        x_flat, y_flat = x.expand(batch + (dim,)).reshape(-1, dim), y.reshape(-1, dim)
        for i in range(ctx_flat.shape[0]):
            single = layer.condition(ctx_flat[i])
            with torch.no_grad():
                yi, li = single.forward_and_log_det(x_flat[i])
                xi, li_inv = single.inverse_and_log_det(y_flat[i])
            torch.testing.assert_close(yi, y_flat[i], **tol)
            torch.testing.assert_close(li, ladj.expand(batch).reshape(-1)[i], **tol)
            torch.testing.assert_close(xi, x_back.reshape(-1, dim)[i], **round_trip_tol(F64, name))
            torch.testing.assert_close(li_inv, ladj_inv.expand(batch).reshape(-1)[i],
                                       **round_trip_tol(F64, name))


@pytest.mark.parametrize("name", NAMES)
def test_starts_at_the_identity_for_every_context(name):
    dim = _dim(name, 5)
    torch.manual_seed(1)
    layer = build_layer(name, dim, context_dim=C).double()
    x = 2 * torch.randn(20, dim, dtype=F64)
    y, ladj = layer.condition(3 * torch.randn(20, C, dtype=F64)).forward_and_log_det(x)
    if _context_free(name):
        assert torch.equal(y.sort(-1).values, x.sort(-1).values) and torch.all(ladj == 0)
        return
    assert torch.all((y - x).abs() <= 1e-2 * (1 + x.abs())), (y - x).abs().max()
    assert torch.all(ladj.abs() <= 1e-2 * dim)


RESIDUAL = [n for n in NAMES if info(n).kind == "residual"]


@pytest.mark.parametrize("name", RESIDUAL)
def test_invertibility_constraints_hold_for_every_context(name):
    """Large random hypernetwork weights and contexts: every per-point Jacobian has a positive
    determinant matching the log-det, and the inverse reproduces y."""
    dim = 3
    layer = build_layer(name, dim, context_dim=C).double()
    gen = torch.Generator().manual_seed(0)
    for scale in (1.0, 3.0):
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=F64)
                        / (p.shape[-1] ** 0.5 if p.dim() >= 2 else 1.0))
        context = 3 * torch.randn(16, C, generator=gen, dtype=F64)
        flow = layer.condition(context)
        x = 2 * torch.randn(16, dim, generator=gen, dtype=F64)
        y, ladj = flow.forward_and_log_det(x)
        jac = torch.autograd.functional.jacobian(lambda v, f=flow: f.forward_and_log_det(v)[0], x)
        blocks = torch.stack([jac[i, :, i, :] for i in range(16)])
        sign, logabs = torch.linalg.slogdet(blocks)
        assert torch.all(sign > 0)
        torch.testing.assert_close(logabs, ladj.detach(), atol=1e-6, rtol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(flow(flow.inv(y.clone()).clone()), y, atol=1e-7,
                                       rtol=1e-7)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", NAMES)
def test_wrong_context_or_event_size_is_a_clear_error(name):
    dim = _dim(name, 3)
    layer = build_layer(name, dim, context_dim=C)
    for bad in (torch.randn(4, C + 1), torch.randn(C - 1)):
        with pytest.raises(ValueError, match=f"context_dim={C}; the last dimension of the "
                                             f"context must be {C}") as err:
            layer.condition(bad)
        assert type(layer).__name__ in str(err.value)
    with pytest.raises(ValueError, match=f"context_dim={C}"):
        build_flow([name, name], dim, context_dim=C).condition(torch.randn(4, C + 2))
    flow = layer.condition(torch.randn(4, C))
    with pytest.raises(ValueError, match=f"dim={dim}"):
        flow(torch.randn(4, dim + 1))
    with pytest.raises(ValueError, match="does not broadcast"):
        flow(torch.randn(3, dim))
    if not _context_free(name):
        with pytest.raises(TypeError, match="float64"):
            layer.condition(torch.randn(4, C, dtype=F64))
    with pytest.raises(ValueError, match=r"is conditional, its map depends on a context: use "
                                         r"layer.condition\(context\)"):
        layer(torch.randn(4, dim))


def test_a_layer_that_takes_no_context_is_a_one_line_error_naming_it():
    for call in (lambda: build_flow("bnaf", 4, context_dim=C),
                 lambda: build_flow(["planar", ("lu", {})], 4, context_dim=C),
                 lambda: build_layer("actnorm", 4, context_dim=C)):
        with pytest.raises(ValueError, match=f"flow '(bnaf|lu|actnorm)' takes no context, so it "
                                             f"cannot be a layer of a flow with "
                                             f"context_dim={C}") as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "context_dim=0" in message
        assert "sylvester_orthogonal" in message and "lu," not in message


def test_context_dim_zero_is_the_unconditional_layer():
    torch.manual_seed(0)
    a = Planar(3)
    torch.manual_seed(0)
    b = Planar(3, context_dim=0)
    assert torch.equal(a.params, b.params) and b.context_dim == 0
    assert isinstance(build_flow("planar*2", 3, context_dim=0), ComposeTransformModule)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="context_dim must be a non-negative integer"):
            build_flow("planar", 3, context_dim=bad)
        with pytest.raises(ValueError, match="context_dim must be a non-negative integer"):
            Planar(3, context_dim=bad)


def test_hypernetwork_options_need_a_context():
    with pytest.raises(ValueError, match="hidden= and activation= shape the hypernetwork"):
        Planar(3, hidden=[8])
    with pytest.raises(ValueError, match=r"no option\(s\) \['activation'\] without a context"):
        build_layer("sylvester_householder", 3, activation="tanh")
    with pytest.raises(ValueError, match="accepted by none"):
        build_flow("radial*2", 3, hidden=8)
    layer = build_layer("radial", 3, context_dim=C, hidden=[], activation="tanh")
    assert layer.hyper.net.net[0].in_features == C  # a linear map of the context


def test_the_inverse_of_a_conditional_layer_is_conditional():
    torch.manual_seed(0)
    layer = make_layer("spline_coupling", 4)
    inv = layer.inv
    assert isinstance(inv, ConditionalTransform) and inv.inv is layer
    h, y = torch.randn(5, C, dtype=F64), torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(inv.condition(h)(y), layer.condition(h).inv(y))
    q = ConditionalTransformedDistribution(standard_normal(4, F64), [inv])
    assert q.condition(h).log_prob(y).shape == (5,)
    plain = build_layer("spline_coupling", 4)
    assert plain.inv.inv is plain and not isinstance(plain.inv, ConditionalTransform)


def test_modules_in_a_spec_must_have_the_flows_context_size():
    with pytest.raises(ValueError, match="a Planar with context_dim=2 in a flow with "
                                         "context_dim=3: build it with context_dim=3"):
        build_flow([Planar(4, context_dim=2)], 4, context_dim=3)
    with pytest.raises(ValueError, match="in a flow with context_dim=0"):
        build_flow(["planar", Planar(4, context_dim=2)], 4)
    flow = build_flow([Planar(4), "planar"], 4, context_dim=C)  # no context: used for every h
    assert len(flow.condition(torch.randn(C)).parts) == 2


# ----------------------------------------------------------------------------- specs
def _types(flow):
    return [type(t).__name__ for t in flow.transforms]


@pytest.mark.parametrize("name", ["iaf", "maf", "spline_autoregressive"])
def test_autoregressive_stack_with_alternating_orders_is_exact(name):
    torch.manual_seed(0)
    flow = build_flow(f"{name}*2", 4, context_dim=C).to(F64)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    h = torch.randn(C, dtype=F64)
    conditioned = flow.condition(h)
    x = torch.randn(4, dtype=F64)
    y = conditioned(x)
    jac = torch.autograd.functional.jacobian(conditioned, x)
    torch.testing.assert_close(conditioned.log_abs_det_jacobian(x, y),
                               torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(conditioned.inv(y.clone()), x, atol=1e-8, rtol=1e-7)


def test_spec_grammar_and_permutation_insertion():
    flow = build_flow("iaf*3", 4, context_dim=C)
    assert isinstance(flow, ConditionalComposeTransformModule)
    # consecutive autoregressive layers alternate their MADE's order instead of moving data
    assert _types(flow) == ["AffineAutoregressive"] * 3
    assert [t.made.order.tolist() for t in flow.transforms] == [[0, 1, 2, 3], [3, 2, 1, 0],
                                                                [0, 1, 2, 3]]
    assert flow.transforms[0].transformer.max_log_scale == 3.0  # Pyro's bound with a context
    assert _types(build_flow("planar*10", 4, context_dim=C)) == ["Planar"] * 10
    assert _types(build_flow(["realnvp", "reverse"] * 2, 4, context_dim=C)) == [
        "AffineCoupling", "Reverse"] * 2
    flow = build_flow([("realnvp", {"hidden": 16}), "spline_coupling"], 4, context_dim=C,
                      permutation="random", seed=5, activation="tanh")
    assert _types(flow) == ["AffineCoupling", "RandomPermutation", "SplineCoupling"]
    assert flow.transforms[1].seed == 6 and flow.transforms[1].context_dim == C
    assert flow.transforms[0].conditioner.net[0].out_features == 16
    assert isinstance(flow.transforms[2].conditioner.net[1], torch.nn.Tanh)
    assert _types(build_flow("maf*2", 4, context_dim=C, permutation=None)) == [
        "AffineAutoregressive"] * 2
    # modules and callables (dim, context_dim) -> module(s) mix with names
    own = Planar(4, context_dim=C)
    flow = build_flow([own, Reverse(4), lambda d, c: [AffineCoupling(d, context_dim=c)],
                       "radial"], 4, context_dim=C)
    assert flow.transforms[0] is own and len(flow.transforms) == 4
    assert isinstance(flow.condition(torch.randn(C)), ComposeTransformModule)
    assert sum(p.numel() for p in flow.parameters()) > sum(p.numel() for p in own.parameters())


def test_spec_errors_list_the_flows_that_take_a_context():
    with pytest.raises(ValueError, match="unknown flow 'nope'; the flows that take a "
                                         "context: iaf, maf") as err:
        build_flow("nope*2", 4, context_dim=C)
    assert "lu," not in str(err.value) and "sylvester_orthogonal" in str(err.value)
    with pytest.raises(ValueError, match="malformed"):
        build_flow("planar**2", 4, context_dim=C)
    with pytest.raises(ValueError, match="accepted by none"):
        build_flow("planar", 4, context_dim=C, bins=4)
    with pytest.raises(ValueError, match="no option"):
        build_flow([("planar", {"bins": 4})], 4, context_dim=C)
    with pytest.raises(ValueError, match="dim >= 2"):
        build_flow("realnvp", 1, context_dim=C)
    with pytest.raises(ValueError, match="permutation"):
        build_flow("iaf*2", 4, context_dim=C, permutation="shuffle")


def test_conditional_distribution_of_a_stack():
    torch.manual_seed(0)
    dim = 3
    flow = build_flow(["sylvester_householder", "iaf", "radial", "spline_coupling"], dim,
                      context_dim=C).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    q = ConditionalTransformedDistribution(standard_normal(dim, F64), [flow])
    context = torch.randn(5, C, dtype=F64)
    y = 2 * torch.randn(5, dim, dtype=F64)
    cond = flow.condition(context)
    x = cond.inv(y)
    expected = standard_normal(dim, F64).log_prob(x) - cond.log_abs_det_jacobian(x, y)
    torch.testing.assert_close(q.condition(context).log_prob(y), expected)
    # the same context in each row: a single unbatched context conditions all of them
    single = q.condition(context[0]).log_prob(y)
    torch.testing.assert_close(single, q.condition(context[0].expand(5, C)).log_prob(y))
