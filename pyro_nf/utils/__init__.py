"""Helpers every layer may use: the ArviZ 0.x/1.x adapter (:mod:`~pyro_nf.utils.arviz_compat`)
and random-stream care (:mod:`~pyro_nf.utils.rng`). They import nothing else from pyro_nf."""
