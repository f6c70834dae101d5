"""NeuTra HMC (Hoffman et al., 2019): a fitted AutoFlow reparametrizes NUTS on Neal's funnel,
so NUTS samples the flow's nearly Gaussian base space instead of the funnel. Reports the bulk
effective sample size of v per second for plain NUTS and NeuTra NUTS.

    python examples/neutra.py               # 3000 SVI steps, 500 + 500 NUTS draws each
    python examples/neutra.py --quick       # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyro
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.reparam import NeuTraReparam

import pyro_nf
from pyro_nf.models import neals_funnel
from pyro_nf.utils import arviz_compat


def ess_per_second(model, num_samples: int, seed: int, transform=None,
                   max_tree_depth: int = 10) -> dict[str, float]:
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model, max_tree_depth=max_tree_depth), num_samples=num_samples,
                warmup_steps=num_samples,
                num_chains=1, disable_progbar=True)
    t0 = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - t0
    samples = mcmc.get_samples()
    v = transform(samples) if transform else samples["v"]
    ess = float(arviz_compat.ess(np.asarray(v)[None]))
    return {"ess": ess, "seconds": seconds, "ess_per_second": ess / seconds,
            "v_sd": float(np.std(np.asarray(v)))}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("out/neutra"))
    args = parser.parse_args(argv)
    steps, samples = (30, 20) if args.quick else (args.steps, args.samples)

    pyro.clear_param_store()
    guide = pyro_nf.AutoFlow(neals_funnel)
    pyro_nf.fit(neals_funnel, guide, num_steps=steps, num_particles=16, seed=0,
                progress=False)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    reparam_model = poutine.reparam(neals_funnel, config=lambda _: neutra)

    def to_v(draws):  # map NeuTra's base-space draws back to the model's v
        latent = neutra.transform(next(iter(draws.values())))
        return guide.unpack_batch(latent)["v"]

    depth = 4 if args.quick else 10
    plain = ess_per_second(neals_funnel, samples, seed=1, max_tree_depth=depth)
    flow = ess_per_second(reparam_model, samples, seed=1, transform=to_v, max_tree_depth=depth)
    for name, r in (("plain NUTS", plain), ("NeuTra NUTS", flow)):
        print(f"{name:>12}: ESS(v) {r['ess']:.0f} in {r['seconds']:.1f} s = "
              f"{r['ess_per_second']:.1f}/s, sd(v) {r['v_sd']:.2f} (true 3)")
    ratio = flow["ess_per_second"] / plain["ess_per_second"]
    print(f"NeuTra / plain ESS per second: {ratio:.1f}x")
    return {"plain_ess_per_second": plain["ess_per_second"],
            "neutra_ess_per_second": flow["ess_per_second"], "ratio": ratio}


if __name__ == "__main__":
    main()
