"""fit(): reproducibility, checkpoints, the non-finite guard, schedules, ELBOs, optimizers,
and the sticking-the-landing estimator."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import init_to_value

from pyro_nf import AutoFlow, NonFiniteLossError, STLTrace_ELBO, fit

DATA = torch.tensor([0.3, -1.2, 0.8, 2.0, 1.1])


def conjugate(data=DATA):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("n", len(data)):
        pyro.sample("x", dist.Normal(mu, s), obs=data)


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_seeded_runs_are_reproducible():
    r1 = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=30, seed=3, progress=False)
    p1 = _params()
    pyro.clear_param_store()
    r2 = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=30, seed=3, progress=False)
    assert r1.losses == r2.losses
    assert all(torch.equal(p1[k], v) for k, v in _params().items())
    assert r1.steps == 30 and r1.seconds > 0 and r1.guide is not None


def test_checkpoint_and_resume_continue_exactly(tmp_path):
    # (a fixed schedule: the default decay and warm-up depend on the planned num_steps, which
    # an interrupted run and its resumption share but this emulation cannot)
    straight = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=40, seed=1,
                   progress=False, lr_decay=None, warmup_steps=5)
    expected = _params()
    pyro.clear_param_store()
    path = tmp_path / "run.pt"
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=25, seed=1, progress=False,
        checkpoint=path, checkpoint_every=10, lr_decay=None, warmup_steps=5)
    assert path.exists()
    pyro.clear_param_store()
    pyro.set_rng_seed(999)  # whatever state the new process is in
    resumed = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=40, progress=False,
                  checkpoint=path, resume=True, lr_decay=None, warmup_steps=5)
    assert resumed.steps == 40 and resumed.losses == straight.losses
    got = _params()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_resume_needs_a_checkpoint_path_and_a_readable_file(tmp_path):
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, resume=True, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, resume=True, checkpoint=bad,
            progress=False)


class _RunsCodeWhenUnpickled:
    """A crafted checkpoint: unpickling it would create ``marker`` (any code could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_before_its_code_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"params": {}, "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match=r"refused to load checkpoint .*evil\.pt.*you wrote"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, resume=True, checkpoint=path,
            progress=False)
    assert not marker.exists()


def test_checkpoint_loads_weights_only_and_restores_numpy_and_python_rng(tmp_path):
    path = tmp_path / "run.pt"
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=10, seed=3, progress=False,
        checkpoint=path, checkpoint_every=10)
    expected = (np.random.rand(3), random.random())  # noqa: NPY002 - the global state
    state = torch.load(path, weights_only=True)  # what fit itself does
    assert set(state["rng"]) == {"torch", "python", "numpy"}
    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=10, progress=False,
        checkpoint=path, resume=True)
    got = (np.random.rand(3), random.random())  # noqa: NPY002
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]


def _set_up(guide, calls):
    """Run the guide's set-up (its model runs included), then restart the call count."""
    guide()
    calls["n"] = 0
    return guide


def test_non_finite_steps_are_skipped_and_the_learning_rate_lowered():
    calls = {"n": 0}

    def flaky(data=DATA):
        calls["n"] += 1
        conjugate(data)
        if calls["n"] in (2, 3):
            pyro.factor("glitch", torch.tensor(float("nan")))

    optim = pyro.optim.Adam({"lr": 0.01})
    guide = _set_up(AutoFlow(flaky, flow="iaf"), calls)  # model calls now count ELBO steps
    # elbo="trace": the model counts its calls, so the eager ELBO (the compiled one's check
    # would call it too, and a trace would freeze the count)
    result = fit(flaky, guide, num_steps=20, optim=optim, progress=False, seed=0,
                 lr_decay=None, elbo="trace")
    assert result.skipped_steps == 2 and result.steps == 20
    assert all(math.isfinite(v) for v in result.losses)
    lrs = {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups}
    assert lrs == {0.01 * 0.25} and result.lr_factor == 0.25


