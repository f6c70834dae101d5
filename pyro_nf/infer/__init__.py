"""Inference utilities: the ``fit`` loop and the sticking-the-landing ELBO."""

from pyro_nf.infer.elbo import STLTrace_ELBO
from pyro_nf.infer.fit import FitResult, NonFiniteLossError, fit

__all__ = ["fit", "FitResult", "NonFiniteLossError", "STLTrace_ELBO"]
