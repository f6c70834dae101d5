"""Large data sets: the default AutoFlow on a subsampled likelihood against NumPyro's NUTS.

    python -m benchmarks.big_data --out benchmarks/results/big_data.md
    python -m benchmarks.big_data --quick          # N = 1000 (smoke run)

Posteriors (data simulated with a fixed seed, float32):

* ``logistic``: logistic regression, D = 20 standard normal features and an intercept,
  b ~ N(0, 1), a ~ N(0, 5), at N = 10^4, 10^5 and 10^6 rows;
* ``poisson``: Poisson regression with a log link, D = 5 features and an intercept,
  b ~ N(0, 1), a ~ N(0, 5), at N = 10^6 rows;
* ``hier_logistic``: hierarchical logistic regression, N = 10^5 rows in 10^4 groups of 10,
  D = 3 features, group intercepts a_j ~ N(mu, tau), mu ~ N(0, 5), tau ~ HalfNormal(1). NumPyro
  samples the 10^4 intercepts (non-centered); the Pyro model integrates each out by
  Gauss-Hermite quadrature (24 nodes), so AutoFlow fits the five globals, a minibatch is
  ``--batch`` / 10 groups, and the criterion and the ESS are over the globals;
* ``student_t`` (in the code, not in the table: NumPyro's reference run at 10^6 rows took more
  than 45 minutes on this machine): robust regression, y ~ StudentT(nu, a + x b, sigma).
  (The models: ``benchmarks/big_data_models.py``.)

AutoFlow: the Pyro model draws a minibatch of ``--batch`` rows in its plate
(``pyro.plate("data", N, subsample_size=B)``); ``AutoFlow(model)`` and one
``pyro_nf.fit(model, guide, X, y, batch=B, seed=0)`` with fit's own defaults: the Gaussian
anchor and every importance check read all N rows in chunks (``pyro_nf.densities.full_data``), the
steps read minibatches. Its time is wall seconds from the guide's construction to the end of
``fit``. The criterion: on 4000 guide draws, every mean within 0.1 reference sd, every sd within
10% of the reference's, and PSIS k-hat < 0.7 from a full-data importance check of 1000 draws.

NumPyro (JAX on CPU): NUTS, one chain, ``--warmup`` warm-up iterations then ``--samples``
draws, the model reading all rows at every gradient; its time is wall seconds of warm-up
(compilation included) plus the sampling time to a bulk ESS of 400 on every scalar (scaled by
400 / the lowest bulk ESS, as ESS grows linearly with the draws; marked when extrapolated).
Reference draws: a longer NumPyro run (``--reference-draws`` draws after as many warm-up
iterations, seed 1) cached under ``out/big_data/``. Pyro's NUTS runs where ``--pyro-nuts-max``
rows allow (it reads every row at every gradient in eager PyTorch).

The ratio column is NumPyro time / AutoFlow time (above 1: AutoFlow is faster).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.big_data_models import (
    LOCAL_SITES,
    ROWS_PER_ELEMENT,
    numpyro_model,
    pyro_model,
    scalars,
    simulate,
)
from benchmarks.common import machine_info, machine_line, passes, script_parser, why, write_report

CACHE = Path("out/big_data")


# ------------------------------------------------------------------------------ NumPyro NUTS
def numpyro_nuts(name: str, data: dict, warmup: int, samples: int, seed: int) -> dict:
    """One NUTS chain: its draws, and the wall seconds to a bulk ESS of 400 on every scalar."""
    import jax
    from numpyro.infer import MCMC, NUTS

    from pyro_nf.utils import arviz_compat

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(numpyro_model(name)), num_warmup=warmup, num_samples=samples,
                progress_bar=False)
    key = jax.random.PRNGKey(seed)
    mcmc.warmup(key, data["x"], data["y"])
    jax.block_until_ready(mcmc.last_state)
    warm = time.perf_counter() - t0
    mcmc.run(mcmc.post_warmup_state.rng_key, data["x"], data["y"])
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples().items()
             if k not in LOCAL_SITES.get(name, ())}
    sampling = time.perf_counter() - t0 - warm
    min_ess = min(float(np.min(arviz_compat.ess(v[None]))) for v in scalars(draws).values())
    needed = sampling * 400.0 / max(min_ess, 1e-9)
    return {"seconds": warm + min(sampling, needed), "warmup_seconds": warm,
            "sampling_seconds": sampling, "min_bulk_ess": min_ess,
            "extrapolated": min_ess < 400, "draws": draws}


def reference(name: str, n: int, data: dict, draws: int) -> dict[str, np.ndarray]:
    """Reference draws of ``name`` at ``n`` rows: a NumPyro run of ``draws`` after as many
    warm-up iterations (seed 1), cached under out/big_data/."""
    path = CACHE / f"reference_{name}_{n}_{draws}.npz"
    if path.exists():
        with np.load(path) as saved:
            return dict(saved)
    run = numpyro_nuts(name, data, draws, draws, seed=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **run["draws"])
    return run["draws"]


# ------------------------------------------------------------------------------ Pyro NUTS
def pyro_nuts(name: str, data: dict, warmup: int, samples: int, seed: int) -> dict:
    """Pyro's NUTS (one chain, jit) on all rows: its draws and seconds to a bulk ESS of 400."""
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    from pyro_nf.utils import arviz_compat

    x, y = (torch.from_numpy(data[k]) for k in ("x", "y"))
    pyro.set_rng_seed(seed)
    marks: dict[str, float] = {}

    def hook(kernel, params, stage, i):
        if stage == "Sample" and "sample" not in marks:
            marks["sample"] = time.perf_counter()

    mcmc = MCMC(NUTS(pyro_model(name), jit_compile=True, ignore_jit_warnings=True),
                num_samples=samples, warmup_steps=warmup, disable_progbar=True, hook_fn=hook)
    t0 = time.perf_counter()
    mcmc.run(x, y)
    end = time.perf_counter()
    warm = marks.get("sample", end) - t0
    draws = {k: v.detach().numpy() for k, v in mcmc.get_samples().items()}
    min_ess = min(float(np.min(arviz_compat.ess(v[None]))) for v in scalars(draws).values())
    sampling = end - t0 - warm
    needed = sampling * 400.0 / max(min_ess, 1e-9)
    return {"seconds": warm + min(sampling, needed), "min_bulk_ess": min_ess,
            "extrapolated": min_ess < 400, "draws": draws}


