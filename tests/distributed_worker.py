"""The data-parallel fits of tests/test_distributed.py: one rank of a job that ``torchrun`` (or
the test, with the same environment variables) starts.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py CASE OUT

writes each rank's parameters after the fit to ``OUT.<rank>``. ``CASE`` is a key of
:data:`CASES`, ``die`` (rank 1 stops at step 10) or ``disagree`` (rank 1 takes smaller
minibatches); a rank that fails writes its error to ``OUT.<rank>.error``.
"""

from __future__ import annotations

import os
import sys
import traceback

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuideList

import pyro_nf

N, BATCH, STEPS = 64, 8, 50


def logistic_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -0.5, 0.25], dtype=x.dtype)),
                        generator=g)
    return x, y


def logistic(x: torch.Tensor, y: torch.Tensor, batch: int | None = None) -> None:
    """A logistic regression whose likelihood plate is subsampled (global latents only)."""
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with pyro.plate("data", len(y), subsample_size=batch) as idx:
        pyro.sample("y", dist.Bernoulli(logits=x[idx] @ beta), obs=y[idx])


def hierarchical_data() -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    theta = 1.0 + torch.randn(N, generator=g, dtype=torch.float64)
    return (theta[:, None] + 0.5 * torch.randn(N, 4, generator=g, dtype=torch.float64),)


def hierarchical(y: torch.Tensor, batch: int | None = None) -> None:
    """Groups with a local theta each in a subsampled plate, and global mu, tau."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("groups", len(y), subsample_size=batch) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta.unsqueeze(-1), 0.5).to_event(1), obs=y[idx])


def hierarchical_guide(model) -> AutoGuideList:
    """AutoFlow over mu and tau, AmortizedFlow over every group's theta."""
    guide = AutoGuideList(model, create_plates=lambda y, batch=None: pyro.plate(
        "groups", len(y), subsample_size=batch))
    guide.append(pyro_nf.AutoFlow(poutine.block(model, hide=["theta"]), flow="iaf",
                                  start=None))
    guide.append(pyro_nf.AmortizedFlow(poutine.block(model, expose=["theta", "y", "groups"]),
                                       flow="planar*2", hidden=(16,)))
    return guide


CASES = {
    "logistic": (logistic, lambda model: pyro_nf.AutoFlow(model, flow="iaf", start=None),
                 logistic_data),
    "hierarchical": (hierarchical, hierarchical_guide, hierarchical_data),
}


def run(case: str, batch: int, steps: int = STEPS, **options) -> dict[str, torch.Tensor]:
    """Fit ``case`` in float64 with minibatches of ``batch`` and return the parameters."""
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    model, make_guide, data = CASES[case]
    guide = make_guide(model)
    pyro_nf.fit(model, guide, *data(), batch, num_steps=steps, seed=0, progress=False,
                **options)
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def main(case: str, out: str) -> None:
    rank = int(os.environ["RANK"])
    if case in CASES:
        torch.save(run(case, BATCH, distributed=True), f"{out}.{rank}")
        return

    def hook(step: int) -> None:
        if case == "die" and rank == 1 and step == 10:
            os._exit(3)  # a rank that dies without a word

    options = {"checkpoint": f"{out}.ckpt", "checkpoint_every": 5, "callback": hook}
    # "disagree": rank 1 takes minibatches of another size (a model that differs per rank)
    batch = BATCH // 2 if case == "disagree" and rank == 1 else BATCH
    try:
        run("logistic", batch, distributed=True, **options)
    except Exception:  # noqa: BLE001 - the test reads what each rank was told
        with open(f"{out}.{rank}.error", "w") as f:
            f.write(traceback.format_exc())
        raise


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
