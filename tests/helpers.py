"""Helpers shared by the tests: the layer tests' wrappers and tolerances, and the seeds and
Monte Carlo tolerances of the tests that check accuracy after a fit."""

from __future__ import annotations

import math
import os

from torch import nn

#: Every test that checks accuracy after a fit holds for each of these seeds (it loops over
#: them), so that a result cannot hinge on one lucky seed, or on the CPU's rounding, which
#: moves a fit as a seed does (CI runs the suite under two sets of CPU kernels).
SEEDS = tuple(range(5))
#: The seeds of the fit-accuracy tests whose five fits would cost more than about 20 s (a
#: mixture of flows, a NUTS reference, thousands of steps): seed 0 only, each with a tolerance
#: derived from the Monte Carlo error of its estimate (the other way a test may show that it
#: does not hinge on its seed); ``PYRO_NF_ALL_SEEDS=1`` runs them over all of SEEDS, as was
#: done once under each set of CPU kernels (docs/notes/seeds_and_kernels.md).
LONG_SEEDS = SEEDS if os.environ.get("PYRO_NF_ALL_SEEDS") == "1" else SEEDS[:1]


def mean_tolerance(sd, draws: int, bias: float = 0.1, z: float = 4.0):
    """How far a posterior mean estimated from ``draws`` independent draws may be from the
    exact one: ``bias`` posterior sds (what the fit may be off: fit's own accuracy promise
    is 0.1 sd) plus ``z`` Monte Carlo standard errors (sd / sqrt(draws))."""
    return sd * (bias + z / math.sqrt(draws))


def sd_ratio_tolerance(draws: int, bias: float = 0.1, z: float = 4.0) -> float:
    """How far the ratio of an sd estimated from ``draws`` draws to the exact sd may be from 1:
    ``bias`` (relative) plus ``z`` Monte Carlo standard errors of a Gaussian's sample sd
    (1 / sqrt(2 draws), relative)."""
    return bias + z / math.sqrt(2 * draws)


class InverseModule(nn.Module):
    """Wraps a flow layer so that ``forward`` is its inverse pass: with
    ``torch.func.functional_call`` this lets ``gradcheck`` vary the layer's parameters and
    the input of a numerical inverse together."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, y):
        return self.layer.inverse_and_log_det(y)


def assert_grads(layer: nn.Module, what: str) -> None:
    """Every parameter of ``layer`` got a finite gradient that is not all zero."""
    import torch

    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{what}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient in {pname}"
        assert (p.grad != 0).any(), f"{what}: gradient of {pname} is all zero"


def round_trip_tol(dtype, name: str) -> dict:
    """Round-trip tolerances of layer ``name`` (with or without a context): looser for a
    numerical inverse and in float32."""
    import torch

    from pyro_nf.transforms import info

    numerical = info(name).inverse == "numerical"
    if dtype == torch.float64:
        return {"atol": 1e-7 if numerical else 1e-9, "rtol": 1e-7}
    return {"atol": 5e-4 if numerical else 2e-4, "rtol": 2e-4}


def standard_normal(dim: int, dtype):
    """The base distribution N(0, I_dim) of the given dtype."""
    import pyro.distributions as dist
    import torch

    zeros = torch.zeros(dim, dtype=dtype)
    return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)


def make_layer(name: str, dim: int, dtype=None, *, context_dim: int = 0, seed: int = 0,
               perturb: float = 0.3):
    """Build registered layer ``name`` (conditional for a ``context_dim`` above 0),
    in float64 by default, and perturb every parameter away from its initial value (hypernetwork
    and conditioner output layers included, so a conditional layer depends on the context). A
    plain layer is first warmed up with one inverse pass, so that data-dependent initialization
    (ActNorm's) happens before the perturbation."""
    import torch

    from pyro_nf.transforms import build_layer

    dtype = torch.float64 if dtype is None else dtype
    torch.manual_seed(seed)
    layer = build_layer(name, dim, context_dim=context_dim).to(dtype)
    with torch.no_grad():
        if not context_dim:
            layer.inv(torch.randn(64, dim, dtype=dtype) * 1.5 + 0.5)
        for p in layer.parameters():  # weight matrices: noise scaled by 1/sqrt(fan-in)
            fan_in = p.shape[-1] if p.dim() >= 2 else 1
            p.add_(perturb / fan_in ** 0.5 * torch.randn_like(p))
    return layer
