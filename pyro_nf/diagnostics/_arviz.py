"""The one place pyro-nf talks to ArviZ.

``arviz>=0.23`` resolves to the 0.x line (xarray InferenceData) on Python 3.11 and to the 1.x
line (xarray DataTree, the arviz-base/arviz-stats packages) on Python >= 3.12. Where the two
lines differ, the functions below handle both; CI runs the 0.x line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import arviz as az
import numpy as np

#: The ArviZ major version in use (0 or 1).
ARVIZ_MAJOR = int(az.__version__.split(".")[0])


def version() -> str:
    return az.__version__


def from_dict(groups: dict[str, dict[str, np.ndarray]], *, coords: dict, dims: dict,
              attrs: dict) -> Any:
    """Build InferenceData (0.x) or a DataTree (1.x) from ``{group: {var: array}}`` whose
    arrays are shaped ``(chain, draw, ...)`` (observed data: no sample dims)."""
    groups = {k: v for k, v in groups.items() if v}
    if ARVIZ_MAJOR >= 1:  # pragma: no cover - CI runs the 0.x line
        return az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
    # attrs go on each group (top-level attrs of 0.x InferenceData become numpy strings that
    # the h5netcdf engine cannot write)
    idata = az.from_dict(**groups, coords=coords, dims=dims)
    for name in idata.groups():
        getattr(idata, name).attrs.update(attrs)
    return idata


def groups(idata: Any) -> list[str]:
    """The group names of an InferenceData/DataTree."""
    if hasattr(idata, "groups") and callable(idata.groups):
        return [g.strip("/") for g in idata.groups()]
    return [g.strip("/") for g in idata.children]  # pragma: no cover - DataTree


def group(idata: Any, name: str) -> Any:
    """One group as an xarray Dataset."""
    obj = idata[name] if ARVIZ_MAJOR >= 1 else getattr(idata, name)
    return obj.to_dataset() if hasattr(obj, "to_dataset") else obj


def attrs(idata: Any) -> dict:
    """The attributes stored with the posterior group."""
    return dict(group(idata, "posterior").attrs)


def to_netcdf(idata: Any, path: str | Path) -> Path:
    path = Path(path)
    idata.to_netcdf(str(path))
    return path


def from_netcdf(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such InferenceData file: {path}")
    return az.from_netcdf(str(path))


def summary(idata: Any, **kwargs: Any):
    return az.summary(idata, **kwargs)


def _psislw_raw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    if ARVIZ_MAJOR >= 1:  # pragma: no cover - CI runs the 0.x line
        import arviz_stats

        lw, k = arviz_stats.psislw(log_weights)
        return np.asarray(lw), float(np.asarray(k))
    lw, k = az.psislw(log_weights)
    return np.asarray(lw), float(np.asarray(k))


_SIGN: list[float] = []


def _sign() -> float:
    """+1 if ArviZ's psislw takes log importance ratios as they are, -1 if it takes their
    negatives (the two lines disagree). Decided once, on a case with a known answer: draws of
    q = N(0, 1) with p = N(0, 2^2) have a heavy right tail of ratios, k = 1 - 1/4 = 0.75."""
    if not _SIGN:
        x = np.random.default_rng(0).standard_normal(4000)
        lw = -0.5 * x ** 2 / 4.0 - np.log(2.0) + 0.5 * x ** 2
        _SIGN.append(1.0 if _psislw_raw(lw)[1] > _psislw_raw(-lw)[1] else -1.0)
    return _SIGN[0]


def psis(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling (Vehtari et al., 2024) of log importance ratios
    ``log p(x, z) - log q(z)``: returns (normalised smoothed log weights, k-hat)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    sign = _sign()
    return _psislw_raw(sign * log_weights)
