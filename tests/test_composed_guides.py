"""AutoFlow composed with other guides, as Pyro's own autoguide tests compose them: inside an
AutoGuideList beside an AutoDelta, a callable, a module-callable and AutoDiscreteParallel
(enumerated sites), with PyroModule parameters in the model; warnings are errors here, since
composing guides is everyday Pyro and must not warn."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import (
    AutoCallable,
    AutoDelta,
    AutoDiscreteParallel,
    AutoGuide,
    AutoGuideList,
)
from pyro.nn.module import PyroModule, PyroParam
from pyro.optim import Adam
from torch import nn
from torch.distributions import constraints

from pyro_nf import AutoFlow

pytestmark = pytest.mark.filterwarnings("error")


class Model(PyroModule):
    """x has learnable parameters; y is free; z observes x."""

    def __init__(self) -> None:
        super().__init__()
        self.x_loc = nn.Parameter(torch.tensor(1.0))
        self.x_scale = PyroParam(torch.tensor(0.1), constraints.positive)

    def forward(self) -> None:
        x = pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))
        pyro.sample("y", dist.Normal(2.0, 0.1))
        pyro.sample("z", dist.Normal(1.0, 0.1), obs=x)


def with_delta(model):
    guide = AutoGuideList(model)
    guide.append(AutoDelta(poutine.block(model, expose=["x"])))
    guide.append(AutoFlow(poutine.block(model, hide=["x"])))
    return guide


def with_callable(model):
    def guide_x():
        loc = pyro.param("x_loc", torch.tensor(1.0))
        scale = pyro.param("x_scale", torch.tensor(0.1), constraint=constraints.positive)
        pyro.sample("x", dist.Normal(loc, scale))

    def median_x():
        return {"x": pyro.param("x_loc", torch.tensor(1.0))}

    guide = AutoGuideList(model)
    guide.append(AutoCallable(model, guide_x, median_x))
    guide.append(AutoFlow(poutine.block(model, hide=["x"])))
    return guide


class GuideX(AutoGuide):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.x_loc = nn.Parameter(torch.tensor(1.0))
        self.x_scale = PyroParam(torch.tensor(0.1), constraint=constraints.positive)

    def forward(self, *args, **kwargs):
        return {"x": pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))}

    def median(self, *args, **kwargs):
        return {"x": self.x_loc.detach()}


def with_module_callable(model):
    guide = AutoGuideList(model)
    guide.custom = GuideX(model)
    guide.flow = AutoFlow(poutine.block(model, hide=["x"]))
    return guide


def _flow_of(guide) -> AutoFlow:
    return next(part for part in guide if isinstance(part, AutoFlow))


@pytest.mark.parametrize("make", [with_delta, with_callable, with_module_callable, AutoFlow])
@pytest.mark.parametrize("Elbo", [Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO])
def test_median_of_a_module_model_in_a_composed_guide(fresh_store, make, Elbo):
    model = Model()
    guide = make(model)
    svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo(strict_enumeration_warning=False))
    for _ in range(20):
        svi.step()
    median = guide.median()
    assert abs(float(median["x"].detach()) - 1.0) < 0.1
    assert abs(float(median["y"].detach()) - 2.0) < 0.1
    flow = guide if isinstance(guide, AutoFlow) else _flow_of(guide)
    # the hidden x only adds a constant to y's density: anchored with fixed draws
    assert flow.anchor_info["method"] in ("pathfinder", "laplace")


def test_a_hidden_site_that_adds_a_constant_leaves_the_exact_anchor(fresh_store):
    """y's conditional is N(2, 0.1) whatever x is: with the other member's site drawn from its
    prior at every call, the anchor is still that Gaussian (Laplace is exact here)."""
    model = Model()
    guide = with_delta(model)
    guide()
    flow = _flow_of(guide)
    assert flow.anchor_reason is None and flow.setup_notes == []
    draws = flow.anchor_posterior().sample((20000,))
    assert abs(float(draws.mean()) - 2.0) < 4 * 0.1 / math.sqrt(20000)
    assert abs(float(draws.std()) / 0.1 - 1.0) < 0.03


def mixture(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
    locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def test_beside_discrete_parallel_under_enumeration(fresh_store):
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])
    guide = AutoGuideList(mixture)
    guide.append(AutoFlow(poutine.block(mixture, hide=["assignment"])))
    guide.append(AutoDiscreteParallel(poutine.block(mixture, expose=["assignment"])))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert math.isfinite(elbo.loss_and_grads(mixture, guide, data))
    flow = guide[0]
    # the hidden assignment moves the likelihood's shape: no anchor, said quietly
    assert not flow.anchor_info and "changes shape" in flow.anchor_reason
    assert any("no Gaussian anchor" in note for note in flow.setup_notes)
    svi = SVI(mixture, guide, Adam({"lr": 0.01}), elbo)
    for _ in range(5):
        assert math.isfinite(svi.step(data))
