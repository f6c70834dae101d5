"""``compare_posteriors``: several posteriors of the same model side by side.

Per scalar parameter and method: mean, sd, 5% and 95% quantiles; against a reference:

* standardized mean error |mean - mean_ref| / sd_ref;
* sd ratio sd / sd_ref;
* coverage: the share of the reference's draws inside the method's central 90% interval
  (0.9 when the two agree; below it for an over-confident method).

Per method, a joint distance that marginals miss (correlations, missed modes): the energy
distance (Szekely & Rizzo, 2013) D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the
method's and the reference's draws, each standardized by the reference's means and sds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pyro_nf.diagnostics.report import flatten
from pyro_nf.utils import arviz_compat


def flat_draws(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, dict):
        out = {}
        for name, value in obj.items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim == 1:
                out[name] = arr
            else:
                for index in np.ndindex(*arr.shape[1:]):
                    out[f"{name}[{','.join(map(str, index))}]"] = arr[(slice(None),) + index]
        return out
    return flatten(arviz_compat.group(obj, "posterior"))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance D^2 between two samples of shape (n, d) and (m, d)."""
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    xy = torch.cdist(a, b).mean()
    xx = torch.cdist(a, a).mean()
    yy = torch.cdist(b, b).mean()
    return float(2 * xy - xx - yy)


def _subsample(arr: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return arr if len(arr) <= k else arr[rng.choice(len(arr), k, replace=False)]


def compare_posteriors(posteriors: dict[str, Any], reference: str | None = None, *,
                       var_names: list[str] | None = None, max_draws: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Compare posteriors given as InferenceData (or ``{site: draws}`` dicts, draws first).

    Returns a DataFrame indexed by (method, parameter) with columns mean, sd, q5, q95 and,
    with a ``reference``, std_mean_error, sd_ratio and coverage90. ``df.attrs["summary"]``
    holds one row per method (joint energy distance, worst standardized mean error, worst sd
    ratio, lowest coverage), ranked best first; :func:`format_comparison` prints both.
    """
    if not posteriors:
        raise ValueError("compare_posteriors needs at least one posterior")
    if reference is not None and reference not in posteriors:
        raise ValueError(f"reference {reference!r} is not one of {list(posteriors)}")
    flats = {name: flat_draws(obj) for name, obj in posteriors.items()}
    base = flats[reference] if reference is not None else next(iter(flats.values()))
    params = [p for p in base if var_names is None or p.split("[")[0] in var_names]
    for name, flat in flats.items():
        missing = [p for p in params if p not in flat]
        if missing:
            raise ValueError(f"posterior {name!r} lacks {missing[:5]} (of {len(missing)}); "
                             "compare posteriors of the same model with the same site names")
    rows = []
    ref = flats[reference] if reference is not None else None
    for method, flat in flats.items():
        for p in params:
            v = flat[p]
            row = {"method": method, "parameter": p, "mean": v.mean(), "sd": v.std(ddof=1),
                   "q5": np.quantile(v, 0.05), "q95": np.quantile(v, 0.95)}
            if ref is not None:
                r = ref[p]
                r_sd = r.std(ddof=1)
                row["std_mean_error"] = abs(row["mean"] - r.mean()) / r_sd
                row["sd_ratio"] = row["sd"] / r_sd
                row["coverage90"] = float(np.mean((r >= row["q5"]) & (r <= row["q95"])))
            rows.append(row)
    df = pd.DataFrame(rows).set_index(["method", "parameter"])
    if ref is not None:
        rng = np.random.default_rng(seed)
        mu = np.array([ref[p].mean() for p in params])
        sd = np.array([ref[p].std(ddof=1) for p in params])
        ref_mat = _subsample((np.stack([ref[p] for p in params], 1) - mu) / sd, max_draws, rng)
        summary = []
        for method, flat in flats.items():
            mat = _subsample((np.stack([flat[p] for p in params], 1) - mu) / sd, max_draws,
                             rng)
            sub = df.loc[method]
            summary.append({"method": method,
                            "energy_distance": energy_distance(mat, ref_mat),
                            "max_std_mean_error": sub["std_mean_error"].max(),
                            "worst_sd_ratio": sub["sd_ratio"].iloc[
                                int(np.argmax(np.abs(np.log(sub["sd_ratio"].to_numpy()))))],
                            "min_coverage90": sub["coverage90"].min()})
        table = pd.DataFrame(summary).set_index("method")
        df.attrs["summary"] = table.sort_values("energy_distance")
        df.attrs["reference"] = reference
    return df


def format_comparison(df: pd.DataFrame, *, digits: int = 3) -> str:
    """The comparison as text: per-parameter table, then the methods ranked by joint
    distance to the reference (the reference itself scores 0 up to subsampling noise)."""
    with pd.option_context("display.width", 200, "display.max_rows", 500,
                           "display.max_columns", 20):
        text = df.round(digits).to_string()
        summary = df.attrs.get("summary")
        if summary is not None:
            text += (f"\n\nMethods ranked by energy distance to {df.attrs['reference']!r} "
                     "(standardized draws; lower is closer):\n")
            text += summary.round(digits).to_string()
    return text
