"""The demo: eight schools (centered), where mean-field fails, fitted three ways.

AutoNormal and AutoFlow are fitted with the same budget, NUTS is run briefly, and, when the
posteriordb reference draws are found, all three are compared against them: ``diagnose``
verdicts, the ``compare_posteriors`` table, a pair plot, the ELBO traces and every posterior
as netCDF in the output folder. ``pyro-nf demo`` and ``make demo`` run it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyro
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal

from pyro_nf.diagnostics import (
    compare_posteriors,
    diagnose,
    format_comparison,
    from_mcmc,
    from_posteriordb,
    to_inference_data,
)
from pyro_nf.guides import AutoFlow
from pyro_nf.infer import fit
from pyro_nf.models import EIGHT_SCHOOLS_Y, eight_schools

REFERENCE = "eight_schools-eight_schools_noncentered"  # the same posterior, reparametrised


def find_posteriordb() -> Path | None:
    """``$PYRO_NF_POSTERIORDB``, else ``../shared/posteriordb`` beside the repository or the
    working directory; None if absent."""
    env = os.environ.get("PYRO_NF_POSTERIORDB")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parents[1]
    candidates += [here.parent / "shared" / "posteriordb",
                   Path.cwd().parent / "shared" / "posteriordb"]
    return next((c for c in candidates if (c / "posterior_database").is_dir()
                 or (c / "reference_posteriors").is_dir()), None)


def run_demo(out: str | Path = "pyro-nf-demo", *, quick: bool = False, steps: int = 3000,
             nuts_samples: int = 500, seed: int = 0, echo=print) -> dict[str, Any]:
    """Run the demo; returns the reports, the comparison table and the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        steps, nuts_samples = 30, 30
    draws = 300 if quick else 4000
    fits, posteriors, reports = {}, {}, {}
    for name, make in (("AutoNormal", lambda: AutoNormal(eight_schools)),
                       ("AutoFlow", lambda: AutoFlow(eight_schools))):
        pyro.clear_param_store()
        t0 = time.perf_counter()
        guide = make()
        fits[name] = fit(eight_schools, guide, EIGHT_SCHOOLS_Y, num_steps=steps,
                         num_particles=16, seed=seed, progress=False)
        posteriors[name] = to_inference_data(eight_schools, guide, EIGHT_SCHOOLS_Y,
                                             num_samples=draws, fit_result=fits[name])
        reports[name] = diagnose(posteriors[name], label=name)
        echo(f"{reports[name]}\n({steps} steps in {time.perf_counter() - t0:.0f} s)\n")
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(eight_schools, jit_compile=False), num_samples=nuts_samples,
                warmup_steps=nuts_samples, disable_progbar=True)
    mcmc.run(EIGHT_SCHOOLS_Y)
    posteriors["NUTS"] = from_mcmc(mcmc)
    echo(f"NUTS: {nuts_samples} warm-up + {nuts_samples} draws in "
         f"{time.perf_counter() - t0:.0f} s\n")
    reference = "NUTS"
    db = find_posteriordb()
    if db is not None:
        posteriors["posteriordb"] = from_posteriordb(db, REFERENCE)
        reference = "posteriordb"
    table = compare_posteriors(posteriors, reference=reference, var_names=["mu", "tau"])
    echo(format_comparison(table))
    verdicts = ", ".join(f"{k}: {r.verdict} (k-hat {r.khat:.2f})" for k, r in reports.items())
    echo(f"\nVerdicts: {verdicts}")
    from pyro_nf.diagnostics import plots

    files = [out / "pair.png", out / "elbo.png"]
    plots.plot_pair(posteriors, ["mu", "tau", "theta[0]"], reports=reports,
                    title="eight schools (centered)", path=files[0])
    plots.plot_elbo(fits, title="ELBO traces", path=files[1])
    for name, idata in posteriors.items():
        path = out / f"{name}.nc"
        idata.to_netcdf(str(path))
        files.append(path)
    echo(f"\nWrote {', '.join(str(f) for f in files)}")
    return {"reports": reports, "table": table, "files": files, "fits": fits}
