"""The one place pyro-nf talks to ArviZ.

``arviz>=0.23`` resolves to the 0.x line (xarray InferenceData) on Python 3.11 and to the 1.x
line (xarray DataTree, the arviz-base/arviz-stats packages) on Python >= 3.12. Where the two
lines differ, the functions below handle both; CI runs the whole test suite on each line
(``.ci/run``: Python 3.11 with ArviZ 0.x, Python 3.12 with ArviZ 1.x). Nothing else in the
project imports ArviZ.
"""

from __future__ import annotations

import math
import warnings
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
    if ARVIZ_MAJOR >= 1:
        # arviz-base 1.x takes attrs per group; a flat dict is dropped with a warning
        return az.from_dict(groups, coords=coords, dims=dims,
                            attrs={name: dict(attrs) for name in groups})
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
    return [str(g).strip("/") for g in idata.children]


def group(idata: Any, name: str) -> Any:
    """One group as an xarray Dataset."""
    obj = idata[name] if ARVIZ_MAJOR >= 1 else getattr(idata, name)
    return obj.to_dataset() if hasattr(obj, "to_dataset") else obj


def attrs(idata: Any) -> dict:
    """The attributes stored with the posterior group."""
    return dict(group(idata, "posterior").attrs)


def to_netcdf(idata: Any, path: str | Path) -> Path:
    """Write with the h5netcdf engine, a declared dependency (ArviZ 1.x pulls in no engine)."""
    path = Path(path)
    idata.to_netcdf(str(path), engine="h5netcdf")
    return path


def from_netcdf(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such InferenceData file: {path}")
    return az.from_netcdf(str(path), engine="h5netcdf")


def loo(idata: Any) -> tuple[float, float]:
    """PSIS-LOO of an InferenceData/DataTree with a log_likelihood group: (elpd, its se)."""
    res = az.loo(idata)
    elpd = res.elpd if ARVIZ_MAJOR >= 1 else res.elpd_loo
    return float(elpd), float(res.se)


def _per_variable(stat: str, draws: np.ndarray, method: str) -> np.ndarray:
    draws = np.asarray(draws, dtype=np.float64)
    if ARVIZ_MAJOR >= 1:
        from arviz_stats.base import array_stats

        return np.asarray(getattr(array_stats, stat)(draws, chain_axis=0, draw_axis=1,
                                                     method=method))
    dataset = az.convert_to_dataset({"x": draws})
    return np.asarray(getattr(az, stat)(dataset, method=method)["x"].values)


def ess(draws: np.ndarray, method: str = "bulk") -> np.ndarray:
    """Effective sample size of draws shaped ``(chain, draw, *shape)``: an array ``shape``."""
    return _per_variable("ess", draws, method)


def rhat(draws: np.ndarray, method: str = "rank") -> np.ndarray:
    """Rank-normalized split R-hat (Vehtari et al. 2021) of draws shaped ``(chain, draw,
    *shape)``: an array ``shape``."""
    return _per_variable("rhat", draws, method)


def mcse(draws: np.ndarray, method: str = "mean") -> np.ndarray:
    """Monte Carlo standard error of draws shaped ``(chain, draw, *shape)``."""
    return _per_variable("mcse", draws, method)


def _psislw_raw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    if ARVIZ_MAJOR >= 1:
        from arviz_stats.base import array_stats

        lw, k = array_stats.psislw(log_weights)
    else:
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


def _normalized(log_weights: np.ndarray) -> np.ndarray:
    m = np.max(log_weights)
    return log_weights - (m + np.log(np.sum(np.exp(log_weights - m))))


#: Log ratios whose largest values lie within this of each other give weights equal to 0.1%:
#: importance sampling is exact for every purpose and the tail has no shape to fit.
FLAT_TAIL = 1e-3
#: Weights whose largest is at most this multiple of their mean are bounded (the ESS is at
#: least N / BOUNDED): where the Pareto fit fails on them (the rounding grid of float32 log
#: densities leaves ties in the tail), k-hat is -inf, not the fit's NaN or inf.
BOUNDED = 2.0
_EXP_RANGE = float(np.log(np.finfo(np.float64).max))


def psis(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling (Vehtari et al., 2024) of finite log importance
    ratios ``log p(x, z) - log q(z)``: returns (normalized smoothed log weights, k-hat).

    k-hat is defined, and the same on both ArviZ lines, where the generalized Pareto fit is
    not: ``+inf`` when the largest ratios span more than a float64 exponent (the tail
    underflows: a handful of draws carry all the weight); ``-inf`` when they are equal to
    within ``FLAT_TAIL``, or when the fit fails on bounded weights (``BOUNDED``): a guide equal
    to the posterior up to rounding, whose weights have no tail; ``+inf`` when the fit fails
    on unbounded weights (ties in a tail that a few draws dominate). The raw normalized
    weights are returned in those cases."""
    lw = np.asarray(log_weights, dtype=np.float64)
    n = lw.size
    m = int(min(0.2 * n, 3.0 * math.sqrt(n)))  # the tail length both lines fit
    span = float(np.ptp(np.partition(lw, n - m - 1)[n - m - 1:] if m >= 5 else lw))
    if span > _EXP_RANGE:
        return _normalized(lw), math.inf
    if span < FLAT_TAIL:
        return _normalized(lw), -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            smoothed, khat = _psislw_raw(_sign() * lw)
        except ValueError as err:  # arviz-stats 1.x: "All tail values are the same"
            if "same" not in str(err):
                raise
            smoothed, khat = lw, math.nan
    if math.isfinite(khat):
        return _normalized(smoothed), khat
    bounded = np.max(lw) - (np.max(lw) + np.log(np.mean(np.exp(lw - np.max(lw))))) \
        <= math.log(BOUNDED)
    return _normalized(lw), -math.inf if bounded else math.inf
