"""Inference utilities: the ``fit`` loop and the sticking-the-landing ELBO."""

from pyro_nf.infer.elbo import STLTrace_ELBO
from pyro_nf.infer.fit import FitResult, NonFiniteLossError, fit
from pyro_nf.infer.init import init_to_median_or_uniform, init_to_uniform_unconstrained
from pyro_nf.infer.modes import MissedMode, Mode, ModeSearch, find_modes, missed_modes
from pyro_nf.infer.quasi_newton import AutoPathfinder, PathfinderResult, pathfinder

__all__ = ["fit", "FitResult", "NonFiniteLossError", "STLTrace_ELBO", "pathfinder",
           "PathfinderResult", "AutoPathfinder", "init_to_median_or_uniform",
           "init_to_uniform_unconstrained", "find_modes", "missed_modes", "ModeSearch", "Mode",
           "MissedMode"]
