"""pyro-nf: normalizing-flow variational posteriors for any Pyro model.

- :mod:`pyro_nf.transforms`: the flow layers and their registry (``available``,
  ``build_flow``, ``register``; every layer family takes an optional ``context_dim``);
- :class:`AutoFlow`: a flow autoguide over a model's global latents;
- :class:`AmortizedFlow`: an amortized (encoder + conditional flow) guide for local latents;
- :func:`fit`: the SVI loop; :class:`STLTrace_ELBO`: the sticking-the-landing gradient;
- :func:`refine`: exact draws by HMC in a fitted guide's coordinates (``fit``'s last stage
  where its checks call the guide unreliable);
- :func:`pathfinder`: Gaussian approximations along L-BFGS paths (Zhang et al., 2022);
- :func:`find_modes`: a posterior's separated modes and their masses (``diagnose(...,
  modes=...)`` then says which of them a guide misses);
- :mod:`pyro_nf.diagnostics`: InferenceData, PSIS diagnostics and posterior comparison.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from pyro_nf import transforms
from pyro_nf.approximations import AutoPathfinder, PathfinderResult, find_modes, pathfinder
from pyro_nf.guides import (
    DEFAULT_AMORTIZED_FLOW,
    DEFAULT_FLOW,
    AmortizedFlow,
    AutoFlow,
    AutoFlowMixture,
)
from pyro_nf.training import (
    Engine,
    FitResult,
    FixedSchedule,
    NonFiniteLossError,
    RefineResult,
    SelfTuningSchedule,
    STLTrace_ELBO,
    fit,
    refine,
)

try:  # the one version string is pyproject.toml's
    __version__ = version("pyro-nf")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

#: Names served on first use, so that ``import pyro_nf`` (and the layers, guides and fit) does
#: not import ArviZ, pandas and matplotlib.
_LAZY = {name: "pyro_nf.diagnostics" for name in
         ("compare_posteriors", "diagnose", "format_comparison", "from_mcmc",
          "from_posteriordb", "to_inference_data")}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "diagnostics":
        return import_module("pyro_nf.diagnostics")
    raise AttributeError(f"module 'pyro_nf' has no attribute {name!r}")

__all__ = ["transforms", "AutoFlow", "AutoFlowMixture", "DEFAULT_FLOW",
           "AmortizedFlow", "DEFAULT_AMORTIZED_FLOW",
           "fit", "FitResult", "refine", "RefineResult", "Engine", "FixedSchedule",
           "SelfTuningSchedule",
           "NonFiniteLossError", "STLTrace_ELBO", "pathfinder",
           "PathfinderResult", "AutoPathfinder", "find_modes", "to_inference_data",
           "from_mcmc", "from_posteriordb", "diagnose", "compare_posteriors",
           "format_comparison", "__version__"]
