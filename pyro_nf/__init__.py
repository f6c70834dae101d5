"""pyro-nf: normalizing-flow variational posteriors for any Pyro model.

- :mod:`pyro_nf.transforms`: the flow layers and their registry;
- :class:`AutoFlow`: a flow autoguide over a model's global latents;
- :class:`AmortizedFlow`: an amortized (encoder + conditional flow) guide for local latents;
- :func:`fit`: the SVI loop; :class:`STLTrace_ELBO`: the sticking-the-landing gradient;
- :func:`pathfinder`: Gaussian approximations along L-BFGS paths (Zhang et al., 2022);
- :mod:`pyro_nf.diagnostics`: InferenceData, PSIS diagnostics and posterior comparison.
"""

from pyro_nf import transforms
from pyro_nf.diagnostics import (
    compare_posteriors,
    diagnose,
    format_comparison,
    from_mcmc,
    from_posteriordb,
    to_inference_data,
)
from pyro_nf.guides import DEFAULT_AMORTIZED_FLOW, DEFAULT_FLOW, AmortizedFlow, AutoFlow
from pyro_nf.infer import (
    AutoPathfinder,
    FitResult,
    NonFiniteLossError,
    PathfinderResult,
    STLTrace_ELBO,
    fit,
    pathfinder,
)
from pyro_nf.transforms import (
    available,
    available_conditional,
    build_conditional_flow,
    build_flow,
    register,
)

__version__ = "0.1.0.dev0"

__all__ = ["transforms", "available", "build_flow", "register", "available_conditional",
           "build_conditional_flow", "AutoFlow", "DEFAULT_FLOW",
           "AmortizedFlow", "DEFAULT_AMORTIZED_FLOW",
           "fit", "FitResult", "NonFiniteLossError", "STLTrace_ELBO", "pathfinder",
           "PathfinderResult", "AutoPathfinder", "to_inference_data",
           "from_mcmc", "from_posteriordb", "diagnose", "compare_posteriors",
           "format_comparison", "__version__"]
