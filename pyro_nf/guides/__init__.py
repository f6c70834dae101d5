"""Autoguides built on pyro-nf's flow layers (kept apart from the layers themselves)."""

from pyro_nf.guides.amortized import DEFAULT_AMORTIZED_FLOW, AmortizedFlow
from pyro_nf.guides.autoflow import DEFAULT_FLOW, AutoFlow
from pyro_nf.guides.mixture import AutoFlowMixture
from pyro_nf.guides.start import FromGuide, GaussianAnchor, InitPoint, Start

__all__ = ["AutoFlow", "AutoFlowMixture", "DEFAULT_FLOW", "GaussianAnchor", "FromGuide",
           "InitPoint", "Start", "AmortizedFlow", "DEFAULT_AMORTIZED_FLOW"]
