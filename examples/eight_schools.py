"""A Bayesian workflow on eight schools (centered): AutoNormal vs AutoFlow vs NUTS vs the
posteriordb reference draws, with diagnostics, a comparison table and figures.

    python examples/eight_schools.py                 # full run (a few minutes on 2 cores)
    python examples/eight_schools.py --quick         # a smoke run (used by the tests)
    python examples/eight_schools.py --out out/eight_schools

The centered parametrisation has a funnel between tau and theta: mean-field guides collapse
tau, a flow guide follows the funnel further, and PSIS k-hat tells which fits to trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal

import pyro_nf
from pyro_nf.diagnostics import plots
from pyro_nf.models import EIGHT_SCHOOLS_Y, eight_schools

POSTERIORDB = Path(__file__).resolve().parents[2] / "shared" / "posteriordb"
REFERENCE = "eight_schools-eight_schools_noncentered"  # the same posterior, reparametrised
Y = EIGHT_SCHOOLS_Y
model = eight_schools


def run(quick: bool, out: Path, steps: int, seed: int = 0) -> dict:
    steps = 50 if quick else steps
    draws = 200 if quick else 4000
    fits, posteriors, reports = {}, {}, {}
    guides = {"AutoNormal": lambda: AutoNormal(model),
              "AutoFlow": lambda: pyro_nf.AutoFlow(model)}
    for name, make in guides.items():
        pyro.clear_param_store()
        guide = make()
        fits[name] = pyro_nf.fit(model, guide, Y, num_steps=steps, seed=seed, progress=False,
                                 num_particles=8)
        posteriors[name] = pyro_nf.to_inference_data(model, guide, Y, num_samples=draws,
                                                     fit_result=fits[name])
        reports[name] = pyro_nf.diagnose(posteriors[name], label=name)
        print(reports[name], "\n")
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=50 if quick else 1000,
                warmup_steps=50 if quick else 1000, disable_progbar=True)
    mcmc.run(Y)
    posteriors["NUTS"] = pyro_nf.from_mcmc(mcmc)
    reference = "NUTS"
    if POSTERIORDB.exists():
        posteriors["reference"] = pyro_nf.from_posteriordb(POSTERIORDB, REFERENCE)
        reference = "reference"
    table = pyro_nf.compare_posteriors(posteriors, reference=reference,
                                       var_names=["mu", "tau", "theta"])
    print(pyro_nf.format_comparison(table))
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_pair(posteriors, ["mu", "tau", "theta[0]"], reports=reports,
                    title="eight schools (centered)", path=out / "pair.png")
    plots.plot_marginals(posteriors, ["mu", "tau", "theta"], reports=reports,
                         path=out / "marginals.png")
    plots.plot_elbo(fits, title="ELBO", path=out / "elbo.png")
    for name, idata in posteriors.items():
        idata.to_netcdf(str(out / f"{name}.nc"))
    return {f"khat_{k}": r.khat for k, r in reports.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("out/eight_schools"))
    args = parser.parse_args(argv)
    return run(args.quick, args.out, args.steps)


if __name__ == "__main__":
    main()