def test_a_stalled_learning_rate_is_reported():
    """Eight isolated non-finite steps halve the learning rate eight times (1/256): fit
    finishes but warns that it has probably stalled; two do not warn."""
    calls = {"n": 0, "bad": set(range(2, 18, 2))}

    def flaky(data=DATA):
        calls["n"] += 1
        conjugate(data)
        if calls["n"] in calls["bad"]:
            pyro.factor("glitch", torch.tensor(float("nan")))

    options = {"num_steps": 30, "progress": False, "seed": 0, "lr_decay": None,
               "elbo": "trace"}  # the model counts its calls (as above)
    with pytest.warns(RuntimeWarning, match="256 times lower: the fit has probably stalled"):
        result = fit(flaky, _set_up(AutoFlow(flaky, flow="iaf"), calls), **options)
    assert result.skipped_steps == 8 and result.lr_factor == 0.5 ** 8
    pyro.clear_param_store()
    guide = _set_up(AutoFlow(flaky, flow="iaf"), calls)
    calls["bad"] = {2, 4}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(flaky, guide, **options)
    assert not [w for w in caught if "stalled" in str(w.message)]


def test_a_non_finite_loss_undoes_the_last_update():
    state = {"step": -1, "glitch": None}

    def schedule(step):
        state["step"] = step
        return 1.0

    def flaky(data=DATA):
        conjugate(data)
        if state["step"] == state["glitch"]:
            pyro.factor("glitch", torch.tensor(float("nan")))

    common = {"progress": False, "seed": 0, "lr_decay": None, "warmup_steps": 0,
              "lr_schedule": schedule, "elbo": "trace"}  # the model reads the step: eager
    fit(flaky, AutoFlow(flaky, flow="iaf"), num_steps=1, **common)
    after_one = _params()
    pyro.clear_param_store()
    state["glitch"] = 2  # steps 0 and 1 update; step 2's loss is NaN: back to after step 0
    result = fit(flaky, AutoFlow(flaky, flow="iaf"), num_steps=3, **common)
    assert result.skipped_steps == 1 and len(result.losses) == 2
    got = _params()
    assert all(torch.equal(got[k], v) for k, v in after_one.items())


def test_learning_rate_warms_up_linearly():
    optim = pyro.optim.Adam({"lr": 0.02})
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=5, optim=optim,
        progress=False, lr_decay=None, warmup_steps=10)
    lrs = {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups}
    assert lrs == {0.02 * 5 / 10}
    optim = pyro.optim.Adam({"lr": 0.02})
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=5, optim=optim,
        progress=False, lr_decay=None, warmup_steps=0)
    assert {g["lr"] for o in optim.optim_objs.values() for g in o.param_groups} == {0.02}
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, warmup_steps=-1)


def test_repeated_non_finite_losses_raise_naming_the_parameters():
    def broken(data=DATA):
        conjugate(data)
        shift = pyro.param("model_shift", torch.tensor(0.0))
        # a finite loss whose gradient is NaN (the classic sqrt-inside-where)
        pyro.factor("bad", torch.where(shift > 10, torch.sqrt(shift - 11.0), shift * 0))

    with pytest.raises(NonFiniteLossError, match="model_shift"):
        fit(broken, AutoFlow(broken), num_steps=50, max_bad_steps=3, progress=False)


def test_convergence_detection_stops_early():
    result = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=20000, seed=0,
                 progress=False, stop_when_converged=True, convergence_window=100,
                 elbo=Trace_ELBO(num_particles=8, vectorize_particles=True))
    assert result.converged and result.converged_at == result.steps < 20000


def test_zero_learning_rate_schedule_freezes_parameters():
    guide = AutoFlow(conjugate, flow="iaf")
    guide()
    fit(conjugate, guide, num_steps=1, progress=False, lr_schedule=lambda step: 1.0)
    before = _params()
    fit(conjugate, guide, num_steps=10, progress=False, lr_schedule=lambda step: 0.0)
    assert all(torch.equal(before[k], v) for k, v in _params().items())


def test_learning_rate_decays_to_the_requested_fraction():
    optim = pyro.optim.Adam({"lr": 0.02})
    fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=100, optim=optim,
        progress=False, lr_decay=0.1)
    lrs = {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups}
    assert all(abs(lr - 0.02 * 0.1 ** (99 / 100)) < 1e-9 for lr in lrs)
    with pytest.raises(ValueError, match="lr_decay"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, lr_decay=0.0)


def test_gradient_clipping_bounds_sgd_updates():
    guide = AutoFlow(conjugate, flow="iaf")
    guide()
    before = guide.loc.detach().clone()
    fit(conjugate, guide, num_steps=1, optim=pyro.optim.SGD({"lr": 1.0}), clip_norm=1e-3,
        progress=False)
    assert float((guide.loc.detach() - before).norm()) <= 1e-3 + 1e-7


