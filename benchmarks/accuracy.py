"""Posterior accuracy against posteriordb's reference draws, for Pyro's guides and AutoFlow on
15 posteriors.

    python benchmarks/accuracy.py                          # all 15 posteriors, DEFAULT_GUIDES
    python benchmarks/accuracy.py --only kidiq-kidscore_momiq --guides "AutoFlow (default)"
    python benchmarks/accuracy.py --quick                  # 2 posteriors, 200 steps (smoke)
    python benchmarks/accuracy.py --out benchmarks/results/accuracy.md

Every guide gets the same budget on every posterior: ``pyro_nf.fit(model, guide, seed=0)``
with fit's own defaults (no num_steps: the step-size pilot, 8 particles, the self-stopping
schedule, and for guides over the packed latent the importance check that stops once the guide
is provably within 0.1 sd), float32, every guide started by its own default initialisation.
With ``--steps N`` every guide gets N steps instead (lr 0.005 decayed to 0.0005, 8 particles).
The Laplace variant (``--guides``) first finds the MAP (1000 Adam steps, lr 0.05; counted in
its time) and starts AutoFlow's base there with the Laplace covariance
(``AutoFlow.from_guide``). Particles are vectorised where the model vectorises. Then 4000
draws from the guide give PSIS k-hat (``pyro_nf.diagnose``) and, against the reference draws
(10 chains x 1000 long-run NUTS draws, flattened to named scalars): the worst standardized
mean error |mean - mean_ref| / sd_ref, the worst sd ratio (farthest from 1 in log terms), the
lowest 90% central-interval coverage, and the energy distance of
``pyro_nf.compare_posteriors`` on reference-standardized draws.

A posterior *passes* for a guide when k-hat < 0.7, every standardized mean error < 0.1 and
every sd ratio is within [0.9, 1.1]. Fitting wall time (seconds) is reported beside.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_nf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import posteriordb  # noqa: E402

MAP_STEPS = 1000


def laplace_warm_start(model):
    """AutoFlow (default flow) started from a Laplace approximation at the MAP (found by
    ``MAP_STEPS`` Adam steps at lr 0.05): the flow then only corrects the Gaussian."""
    laplace = AutoLaplaceApproximation(model)
    pyro_nf.fit(model, laplace, num_steps=MAP_STEPS, lr=0.05, seed=0, progress=False)
    return pyro_nf.AutoFlow.from_guide(model, laplace)


GUIDES = {
    "AutoNormal": lambda m: AutoNormal(m),
    "AutoMultivariateNormal": lambda m: AutoMultivariateNormal(m),
    "Pyro AutoIAFNormal": lambda m: AutoIAFNormal(m, num_transforms=2),
    "AutoFlow (default)": lambda m: pyro_nf.AutoFlow(m),
    "AutoFlow planar*8": lambda m: pyro_nf.AutoFlow(m, flow="planar*8"),
    "AutoFlow spline_coupling*4": lambda m: pyro_nf.AutoFlow(m, flow="spline_coupling*4"),
    "AutoFlow (default) from Laplace": laplace_warm_start,
    "AutoFlow (modes='auto')": lambda m: pyro_nf.AutoFlow(m, modes="auto"),
}
QUICK = ["kidiq-kidscore_momiq", "eight_schools-eight_schools_centered"]


def passes(row: dict) -> bool:
    return (row["khat"] < 0.7 and row["worst_std_mean_error"] < 0.1
            and 0.9 <= row["worst_sd_ratio"] <= 1.1)


def why(row: dict) -> str:
    """The criteria a failing row misses, with the offending parameter."""
    out = []
    if not row["khat"] < 0.7:
        out.append(f"k-hat {row['khat']:.2f}")
    if not row["worst_std_mean_error"] < 0.1:
        out.append(f"mean off by {row['worst_std_mean_error']:.2f} sd ({row['worst_mean_param']})")
    if not 0.9 <= row["worst_sd_ratio"] <= 1.1:
        out.append(f"sd ratio {row['worst_sd_ratio']:.2f} ({row['worst_sd_param']})")
    return "; ".join(out)


def _reference_draws(post) -> dict[str, np.ndarray]:
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in post.reference.items()}


LR, LR_DECAY = 0.005, 0.1


#: The guides of a run without ``--guides``: Pyro's three and the default AutoFlow.
DEFAULT_GUIDES = ["AutoNormal", "AutoMultivariateNormal", "Pyro AutoIAFNormal",
                  "AutoFlow (default)"]


def _fit(model, guide, steps: int, seed: int, lr: float = LR, lr_decay: float = LR_DECAY,
         defaults: bool = False):
    if defaults:  # the fit notices a model that does not vectorise by itself
        return pyro_nf.fit(model, guide, seed=seed, progress=False), True
    kwargs = dict(num_steps=steps, lr=lr, lr_decay=lr_decay, num_particles=8, seed=seed,
                  progress=False)
    try:
        return pyro_nf.fit(model, guide, vectorize_particles=True, **kwargs), True
    except (ValueError, RuntimeError, NotImplementedError):
        # models whose Python control flow does not vectorise (time series loops)
        pyro.clear_param_store()
        return pyro_nf.fit(model, guide, vectorize_particles=False, **kwargs), False


def evaluate(post, guide_name: str, steps: int, seed: int = 0, draws: int = 4000,
             lr: float = LR, lr_decay: float = LR_DECAY, auto: bool = False,
             check_modes: bool = False) -> dict:
    """One row; with ``auto`` ``fit`` runs without num_steps (its own defaults); with
    ``check_modes`` also the mode search (timed apart) and the modes the fitted guide misses."""
    pyro.clear_param_store()
    model = post.model
    t0 = time.perf_counter()  # a warm start's own fit counts
    guide = GUIDES[guide_name](model)
    result, vectorised = _fit(model, guide, steps, seed, lr, lr_decay,
                              defaults=auto)
    seconds = time.perf_counter() - t0
    idata = pyro_nf.to_inference_data(model, guide, num_samples=draws, fit_result=result)
    report = pyro_nf.diagnose(idata)
    ref = _reference_draws(post)
    table = pyro_nf.compare_posteriors({"guide": idata, "reference": ref},
                                       reference="reference", var_names=list(ref))
    rows = table.loc["guide"]
    log_ratio = np.abs(np.log(rows["sd_ratio"].to_numpy()))
    summary = table.attrs["summary"]
    energy = float(summary.loc["guide", "energy_distance"]) if "energy_distance" in \
        summary.columns else float("nan")
    out = {
        "posterior": post.name, "guide": guide_name, "dim": post.dim, "steps": result.steps,
        "stage": result.stage, "recommendation": result.recommendation,
        "anchor": getattr(guide, "anchor_info", {}).get("method"),
        "seconds": seconds, "vectorised_particles": vectorised,
        "final_elbo": (result.elbo_estimate if result.elbo_estimate is not None
                       else float(-np.mean(result.losses[-100:]))),
        "khat": float(report.khat),
        "worst_std_mean_error": float(rows["std_mean_error"].max()),
        "worst_mean_param": str(rows["std_mean_error"].idxmax()),
        "worst_sd_ratio": float(rows["sd_ratio"].to_numpy()[np.argmax(log_ratio)]),
        "worst_sd_param": str(rows.index[np.argmax(log_ratio)]),
        "min_coverage90": float(rows["coverage90"].min()),
        "energy_distance": energy,
    }
    out["passes"] = passes(out)
    out["why"] = "" if out["passes"] else why(out)
    if check_modes:
        t0 = time.perf_counter()
        search = pyro_nf.find_modes(model)
        out["search_seconds"] = time.perf_counter() - t0
        out["modes_found"] = len(search.modes)
        out["missed_modes"] = len(pyro_nf.diagnose(idata, modes=search).missed_modes)
    if result.components is not None:
        out["components"] = len(result.components)
    return out


def machine() -> str:
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch thread(s); python {platform.python_version()}, "
            f"torch {torch.__version__}, pyro {pyro.__version__}")


def markdown(results: list[dict], steps: int, notes: dict[str, str], lr: float = LR,
             lr_decay: float = LR_DECAY) -> str:
    guides = list(dict.fromkeys(r["guide"] for r in results))
    names = list(dict.fromkeys(r["posterior"] for r in results))
    lines = ["# Posterior accuracy against posteriordb reference draws", "",
             "    python benchmarks/accuracy.py --out benchmarks/results/accuracy.md", "",
             f"Machine: {machine()}.", "",
             (f"Budget per fit: {steps} steps, Adam lr {lr} decayed to {lr * lr_decay:g}, "
              "8 particles" if steps else "Budget per fit: `pyro_nf.fit(model, guide, "
              "seed=0)` with fit's own defaults (pilot, 8 particles, self-stopping schedule, "
              "importance check)") + ", seed 0, float32, each guide's default initialisation "
             "(the Laplace variant: MAP by 1000 Adam steps at lr 0.05, then "
             "AutoFlow.from_guide). Pass: k-hat < 0.7, every standardized mean error < 0.1, "
             "every sd ratio in [0.9, 1.1]. Cells: pass/FAIL, k-hat, worst |mean error| in "
             "sds, worst sd ratio.",
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
                  "`benchmarks/accuracy_from_log.py` (that run was killed before writing its "
                  "JSON): their coverage, energy distance and ELBO were not recorded (nan)."]
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
                cells.append(f"{'pass' if r['passes'] else 'FAIL'} {r['khat']:.2f} / "
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 posteriors, 200 steps")
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
    parser.add_argument("--out", default=None)
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
        post = posteriordb.load(name, dtype=torch.float64 if args.float64 else torch.float32)
        for g in guides:
            print(f"[{time.strftime('%H:%M:%S')}] {name} / {g} ...", flush=True)
            try:
                r = evaluate(post, g, steps, lr=args.lr, lr_decay=args.lr_decay,
                             auto=steps is None)
                r["dtype"] = "float64" if args.float64 else "float32"
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
    if args.out:  # the raw rows first, so that a table bug cannot lose a long run
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"machine": machine(), "steps": steps, "lr": args.lr, "lr_decay": args.lr_decay,
             "results": results}, indent=1))
    text = markdown(results, steps, notes, args.lr, args.lr_decay)
    print(text)
    if args.out:  # (the JSON is already there)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
