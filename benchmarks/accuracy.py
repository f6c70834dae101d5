"""Posterior accuracy against posteriordb's reference draws, for Pyro's guides and AutoFlow on
15 posteriors.

    python -m benchmarks.accuracy                       # all 15 posteriors, DEFAULT_GUIDES
    python -m benchmarks.accuracy --only kidiq-kidscore_momiq --guides "AutoFlow (default)"
    python -m benchmarks.accuracy --quick               # 2 posteriors, 200 steps (smoke)
    python -m benchmarks.accuracy --out benchmarks/results/accuracy.md

Every guide gets the same budget on every posterior: ``pyro_nf.fit(model, guide, seed=0)``
with fit's own defaults (no num_steps: the step-size pilot, 8 particles, the self-stopping
schedule, and for guides over the packed latent the importance check that stops once the guide
is provably within 0.1 sd), float32, every guide started by its own default initialization.
With ``--steps N`` every guide gets N steps instead (lr 0.005 decayed to 0.0005, 8 particles).
The Laplace variant (``--guides``) first finds the MAP (1000 Adam steps, lr 0.05; counted in
its time) and starts AutoFlow's base there with the Laplace covariance
(``AutoFlow(model, start=FromGuide(laplace))``). Particles are vectorized where the model
vectorizes. Then 4000 draws from the guide give PSIS k-hat (``pyro_nf.diagnose``) and, against
the reference draws (10 chains x 1000 long-run NUTS draws, flattened to named scalars): the
worst standardized mean error |mean - mean_ref| / sd_ref, the worst sd ratio (farthest from 1
in log terms), the lowest 90% central-interval coverage, and the energy distance of
``pyro_nf.compare_posteriors`` on reference-standardized draws.

A posterior *passes* for a guide when k-hat < 0.7, every standardized mean error < 0.1 and
every sd ratio is within [0.9, 1.1] (``benchmarks.common.passes``). Fitting wall time (seconds)
is reported beside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoLaplaceApproximation

import pyro_nf
from benchmarks import posteriordb
from benchmarks.common import (
    BASELINE_GUIDES,
    CRITERION,
    accuracy_row,
    machine_info,
    machine_line,
    reference_draws,
    script_parser,
)
from pyro_nf.guides import FromGuide

MAP_STEPS = 1000


def laplace_warm_start(model):
    """AutoFlow (default flow) started from a Laplace approximation at the MAP (found by
    ``MAP_STEPS`` Adam steps at lr 0.05): the flow then only corrects the Gaussian."""
    laplace = AutoLaplaceApproximation(model)
    pyro_nf.fit(model, laplace, num_steps=MAP_STEPS, lr=0.05, seed=0, progress=False)
    return pyro_nf.AutoFlow(model, start=FromGuide(laplace))


GUIDES = {
    **BASELINE_GUIDES,
    "AutoFlow planar*8": lambda m: pyro_nf.AutoFlow(m, flow="planar*8"),
    "AutoFlow spline_coupling*4": lambda m: pyro_nf.AutoFlow(m, flow="spline_coupling*4"),
    "AutoFlow (default) from Laplace": laplace_warm_start,
    "AutoFlow (modes='auto')": lambda m: pyro_nf.AutoFlowMixture(m),
}
QUICK = ["kidiq-kidscore_momiq", "eight_schools-eight_schools_centered"]


LR, LR_DECAY = 0.005, 0.1


#: The guides of a run without ``--guides``: Pyro's three and the default AutoFlow.
DEFAULT_GUIDES = list(BASELINE_GUIDES)


def _fit(model, guide, steps: int, seed: int, lr: float = LR, lr_decay: float = LR_DECAY,
         defaults: bool = False):
    if defaults:  # the fit notices a model that does not vectorize by itself
        return pyro_nf.fit(model, guide, seed=seed, progress=False), True
    kwargs = dict(num_steps=steps, lr=lr, lr_decay=lr_decay, num_particles=8, seed=seed,
                  progress=False)
    try:
        return pyro_nf.fit(model, guide, vectorize_particles=True, **kwargs), True
    except (ValueError, RuntimeError, NotImplementedError):
        # models whose Python control flow does not vectorize (time series loops)
        pyro.clear_param_store()
        return pyro_nf.fit(model, guide, vectorize_particles=False, **kwargs), False


def _refined_row(result) -> dict:
    """Where the fit refined: the MCMC draws' ESS, R-hat, divergences and seconds."""
    r = result.refined
    if r is None:
        return {}
    return {"refine_ess": r.ess_bulk, "refine_rhat": r.rhat, "refine_converged": r.converged,
            "refine_divergences": r.divergences, "refine_seconds": r.seconds,
            "refine_gradients": r.gradient_evaluations}