def test_gradient_clipping_is_per_parameter_tensor():
    """A huge gradient on one parameter must not shrink another parameter's update (global
    clipping would scale b's gradient 0.5 by 1 / 1000 here)."""

    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    def guide():  # point masses: the loss is (a^2 + b^2) / 2 + const, gradients a and b
        pyro.sample("a", dist.Delta(pyro.param("a_loc", torch.tensor(1000.0))))
        pyro.sample("b", dist.Delta(pyro.param("b_loc", torch.tensor(0.5))))

    pyro.clear_param_store()
    fit(model, guide, num_steps=1, optim=pyro.optim.SGD({"lr": 1.0}), clip_norm=1.0,
        warmup_steps=0, lr_decay=None, progress=False)
    assert pyro.param("a_loc").item() == pytest.approx(999.0)  # clipped to norm 1
    assert pyro.param("b_loc").item() == pytest.approx(0.0, abs=1e-6)  # its own full step


@pytest.mark.parametrize("elbo", [
    Trace_ELBO(),
    TraceMeanField_ELBO(),
    RenyiELBO(alpha=0.0, num_particles=4),
    Trace_ELBO(num_particles=4, vectorize_particles=True),
    STLTrace_ELBO(num_particles=4, vectorize_particles=True),
    JitTrace_ELBO(ignore_jit_warnings=True),
], ids=["trace", "meanfield", "renyi0", "vectorized", "stl", "jit"])
def test_elbo_variants_run(elbo):
    guide = AutoFlow(conjugate, flow="maf")
    guide()
    result = fit(conjugate, guide, num_steps=15, elbo=elbo, progress=False, seed=0)
    assert len(result.losses) == 15 and all(math.isfinite(v) for v in result.losses)


@pytest.mark.parametrize("optim", [pyro.optim.ClippedAdam({"lr": 0.01}),
                                   pyro.optim.SGD({"lr": 1e-3}),
                                   pyro.optim.RMSprop({"lr": 1e-3})])
def test_pyro_optimizers(optim):
    result = fit(conjugate, AutoFlow(conjugate, flow="realnvp"), num_steps=10, optim=optim,
                 progress=False)
    assert result.steps == 10


def test_bad_arguments():
    with pytest.raises(TypeError, match="pyro.optim"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, optim=torch.optim.Adam)
    with pytest.raises(ValueError, match="num_steps"):
        fit(conjugate, AutoFlow(conjugate), num_steps=-1)
    with pytest.raises(ValueError, match="elbo must be"):
        fit(conjugate, AutoFlow(conjugate), num_steps=1, elbo="bogus")


def _gaussian_target():
    pyro.sample("z", dist.Normal(torch.tensor([1.0, -2.0, 0.5]), 0.7).to_event(1))


def _gradient_variance(elbo, guide, draws=200):
    params = None
    grads = []
    for _ in range(draws):
        loss = elbo.differentiable_loss(_gaussian_target, guide)
        params = params or [p for p in guide.parameters() if p.requires_grad]
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                for x, p in zip(g, params)]))
    return torch.stack(grads).var(0).sum()


def test_sticking_the_landing_cuts_gradient_variance_at_the_optimum():
    # the guide starts exactly at the posterior: loc = mean, scale = 0.7, flow = identity
    guide = AutoFlow(_gaussian_target, flow="maf*2",
                     init_loc_fn=init_to_value(values={"z": torch.tensor([1.0, -2.0, 0.5])}),
                     init_scale=0.7)
    guide()
    pyro.set_rng_seed(0)
    v_trace = _gradient_variance(Trace_ELBO(), guide)
    v_stl = _gradient_variance(STLTrace_ELBO(), guide)
    assert v_trace > 0.1
    assert v_stl * 10 < v_trace, (float(v_stl), float(v_trace))


def test_pyro_lr_scheduler_is_accepted():
    scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam,
                                          "optim_args": {"lr": 0.01}, "gamma": 0.99})
    result = fit(conjugate, AutoFlow(conjugate, flow="iaf"), num_steps=10, optim=scheduler,
                 progress=False)
    assert result.steps == 10
