"""Training: ``fit``, the engine that takes guarded steps, and the schedules that drive it."""

from pyro_nf.training.elbo import STLTrace_ELBO
from pyro_nf.training.fit import FitResult, NonFiniteLossError, fit

__all__ = ["fit", "FitResult", "NonFiniteLossError", "STLTrace_ELBO"]