def evaluate(post, guide_name: str, steps: int, seed: int = 0, draws: int = 4000,
             lr: float = LR, lr_decay: float = LR_DECAY, auto: bool = False,
             check_modes: bool = False) -> dict:
    """One row; with ``auto`` ``fit`` runs without num_steps (its own defaults); with
    ``check_modes`` also the mode search (timed apart) and the modes the fitted guide misses."""
    pyro.clear_param_store()
    model = post.model
    t0 = time.perf_counter()  # a warm start's own fit counts
    guide = GUIDES[guide_name](model)
    result, vectorized = _fit(model, guide, steps, seed, lr, lr_decay,
                              defaults=auto)
    seconds = time.perf_counter() - t0
    if result.source == "refined":  # the checks failed and the fit drew by MCMC
        idata = pyro_nf.from_mcmc(result.refined)
    else:
        idata = pyro_nf.to_inference_data(model, guide, num_samples=draws, fit_result=result)
    out = {
        "posterior": post.name, "guide": guide_name, "dim": post.dim, "steps": result.steps,
        "stage": result.stage, "recommendation": result.recommendation,
        "anchor": getattr(guide, "anchor_info", {}).get("method"),
        "seconds": seconds, "vectorised_particles": vectorized,
        "final_elbo": (result.elbo_estimate if result.elbo_estimate is not None
                       else float(-np.mean(result.losses[-100:]))),
        **accuracy_row(idata, reference_draws(post)),
        "verdict": result.verdict, "check_seconds": result.check_seconds,
        "checks": [str(c) for c in result.checks],
        **_refined_row(result),
    }
    if check_modes and result.source == "flow":
        t0 = time.perf_counter()
        search = pyro_nf.find_modes(model)
        out["search_seconds"] = time.perf_counter() - t0
        out["modes_found"] = len(search.modes)
        out["missed_modes"] = len(pyro_nf.diagnose(idata, modes=search).missed_modes)
    if result.components is not None:
        out["components"] = len(result.components)
    return out


