"""Diagnostics with ArviZ, kept apart from the layers and the guides.

- :func:`to_inference_data`, :func:`from_mcmc`, :func:`from_posteriordb`: InferenceData with
  the same names and plate dimensions for variational, MCMC and reference posteriors;
- :func:`diagnose`: PSIS k-hat and its verdict, IS ESS, ELBO and the importance-weighted bound;
- :func:`compare_posteriors`: side-by-side marginals and a joint distance to a reference;
- :mod:`~pyro_nf.diagnostics.plots`: overlaid marginals, pair plots, ELBO traces.
"""

from pyro_nf.diagnostics.compare import compare_posteriors, energy_distance, format_comparison
from pyro_nf.diagnostics.inference_data import (
    from_mcmc,
    from_posteriordb,
    to_inference_data,
)
from pyro_nf.diagnostics.report import DiagnosticReport, diagnose, diagnose_weights, verdict

__all__ = ["to_inference_data", "from_mcmc", "from_posteriordb", "diagnose",
           "diagnose_weights", "DiagnosticReport", "verdict", "compare_posteriors",
           "format_comparison", "energy_distance"]