# ------------------------------------------------------------------------------ AutoFlow
def autoflow(name: str, data: dict, batch: int, seed: int = 0, max_steps: int | None = None
             ) -> tuple[dict, Any]:
    """The default AutoFlow and ``fit`` on minibatches: its wall seconds, and the fit."""
    import pyro
    import torch

    import pyro_nf

    x, y = (torch.from_numpy(data[k]) for k in ("x", "y"))
    model = pyro_model(name)
    pyro.clear_param_store()
    t0 = time.perf_counter()
    guide = pyro_nf.AutoFlow(model)
    result = pyro_nf.fit(model, guide, x, y, model_kwargs={"batch": batch}, seed=seed,
                         progress=False,
                         max_steps=max_steps)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "steps": result.steps, "stage": result.stage,
           "stop": result.stop_reason}
    return out, (model, guide, (x, y), {"batch": batch})


def criterion(fitted: tuple, ref: dict[str, np.ndarray], draws: int = 4000,
              check_draws: int = 1000) -> dict:
    """Means within 0.1 reference sd, sds within 10%, k-hat of a full-data importance check."""
    import torch

    from pyro_nf.densities.logdensity import LogDensity
    from pyro_nf.training.checks import importance_check

    model, guide, args, kwargs = fitted
    with torch.no_grad():
        q = guide.get_posterior(*args, **kwargs)
        torch.manual_seed(2)
        log_density = LogDensity(model, *args, **kwargs)
        values = log_density.unpack(q.sample((draws,)))
        khat = importance_check(log_density, q, num=check_draws).khat
    mine = scalars({k: v.numpy() for k, v in values.items()})
    theirs = scalars(ref)
    errors = {k: abs(mine[k].mean() - theirs[k].mean()) / theirs[k].std() for k in theirs}
    ratios = {k: mine[k].std() / theirs[k].std() for k in theirs}
    worst_sd = max(ratios, key=lambda k: abs(np.log(ratios[k])))
    row = {"khat": float(khat), "worst_std_mean_error": float(max(errors.values())),
           "worst_mean_param": max(errors, key=errors.get),
           "worst_sd_ratio": float(ratios[worst_sd]), "worst_sd_param": worst_sd}
    row["passes"] = bool(passes(row))
    row["why"] = "" if row["passes"] else why(row)
    return row


# ------------------------------------------------------------------------------ the run
def cases(quick: bool) -> list[tuple[str, int]]:
    if quick:
        return [("logistic", 1000)]
    return [("logistic", 10 ** 4), ("logistic", 10 ** 5), ("logistic", 10 ** 6),
            ("poisson", 10 ** 6), ("hier_logistic", 10 ** 5)]


def have_numpyro() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("numpyro", "jax"))


