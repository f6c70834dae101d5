"""Loading posteriordb data and reference draws, and the helpers every translation shares.

The posterior database is never copied: it is read from ``root`` (by default the copy
``pyro_nf.demo.find_posteriordb`` finds, ``../shared/posteriordb`` beside the repository).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_nf.diagnostics.inference_data import from_posteriordb, posteriordb_root

Model = Callable[[], None]
ToLatent = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class Flat(dist.ImproperUniform):
    """``ImproperUniform``: log density 0 on ``support`` (a flat, improper prior).

    Pyro's ``ImproperUniform.sample`` raises, which breaks tracing the model and the default
    initialization of NUTS and autoguides. This subclass returns, for tracing and
    initialization only, a point drawn uniformly from (-2, 2) in the unconstrained space of
    ``support`` (what ``init_to_uniform`` does), of dtype ``self.dtype``. It is not a prior
    draw."""

    dtype: torch.dtype = torch.float64

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> Flat:
        new = super().expand(batch_shape, _instance)
        new.dtype = self.dtype
        return new

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        transform = biject_to(self.support)
        shape = transform.inverse_shape(torch.Size(sample_shape) + self.batch_shape
                                        + self.event_shape)
        with torch.no_grad():
            return transform(torch.rand(shape, dtype=self.dtype) * 4 - 2)


def flat(support: Any, *event_shape: int, dtype: torch.dtype = torch.float64) -> Flat:
    """A flat prior over ``support`` with the given event shape."""
    d = Flat(support, torch.Size(), torch.Size(event_shape))
    d.dtype = dtype
    return d


def linear(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``x @ beta`` for a coefficient vector ``beta`` of shape (K,), or with leading batch
    dims (..., 1, K) (vectorized particles beside an observation plate) -> (..., N)."""
    return x @ beta if beta.dim() == 1 else (x * beta).sum(-1)


@dataclass
class Built:
    """What a model family module returns for one posterior."""

    model: Model
    notes: str
    to_latent: ToLatent | None = None  # reference values -> latent site values


@dataclass
class Posterior:
    """One posteriordb posterior translated to Pyro.

    ``model`` takes no arguments (data bound as tensors). ``reference`` maps each site of the
    reference draws to an array (chains, draws, *site_shape). ``latent_sites`` are the sampled,
    non-deterministic latent sites in trace order; ``dim`` is their total unconstrained
    dimension. ``to_latent`` maps reference values (torch tensors, any leading batch shape) to
    the latent sites' values (e.g. eight schools noncentered: theta_trans = (theta - mu) /
    tau)."""

    name: str
    model: Model
    data: dict[str, Any]
    reference: dict[str, np.ndarray]
    latent_sites: list[str]
    dim: int
    notes: str
    to_latent: ToLatent = field(repr=False, default=lambda ref: ref)
    max_plate_nesting: int = 0


def find_root(root: str | Path | None = None) -> Path:
    """The ``posterior_database`` folder; FileNotFoundError naming the path if missing."""
    if root is None:
        from pyro_nf.demo import find_posteriordb

        here = Path(__file__).resolve().parents[3] / "shared" / "posteriordb"
        found = find_posteriordb() or find_posteriordb(here)  # the project's copy
        if found is None:
            raise FileNotFoundError(
                f"posteriordb not found: expected it at {here} (or set $PYRO_NF_POSTERIORDB "
                "or pass root=)")
        root = found
    return posteriordb_root(root)


def read_zipped_json(path: Path) -> Any:
    """The one JSON document inside ``path`` (a .json.zip) or ``path`` without .zip."""
    if path.exists():
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(zf.namelist()[0]))
    plain = path.with_suffix("")
    if plain.exists():
        return json.loads(plain.read_text())
    raise FileNotFoundError(f"missing posteriordb file {path}")


def posterior_info(root: Path, name: str) -> dict[str, Any]:
    """``posteriors/NAME.json``: which data and which reference draws."""
    path = root / "posteriors" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"missing posteriordb file {path}")
    return json.loads(path.read_text())


def load_data(root: Path, data_name: str) -> dict[str, Any]:
    """The raw data dict of ``data/data/DATA.json.zip``."""
    return read_zipped_json(root / "data" / "data" / f"{data_name}.json.zip")


def load_reference(root: Path, ref_name: str) -> dict[str, np.ndarray]:
    """Reference draws: site -> array (chains, draws, *site_shape), 0-based elements."""
    posterior = from_posteriordb(root, ref_name).posterior
    return {k: np.asarray(posterior[k].values) for k in posterior.data_vars}


def is_latent(site: dict) -> bool:
    """A sampled latent site (not observed, not a factor, not ``pyro.deterministic``)."""
    return (site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)
            and not site["infer"].get("_deterministic", False))


def latent_structure(model: Model) -> tuple[list[str], int, int]:
    """Latent site names in trace order, their total unconstrained dimension, and the
    model's max plate nesting."""
    with pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace()
    names, dim, nesting = [], 0, 0
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            nesting = max([nesting] + [-f.dim for f in site["cond_indep_stack"]
                                       if f.dim is not None])
        if is_latent(site):
            names.append(name)
            dim += biject_to(site["fn"].support).inv(site["value"]).numel()
    return names, dim, nesting


def tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (list or number) as a tensor of ``dtype``."""
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)
