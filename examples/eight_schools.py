"""A Bayesian workflow on eight schools (centered): AutoNormal vs AutoFlow vs NUTS vs the
posteriordb reference draws, with diagnostics, a comparison table and figures.

    python examples/eight_schools.py                 # 10,000 steps, 1000 + 1000 NUTS draws
    python examples/eight_schools.py --quick         # a smoke run (used by the tests)
    python examples/eight_schools.py --out out/eight_schools

The centered parametrization has a funnel between tau and theta: mean-field guides collapse
tau, a flow guide follows the funnel, and PSIS k-hat tells which fit to trust. The workflow is
the one ``pyro-nf demo --posterior schools`` runs (:func:`pyro_nf.demo.run_demo`), with a
larger NUTS budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_nf.demo import run_demo


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--nuts", type=int, default=1000, help="NUTS warm-up and draws")
    parser.add_argument("--out", type=Path, default=Path("out/eight_schools"))
    args = parser.parse_args(argv)
    result = run_demo(args.out, posterior="schools", quick=args.quick, steps=args.steps,
                      nuts_samples=args.nuts)
    return {f"khat_{name}": report.khat for name, report in result["reports"].items()}


if __name__ == "__main__":
    main()
