"""Autoguides built on pyro-nf's flow layers (kept apart from the layers themselves)."""

from pyro_nf.guides.amortized import DEFAULT_AMORTIZED_FLOW, AmortizedFlow
from pyro_nf.guides.autoflow import DEFAULT_FLOW, AutoFlow

__all__ = ["AutoFlow", "DEFAULT_FLOW", "AmortizedFlow", "DEFAULT_AMORTIZED_FLOW"]
