"""Accuracy of AutoFlow on two hard posteriors, against Pyro's guides, at one step budget.

    python -m benchmarks.autoflow_accuracy            # 5000 steps, seeds 0-2 (~40 min, 1 core)
    python -m benchmarks.autoflow_accuracy --quick    # 100 steps, one seed, a smoke run
    python -m benchmarks.autoflow_accuracy --out benchmarks/results/autoflow_accuracy.md
    python -m benchmarks.autoflow_accuracy --posteriors funnel --jsonl part.jsonl  # one half
    python -m benchmarks.autoflow_accuracy --from-jsonl a.jsonl b.jsonl --out ...   # merge
    python -m benchmarks.autoflow_accuracy --guides AutoFlow --jsonl new.jsonl  # some rows

Posteriors: eight schools, centered (reference: posteriordb's long NUTS draws of the same
posterior in its noncentered form), and Neal's funnel in 10 dimensions (v ~ N(0, 3),
x_i ~ N(0, exp(v/2)), i = 1..9; reference: v's exact N(0, 3^2) marginal).

Guides: the baseline four of ``benchmarks.common`` (Pyro's AutoNormal, AutoMultivariateNormal,
AutoIAFNormal with 2 layers, and ``AutoFlow(model)``) and two variants of the default AutoFlow.
Every guide gets the same budget: ``fit(num_steps, lr=0.005, num_particles=16, lr_decay=0.1,
seed)`` (the sticking-the-landing row: the same with ``elbo="stl"``; the ``centering='model'``
row: the default flow without the learned centering of hierarchical sites), repeated for several
seeds, because one fit's k-hat is a noisy figure: the fits of one guide differ from seed to
seed, and so do three k-hat estimates of one fit. PSIS k-hat is estimated three times from
10,000 draws each (the median is the fit's k-hat); means and sds from 20,000 draws. The table
gives every seed's k-hat, how many seeds reach k-hat < 0.5, and the worst mean error (in
reference sds) and sd ratio over the seeds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro

import pyro_nf
from benchmarks.common import BASELINE_GUIDES, machine_line, script_parser
from pyro_nf.diagnostics import from_posteriordb
from pyro_nf.models import eight_schools, neals_funnel

ROOT = Path(__file__).resolve().parents[1]
POSTERIORDB = ROOT.parent / "shared" / "posteriordb"
schools = eight_schools
funnel = neals_funnel


GUIDES = {
    **BASELINE_GUIDES,
    "AutoFlow (default), elbo='stl'": lambda m: pyro_nf.AutoFlow(m),
    "AutoFlow, centering='model' (the default before 2026-11-23)":
        lambda m: pyro_nf.AutoFlow(m, centering="model"),
}
#: fit options that differ from the common budget
FIT_OPTIONS = {"AutoFlow (default), elbo='stl'": {"elbo": "stl"}}


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


POSTERIORS = {"schools": schools, "funnel": funnel}


def run_one(label: str, name: str, steps: int, seed: int, refs: dict) -> dict:
    """Fit one guide to one posterior with one seed and evaluate it."""
    model = POSTERIORS[label]
    pyro.clear_param_store()
    guide = GUIDES[name](model)
    t0 = time.perf_counter()
    result = pyro_nf.fit(model, guide, num_steps=steps, lr=0.005, num_particles=16,
                         seed=seed, progress=False, **FIT_OPTIONS.get(name, {}))
    seconds = time.perf_counter() - t0
    with pyro.validation_enabled(False):
        row = {"posterior": label, "guide": name, "steps": steps, "seed": seed,
               "seconds": round(seconds, 1), "final_elbo": round(result.final_elbo, 3),
               "skipped_steps": result.skipped_steps, **evaluate(model, guide)}
    errs = {}
    for k, (m_ref, s_ref) in refs[label].items():
        m, s = row["moments"][k]
        # mean errors in reference sds (the funnel's reference mean is 0), sds relative
        errs[k] = {"mean_sd": (m - m_ref) / s_ref, "sd_rel": s / s_ref - 1}
    row["errors"] = errs
    return row


def table(rows: list[dict], refs: dict) -> str:
    """One line per posterior and guide, the seeds side by side."""
    lines = ["| posterior | guide | k-hat per seed | seeds with k-hat < 0.5 | worst mean error "
             "(sds) and sd ratio over seeds | median seconds |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["posterior"], r["guide"]), []).append(r)
    def position(key: tuple[str, str]) -> tuple[int, int]:  # rows merged from several runs
        label, name = key
        names = list(GUIDES)
        return (list(POSTERIORS).index(label) if label in POSTERIORS else len(POSTERIORS),
                names.index(name) if name in names else len(names))

    for (label, name), rs in sorted(groups.items(), key=lambda item: position(item[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        khats = ", ".join(f"{r['khat']:.2f}" for r in rs)
        ok = sum(r["khat"] < 0.5 for r in rs)
        parts = []
        for k in refs[label]:
            mean_err = max(abs(r["errors"][k]["mean_sd"]) for r in rs)
            ratios = [1 + r["errors"][k]["sd_rel"] for r in rs]
            worst = max(ratios, key=lambda x: abs(x - 1))
            parts.append(f"{k}: {mean_err:.2f} / {worst:.2f}")
        secs = float(np.median([r["seconds"] for r in rs]))
        lines.append(f"| {label} | {name} | {khats} | {ok} of {len(rs)} | {'; '.join(parts)} "
                     f"| {secs:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = script_parser(__doc__, "100 steps, one seed")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--posteriors", nargs="+", choices=sorted(POSTERIORS),
                        default=["schools", "funnel"])
    parser.add_argument("--guides", nargs="+", default=None, metavar="TEXT",
                        help="run only the guides whose label contains one of these texts")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="append every row to this file as it finishes")
    parser.add_argument("--from-jsonl", type=Path, nargs="+", default=None,
                        help="build the table from rows written by earlier runs")
    args = parser.parse_args(argv)
    if args.from_jsonl and args.guides:
        parser.error("--guides chooses the guides to fit; --from-jsonl tabulates every row of "
                     "its files (filter the files instead)")
    steps = 100 if args.quick else args.steps
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    refs = reference_moments()
    rows = []
    if args.from_jsonl:
        for path in args.from_jsonl:
            rows += [json.loads(line) for line in path.read_text().splitlines() if line]
        steps = rows[0]["steps"] if rows else steps
        seeds = sorted({r["seed"] for r in rows})
    else:
        names = [name for name in GUIDES
                 if args.guides is None or any(text in name for text in args.guides)]
        if not names:
            parser.error(f"--guides {args.guides} matches none of {list(GUIDES)}")
        for label in args.posteriors:
            for name in names:
                for seed in seeds:
                    row = run_one(label, name, steps, seed, refs)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.jsonl:
                        with args.jsonl.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    text = table(rows, refs)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# AutoFlow accuracy\n\n{__doc__.split(chr(10), 2)[2]}\nSteps: {steps}, seeds "
            f"{', '.join(map(str, seeds))}; the default flow is {pyro_nf.DEFAULT_FLOW!r}.\n\n"
            f"{machine_line()}\n\nReferences: {json.dumps(refs)} (mean, sd).\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
