"""InferenceData from any fitted Pyro autoguide, from MCMC, and from posteriordb references.

All three name variables after the Pyro sites and plate dimensions after the plates, so
posteriors from different methods line up without renaming.
"""

from __future__ import annotations

import datetime
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_nf.densities.logdensity import per_draw as _per_draw
from pyro_nf.utils import arviz_compat

DRAW_PLATE = "_pyro_nf_draws"


# --------------------------------------------------------------------------- traces
def _traces(model, guide, args, kwargs):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs)
    return model_trace, guide_trace


def _nesting(*traces) -> int:
    dims = [-f.dim for t in traces for site in t.nodes.values() if site["type"] == "sample"
            for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def _is_deterministic(site) -> bool:
    return bool(site.get("infer", {}).get("_deterministic"))


def _latent(site) -> bool:
    return (site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)
            and not site.get("infer", {}).get("is_auxiliary"))


def _observed(site) -> bool:
    """A data site: observed, and neither a deterministic nor a ``pyro.factor`` site."""
    return (site["type"] == "sample" and site["is_observed"] and not _is_deterministic(site)
            and not site.get("infer", {}).get("is_auxiliary"))


def _site_dims(name: str, site, shape: tuple[int, ...]) -> list[str]:
    """Dimension names: the plate's name where a plate indexes the dimension, else
    ``{name}_dim_{k}``."""
    event_dim = 0 if _is_deterministic(site) else site["fn"].event_dim
    batch_ndim = len(shape) - event_dim
    out = [f"{name}_dim_{k}" for k in range(len(shape))]
    for f in site["cond_indep_stack"]:
        if f.vectorized and -f.dim <= batch_ndim:
            pos = batch_ndim + f.dim
            if shape[pos] == f.size:
                out[pos] = f.name
    return out


class _Draws:
    """Per-draw arrays collected from (possibly batched) traces."""

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.log_lik: dict[str, list[np.ndarray]] = {}
        self.log_p: list[np.ndarray] = []
        self.log_q: list[np.ndarray] = []

    def add(self, key: str, store: dict, arr: torch.Tensor) -> None:
        store.setdefault(key, []).append(arr.detach().cpu().numpy())

    def cat(self, store: dict) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, 0) for k, v in store.items()}


def _collect(model_trace, guide_trace, n: int | None, pdim: int, proto, out: _Draws) -> None:
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    batched = n is not None
    m = n or 1

    def draws(t):
        return _per_draw(t, m, pdim) if batched else t.sum().reshape(1)

    log_p = sum(draws(s["log_prob"]) for s in model_trace.nodes.values()
                if s["type"] == "sample" and not _is_deterministic(s))
    log_q = sum(draws(s["log_prob"]) for s in guide_trace.nodes.values()
                if s["type"] == "sample" and not s["is_observed"])
    out.log_p.append(torch.as_tensor(log_p).reshape(m).detach().cpu().numpy())
    out.log_q.append(torch.as_tensor(log_q).reshape(m).detach().cpu().numpy())
    for name, site in model_trace.nodes.items():
        if name not in proto:
            continue
        shape = proto[name]["value"].shape
        if _latent(site) or _is_deterministic(site):
            out.add(name, out.values, site["value"].reshape((m,) + tuple(shape)))
        elif _observed(site):
            lp_shape = proto[name]["log_prob"].shape
            lp = site["log_prob"]
            if batched:
                while lp.dim() < pdim:
                    lp = lp.unsqueeze(0)
                lp = lp.movedim(-pdim, 0)
                lp = lp.expand((m,) + lp.shape[1:])
            out.add(name, out.log_lik, lp.reshape((m,) + tuple(lp_shape)))


class _NotVectorizable(Exception):
    """The batched scores disagree with a one-draw re-scoring."""


def _check_vectorized(model, args, kwargs, proto, out: _Draws) -> None:
    """Re-score the first draw on its own: a model whose data dimension is not declared with a
    plate can broadcast the draw dimension against the data without any error, giving wrong
    scores; then the caller falls back to drawing one at a time."""
    first = {name: torch.as_tensor(v[0][0]).to(proto[name]["value"].device)
             for name, v in out.values.items()
             if name in proto and _latent(proto[name])}
    trace = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    log_p = float(sum(s["log_prob"].sum() for s in trace.nodes.values()
                      if s["type"] == "sample" and not _is_deterministic(s)))
    batched = float(out.log_p[0][0])
    if not abs(log_p - batched) <= 1e-3 * (1 + abs(log_p)):
        raise _NotVectorizable(f"batched log p {batched} != {log_p}")


