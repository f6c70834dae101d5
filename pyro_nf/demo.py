"""The demo: a posterior where mean-field fails, fitted three ways.

``posterior="funnel"`` (the default) is Neal's funnel in 10 dimensions, v ~ N(0, 3),
x_i ~ N(0, exp(v / 2)), whose exact draws are the reference; ``"schools"`` is eight schools
(centered), compared against posteriordb's reference draws when ``$PYRO_NF_POSTERIORDB``
(or ``--posteriordb``) names a checkout.
AutoNormal and AutoFlow are fitted with the same budget and NUTS is run briefly; the demo
prints the ``diagnose`` verdicts and the ``compare_posteriors`` table and writes a pair plot,
the ELBO traces and every posterior as netCDF to the output folder. ``pyro-nf demo`` and
``make demo`` run it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from pyro_nf.models import EIGHT_SCHOOLS_Y, eight_schools, neals_funnel
from pyro_nf.training import fit
from pyro_nf.utils import arviz_compat

REFERENCE = "eight_schools-eight_schools_noncentered"  # the same posterior, reparametrized
FUNNEL_DIM = 10


def find_posteriordb(path: str | Path | None = None) -> Path | None:
    """A posteriordb checkout: ``path``, else ``$PYRO_NF_POSTERIORDB`` (the Makefile and the
    tests point it at ``../shared/posteriordb``); None where neither names one."""
    where = path if path is not None else os.environ.get("PYRO_NF_POSTERIORDB")
    if not where:
        return None
    root = Path(where)
    found = (root / "posterior_database").is_dir() or (root / "reference_posteriors").is_dir()
    return root if found else None


@dataclass(frozen=True)
class _Case:
    model: Any
    args: tuple
    title: str
    compare: list[str]  # variables of the comparison table
    pair: list[str]  # variables of the pair plot


CASES = {
    "funnel": _Case(neals_funnel, (), f"Neal's funnel ({FUNNEL_DIM}-D)", ["v", "x"],
                    ["v", "x[0]", "x[1]"]),
    "schools": _Case(eight_schools, (EIGHT_SCHOOLS_Y,), "eight schools (centered)",
                     ["mu", "tau"], ["mu", "tau", "theta[0]"]),
}


def funnel_reference(num_draws: int, dim: int = FUNNEL_DIM, seed: int = 0) -> Any:
    """Exact draws of Neal's funnel (v ~ N(0, 3), x_i ~ N(0, exp(v / 2))) as InferenceData
    whose variables match ``to_inference_data`` of :func:`~pyro_nf.models.neals_funnel`."""
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 3.0, num_draws)
    x = rng.normal(size=(num_draws, dim - 1)) * np.exp(v / 2)[:, None]
    return arviz_compat.from_dict({"posterior": {"v": v[None], "x": x[None]}}, coords={},
                            dims={"x": ["funnel_dims"]}, attrs={"source": "exact draws"})


def run_demo(out: str | Path = "pyro-nf-demo", *, posterior: str = "funnel", quick: bool = False,
             steps: int = 5000, nuts_samples: int = 500, draws: int = 20000, seed: int = 0,
             posteriordb: str | Path | None = None, echo=print) -> dict[str, Any]:
    """Run the demo; returns the reports, the comparison table and the files written.

    Args:
        out: output folder (created).
        posterior: ``"funnel"`` or ``"schools"``.
        quick: a few steps and draws only (a smoke run).
        steps: SVI steps per guide (16 particles each).
        nuts_samples: NUTS warm-up steps and draws.
        draws: guide draws for the diagnostics (k-hat from fewer draws is noisier).
        seed: seed of the fits and of NUTS.
        posteriordb: a posteriordb checkout for the schools' reference draws (default
            ``$PYRO_NF_POSTERIORDB``; without one NUTS is the reference).
    """
    if posterior not in CASES:
        raise ValueError(f"demo: posterior must be one of {sorted(CASES)}, got {posterior!r}")
    case = CASES[posterior]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        steps, nuts_samples, draws = 30, 30, 300
    fits, posteriors, reports = _fit_guides(case, steps, draws, seed, echo)
    posteriors["NUTS"] = _run_nuts(case, nuts_samples, seed, echo)
    reference = "NUTS"
    if posterior == "funnel":
        posteriors["exact"] = funnel_reference(draws, seed=seed)
        reference = "exact"
    else:
        db = find_posteriordb(posteriordb)
        if db is not None:
            posteriors["posteriordb"] = from_posteriordb(db, REFERENCE)
            reference = "posteriordb"
    table = compare_posteriors(posteriors, reference=reference, var_names=case.compare)
    echo(format_comparison(table))
    verdicts = ", ".join(f"{k}: {r.verdict.split(':')[0]} (k-hat {r.khat:.2f})"
                         for k, r in reports.items())
    echo(f"\nVerdicts: {verdicts}")
    files = _write_outputs(out, case, posteriors, reports, fits, echo)
    return {"reports": reports, "table": table, "files": files, "fits": fits}


def _fit_guides(case: Any, steps: int, draws: int, seed: int, echo) -> tuple[dict, dict, dict]:
    """AutoNormal and AutoFlow fitted with the same budget: their fits, posteriors, reports."""
    fits, posteriors, reports = {}, {}, {}
    for name, make in (("AutoNormal", lambda: AutoNormal(case.model)),
                       ("AutoFlow", lambda: AutoFlow(case.model))):
        pyro.clear_param_store()
        t0 = time.perf_counter()
        guide = make()
        fits[name] = fit(case.model, guide, *case.args, num_steps=steps, num_particles=16,
                         seed=seed, progress=False)
        posteriors[name] = to_inference_data(case.model, guide, *case.args,
                                             num_samples=draws, fit_result=fits[name])
        reports[name] = diagnose(case.model, guide, *case.args, num_samples=draws,
                                 label=name)  # with the model: every check of the verdict
        echo(f"{reports[name]}\n({steps} steps in {time.perf_counter() - t0:.0f} s)\n")
    return fits, posteriors, reports


def _run_nuts(case: Any, nuts_samples: int, seed: int, echo) -> Any:
    """Pyro's NUTS on the same model, as InferenceData."""
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(case.model, jit_compile=False), num_samples=nuts_samples,
                warmup_steps=nuts_samples, disable_progbar=True)
    mcmc.run(*case.args)
    divergences = len(mcmc.diagnostics()["divergences"]["chain 0"])
    echo(f"NUTS: {nuts_samples} warm-up + {nuts_samples} draws in "
         f"{time.perf_counter() - t0:.0f} s, {divergences} divergent transitions\n")
    return from_mcmc(mcmc)


def _write_outputs(out: Path, case: Any, posteriors: dict, reports: dict, fits: dict,
                   echo) -> list[Path]:
    """The pair and ELBO plots and one netCDF file per posterior."""
    from pyro_nf.diagnostics import plots

    files = [out / "pair.png", out / "elbo.png"]
    plots.plot_pair(posteriors, case.pair, reports=reports, title=case.title, path=files[0])
    plots.plot_elbo(fits, title="ELBO traces", path=files[1])
    for name, idata in posteriors.items():
        path = out / f"{name}.nc"
        arviz_compat.to_netcdf(idata, path)
        files.append(path)
    echo(f"\nWrote {', '.join(str(f) for f in files)}")
    return files
