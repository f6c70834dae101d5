"""Milliseconds per SVI step: AutoFlow against Pyro's autoguides, same flow architecture.

    python -m benchmarks.guides                  # D in {10, 100, 1000}
    python -m benchmarks.guides --quick          # D = 10, few steps (smoke run)
    python -m benchmarks.guides --out benchmarks/results/guides.md

The model is a D-dimensional Gaussian latent with one observation per dimension. For each D
the guides are timed in one run, one after the other, with Trace_ELBO, one particle and Adam:
Pyro's AutoNormal and AutoMultivariateNormal (references), Pyro's AutoIAFNormal with K = 2
IAF layers of one ReLU hidden layer of width H against AutoFlow with the same two IAF layers
(their MADEs in natural and reversed order; AutoFlow adds its learnable loc/scale map), and Pyro's
AutoNormalizingFlow with 8 planar layers against AutoFlow("planar*8"). The ratio column is
AutoFlow / Pyro for the same architecture (below 1.0: pyro-nf is faster).
"""

from __future__ import annotations

import functools
import sys

import pyro.distributions.transforms as T
from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

from benchmarks._timing import make_model, time_guides
from benchmarks.common import BASELINE_GUIDES, command_line, machine_line, script_parser
from pyro_nf import AutoFlow


def _iterated(n, fn, dim):
    return T.ComposeTransformModule([fn(dim) for _ in range(n)])


def guides(model, dim: int, hidden: int) -> dict:
    iaf_spec = [("iaf", {"hidden": [hidden], "activation": "relu"})] * 2  # as Pyro's
    return {
        "Pyro AutoNormal": functools.partial(BASELINE_GUIDES["AutoNormal"], model),
        "Pyro AutoMultivariateNormal": functools.partial(
            BASELINE_GUIDES["AutoMultivariateNormal"], model),
        "Pyro AutoIAFNormal (iaf x2)": lambda: AutoIAFNormal(model, hidden_dim=[hidden],
                                                             num_transforms=2),
        "AutoFlow (iaf x2)": lambda: AutoFlow(model, flow=iaf_spec),
        "Pyro AutoNormalizingFlow (planar x8)": lambda: AutoNormalizingFlow(
            model, functools.partial(_iterated, 8, T.planar)),
        "AutoFlow (planar x8)": lambda: AutoFlow(model, flow="planar*8"),
    }


PAIRS = {"AutoFlow (iaf x2)": "Pyro AutoIAFNormal (iaf x2)",
         "AutoFlow (planar x8)": "Pyro AutoNormalizingFlow (planar x8)"}


def main(argv=None) -> int:
    parser = script_parser(__doc__, "D = 10, few steps")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--only", nargs="+", default=None,
                        help="substrings selecting guides, e.g. --only iaf")
    args = parser.parse_args(argv)
    dims = args.dims or ([10] if args.quick else [10, 100, 1000])
    steps = args.steps or (5 if args.quick else 100)
    lines = [f"# ms per SVI step; median of {steps} steps per guide, all guides of one D "
             "timed in interleaved blocks", "", machine_line(), "",
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
        args.out.write_text("\n".join(lines) + "\n\nCommand: "
                            f"`{command_line('benchmarks.guides', argv)}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