def _draw(model, guide, args, kwargs, num_samples: int, batch_size: int):
    """Draw from the guide, score under model and guide: vectorized in batches of at most
    ``batch_size`` draws where the model allows, one draw at a time otherwise."""
    with torch.no_grad(), pyro.validation_enabled(False):
        proto_model, proto_guide = _traces(model, guide, args, kwargs)
        proto_model.compute_log_prob()
        proto = {k: v for k, v in proto_model.nodes.items()
                 if v["type"] == "sample" and not site_is_subsample(v)}
        pdim = _nesting(proto_model, proto_guide) + 1
        out = _Draws()
        vectorized = True
        try:
            done = 0
            while done < num_samples:
                n = min(batch_size, num_samples - done)
                with pyro.plate(DRAW_PLATE, n, dim=-pdim):
                    mt, gt = _traces(model, guide, args, kwargs)
                _collect(mt, gt, n, pdim, proto, out)
                if done == 0:
                    _check_vectorized(model, args, kwargs, proto, out)
                done += n
        except Exception:  # noqa: BLE001 - any model that does not vectorize: loop instead
            vectorized = False
            out = _Draws()
            for _ in range(num_samples):
                mt, gt = _traces(model, guide, args, kwargs)
                _collect(mt, gt, None, pdim, proto, out)
    return out, proto, vectorized


# --------------------------------------------------------------------------- public API
def _versions() -> dict[str, str]:
    import pyro_nf

    # plain str: torch.__version__ is a str subclass that netCDF writers reject
    return {"pyro_nf_version": str(pyro_nf.__version__), "pyro_version": str(pyro.__version__),
            "torch_version": str(torch.__version__), "arviz_version": str(arviz_compat.version())}


def _chain(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[None] for k, v in arrays.items()}


def _plate_coords(proto, dims: dict[str, list[str]], coords: dict) -> dict:
    out = dict(coords)
    for site in proto.values():
        for f in site["cond_indep_stack"]:
            if f.vectorized and f.name not in out and f.name != DRAW_PLATE:
                out[f.name] = np.arange(f.size)
    used = {d for ds in dims.values() for d in ds}
    return {k: v for k, v in out.items() if k in used}


