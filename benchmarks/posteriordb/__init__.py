"""Pyro translations of 15 posteriordb reference posteriors.

    from benchmarks import posteriordb     # from the repository root
    post = posteriordb.load("arK-arK")      # data from ../shared/posteriordb
    post.model()                            # a zero-argument Pyro model, data bound
    post.reference["beta"].shape            # (10 chains, 1000 draws, 5)

The mathematics of each model is in the docstring of its builder (``regression``,
``hierarchical``, ``timeseries``, ``mixtures``) and in posteriordb's MODELS.md.
``python -m benchmarks.posteriordb.validate`` checks each translation against the reference
draws with NUTS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import hierarchical, mixtures, regression, timeseries
from .data import (
    Built,
    Flat,
    Posterior,
    find_root,
    latent_structure,
    load_data,
    load_reference,
    posterior_info,
)

__all__ = ["NAMES", "Posterior", "Flat", "load", "find_root"]

_BUILDERS: dict[str, Callable[[dict[str, Any], torch.dtype], Built]] = {
    "eight_schools-eight_schools_noncentered": hierarchical.eight_schools_noncentered,
    "eight_schools-eight_schools_centered": hierarchical.eight_schools_centered,
    "arK-arK": timeseries.ark,
    "arma-arma11": timeseries.arma,
    "garch-garch11": timeseries.garch,
    "gp_pois_regr-gp_pois_regr": hierarchical.gp_pois_regr,
    "kidiq-kidscore_momiq": regression.kidiq,
    "mesquite-logmesquite_logvolume": regression.mesquite,
    "nes2000-nes": regression.nes,
    "low_dim_gauss_mix-low_dim_gauss_mix": mixtures.low_dim_gauss_mix,
    "sblrc-blr": regression.sblrc,
    "diamonds-diamonds": regression.diamonds,
    "earnings-logearn_interaction_z": regression.earnings,
    "kilpisjarvi_mod-kilpisjarvi": regression.kilpisjarvi,
    "hmm_example-hmm_example": timeseries.hmm,
}

NAMES: list[str] = list(_BUILDERS)


def load(name: str, root: str | Path | None = None,
         dtype: torch.dtype = torch.float64) -> Posterior:
    """The Pyro translation of posterior ``name`` with its data and reference draws.

    ``root``: a posteriordb checkout (default: ``../shared/posteriordb`` beside the repo).
    Raises ValueError for an unknown name, FileNotFoundError if the database is missing."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown posterior {name!r}; known: {', '.join(NAMES)}")
    db = find_root(root)
    info = posterior_info(db, name)
    data = load_data(db, info["data_name"])
    reference = load_reference(db, info["reference_posterior_name"])
    built = _BUILDERS[name](data, dtype)
    latent, dim, nesting = latent_structure(built.model)
    to_latent = built.to_latent or (lambda ref: {k: ref[k] for k in latent})
    return Posterior(name=name, model=built.model, data=data, reference=reference,
                     latent_sites=latent, dim=dim, notes=built.notes, to_latent=to_latent,
                     max_plate_nesting=nesting)
