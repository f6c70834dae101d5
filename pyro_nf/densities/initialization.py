"""Initial values for guides that work for any model whose density can be evaluated.

Pyro's ``init_to_median`` draws from each site's prior, which fails for priors that cannot be
sampled: ``dist.ImproperUniform`` (Stan's flat priors on the real line, the positive reals or
an interval) and latent sites whose density is supplied only by ``pyro.factor``. For those,
:func:`init_to_median_or_uniform` falls back to Stan's rule: each unconstrained coordinate
uniform on (-2, 2), mapped into the support (Carpenter et al., 2017, "Stan: A Probabilistic
Programming Language", section on initialization).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import biject_to

#: Stan's initialization radius in unconstrained space.
STAN_RADIUS = 2.0


def init_to_uniform_unconstrained(site: dict[str, Any], radius: float = STAN_RADIUS
                                  ) -> torch.Tensor:
    """Stan's rule: every unconstrained coordinate uniform on (-radius, radius), mapped into
    the site's support. Needs no sampling from the prior, only its support and shape."""
    fn = site["fn"]
    transform = biject_to(fn.support)
    shape = transform.inverse_shape(fn.batch_shape + fn.event_shape)
    value = transform((torch.rand(shape) * 2 - 1) * radius).detach()
    value._pyro_custom_init = False  # as Pyro's own strategies mark their values
    return value


def init_to_median_or_uniform(site: dict[str, Any] | None = None, num_samples: int = 15
                              ) -> Any:
    """Pyro's ``init_to_median`` where the prior can be sampled, else Stan's uniform(-2, 2)
    in unconstrained space (:func:`init_to_uniform_unconstrained`): ``ImproperUniform``
    priors and other distributions without ``sample``. The default ``init_loc_fn`` of
    :class:`~pyro_nf.AutoFlow`."""
    if site is None:
        return lambda site: init_to_median_or_uniform(site, num_samples)
    if not site.get("is_observed") and not _can_sample(site["fn"]):
        return init_to_uniform_unconstrained(site)
    return init_to_median(site, num_samples=num_samples)


def _can_sample(fn: Any) -> bool:
    base = fn
    while True:  # Independent / Expanded / masked wrappers around a base distribution
        inner = getattr(base, "base_dist", None)
        if inner is None:
            break
        base = inner
    try:
        base.sample()
    except NotImplementedError:
        return False
    return True