def to_inference_data(
    model,
    guide,
    *args: Any,
    num_samples: int = 4000,
    batch_size: int = 1000,
    posterior_predictive: bool = False,
    dims: dict[str, list[str]] | None = None,
    coords: dict[str, Any] | None = None,
    fit_result: Any = None,
    **kwargs: Any,
):
    """An ArviZ InferenceData of ``num_samples`` draws from a fitted guide (any Pyro autoguide).

    Groups:
        posterior: every latent site (constrained space) and ``pyro.deterministic`` site;
        sample_stats: ``log_p`` (model log joint), ``log_q`` (guide log density) and
            ``log_weight = log_p - log_q`` per draw;
        log_likelihood: per observation of every observed site (for ``az.loo``/``az.waic``);
        observed_data; posterior_predictive (with ``posterior_predictive=True``).
    Dimensions are named after the plates (``dims``/``coords`` override); ``attrs`` record the
    guide class, flow spec, and the final ELBO, steps and seconds of ``fit_result``.
    Draws are made in vectorized batches of at most ``batch_size`` (bounded memory) where the
    model vectorizes, one by one otherwise (``attrs["vectorized"]``, the stored key, says
    which).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    draws, proto, vectorized = _draw(model, guide, args, kwargs, num_samples, batch_size)
    groups, all_dims = _groups(draws, proto, dims)
    observed = groups["observed_data"]
    if posterior_predictive and observed:
        groups["posterior_predictive"] = _posterior_predictive(
            model, args, kwargs, groups["posterior"], observed, num_samples, vectorized)
    attrs = _attrs(guide, num_samples, vectorized, fit_result)
    return arviz_compat.from_dict(groups, coords=_plate_coords(proto, all_dims, coords or {}),
                                  dims=all_dims, attrs=attrs)


def _groups(draws: _Draws, proto, dims: dict[str, list[str]] | None
            ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """The posterior, sample_stats, log_likelihood and observed_data groups of the draws, and
    every variable's dimension names (the plates', overridden by ``dims``)."""
    values = draws.cat(draws.values)
    log_lik = draws.cat(draws.log_lik)
    log_p, log_q = np.concatenate(draws.log_p), np.concatenate(draws.log_q)
    all_dims = {name: _site_dims(name, proto[name], proto[name]["value"].shape)
                for name in list(values) + list(log_lik)}
    all_dims.update(dims or {})
    observed = {name: site["value"].detach().cpu().numpy() for name, site in proto.items()
                if _observed(site)}
    groups = {
        "posterior": _chain(values),
        "sample_stats": _chain({"log_p": log_p, "log_q": log_q, "log_weight": log_p - log_q}),
        "log_likelihood": _chain(log_lik),
        "observed_data": observed,
    }
    return groups, all_dims


def _posterior_predictive(model, args, kwargs, posterior: dict[str, np.ndarray],
                          observed: dict[str, np.ndarray], num_samples: int,
                          vectorized: bool) -> dict[str, np.ndarray]:
    """Replicated data of every observed site, one per posterior draw (its one chain)."""
    samples = {k: torch.as_tensor(v[0]) for k, v in posterior.items()}
    pred = pyro.infer.Predictive(poutine.uncondition(model), posterior_samples=samples,
                                 return_sites=list(observed), parallel=vectorized)
    with torch.no_grad():
        out = pred(*args, **kwargs)
    return _chain({k: v.reshape((num_samples,) + observed[k].shape).cpu().numpy()
                   for k, v in out.items()})


def _attrs(guide, num_samples: int, vectorized: bool, fit_result: Any) -> dict[str, Any]:
    """The attributes of every group: the guide, its flow, the versions and the fit."""
    attrs = {"inference": "variational", "guide": type(guide).__name__,
             "num_samples": num_samples, "vectorized": int(vectorized),
             "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
             **_versions()}
    if hasattr(guide, "flow_spec"):
        attrs["flow"] = guide.flow_spec()
    if fit_result is not None:
        attrs.update(final_elbo=float(fit_result.final_elbo), steps=int(fit_result.steps),
                     seconds=float(fit_result.seconds))
    return attrs


def from_mcmc(mcmc, *, dims: dict[str, list[str]] | None = None,
              coords: dict[str, Any] | None = None):
    """InferenceData from a finished ``pyro.infer.MCMC`` or a
    :class:`~pyro_nf.training.refinement.RefineResult` (``pyro_nf.refine``, or
    ``fit(...).refined``), named like :func:`to_inference_data` (sites, plate dimensions), so
    MCMC and variational posteriors compare without renaming. A refine result also gives
    ``sample_stats``: ``diverging``, ``acceptance_rate``, ``energy``, ``n_steps``,
    ``step_size`` and ``lp`` per chain and draw."""
    samples = mcmc.get_samples(group_by_chain=True)
    if not samples:
        raise ValueError("from_mcmc: the MCMC object has no samples; call mcmc.run(...) first")
    refined = getattr(mcmc, "source", None) == "refined"
    if refined:
        model, args, kwargs = mcmc.model, mcmc.args, mcmc.kwargs
    else:
        model = mcmc.kernel.model
        args, kwargs = getattr(mcmc, "_args", ()), getattr(mcmc, "_kwargs", {})
    with torch.no_grad(), pyro.validation_enabled(False):
        first = {k: v[0, 0] for k, v in samples.items()}
        trace = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    proto = {k: v for k, v in trace.nodes.items()
             if v["type"] == "sample" and not site_is_subsample(v)}
    posterior = {k: v.detach().cpu().numpy() for k, v in samples.items()}
    if refined:
        posterior.update(_deterministic(model, args, kwargs, samples, trace))
    all_dims = {name: _site_dims(name, proto[name], proto[name]["value"].shape)
                for name in posterior if name in proto}
    all_dims.update(dims or {})
    observed = {name: site["value"].detach().cpu().numpy() for name, site in proto.items()
                if _observed(site)}
    groups = {"posterior": posterior, "observed_data": observed}
    attrs = {"inference": "mcmc", "sampler": type(mcmc.kernel).__name__ if not refined else
             "refine (HMC in the guide's coordinates)", **_versions()}
    if refined:
        groups["sample_stats"] = dict(mcmc.sample_stats)
        attrs.update(ess_bulk=float(mcmc.ess_bulk), rhat=float(mcmc.rhat),
                     converged=int(mcmc.converged), seconds=float(mcmc.seconds),
                     gradient_evaluations=int(mcmc.gradient_evaluations))
    return arviz_compat.from_dict(groups, coords=_plate_coords(proto, all_dims, coords or {}),
                                  dims=all_dims, attrs=attrs)


def _deterministic(model, args, kwargs, samples: dict, trace) -> dict[str, np.ndarray]:
    """The model's ``pyro.deterministic`` sites at each (chain, draw) of ``samples``, as
    :func:`to_inference_data` has them (one model run per draw)."""
    names = [k for k, v in trace.nodes.items() if v["type"] == "sample" and _is_deterministic(v)]
    if not names:
        return {}
    chains, draws = next(iter(samples.values())).shape[:2]
    flat = {k: v.reshape((chains * draws,) + v.shape[2:]) for k, v in samples.items()}
    pred = pyro.infer.Predictive(model, posterior_samples=flat, return_sites=names,
                                 parallel=False)
    with torch.no_grad(), pyro.validation_enabled(False):
        out = pred(*args, **kwargs)
    return {k: v.reshape((chains, draws) + v.shape[1:]).detach().cpu().numpy()
            for k, v in out.items() if k in names}


_PARAM = re.compile(r"^([^\[]+)(?:\[([0-9,\s]+)\])?$")


def posteriordb_root(path: str | Path) -> Path:
    """The ``posterior_database`` folder under ``path`` (or ``path`` itself)."""
    path = Path(path)
    for candidate in (path, path / "posterior_database"):
        if (candidate / "reference_posteriors").is_dir():
            return candidate
    raise FileNotFoundError(f"no posteriordb found at {path}: expected a folder with "
                            "reference_posteriors/ (e.g. ../shared/posteriordb)")


def from_posteriordb(path: str | Path, name: str):
    """The reference draws of posterior ``name`` (e.g. ``"eight_schools-eight_schools_
    noncentered"``) from a posteriordb checkout: 10 chains of long-run NUTS draws. Stan's
    1-based vector names (``beta[2]``) become one variable per site with 0-based elements."""
    root = posteriordb_root(path)
    draws_dir = root / "reference_posteriors" / "draws" / "draws"
    zipped = draws_dir / f"{name}.json.zip"
    if zipped.exists():
        with zipfile.ZipFile(zipped) as zf:
            chains = json.loads(zf.read(zf.namelist()[0]))
    elif (draws_dir / f"{name}.json").exists():
        chains = json.loads((draws_dir / f"{name}.json").read_text())
    else:
        known = sorted(p.name.split(".json")[0] for p in draws_dir.glob("*.json*"))
        raise FileNotFoundError(f"no reference draws named {name!r} in {draws_dir}; "
                                f"available: {sorted(set(known))}")
    grouped: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for key in chains[0]:
        m = _PARAM.match(key)
        if m is None:
            raise ValueError(f"{zipped}: cannot parse parameter name {key!r}")
        site, idx = m.group(1), m.group(2)
        index = tuple(int(i) - 1 for i in idx.split(",")) if idx else ()
        grouped.setdefault(site, {})[index] = np.stack([np.asarray(c[key]) for c in chains])
    posterior = {}
    for site, parts in grouped.items():
        if list(parts) == [()]:
            posterior[site] = parts[()]
            continue
        shape = tuple(max(i[d] for i in parts) + 1 for d in range(len(next(iter(parts)))))
        first = next(iter(parts.values()))
        arr = np.empty(first.shape + shape)
        for index, values in parts.items():
            arr[(...,) + index] = values
        posterior[site] = arr
    attrs = {"inference": "reference", "source": f"posteriordb:{name}", **_versions()}
    return arviz_compat.from_dict({"posterior": posterior}, coords={}, dims={}, attrs=attrs)
