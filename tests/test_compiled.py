"""The compiled ELBO fit uses by default: equal to the eager one where it is used, not used
(or given up) where a trace cannot be right."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_nf.training.compiled as compiled
from pyro_nf import AutoFlow, fit
from pyro_nf.training.compiled import CompiledTrace_ELBO, compiled_elbo

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools():
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("j", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, SIGMA), obs=Y)


def funnel():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    with pyro.plate("d", 9):
        pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)))


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()


def _grads() -> dict[str, torch.Tensor]:
    return {n: p.unconstrained().grad.clone() for n, p in pyro.get_param_store().items()
            if p.unconstrained().grad is not None}


def _zero() -> None:
    for p in pyro.get_param_store().values():
        p.unconstrained().grad = None


def _set_up(model, guide):
    with torch.no_grad():
        guide()
    return guide


@pytest.mark.parametrize("model", [schools, funnel])
@pytest.mark.parametrize("particles,vectorize", [(1, False), (8, True)])
def test_compiled_loss_and_gradients_equal_the_eager_ones(model, particles, vectorize):
    guide = _set_up(model, AutoFlow(model))
    eager = Trace_ELBO(num_particles=particles, vectorize_particles=vectorize,
                       max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback note
        fast = compiled_elbo(eager, model, guide, (), {})
    assert isinstance(fast, CompiledTrace_ELBO)
    for seed in (3, 4):  # not the seeds of the check
        results = []
        for elbo in (eager, fast):
            _zero()
            torch.manual_seed(seed)
            results.append((elbo.loss_and_grads(model, guide), _grads()))
        (loss_a, grads_a), (loss_b, grads_b) = results
        # the loss is a difference of terms of size ~30 (log p, log q): float32 round-off
        # of those, not of the difference, sets the tolerance
        assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-4)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 3
        for name in grads_a:
            scale = max(1.0, float(grads_a[name].abs().max()))
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4,
                                       atol=1e-4 * scale)


def test_a_seeded_fit_gives_the_same_parameters_compiled_or_eager():
    params = []
    for elbo in (None, "trace"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)  # the same initial flow
        guide = _set_up(schools, AutoFlow(schools))
        fit(schools, guide, num_steps=100, num_particles=4, seed=0, elbo=elbo, progress=False)
        params.append({k: v.detach().clone()
                       for k, v in pyro.get_param_store().named_parameters()})
    for name, value in params[1].items():
        torch.testing.assert_close(params[0][name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_a_model_whose_structure_follows_a_latent_value_stays_eager():
    def branching():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        if z > 0:  # a trace would freeze the branch of the draw it was made with
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))
        else:
            pyro.sample("x", dist.Normal(-z, 2.0), obs=torch.tensor(1.0))

    guide = _set_up(branching, AutoNormal(branching))
    eager = Trace_ELBO(num_particles=8, vectorize_particles=False)
    with pytest.warns(UserWarning, match="structure depend on a latent value"):
        assert compiled_elbo(eager, branching, guide, (), {}) is eager
    assert not _grads()  # the check leaves no gradient behind


def test_subsampled_models_and_other_elbos_stay_eager_without_a_note():
    data = torch.randn(100)

    def minibatched():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("n", 100, subsample_size=10) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data[idx])

    guide = _set_up(minibatched, AutoFlow(minibatched))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        eager = Trace_ELBO()
        assert compiled_elbo(eager, minibatched, guide, (), {}) is eager
        pyro.clear_param_store()
        guide = _set_up(funnel, AutoFlow(funnel))
        renyi = pyro.infer.RenyiELBO()
        assert compiled_elbo(renyi, funnel, guide, (), {}) is renyi


def test_python_state_that_moves_after_the_trace_is_caught_at_the_next_recheck(monkeypatch):
    monkeypatch.setattr(compiled, "RECHECK_EVERY", 5)
    state = {"noise": 1.0}

    def reads_a_global():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(mu, state["noise"]), obs=torch.tensor(0.5))

    guide = _set_up(reads_a_global, AutoFlow(reads_a_global))
    fast = compiled_elbo(Trace_ELBO(), reads_a_global, guide, (), {})
    assert isinstance(fast, CompiledTrace_ELBO)
    for _ in range(4):
        fast.loss_and_grads(reads_a_global, guide)
    state["noise"] = 3.0  # the trace still holds 1.0
    with pytest.warns(UserWarning, match="no longer agrees"):
        fast.loss_and_grads(reads_a_global, guide)
    assert fast.jit is None
    _zero()
    torch.manual_seed(0)
    loss = fast.loss_and_grads(reads_a_global, guide)
    torch.manual_seed(0)
    assert loss == pytest.approx(Trace_ELBO().loss(reads_a_global, guide))


def _posteriordb():
    from benchmarks import posteriordb

    return posteriordb


@pytest.mark.slow
@pytest.mark.parametrize("name", _posteriordb().NAMES)
def test_every_posteriordb_model_compiles_to_the_eager_elbo(name):
    """On each of the 15 posteriordb models (float64 where float32 cannot start) the default
    AutoFlow's compiled ELBO is used and equals the eager one on fresh draws."""
    posteriordb = _posteriordb()
    dtype = torch.float64 if name.startswith("gp_pois_regr") else torch.float32
    model = posteriordb.load(name, dtype=dtype).model
    pyro.set_rng_seed(0)
    guide = _set_up(model, AutoFlow(model))
    eager = Trace_ELBO(num_particles=4, vectorize_particles=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback note
        fast = compiled_elbo(eager, model, guide, (), {})
    assert isinstance(fast, CompiledTrace_ELBO)
    results = []
    for elbo in (eager, fast):
        _zero()
        torch.manual_seed(5)
        results.append((elbo.loss_and_grads(model, guide), _grads()))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-4)
    for key in grads_a:
        scale = float(grads_a[key].abs().max())
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=0,
                                   atol=1e-4 * max(scale, 1e-6))


def test_data_passed_by_keyword_compile_to_the_eager_elbo():
    def schools_kw(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("j", 8):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, SIGMA), obs=y)

    guide = AutoFlow(schools_kw)
    with torch.no_grad():
        guide(y=Y)
    eager = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    fast = compiled_elbo(eager, schools_kw, guide, (), {"y": Y})
    assert isinstance(fast, CompiledTrace_ELBO)
    losses = []
    for elbo in (eager, fast):
        torch.manual_seed(7)
        losses.append(elbo.loss_and_grads(schools_kw, guide, y=Y))
        _zero()
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-4)
