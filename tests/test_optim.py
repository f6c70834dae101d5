"""JointAdam and fit's foreach guard against Pyro's per-tensor Adam and torch's clipping."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nf import AutoFlow, fit
from pyro_nf.training.optim import JointAdam, Snapshot, clip_per_tensor, finite_norms

J = 8
Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools():
    """Eight schools, centered: a funnel between tau and theta."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("j", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, SIGMA), obs=Y)


def _params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@pytest.mark.parametrize("anchor", [None, "auto"])
def test_a_seeded_fit_matches_pyros_per_tensor_adam(anchor):
    """The default optimizer (one foreach Adam step) and pyro.optim.Adam (one torch Adam per
    tensor) give the same parameters after 100 steps of the same seeded fit."""
    results = []
    for optim in (None, pyro.optim.Adam({"lr": 0.01})):
        pyro.clear_param_store()
        guide = AutoFlow(schools, start=anchor)
        fit(schools, guide, num_steps=100, lr=0.01, num_particles=4, seed=3, optim=optim,
            progress=False)
        results.append(_params())
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-5,
                                   msg=name)


def test_state_moves_between_joint_and_pyro_adam():
    """JointAdam's get_state loads into pyro.optim.Adam (and back): both then take the same
    step from the same gradient."""
    pyro.clear_param_store()
    a = pyro.param("a", torch.tensor([1.0, -2.0]))
    b = pyro.param("b", torch.tensor(0.5))
    joint = JointAdam({"lr": 0.1})
    for k in range(3):  # some history in the moments
        a.grad, b.grad = torch.tensor([0.3, -1.0]) * (k + 1), torch.tensor(2.0 - k)
        joint([a, b])
    start = _params()
    per_tensor = pyro.optim.Adam({"lr": 0.1})
    per_tensor.set_state(joint.get_state())
    a.grad = b.grad = None
    per_tensor([a, b])  # takes up the state without a step (no gradients)
    back = JointAdam({"lr": 0.1})
    back.set_state(per_tensor.get_state())
    after = []
    for optim in (joint, per_tensor, back):
        with torch.no_grad():
            a.copy_(start["a"])
            b.copy_(start["b"])
        a.grad, b.grad = torch.tensor([-0.7, 0.2]), torch.tensor(1.5)
        optim([a, b])
        after.append(_params())
    for other in after[1:]:
        for name in ("a", "b"):
            torch.testing.assert_close(other[name], after[0][name])


def test_joint_adam_steps_only_parameters_with_a_gradient_and_refuses_unknown_args():
    pyro.clear_param_store()
    a = pyro.param("a", torch.ones(3))
    b = pyro.param("b", torch.ones(2))
    joint = JointAdam({"lr": 0.1})
    c = pyro.param("c", torch.ones(2, dtype=torch.float64))
    a.grad, c.grad = torch.ones(3), torch.ones(2, dtype=torch.float64)
    joint([a, b, c])
    assert torch.all(a.detach() < 1) and torch.equal(b.detach(), torch.ones(2))
    assert torch.all(c.detach() < 1) and c.dtype == torch.float64
    assert joint.fused  # torch's fused kernel took float32 and float64 on the CPU
    with pytest.raises(ValueError, match="unknown argument"):
        JointAdam({"lr": 0.1, "momentum": 0.9})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_per_tensor_is_torchs_clipping_of_each_tensor(dtype):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=g, dtype=dtype) * s for s in (0.1, 3.0, 100.0)]
    expected = [t.clone() for t in grads]
    for t in expected:
        p = torch.zeros_like(t, requires_grad=True)
        p.grad = t
        torch.nn.utils.clip_grad_norm_(p, 10.0)
    norms, finite = finite_norms(grads)
    assert all(finite)
    clip_per_tensor(grads, norms, 10.0)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_finite_norms_tells_an_overflowing_norm_from_a_non_finite_entry():
    big = torch.full((4,), 1e20, dtype=torch.float32)  # finite; its float32 norm overflows
    nan = torch.tensor([1.0, float("nan")])
    inf = torch.tensor([float("inf")])
    norms, finite = finite_norms([torch.ones(2), big, nan, inf])
    assert finite == [True, True, False, False]
    assert norms[0].item() == pytest.approx(2 ** 0.5)


def test_snapshot_restores_the_saved_values_even_after_the_list_changes():
    x, y = torch.zeros(2), torch.ones(3)
    snap = Snapshot()
    snap.save([x])
    x += 5
    snap.save([x])  # the same list: copied in place
    x += 1
    snap.restore([x, y])  # y was never saved: left as is
    assert torch.equal(x, torch.full((2,), 5.0)) and torch.equal(y, torch.ones(3))
    snap.save([x, y])
    y -= 4
    snap.restore([y])
    assert torch.equal(y, torch.ones(3))