def markdown(results: list[dict], steps: int, notes: dict[str, str], lr: float = LR,
             lr_decay: float = LR_DECAY, info: dict | None = None) -> str:
    guides = list(dict.fromkeys(r["guide"] for r in results))
    names = list(dict.fromkeys(r["posterior"] for r in results))
    lines = ["# Posterior accuracy against posteriordb reference draws", "",
             "    python -m benchmarks.accuracy --out benchmarks/results/accuracy.md", "",
             machine_line(info), "",
             (f"Budget per fit: {steps} steps, Adam lr {lr} decayed to {lr * lr_decay:g}, "
              "8 particles" if steps else "Budget per fit: `pyro_nf.fit(model, guide, "
              "seed=0)` with fit's own defaults (pilot, 8 particles, self-stopping schedule, "
              "importance check)") + ", seed 0, float32, each guide's default initialization "
             "(the Laplace variant: MAP by 1000 Adam steps at lr 0.05, then "
             f"AutoFlow(model, start=FromGuide(laplace))). Pass: {CRITERION}. Cells: "
             "pass/FAIL, k-hat (\"refined\": the fit's checks failed and it drew by MCMC in "
             "the flow's coordinates, whose draws are judged), worst "
             "|mean error| in sds, worst sd ratio.",
             "",
             "## Passes per guide", "",
             f"| guide | passes (of {len(names)}) | median seconds |", "|---|---|---|"]
    for g in guides:
        rs = [r for r in results if r["guide"] == g]
        ok = sum(r["passes"] for r in rs)
        secs = [r["seconds"] for r in rs if "seconds" in r]
        lines.append(f"| {g} | {ok} | {np.median(secs) if secs else float('nan'):.0f} |")
    if any(r.get("from_log") for r in results):
        lines += ["", "Rows marked * were rebuilt from their run's progress log by "
                  "`python -m benchmarks.accuracy_from_log` (that run was killed before "
                  "writing its JSON): their coverage, energy distance and ELBO were not "
                  "recorded (nan)."]
    wide = {r["posterior"] for r in results if r.get("dtype") == "float64"}
    lines += ["", "## Per posterior", "", "| posterior | dim | " + " | ".join(guides) + " |",
              "|---|---|" + "---|" * len(guides)]
    for n in names:
        cells = []
        for g in guides:
            r = next((r for r in results if r["posterior"] == n and r["guide"] == g), None)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("error")
            else:
                khat = "refined" if r.get("source") == "refined" else f"{r['khat']:.2f}"
                cells.append(f"{'pass' if r['passes'] else 'FAIL'} {khat} / "
                             f"{r['worst_std_mean_error']:.2f} / {r['worst_sd_ratio']:.2f}"
                             f"{'*' if r.get('from_log') else ''}")
        dim = next(r.get("dim", "") for r in results if r["posterior"] == n)
        label = f"{n} (float64)" if n in wide else n
        lines.append(f"| {label} | {dim} | " + " | ".join(cells) + " |")
    lines += ["", "## Why each failure of the default AutoFlow fails", "",
              "| posterior | criteria missed | diagnosis and fix |", "|---|---|---|"]
    for r in results:
        if r["guide"] == "AutoFlow (default)" and not r.get("passes", False):
            lines.append(f"| {r['posterior']} | {r.get('why') or r.get('error', '')} | "
                         f"{notes.get(r['posterior'], 'see the notes below')} |")
    lines += ["", "## All numbers", "",
              "| posterior | guide | k-hat | worst mean err (param) | worst sd ratio (param) | "
              "min cov90 | energy dist | ELBO | s | vec |", "|---" * 10 + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['posterior']} | {r['guide']} | error: {r['error']} "
                         "| | | | | | | |")
            continue
        lines.append(
            f"| {r['posterior']} | {r['guide']} | {r['khat']:.2f} | "
            f"{r['worst_std_mean_error']:.3f} ({r['worst_mean_param']}) | "
            f"{r['worst_sd_ratio']:.2f} ({r['worst_sd_param']}) | {r['min_coverage90']:.2f} | "
            f"{r['energy_distance']:.4f} | {r['final_elbo']:.2f} | {r['seconds']:.0f} | "
            f"{'y' if r['vectorised_particles'] else 'n'} |")
    return "\n".join(lines) + "\n"


