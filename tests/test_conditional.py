"""The conditional (amortized) layers: a registry-driven battery over every registry entry with
a conditional form (available_conditional()), the spec grammar of build_flow with context_dim,
the one registry's conditional API and the deprecated pyro_nf.transforms.conditional aliases.

Every registered conditional layer is built, its parameters (hypernetwork and conditioner
output layers included) perturbed so that it is not the identity and depends on the context,
and then checked per context value: round trips, log-dets against the autograd Jacobian (one
block per data point, zero blocks between data points), gradients through rsample and log_prob
of a ConditionalTransformedDistribution, different contexts giving different maps, batched
conditioning equal to conditioning on each context separately, and clear errors. Context-free
layers (permutations, kind "permutation") are the declared exception to "depends on the
context" and "starts at the identity".
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from helpers import assert_grads, round_trip_tol, standard_normal
from helpers import make_layer as make_any_layer
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransformedDistribution,
)
from pyro.distributions.torch_transform import ComposeTransformModule

import pyro_nf
from pyro_nf.transforms import (
    ConditionalAffineAutoregressive,
    ConditionalAffineCoupling,
    ConditionalPlanar,
    ContextFree,
    Flow,
    Reverse,
    available,
    available_conditional,
    build_conditional_flow,
    build_conditional_layer,
    build_flow,
    build_layer,
    conditional_info,
    info,
    register,
    register_conditional,
    registry,
)

#: every registry entry whose conditional form exists (``info(name).conditional``)
NAMES = available_conditional()
C = 3
DTYPES = (torch.float32, torch.float64)
F64 = torch.float64


def _dim(name: str, wanted: int) -> int:
    return max(wanted, conditional_info(name).min_dim)


def _context_free(name: str) -> bool:
    return conditional_info(name).kind == "permutation"


PARAMETRISED = [n for n in NAMES if not _context_free(n)]


def _cases(dims=(2, 5), dtypes=DTYPES):
    out = []
    for name in NAMES:
        for dim in sorted({_dim(name, d) for d in dims}):
            for dtype in dtypes:
                out.append(pytest.param(name, dim, dtype, id=f"{name}-D{dim}-{str(dtype)[6:]}"))
    return out


def make_layer(name: str, dim: int, dtype=F64, **kwargs):
    """Build the conditional form of a registered layer and perturb every parameter."""
    return make_any_layer(name, dim, dtype, context_dim=C, **kwargs)


def _tol(dtype, name):
    return round_trip_tol(dtype, name, conditional=True)


# ----------------------------------------------------------------------------- registry
def test_every_twin_of_the_issue_is_registered_and_conditions_to_a_flow():
    wanted = {"planar", "radial", "sylvester_orthogonal", "sylvester_householder",
              "sylvester_triangular", "realnvp", "spline_coupling", "iaf",
              "spline_autoregressive", "reverse", "permute"}
    assert wanted <= set(NAMES)
    for name in NAMES:
        entry, twin = conditional_info(name), info(name)
        assert (entry.kind, entry.inverse, entry.min_dim) == (twin.kind, twin.inverse,
                                                              twin.min_dim)
        assert twin.conditional_twin
        layer = build_conditional_layer(name, _dim(name, 3), C)
        assert layer.kind == entry.kind and layer.volume_preserving == entry.volume_preserving
        flow = layer.condition(torch.randn(2, C))
        assert isinstance(flow, Flow) and flow.bijective and flow.domain.event_dim == 1
    assert not info("lu").conditional_twin and not info("bnaf").conditional_twin


def test_markdown_table_marks_conditional_twins():
    from pyro_nf.transforms.registry import markdown_table

    rows = {line.split("|")[1].strip(" `"): line.split("|")[6].strip()
            for line in markdown_table().splitlines()[2:]}
    assert rows["planar"] == "yes" and rows["lu"] == "no" and rows["iaf"] == "yes"


def test_register_conditional_adds_a_layer_and_needs_metadata_without_a_twin():
    @register_conditional("cond_shift_test", paper="test", inverse="exact", kind="elementwise",
                          volume_preserving=True, min_dim=1)
    def shift(dim: int, context_dim: int, scale: float = 1.0):
        return ContextFree(Reverse(dim), context_dim)

    try:
        assert "cond_shift_test" in available_conditional()
        assert conditional_info("cond_shift_test").options == {"scale": 1.0}
        flow = build_conditional_flow(["cond_shift_test", "planar"], 3, C, scale=2.0)
        assert len(flow.transforms) == 2
    finally:
        registry._REGISTRY.pop("cond_shift_test")
    with pytest.raises(ValueError, match="no unconditional twin"):
        register_conditional("no_twin_here", paper="x")


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
        torch.testing.assert_close(flow.inv(y.clone()), x.expand_as(y), **_tol(dtype, name))
        y0 = 2 * torch.randn(*x_shape, dim, dtype=dtype)
        torch.testing.assert_close(flow(flow.inv(y0).clone()), y0.expand_as(y),
                                   **_tol(dtype, name))


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
    torch.testing.assert_close(flow.inverse_and_log_det(y_fresh)[1], ladj, **_tol(dtype, name))
    torch.testing.assert_close(flow.inv.log_abs_det_jacobian(y_fresh, flow.inv(y_fresh)),
                               -ladj, **_tol(dtype, name))
    if conditional_info(name).volume_preserving:
        assert torch.all(ladj == 0)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", PARAMETRISED)
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
@pytest.mark.parametrize("name", PARAMETRISED)
def test_two_contexts_give_two_transforms(name):
    dim = _dim(name, 5)
    layer = make_layer(name, dim)
    x = torch.randn(6, dim, dtype=F64)
    h1, h2 = torch.randn(2, C, dtype=F64).unbind(0)
    with torch.no_grad():
        y1, l1 = layer.condition(h1).forward_and_log_det(x)
        y2, l2 = layer.condition(h2).forward_and_log_det(x)
    assert (y1 - y2).abs().amax(-1).min() > 1e-4
    if not conditional_info(name).volume_preserving:
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
            torch.testing.assert_close(xi, x_back.reshape(-1, dim)[i], **_tol(F64, name))
            torch.testing.assert_close(li_inv, ladj_inv.expand(batch).reshape(-1)[i],
                                       **_tol(F64, name))


@pytest.mark.parametrize("name", NAMES)
def test_starts_at_the_identity_for_every_context(name):
    dim = _dim(name, 5)
    torch.manual_seed(1)
    layer = build_conditional_layer(name, dim, C).double()
    x = 2 * torch.randn(20, dim, dtype=F64)
    y, ladj = layer.condition(3 * torch.randn(20, C, dtype=F64)).forward_and_log_det(x)
    if _context_free(name):
        assert torch.equal(y.sort(-1).values, x.sort(-1).values) and torch.all(ladj == 0)
        return
    assert torch.all((y - x).abs() <= 1e-2 * (1 + x.abs())), (y - x).abs().max()
    assert torch.all(ladj.abs() <= 1e-2 * dim)


RESIDUAL = [n for n in NAMES if conditional_info(n).kind == "residual"]


@pytest.mark.parametrize("name", RESIDUAL)
def test_invertibility_constraints_hold_for_every_context(name):
    """Large random hypernetwork weights and contexts: every per-point Jacobian has a positive
    determinant matching the log-det, and the inverse reproduces y."""
    dim = 3
    layer = build_conditional_layer(name, dim, C).double()
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
    layer = build_conditional_layer(name, dim, C)
    for bad in (torch.randn(4, C + 1), torch.randn(C - 1)):
        with pytest.raises(ValueError, match=f"context_dim={C}; the last dimension of the "
                                             f"context must be {C}") as err:
            layer.condition(bad)
        assert (type(layer).__name__ if not _context_free(name) else "in a conditional stack") \
            in str(err.value)
    with pytest.raises(ValueError, match=f"context_dim={C}"):
        build_conditional_flow([name, name], dim, C).condition(torch.randn(4, C + 2))
    flow = layer.condition(torch.randn(4, C))
    with pytest.raises(ValueError, match=f"dim={dim}"):
        flow(torch.randn(4, dim + 1))
    if not _context_free(name):
        with pytest.raises(TypeError, match="float64"):
            layer.condition(torch.randn(4, C, dtype=F64))
        with pytest.raises(ValueError, match="does not broadcast"):
            flow(torch.randn(3, dim))


# ----------------------------------------------------------------------------- specs
def _types(flow):
    return [type(t.layer if isinstance(t, ContextFree) else t).__name__
            for t in flow.transforms]


@pytest.mark.parametrize("name", ["iaf", "maf", "spline_autoregressive"])
def test_autoregressive_stack_with_alternating_orders_is_exact(name):
    torch.manual_seed(0)
    flow = build_conditional_flow(f"{name}*2", 4, C).to(F64)
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
    flow = build_conditional_flow("iaf*3", 4, C)
    assert isinstance(flow, ConditionalComposeTransformModule)
    # consecutive autoregressive layers alternate their MADE's order instead of moving data
    assert _types(flow) == ["ConditionalAffineAutoregressive"] * 3
    assert [t.made.order.tolist() for t in flow.transforms] == [[0, 1, 2, 3], [3, 2, 1, 0],
                                                                [0, 1, 2, 3]]
    assert _types(build_conditional_flow("planar*10", 4, C)) == ["ConditionalPlanar"] * 10
    assert _types(build_conditional_flow(["realnvp", "reverse"] * 2, 4, C)) == [
        "ConditionalAffineCoupling", "Reverse"] * 2
    flow = build_conditional_flow([("realnvp", {"hidden": 16}), "spline_coupling"], 4, C,
                                  permutation="random", seed=5, activation="tanh")
    assert _types(flow) == ["ConditionalAffineCoupling", "RandomPermutation",
                            "ConditionalSplineCoupling"]
    assert flow.transforms[1].layer.seed == 6
    assert flow.transforms[0].conditioner.net[0].out_features == 16
    assert isinstance(flow.transforms[2].conditioner.net[1], torch.nn.Tanh)
    assert _types(build_conditional_flow("maf*2", 4, C, permutation=None)) == [
        "ConditionalAffineAutoregressive"] * 2
    # modules and callables (dim, context_dim) -> module(s) mix with names
    own = ConditionalPlanar(4, C)
    flow = build_conditional_flow([own, Reverse(4), lambda d, c: [ConditionalAffineCoupling(d, c)],
                                   "radial"], 4, C)
    assert flow.transforms[0] is own and len(flow.transforms) == 4
    assert isinstance(flow.condition(torch.randn(C)), ComposeTransformModule)
    assert sum(p.numel() for p in flow.parameters()) > sum(p.numel() for p in own.parameters())


def test_spec_errors_list_the_conditional_names():
    with pytest.raises(ValueError, match="unknown conditional flow 'bnaf'; available "
                                         "conditional flows: iaf, maf") as err:
        build_conditional_flow(["planar", "bnaf"], 4, C)
    assert "lu," not in str(err.value) and "sylvester_orthogonal" in str(err.value)
    with pytest.raises(ValueError, match="unknown conditional flow 'nope'"):
        build_conditional_flow("nope*2", 4, C)
    with pytest.raises(ValueError, match="malformed"):
        build_conditional_flow("planar**2", 4, C)
    with pytest.raises(ValueError, match="accepted by none"):
        build_conditional_flow("planar", 4, C, bins=4)
    with pytest.raises(ValueError, match="no option"):
        build_conditional_flow([("planar", {"bins": 4})], 4, C)
    with pytest.raises(ValueError, match="context_dim"):
        build_conditional_flow("planar", 4, 0)
    with pytest.raises(ValueError, match="dim >= 2"):
        build_conditional_flow("realnvp", 1, C)
    with pytest.raises(ValueError, match="permutation"):
        build_conditional_flow("iaf*2", 4, C, permutation="shuffle")


def test_conditional_distribution_of_a_stack():
    torch.manual_seed(0)
    dim = 3
    flow = build_conditional_flow(["sylvester_householder", "iaf", "radial", "spline_coupling"],
                                  dim, C).double()
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


def test_public_api_exports():
    with pytest.warns(DeprecationWarning, match="pyro_nf.transforms.available_conditional"):
        assert pyro_nf.available_conditional is available_conditional
    assert pyro_nf.transforms.build_conditional_flow is build_conditional_flow
    assert isinstance(build_conditional_layer("iaf", 3, C), ConditionalAffineAutoregressive)


# ----------------------------------------------------------------------------- one registry
def test_build_flow_with_context_dim_is_build_conditional_flow():
    spec = [("realnvp", {"hidden": 16}), "iaf", "iaf", "planar", "sylvester_householder"]
    torch.manual_seed(0)
    one = build_flow(spec, 4, context_dim=C, permutation="random", seed=2, activation="tanh")
    torch.manual_seed(0)
    other = build_conditional_flow(spec, 4, C, permutation="random", seed=2, activation="tanh")
    assert isinstance(one, ConditionalComposeTransformModule)
    assert [type(t) for t in one.transforms] == [type(t) for t in other.transforms]
    state, other_state = one.state_dict(), other.state_dict()
    assert state.keys() == other_state.keys()
    assert all(torch.equal(state[k], other_state[k]) for k in state)
    h, x = torch.randn(5, C), torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(one.condition(h)(x), other.condition(h)(x), atol=0, rtol=0)
    torch.manual_seed(1)
    layer = build_layer("radial", 3, context_dim=C, hidden=[8])
    torch.manual_seed(1)
    twin = build_conditional_layer("radial", 3, C, hidden=[8])
    assert type(layer) is type(twin) and layer.context_dim == C
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), twin.parameters()))
    with pytest.raises(ValueError, match="context_dim must be a positive integer"):
        build_flow("planar", 3, context_dim=0)
    with pytest.raises(ValueError, match="context_dim must be a positive integer"):
        build_conditional_flow("planar", 3, None)


def test_flow_info_holds_its_conditional_form():
    planar = info("planar")
    assert planar.conditional is conditional_info("planar") and planar.conditional_twin
    assert planar.conditional.constructor is ConditionalPlanar
    assert planar.constructor is not ConditionalPlanar and planar.conditional.conditional is None
    for name in ("lu", "bnaf", "actnorm"):
        assert info(name).conditional is None and not info(name).conditional_twin
        with pytest.raises(ValueError, match=f"unknown conditional flow '{name}'"):
            conditional_info(name)
    assert set(available_conditional()) == {n for n in available() if info(n).conditional}


def test_a_conditional_only_layer_needs_context_dim():
    @register_conditional("cond_only_test", paper="test", inverse="exact", kind="permutation",
                          volume_preserving=True, min_dim=1)
    def reversed_only(dim: int, context_dim: int):
        return ContextFree(Reverse(dim), context_dim)

    try:
        assert "cond_only_test" in available_conditional()
        assert "cond_only_test" not in available()
        assert "cond_only_test" not in registry.markdown_table()
        hint = "'cond_only_test' exists only in conditional form; pass context_dim"
        for call in (lambda: info("cond_only_test"), lambda: build_layer("cond_only_test", 3),
                     lambda: build_flow(["planar", "cond_only_test"], 3)):
            with pytest.raises(ValueError, match=hint) as err:
                call()
            assert "\n" not in str(err.value)
        layer = build_layer("cond_only_test", 3, context_dim=C)
        assert isinstance(layer, ContextFree)
        assert len(build_flow("cond_only_test*2", 3, context_dim=C).transforms) == 2

        # registering the plain form afterwards keeps the conditional one
        @register("cond_only_test", paper="test", inverse="exact", kind="permutation",
                  volume_preserving=True)
        def plain(dim: int):
            return Reverse(dim)

        assert info("cond_only_test").constructor is plain
        assert info("cond_only_test").conditional.constructor is reversed_only
        with pytest.raises(ValueError, match="already registered"):
            register_conditional("cond_only_test", paper="again")(reversed_only)
    finally:
        registry._REGISTRY.pop("cond_only_test", None)


#: pyro_nf.transforms.conditional's names before the families were merged
OLD_CONDITIONAL_ALL = [
    "available_conditional", "build_conditional_flow", "build_conditional_layer",
    "conditional_info", "register_conditional",
    "ConditionalFlow", "ConditionedFlow", "ContextFree", "HyperNet",
    "ConditionalPlanar", "ConditionalRadial", "ConditionalSylvester",
    "ConditionalOrthogonalSylvester", "ConditionalHouseholderSylvester",
    "ConditionalTriangularSylvester", "ConditionalCoupling", "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling", "ConditionalSplineCoupling", "ConditionalAutoregressive",
    "ConditionalAffineAutoregressive", "ConditionalSplineAutoregressive",
]


def test_old_import_paths_are_deprecated_aliases_of_the_new_modules():
    with pytest.warns(DeprecationWarning, match="pyro_nf.transforms.conditional is deprecated"):
        old = importlib.reload(importlib.import_module("pyro_nf.transforms.conditional"))
    assert old.__all__ == OLD_CONDITIONAL_ALL
    for name in OLD_CONDITIONAL_ALL:
        assert getattr(old, name) is getattr(pyro_nf.transforms, name), name
    new = {"planar": "planar", "radial": "radial", "coupling": "coupling",
           "autoregressive": "autoregressive", "permutation": "permutation",
           "sylvester": "sylvester", "base": "context", "registry": "registry"}
    for submodule, module in new.items():
        alias = importlib.import_module(f"pyro_nf.transforms.conditional.{submodule}")
        assert alias is sys.modules[f"pyro_nf.transforms.{module}"], submodule
        assert getattr(old, submodule) is alias
    from pyro_nf.transforms.conditional.base import HyperResidual
    from pyro_nf.transforms.conditional.planar import ConditionalPlanar as OldPlanar
    from pyro_nf.transforms.conditional.registry import build_conditional_flow as old_build
    from pyro_nf.transforms.conditional.sylvester import ConditionalTriangularSylvester as Old

    assert OldPlanar is pyro_nf.transforms.planar.ConditionalPlanar
    assert Old is pyro_nf.transforms.sylvester.ConditionalTriangularSylvester
    assert HyperResidual is pyro_nf.transforms.context.HyperResidual
    assert old_build is build_conditional_flow
