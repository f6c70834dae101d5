"""Time to accuracy: the default AutoFlow against NUTS, CPU seconds on one machine.

    python -m benchmarks.time_to_accuracy --out benchmarks/results/time_to_accuracy.md
    python -m benchmarks.time_to_accuracy --quick          # tiny budgets (smoke run)

Posteriors: eight schools (centered) and diamonds from posteriordb (reference: the long-run
NUTS draws), and ``hier100``: a hierarchical normal model with 100 groups and 101 latent
dimensions whose posterior is Gaussian and known exactly (reference: 20,000 exact draws):

    mu ~ N(0, 5),  theta_j ~ N(mu, 1) (j = 1..100),  y_jk ~ N(theta_j, 2) (k = 1..5).

AutoFlow (float32): ``AutoFlow(model)`` and one ``pyro_nf.fit(model, guide, seed=0)`` with fit's
own defaults (no num_steps: it tunes its step size and stops by itself), checked against the
pass criterion of ``benchmarks.common`` (k-hat < 0.7, every standardized mean error < 0.1, every sd
ratio in [0.9, 1.1], from 2000 draws); the time to accuracy is the time of that fit, the
guide's set-up (its Gaussian anchor) included, the check excluded. With ``--budgets`` it fits
fixed budgets in turn instead (lr 0.005 decayed tenfold, 8 vectorized particles), the time
being that of the smallest budget that passes.

NUTS (Pyro, float64, ``jit_compile=True``, one chain): warm-up, then draws; the time to a bulk
ESS of 400 on every parameter is the warm-up time plus the sampling time scaled by
400 / (the lowest bulk ESS) -- measured when the run reaches 400, extrapolated (marked) when it
does not, since ESS grows linearly with the number of draws. The ratio column is NUTS time /
AutoFlow time (above 1: AutoFlow is faster). Times are CPU seconds of this process
(``time.process_time``, one torch thread), so that other jobs on the machine do not distort them;
on an idle machine they equal wall-clock seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS

import pyro_nf
from benchmarks import posteriordb
from benchmarks.common import (
    accuracy_row,
    machine_info,
    machine_line,
    reference_draws,
    script_parser,
    write_report,
)
from pyro_nf.utils import arviz_compat

G, K, TAU, SIGMA = 100, 5, 1.0, 2.0


def hier100_data(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    theta = 1.0 + TAU * torch.randn(G, generator=g, dtype=torch.float64)
    return (theta[:, None] + SIGMA * torch.randn(G, K, generator=g, dtype=torch.float64)).to(dtype)


def hier100_model(y: torch.Tensor):
    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
        with pyro.plate("groups", G):
            theta = pyro.sample("theta", dist.Normal(mu, TAU))
            with pyro.plate("obs", K, dim=-2):
                pyro.sample("y", dist.Normal(theta, SIGMA), obs=y.T)
    return model


def hier100_reference(y: torch.Tensor, draws: int = 20000) -> dict[str, np.ndarray]:
    """Exact Gaussian posterior of (mu, theta): precision P = A^T A / s^2 + prior precision."""
    y = y.double()
    n = G + 1
    prec = torch.zeros(n, n, dtype=torch.float64)
    prec[0, 0] = 1 / 25 + G / TAU ** 2
    prec[0, 1:] = prec[1:, 0] = -1 / TAU ** 2
    prec[1:, 1:] = torch.eye(G, dtype=torch.float64) * (1 / TAU ** 2 + K / SIGMA ** 2)
    b = torch.zeros(n, dtype=torch.float64)
    b[1:] = y.sum(1) / SIGMA ** 2
    cov = torch.linalg.inv(prec)
    mean = cov @ b
    eps = torch.randn(draws, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = mean + eps @ torch.linalg.cholesky(cov).T
    return {"mu": z[:, 0].numpy(), "theta": z[:, 1:].numpy()}


def problems(quick: bool) -> dict:
    out = {}
    names = ["eight_schools-eight_schools_centered"] + ([] if quick else ["diamonds-diamonds"])
    for name in names:
        f32 = posteriordb.load(name, dtype=torch.float32)
        f64 = posteriordb.load(name, dtype=torch.float64)
        out[name] = (f32.model, f64.model, reference_draws(f32), f32.dim)
    y32, y64 = hier100_data(torch.float32), hier100_data(torch.float64)
    out["hier100 (exact reference)"] = (hier100_model(y32), hier100_model(y64),
                                        hier100_reference(y64), G + 1)
    return out


def check(model, guide, ref: dict, draws: int = 2000) -> dict:
    """The pass criterion on ``draws`` draws of the fitted guide."""
    return accuracy_row(pyro_nf.to_inference_data(model, guide, num_samples=draws), ref)


def autoflow_time(model, ref: dict, budgets: tuple[int, ...] | None, seed: int = 0) -> dict:
    """``budgets=None``: one fit with ``pyro_nf.fit``'s own defaults (no num_steps: it tunes
    and stops itself), its time including the guide's set-up (the Gaussian anchor). Else fit
    from scratch with each budget in turn (lr 0.005 decayed to 0.0005 over the budget, 8
    vectorized particles) until one passes."""
    checking, last = 0.0, {}
    for steps in budgets or (None,):
        pyro.clear_param_store()
        guide = pyro_nf.AutoFlow(model)
        t0 = time.process_time()
        if steps is None:
            steps = pyro_nf.fit(model, guide, seed=seed, progress=False).steps
        else:
            pyro_nf.fit(model, guide, num_steps=steps, num_particles=8, seed=seed,
                        progress=False)
        fitting = time.process_time() - t0
        t1 = time.process_time()
        last = check(model, guide, ref)
        checking += time.process_time() - t1
        print(f"    AutoFlow {steps} steps, {fitting:.1f} s: k-hat {last['khat']:.2f}, mean err "
              f"{last['worst_std_mean_error']:.3f}, sd ratio {last['worst_sd_ratio']:.2f}",
              flush=True)
        if last["passes"]:
            break
    return {"seconds": fitting, "steps": steps, "check_seconds": checking, **last}


def nuts_time(model, params: list[str], warmup: int, samples: int, seed: int = 0) -> dict:
    pyro.set_rng_seed(seed)
    marks = {}

    def hook(kernel, params_, stage, i):
        if stage == "Sample" and "sample_start" not in marks:
            marks["sample_start"] = time.process_time()

    mcmc = MCMC(NUTS(model, jit_compile=True, ignore_jit_warnings=True), num_samples=samples,
                warmup_steps=warmup, disable_progbar=True, hook_fn=hook)
    t0 = time.process_time()
    mcmc.run()
    end = time.process_time()
    warm = marks.get("sample_start", end) - t0
    draws = {k: v.detach().double().numpy()[None] for k, v in mcmc.get_samples().items()
             if k in params}
    min_ess = float(min(float(arviz_compat.ess(v).min()) for v in draws.values()))
    sampling = end - t0 - warm
    needed = sampling * 400.0 / max(min_ess, 1e-9)
    return {"seconds": warm + min(sampling, needed), "warmup_seconds": warm,
            "sampling_seconds": sampling, "min_bulk_ess": min_ess,
            "extrapolated": min_ess < 400, "warmup": warmup, "samples": samples,
            "divergences": len(mcmc.diagnostics()["divergences"]["chain 0"])}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "tiny budgets", "markdown file; the JSON goes next to it")
    parser.add_argument("--budgets", type=int, nargs="*", default=None,
                        help="fixed step budgets tried in turn (default: one fit with fit's "
                             "own defaults, which stops by itself)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--only", nargs="*", default=None, help="posterior names (as printed)")
    parser.add_argument("--from-json", nargs="*", default=None,
                        help="tabulate earlier runs' rows (e.g. posteriors run in parallel)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.budgets, args.warmup, args.samples = [20, 40], 30, 30
    rows = []
    if args.from_json:
        rows = [r for p in args.from_json for r in json.loads(Path(p).read_text())["rows"]]
    for name, (m32, m64, ref, dim) in ({} if args.from_json else problems(args.quick)).items():
        if args.only and name not in args.only:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} (dim {dim})", flush=True)
        af = autoflow_time(m32, ref, tuple(args.budgets) if args.budgets else None)
        nu = nuts_time(m64, list(ref), args.warmup, args.samples)
        print(f"    NUTS: {nu['seconds']:.1f} s to bulk ESS 400 (min ESS {nu['min_bulk_ess']:.0f}"
              f"{', extrapolated' if nu['extrapolated'] else ''})", flush=True)
        rows.append({"posterior": name, "dim": dim, "autoflow": af, "nuts": nu,
                     "ratio": nu["seconds"] / af["seconds"] if af["passes"] else None})
    info = machine_info()
    lines = ["# Time to accuracy: default AutoFlow against NUTS", "",
             "    python -m benchmarks.time_to_accuracy --out "
             "benchmarks/results/time_to_accuracy.md", "",
             machine_line(info), "", __doc__.split("\n\n", 2)[2].strip(), "",
             "| posterior | dim | AutoFlow: s to pass (steps) | AutoFlow at stop: k-hat / mean "
             "err / sd ratio | NUTS: s to ESS 400 | NUTS min bulk ESS (draws) | NUTS / AutoFlow |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, n = r["autoflow"], r["nuts"]
        status = "" if a["passes"] else " (did not pass)"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "n/a (AutoFlow did not pass)"
        lines.append(
            f"| {r['posterior']} | {r['dim']} | {a['seconds']:.1f} ({a['steps']}){status} | "
            f"{a['khat']:.2f} / {a['worst_std_mean_error']:.3f} / {a['worst_sd_ratio']:.2f} | "
            f"{n['seconds']:.1f}{' (extrapolated)' if n['extrapolated'] else ''} | "
            f"{n['min_bulk_ess']:.0f} ({n['samples']} after {n['warmup']} warm-up) | {ratio} |")
    write_report(args.out, "\n".join(lines) + "\n", {"machine": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
