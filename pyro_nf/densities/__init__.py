"""Densities: a model's log joint over the packed latent, read in full or in chunks.

- :mod:`~pyro_nf.densities.logdensity`: :class:`LogDensity`, log p(x, z) of a batch of packed
  draws, with its gradient;
- :mod:`~pyro_nf.densities.full_data`: reading a subsampled model's every row;
- :mod:`~pyro_nf.densities.pinning`: coordinates without density (masked entries), left out;
- :mod:`~pyro_nf.densities.initialization`: where a guide or a search starts;
- :mod:`~pyro_nf.densities.control_variate`: the full-data control variate of a minibatch ELBO.
"""

from pyro_nf.densities.initialization import (
    init_to_median_or_uniform,
    init_to_uniform_unconstrained,
)
from pyro_nf.densities.logdensity import LogDensity

__all__ = ["LogDensity", "init_to_median_or_uniform", "init_to_uniform_unconstrained"]
