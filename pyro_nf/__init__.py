"""pyro-nf: normalizing-flow variational posteriors for any Pyro model."""

from pyro_nf import transforms
from pyro_nf.transforms import available, build_flow, register

__version__ = "0.1.0.dev0"

__all__ = ["transforms", "available", "build_flow", "register", "__version__"]