def one_case(name: str, n: int, args) -> dict:
    data = simulate(name, n)
    row: dict[str, Any] = {"posterior": name, "rows": n, "batch": args.batch}
    if have_numpyro() and not args.no_numpyro:
        ref = reference(name, n, data, args.reference_draws)
        row["reference"] = f"NumPyro NUTS, {args.reference_draws} draws"
        nuts = numpyro_nuts(name, data, args.warmup, args.samples, seed=0)
        row["numpyro"] = {k: v for k, v in nuts.items() if k != "draws"}
        print(f"  NumPyro NUTS: {nuts['seconds']:.1f} s (min bulk ESS {nuts['min_bulk_ess']:.0f})",
              flush=True)
    else:  # the smoke run without the bench extra: Pyro's NUTS gives the reference
        ref = pyro_nuts(name, data, args.warmup, args.reference_draws, seed=1)["draws"]
        row["reference"] = f"Pyro NUTS, {args.reference_draws} draws (without NumPyro)"
    if n <= args.pyro_nuts_max:
        pyro = pyro_nuts(name, data, args.warmup, args.samples, seed=0)
        row["pyro_nuts"] = {k: v for k, v in pyro.items() if k != "draws"}
        print(f"  Pyro NUTS: {pyro['seconds']:.1f} s", flush=True)
    batch = max(1, args.batch // ROWS_PER_ELEMENT.get(name, 1))  # groups for hier_logistic
    timing, fitted = autoflow(name, data, batch, max_steps=args.max_steps)
    row["autoflow"] = {**timing, **criterion(fitted, ref)}
    a = row["autoflow"]
    print(f"  AutoFlow: {a['seconds']:.1f} s ({a['stage']}, {a['steps']} steps), k-hat "
          f"{a['khat']:.2f}, mean err {a['worst_std_mean_error']:.3f}, sd ratio "
          f"{a['worst_sd_ratio']:.2f}{'' if a['passes'] else ' FAILS: ' + a['why']}", flush=True)
    return row


def _seconds(part: dict | None) -> str:
    if not part:
        return "not run"
    mark = " (extrapolated)" if part.get("extrapolated") else ""
    return f"{part['seconds']:.1f}{mark}"


def table(rows: list[dict], info: dict, argv: list[str] | None) -> str:
    lines = ["# Large data sets: AutoFlow on minibatches against NumPyro's NUTS", "",
             "    python -m benchmarks.big_data " + " ".join(argv or []), "",
             machine_line(info), "", __doc__.split("\n\n", 2)[2].strip(), "",
             "| posterior | N | AutoFlow s | stopped | k-hat | worst mean err (sd) | worst sd "
             "ratio | passes | NumPyro NUTS s to ESS 400 | Pyro NUTS s | NumPyro / AutoFlow |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, nuts = r["autoflow"], r.get("numpyro")
        ratio = f"{nuts['seconds'] / a['seconds']:.1f}x" if nuts else ""
        lines.append(
            f"| {r['posterior']} | {r['rows']:.0e} | {a['seconds']:.1f} | {a['stage']}, "
            f"{a['steps']} steps | {a['khat']:.2f} | {a['worst_std_mean_error']:.3f} "
            f"({a['worst_mean_param']}) | {a['worst_sd_ratio']:.2f} ({a['worst_sd_param']}) | "
            f"{'yes' if a['passes'] else 'no: ' + a['why']} | {_seconds(nuts)} | "
            f"{_seconds(r.get('pyro_nuts'))} | {ratio} |")
    lines += ["", "Reference draws: " + "; ".join(
        sorted({f"{r['reference']}" for r in rows})) + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Seconds against N (log-log) for the logistic regression, both methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["posterior"] == "logistic"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ns = [r["rows"] for r in mine]
    ax.plot(ns, [r["autoflow"]["seconds"] for r in mine], "o-", label="AutoFlow, fit (minibatch)")
    if all("numpyro" in r for r in mine):
        ax.plot(ns, [r["numpyro"]["seconds"] for r in mine], "s-",
                label="NumPyro NUTS to ESS 400")
    ax.set(xscale="log", yscale="log", xlabel="N (rows)", ylabel="wall seconds",
           title="logistic regression, D = 20")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "N = 1000, short NUTS runs",
                           "markdown file; the JSON and the plot (.png) go beside it")
    parser.add_argument("--batch", type=int, default=1000, help="AutoFlow's minibatch rows")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reference-draws", type=int, default=4000)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap AutoFlow's fit (default: fit's own, 10,000)")
    parser.add_argument("--no-numpyro", action="store_true",
                        help="leave NumPyro out even where it is installed (the reference "
                             "draws then come from Pyro's NUTS)")
    parser.add_argument("--pyro-nuts-max", type=int, default=10 ** 4,
                        help="run Pyro's NUTS up to this many rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.warmup, args.samples = 100, 150, 300
        args.reference_draws, args.pyro_nuts_max, args.max_steps = 500, 0, 300
    import torch

    torch.manual_seed(0)
    info = machine_info()
    rows = []
    for name, n in cases(args.quick):
        print(f"== {name}, N = {n} ==", flush=True)
        rows.append(one_case(name, n, args))
    write_report(args.out, table(rows, info, argv), {"machine": info, "rows": rows})
    if args.out:
        plot(rows, Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
