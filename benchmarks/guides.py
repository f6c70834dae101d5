"""Milliseconds per SVI step: AutoFlow against Pyro's autoguides, same flow architecture.

    python benchmarks/guides.py                  # D in {10, 100, 1000}
    python benchmarks/guides.py --quick          # D = 10, few steps (smoke run)
    python benchmarks/guides.py --out benchmarks/results/guides.md

The model is a D-dimensional Gaussian latent with one observation per dimension. For each D
the guides are timed in one run, one after the other, with Trace_ELBO, one particle and Adam:
Pyro's AutoNormal and AutoMultivariateNormal (references), Pyro's AutoIAFNormal with K = 2
IAF layers of one ReLU hidden layer of width H against AutoFlow with the same two IAF layers (and
a reversal between them, which Pyro's random-order MADEs do not need), and Pyro's
AutoNormalizingFlow with 8 planar layers against AutoFlow("planar*8"). The ratio column is
AutoFlow / Pyro for the same architecture (below 1.0: pyro-nf is faster).
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)

from pyro_nf import AutoFlow


def make_model(dim: int):
    data = torch.randn(dim)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)

    return model


def _iterated(n, fn, dim):
    return T.ComposeTransformModule([fn(dim) for _ in range(n)])


def guides(model, dim: int, hidden: int) -> dict:
    iaf_spec = [("iaf", {"hidden": [hidden], "activation": "relu"})] * 2  # as Pyro's
    return {
        "Pyro AutoNormal": lambda: AutoNormal(model),
        "Pyro AutoMultivariateNormal": lambda: AutoMultivariateNormal(model),
        "Pyro AutoIAFNormal (iaf x2)": lambda: AutoIAFNormal(model, hidden_dim=[hidden],
                                                             num_transforms=2),
        "AutoFlow (iaf x2)": lambda: AutoFlow(model, flow=iaf_spec),
        "Pyro AutoNormalizingFlow (planar x8)": lambda: AutoNormalizingFlow(
            model, functools.partial(_iterated, 8, T.planar)),
        "AutoFlow (planar x8)": lambda: AutoFlow(model, flow="planar*8"),
    }


PAIRS = {"AutoFlow (iaf x2)": "Pyro AutoIAFNormal (iaf x2)",
         "AutoFlow (planar x8)": "Pyro AutoNormalizingFlow (planar x8)"}


def _svi(model, make_guide):
    guide = make_guide()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(5):  # warm-up and lazy set-up
        svi.step()
    return svi


def time_guides(model, makers: dict, steps: int, rounds: int = 10) -> dict[str, float]:
    """Median seconds per step of each guide, timed in interleaved blocks (round-robin over
    the guides, ``rounds`` blocks of ``steps / rounds`` steps each) so that a load change on
    the machine hits every guide alike."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svis = {name: _svi(model, make) for name, make in makers.items()}
    times: dict[str, list[float]] = {name: [] for name in makers}
    block = max(1, steps // rounds)
    for _ in range(rounds):
        for name, svi in svis.items():
            for _ in range(block):
                t0 = time.perf_counter()
                svi.step()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="+", default=None,
                        help="substrings selecting guides, e.g. --only iaf")
    args = parser.parse_args(argv)
    dims = args.dims or ([10] if args.quick else [10, 100, 1000])
    steps = args.steps or (5 if args.quick else 100)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
               f"{torch.__version__}, pyro {pyro.__version__}")
    lines = [f"# ms per SVI step ({machine}); median of {steps} steps per guide, all guides "
             "of one D timed in interleaved blocks", "",
             "| D | guide | ms/step | AutoFlow / Pyro, same flow |", "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for dim in dims:
        model = make_model(dim)
        hidden = 3 * dim + 1  # Pyro AutoIAFNormal's default width
        makers = guides(model, dim, hidden)
        if args.only:
            makers = {k: v for k, v in makers.items() if any(o in k for o in args.only)}
        ms = {k: 1e3 * v for k, v in time_guides(model, makers, steps).items()}
        for name in makers:
            ratio = f"{ms[name] / ms[PAIRS[name]]:.2f}x" if PAIRS.get(name) in ms else ""
            line = f"| {dim} | {name} | {ms[name]:.2f} | {ratio} |"
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n\nCommand: `python benchmarks/guides.py`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
