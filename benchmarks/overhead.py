"""A guide step against the model's own cost: ms per step of fit's step beside one gradient
of the model's log density, on Neal's funnel (D = 10 and 100), timed side by side.

    python -m benchmarks.overhead --out benchmarks/results/overhead.md
    python -m benchmarks.overhead --quick       # fewer rounds (smoke)

Rows, each timed in the same interleaved rounds (``_timing.time_interleaved``; CPU ms per step,
median over blocks, one torch thread):

* the model: Pyro's ``potential_fn`` from ``initialize_model`` and its gradient in the
  unconstrained space, eager and with ``jit_compile=True`` (what NUTS pays per gradient);
* one step of ``fit`` (its guard, clipping and restore point included; ``guarded_step`` with the
  loss and optimizer ``fit`` builds) for: the default AutoFlow on the fast path (the compiled
  ELBO, ``JointAdam``) and on the eager path (``elbo="trace"``, ``pyro.optim.Adam``),
  AutoNormal and Pyro's AutoIAFNormal on the fast path, and AutoFlow with 16 vectorized
  particles;
* the same architecture in pyro-nf and zuko (4 affine autoregressive layers in IAF direction,
  MADE [H, H], H = max(64, D)), both through ``fit``'s fast path (zuko through
  ``pyro.contrib.zuko.ZukoToPyro``), skipped without zuko (the ``bench`` extra).

Targets (issue "A guide step close to the model's own cost"): the default AutoFlow's step at
most 2x the model's eager gradient, the pyro-nf flow at most 1.0x zuko's, and 16 particles at
most 4x one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from pyro.infer.mcmc.util import initialize_model

import pyro_nf
from benchmarks._timing import adaptive_blocks, time_interleaved
from benchmarks.common import machine_info, machine_line, script_parser, write_report
from benchmarks.speed import zuko_guide
from pyro_nf.training import Engine, FitResult
from pyro_nf.training.engine import Guard
from pyro_nf.training.optim import JointAdam

try:
    import zuko
except ImportError:  # an optional benchmark dependency
    zuko = None


def funnel(dim: int) -> Callable[[], None]:
    """Neal's funnel: v ~ N(0, 3), x_i | v ~ N(0, exp(v / 2)), i < D."""

    def model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        with pyro.plate("d", dim - 1):
            pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)))

    return model


def packed_funnel(dim: int) -> Callable[[], None]:
    """The funnel over one packed latent ``z`` (v = z[0]): a flat site and a factor."""

    def model() -> None:
        z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), (dim,)))
        v, x = z[..., 0], z[..., 1:]
        pyro.factor("funnel", dist.Normal(0.0, 3.0).log_prob(v)
                    + dist.Normal(0.0, torch.exp(v / 2)[..., None]).log_prob(x).sum(-1))

    return model


def model_gradient(model: Callable, jit: bool) -> Callable[[], None]:
    """One potential energy and its gradient at the model's initial point."""
    init, potential_fn, _, _ = initialize_model(model, jit_compile=jit,
                                                skip_jit_warnings=True)
    params = {k: v.detach().requires_grad_() for k, v in init.items()}

    def step() -> None:
        torch.autograd.grad(potential_fn(params), list(params.values()))

    return step


def fit_step(model: Callable, guide: Callable, particles: int = 1, fast: bool = True
             ) -> Callable[[], None]:
    """``fit``'s step (:meth:`pyro_nf.Engine.step`) with the ELBO and optimizer ``fit``
    builds (fast: by default, the compiled ELBO and JointAdam; else eager Trace_ELBO and
    pyro.optim.Adam), after 5 untimed steps."""
    engine = Engine(model, guide, elbo=None if fast else "trace", num_particles=particles)
    result = FitResult(guide=guide)
    engine.prepare(1, result)  # the particles that work, the guide set up, the compiled ELBO
    optim = JointAdam({"lr": 1e-3}) if fast else pyro.optim.Adam({"lr": 1e-3})
    guard = Guard(max_bad_steps=10)

    def step() -> None:
        engine.step(optim, guard, 1.0, result)

    for _ in range(5):
        step()
    return step


