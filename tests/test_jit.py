"""Pyro's autoguide contract for TorchScript: ``torch.jit.trace_module(guide, {"call": ...})``,
save and load, and a traced ``Predictive``, as Pyro's own AutoIAFNormal supports; and
``Transform.sign``, which Pyro's ComposeTransformModule asks every layer for while tracing."""

from __future__ import annotations

import io
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from pyro_nf import AmortizedFlow, AutoFlow
from pyro_nf.transforms import available, build_layer
from pyro_nf.transforms.base import permutation_sign
from pyro_nf.transforms.linear import LULinear
from pyro_nf.transforms.permutation import Permutation


def two_sites():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("p", 2):
        pyro.sample("y", dist.LogNormal(0.0, 1.0))


Y = torch.tensor([0.3, -1.2, 2.5, 0.1])


def hierarchical(y=Y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)


def _trace_save_load(guide, inputs: tuple):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace_module(guide, {"call": inputs}, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        return traced, torch.jit.load(buffer)


def _draws(guide, inputs: tuple, n: int) -> list[torch.Tensor]:
    with torch.no_grad():
        calls = [guide.call(*inputs) for _ in range(n)]
    return [torch.stack(values) for values in zip(*calls)]


def _check(eager, inputs: tuple = (), n: int = 0) -> None:
    """The loaded trace draws exactly what the trace draws under a fixed seed, and (with
    ``n``) the eager guide's distribution: the same means within 6 standard errors and sds
    within 25%. Draws cannot be compared one to one with the eager guide: while tracing,
    torch.distributions draws standard normals by ``torch.normal`` instead of ``normal_``,
    which reads the generator differently."""
    traced, loaded = _trace_save_load(eager, inputs)
    torch.manual_seed(7)
    want = traced.call(*inputs)
    torch.manual_seed(7)
    got = loaded.call(*inputs)
    assert len(got) == len(want) == len(eager.call(*inputs)) > 0
    for value, expected in zip(got, want):
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, expected)
    if n:
        for a, b in zip(_draws(loaded, inputs, n), _draws(eager, inputs, n)):
            se = (a.var(0) / n + b.var(0) / n).sqrt()
            assert ((a.mean(0) - b.mean(0)).abs() < 6 * se).all()
            assert ((a.std(0) / b.std(0) - 1).abs() < 0.25).all()


@pytest.mark.parametrize("flow", available())
def test_autoflow_with_every_layer_traces_saves_and_loads(flow):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlow(two_sites, flow=flow)
    guide()
    _check(guide)


@pytest.mark.slow
def test_autoflow_with_learned_centering_traces_and_predictive_traces():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlow(hierarchical)  # the default: iaf*3 and the centering layer
    guide()
    assert len(guide.centering_weights()) > 0  # the centering layer is in the traced graph
    _check(guide, n=400)
    predictive = Predictive(hierarchical, guide=guide, num_samples=5,
                            return_sites=["mu", "theta", "obs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(predictive, {"call": ()}, check_trace=False)
    torch.manual_seed(3)
    got = dict(zip(["mu", "theta", "obs"], traced.call()))
    assert got["theta"].shape == (5, 4) and got["obs"].shape == (5, 4)
    assert all(torch.isfinite(v).all() for v in got.values())
    torch.manual_seed(3)
    again = traced.call()
    torch.testing.assert_close(again[0], got["mu"])


@pytest.mark.parametrize("flow,n", [("iaf*2", 200), ("planar*2", 0), ("spline_coupling", 0)])
def test_amortized_flow_traces_saves_and_loads(flow, n):
    def local(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 0.5), obs=x)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(6)
    guide = AmortizedFlow(local, flow=flow, hidden=(8,))
    guide(x)
    _check(guide, (x,), n=n)


def _jacobian_sign(fn, x: torch.Tensor) -> int:
    return int(torch.linalg.slogdet(torch.autograd.functional.jacobian(fn, x))[0])


@pytest.mark.parametrize("name", available())
def test_sign_is_the_sign_of_the_jacobian_determinant(name):
    torch.manual_seed(0)
    layer = build_layer(name, 5).double()
    with torch.no_grad():
        layer.inv(torch.randn(16, 5, dtype=torch.float64))  # data-dependent initialization
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for x in torch.randn(3, 5, dtype=torch.float64):
        assert _jacobian_sign(lambda v: layer.forward_and_log_det(v)[0], x) == layer.sign


@pytest.mark.parametrize("name", available(conditional=True))
def test_conditioned_sign_is_the_sign_of_the_jacobian_determinant(name):
    torch.manual_seed(0)
    layer = build_layer(name, 4, context_dim=3).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow = layer.condition(torch.randn(3, dtype=torch.float64))
    x = torch.randn(4, dtype=torch.float64)
    assert _jacobian_sign(lambda v: flow.forward_and_log_det(v)[0], x) == flow.sign


@pytest.mark.parametrize("perm,sign", [([0, 1, 2], 1), ([1, 0, 2], -1), ([1, 2, 0], 1),
                                       ([3, 2, 1, 0], 1), ([4, 3, 2, 1, 0], 1),
                                       ([2, 1, 0], -1)])
def test_permutation_parity(perm, sign):
    assert permutation_sign(torch.tensor(perm)) == sign
    layer = Permutation(len(perm), torch.tensor(perm)).double()
    x = torch.randn(len(perm), dtype=torch.float64)
    assert _jacobian_sign(lambda v: layer.forward_and_log_det(v)[0], x) == sign == layer.sign


def test_lu_linear_sign_follows_its_permutation():
    signs = set()
    for seed in range(6):
        layer = LULinear(4, permutation="random", seed=seed).double()
        x = torch.randn(4, dtype=torch.float64)
        assert _jacobian_sign(lambda v, f=layer: f.forward_and_log_det(v)[0], x) == layer.sign
        signs.add(layer.sign)
    assert signs == {1, -1}
