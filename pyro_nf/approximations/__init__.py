"""Approximations found without training a flow: Gaussians and modes.

- :mod:`~pyro_nf.approximations.gaussian`: low-rank Gaussian algebra, ELBOs of Gaussians;
- :mod:`~pyro_nf.approximations.pathfinder`: Pathfinder (Zhang et al., 2022) and its guide;
- :mod:`~pyro_nf.approximations.modes`: separated modes and their masses.
"""

from pyro_nf.approximations.modes import MissedMode, Mode, ModeSearch, find_modes, missed_modes
from pyro_nf.approximations.pathfinder import AutoPathfinder, PathfinderResult, pathfinder

__all__ = ["pathfinder", "PathfinderResult", "AutoPathfinder", "find_modes", "missed_modes",
           "ModeSearch", "Mode", "MissedMode"]