def named(cls: type, name: str) -> type:
    """``cls`` under another name: an autoguide names its parameters after its class, and
    the guides timed side by side must not share the parameter store's entries."""
    return type(name, (cls,), {})


def steppers(dim: int) -> dict[str, Callable[[], None]]:
    model = funnel(dim)
    h = max(64, dim)
    iaf = [("iaf", {"hidden": [h, h], "activation": "relu"})] * 4
    flow = {label: named(pyro_nf.AutoFlow, f"AutoFlow{i}")
            for i, label in enumerate(["fast", "eager", "16", "iaf"])}
    out = {"model gradient (eager)": model_gradient(model, False),
           "model gradient (jit)": model_gradient(model, True),
           "AutoFlow fast": fit_step(model, flow["fast"](model)),
           "AutoFlow eager": fit_step(model, flow["eager"](model), fast=False),
           "AutoFlow fast, 16 particles": fit_step(model, flow["16"](model), 16),
           "AutoNormal fast": fit_step(model, AutoNormal(model)),
           "Pyro AutoIAFNormal fast": fit_step(model, AutoIAFNormal(model, hidden_dim=[h, h],
                                                                    num_transforms=4))}
    packed = packed_funnel(dim)  # one latent vector: the form ZukoToPyro samples
    out["pyro-nf iaf*4 fast"] = fit_step(packed, flow["iaf"](packed, flow=iaf, start=None))
    if zuko is not None:
        flow = zuko.flows.MAF(dim, transforms=4, hidden_features=(h, h))
        flow.transform = flow.transform.inv  # IAF form: one-pass sampling
        out["zuko iaf*4 fast"] = fit_step(packed, zuko_guide(flow))
    return out


def ratio(ms: dict[str, float], a: str, b: str) -> str:
    return f"{ms[a] / ms[b]:.2f}x" if a in ms and b in ms else "n/a"


def report(records: list[dict], info: dict) -> str:
    lines = ["# Guide step against the model's own gradient", "",
             "    python -m benchmarks.overhead --out benchmarks/results/overhead.md", "",
             machine_line(info), "", __doc__.split("\n\n", 2)[2].strip(), "",
             "| D | " + " | ".join(records[0]["ms"]) + " |",
             "|---|" + "---|" * len(records[0]["ms"])]
    for r in records:
        lines.append(f"| {r['D']} | " + " | ".join(f"{v:.2f}" for v in r["ms"].values()) + " |")
    lines += ["", "Ratios (target in brackets):", "",
              "| D | AutoFlow fast / model eager (<= 2) | AutoFlow fast / model jit | "
              "AutoFlow eager / fast | 16 particles / 1 (<= 4) | pyro-nf / zuko (<= 1.0) |",
              "|---|---|---|---|---|---|"]
    for r in records:
        ms = r["ms"]
        lines.append(f"| {r['D']} | {ratio(ms, 'AutoFlow fast', 'model gradient (eager)')} | "
                     f"{ratio(ms, 'AutoFlow fast', 'model gradient (jit)')} | "
                     f"{ratio(ms, 'AutoFlow eager', 'AutoFlow fast')} | "
                     f"{ratio(ms, 'AutoFlow fast, 16 particles', 'AutoFlow fast')} | "
                     f"{ratio(ms, 'pyro-nf iaf*4 fast', 'zuko iaf*4 fast')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "fewer, shorter rounds",
                           "markdown file; the JSON goes next to it (.json)")
    parser.add_argument("--dims", type=int, nargs="*", default=[10, 100])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = []
    for dim in args.dims:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        steps = steppers(dim)
        blocks = adaptive_blocks(steps, block_seconds=0.1 if args.quick else 0.3,
                                 max_block=50)
        times = time_interleaved(steps, rounds=3 if args.quick else 15, block=blocks)
        ms = {name: 1e3 * t.cpu_block_median for name, t in times.items()}
        records.append({"D": dim, "ms": ms})
        print(dim, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    info = machine_info()
    write_report(args.out, report(records, info), {"machine": info, "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