def load_in_float32_or_64(name: str, float64: bool = False
                          ) -> tuple[posteriordb.Posterior | None, str, str | None]:
    """``(posterior, dtype, problem)``: the posterior in float32 (float64 with ``float64``),
    or in float64 where float32 cannot even trace it (gp_pois_regr: a 1e-10 kernel jitter
    below float32's resolution, a Cholesky that fails at a prior draw); where neither loads,
    ``(None, "", the one-line reason)``."""
    problems = []
    for dtype in ([torch.float64] if float64 else [torch.float32, torch.float64]):
        label = str(dtype).removeprefix("torch.")
        try:
            return posteriordb.load(name, dtype=dtype), label, None
        except Exception as err:  # noqa: BLE001 - a posterior that cannot load is a row
            reason = f"{type(err).__name__}: {next(iter(str(err).splitlines()), '')[:120]}"
            problems.append(f"{label}: {reason}")
            print(f"    {name} does not load in {label} ({reason})", flush=True)
    return None, "", "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "2 posteriors, 200 steps",
                           "markdown report; the JSON (and .jsonl, row by row) beside it")
    parser.add_argument("--steps", type=int, default=None,
                        help="a fixed budget for every guide (default: fit's own defaults)")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--lr-decay", type=float, default=LR_DECAY,
                        help="final lr / initial lr (exponential decay)")
    parser.add_argument("--only", nargs="*", default=None, help="posterior names")
    parser.add_argument("--guides", nargs="*", default=None, help="guide names")
    parser.add_argument("--notes", default=None,
                        help="JSON file: posterior -> diagnosis of the default's failure")
    parser.add_argument("--from-json", nargs="*", default=None,
                        help="tabulate the results of earlier runs (e.g. two halves run in "
                             "parallel) instead of fitting")
    parser.add_argument("--float64", action="store_true",
                        help="fit in float64 (gp_pois_regr: its 1e-10 kernel jitter is below "
                             "float32's resolution)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.from_json:
        runs = [json.loads(Path(p).read_text()) for p in args.from_json]
        order = {n: i for i, n in enumerate(posteriordb.NAMES)}
        latest = {(r["posterior"], r["guide"]): r for run in runs for r in run["results"]}
        results = sorted(latest.values(),  # a later file's row replaces an earlier one
                         key=lambda r: (order.get(r["posterior"], 99), list(GUIDES).index(
                             r["guide"])))
        args.steps, args.lr, args.lr_decay = runs[0]["steps"], runs[0]["lr"], runs[0]["lr_decay"]
        notes = json.loads(Path(args.notes).read_text()) if args.notes else {}
        return _write(results, args.steps, notes, args)
    names = args.only or (QUICK if args.quick else posteriordb.NAMES)
    guides = args.guides or DEFAULT_GUIDES
    unknown = [g for g in guides if g not in GUIDES]
    if unknown:
        parser.error(f"unknown guide(s) {unknown}; known: {list(GUIDES)}")
    steps = 200 if args.quick else args.steps
    notes = json.loads(Path(args.notes).read_text()) if args.notes else {}
    results = []
    for name in names:
        post, dtype, problem = load_in_float32_or_64(name, args.float64)
        for g in guides:
            print(f"[{time.strftime('%H:%M:%S')}] {name} / {g} ...", flush=True)
            if post is None:  # neither dtype loads: a row with the reason, not a crash
                results.append({"posterior": name, "guide": g, "passes": False,
                                "error": problem})
                continue
            try:
                try:
                    r = evaluate(post, g, steps, lr=args.lr, lr_decay=args.lr_decay,
                                 auto=steps is None)
                except Exception as err:
                    if dtype != "float32" or "float64" not in str(err):
                        raise
                    # the library's own float32 error says to switch: run it in float64
                    print(f"    float32 fails ({type(err).__name__}); in float64", flush=True)
                    post, dtype, _ = load_in_float32_or_64(name, float64=True)
                    r = evaluate(post, g, steps, lr=args.lr, lr_decay=args.lr_decay,
                                 auto=steps is None)
                r["dtype"] = dtype
                print(f"    {'pass' if r['passes'] else 'FAIL'} k-hat {r['khat']:.2f}, mean err "
                      f"{r['worst_std_mean_error']:.3f}, sd ratio {r['worst_sd_ratio']:.2f}, "
                      f"{r['seconds']:.0f} s {r['why']}", flush=True)
            except Exception as err:  # a guide that cannot fit a model is a row, not a crash
                traceback.print_exc()
                r = {"posterior": name, "guide": g, "dim": post.dim, "passes": False,
                     "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
            results.append(r)
            if args.out:  # row by row, so that a killed run keeps what it measured
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with Path(args.out).with_suffix(".jsonl").open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
    return _write(results, steps, notes, args)


def _write(results: list[dict], steps: int, notes: dict, args: argparse.Namespace) -> int:
    info = machine_info()
    if args.out:  # the raw rows first, so that a table bug cannot lose a long run
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"machine": info, "steps": steps, "lr": args.lr, "lr_decay": args.lr_decay,
             "results": results}, indent=1))
    text = markdown(results, steps, notes, args.lr, args.lr_decay, info)
    print(text)
    if args.out:  # (the JSON is already there)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
