"""Autoguides built on pyro-nf's flow layers (kept apart from the layers themselves)."""

from pyro_nf.guides.autoflow import DEFAULT_FLOW, AutoFlow

__all__ = ["AutoFlow", "DEFAULT_FLOW"]
