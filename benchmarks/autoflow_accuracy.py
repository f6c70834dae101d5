"""Accuracy of AutoFlow on two hard posteriors, against Pyro's guides, at one step budget.

    python benchmarks/autoflow_accuracy.py            # 5000 steps per guide (~10 min on 2 cores)
    python benchmarks/autoflow_accuracy.py --quick    # 100 steps, a smoke run
    python benchmarks/autoflow_accuracy.py --out benchmarks/results/autoflow_accuracy.md

Posteriors: eight schools, centered (reference: posteriordb's long NUTS draws of the same
posterior in its noncentered form), and Neal's funnel in 10 dimensions (v ~ N(0, 3),
x_i ~ N(0, exp(v/2)), i = 1..9; reference: v's exact N(0, 3^2) marginal).

Every guide gets the same budget: ``fit(num_steps, lr=0.005, num_particles=16, lr_decay=0.1,
seed)``. PSIS k-hat is estimated three times from 10,000 draws each (the median is reported,
with the spread); means and sds from 20,000 draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

import pyro_nf
from pyro_nf.diagnostics import from_posteriordb
from pyro_nf.models import eight_schools, neals_funnel

ROOT = Path(__file__).resolve().parents[1]
POSTERIORDB = ROOT.parent / "shared" / "posteriordb"
schools = eight_schools
funnel = neals_funnel


GUIDES = {
    "AutoNormal": lambda m: AutoNormal(m),
    "AutoMultivariateNormal": lambda m: AutoMultivariateNormal(m),
    "Pyro AutoIAFNormal (2 layers)": lambda m: AutoIAFNormal(m, num_transforms=2),
    f"AutoFlow (default: {pyro_nf.DEFAULT_FLOW})": lambda m: pyro_nf.AutoFlow(m),
}


def reference_moments() -> dict:
    out = {"funnel": {"v": (0.0, 3.0)}}
    ref = from_posteriordb(POSTERIORDB, "eight_schools-eight_schools_noncentered").posterior
    out["schools"] = {k: (float(ref[k].mean()), float(ref[k].std())) for k in ("mu", "tau")}
    return out


def evaluate(model, guide, draws: int = 20000) -> dict:
    khats = []
    for _ in range(3):
        idata = pyro_nf.to_inference_data(model, guide, num_samples=10000, batch_size=5000)
        khats.append(pyro_nf.diagnose(idata).khat)
    idata = pyro_nf.to_inference_data(model, guide, num_samples=draws, batch_size=5000)
    post = idata.posterior
    moments = {k: (float(post[k].mean()), float(post[k].std())) for k in ("mu", "tau", "v")
               if k in post}
    return {"khat": float(np.median(khats)), "khat_runs": [round(k, 3) for k in khats],
            "moments": moments}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps
    refs = reference_moments()
    rows = []
    for label, model in (("schools", schools), ("funnel", funnel)):
        for name, make in GUIDES.items():
            pyro.clear_param_store()
            guide = make(model)
            t0 = time.perf_counter()
            result = pyro_nf.fit(model, guide, num_steps=steps, lr=0.005, num_particles=16,
                                 seed=args.seed, progress=False)
            seconds = time.perf_counter() - t0
            with pyro.validation_enabled(False):
                row = {"posterior": label, "guide": name, "steps": steps,
                       "seconds": round(seconds, 1), "final_elbo": round(result.final_elbo, 3),
                       **evaluate(model, guide)}
            errs = {}
            for k, (m_ref, s_ref) in refs[label].items():
                m, s = row["moments"][k]
                errs[k] = {"mean_rel": (m - m_ref) / abs(m_ref) if m_ref else m - m_ref,
                           "sd_rel": s / s_ref - 1}
            row["errors"] = errs
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = ["| posterior | guide | k-hat (median of 3; runs) | means and sds vs reference | "
             "final ELBO | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        parts = []
        for k, (m, s) in r["moments"].items():
            m_ref, s_ref = refs[r["posterior"]][k]
            parts.append(f"{k} {m:.2f} +- {s:.2f} (ref {m_ref:.2f} +- {s_ref:.2f})")
        table.append(f"| {r['posterior']} | {r['guide']} | {r['khat']:.2f} "
                     f"({', '.join(f'{k:.2f}' for k in r['khat_runs'])}) | {'; '.join(parts)} | "
                     f"{r['final_elbo']:.2f} | {r['seconds']:.0f} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# AutoFlow accuracy\n\n{__doc__.split(chr(10), 2)[2]}\nSteps: {steps}, seed "
            f"{args.seed}. Machine: 2-core CPU, torch {torch.__version__}, pyro "
            f"{pyro.__version__}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
