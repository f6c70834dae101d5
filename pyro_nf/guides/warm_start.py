"""Warm starts: read a fitted Gaussian autoguide's mean and covariance in AutoFlow's packing.

The covariance Sigma is split into marginal scales sigma = sqrt(diag Sigma), which go to the
affine map, and a correlation part for the base: ``diag(1/sigma) L`` for a full Cholesky factor,
``(W / sigma, d / sigma^2)`` for a low-rank one. The start strategy that uses it is
:class:`~pyro_nf.guides.start.FromGuide` (``AutoFlow(model, start=FromGuide(fitted))``).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)


def _deep_getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


SUPPORTED = ("AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal",
             "AutoLowRankMultivariateNormal", "AutoLaplaceApproximation")


def infer_base(fitted: Any) -> str:
    """The AutoFlow base that keeps the fitted guide's covariance structure."""
    if isinstance(fitted, (AutoMultivariateNormal, AutoLaplaceApproximation)):
        return "full"
    if isinstance(fitted, AutoLowRankMultivariateNormal):
        return "lowrank"
    if isinstance(fitted, (AutoNormal, AutoDiagonalNormal)):
        return "diagonal"
    raise TypeError(f"FromGuide supports {', '.join(SUPPORTED)}; got "
                    f"{type(fitted).__name__}")


def _check_fitted(fitted: Any) -> None:
    if getattr(fitted, "prototype_trace", None) is None:
        raise ValueError(f"FromGuide: the {type(fitted).__name__} has not been run "
                         "yet; fit it (or call it once with the model's arguments) first")


def _same_sites(fitted: Any, guide: Any) -> None:
    theirs = list(fitted._unconstrained_shapes.items())
    ours = list(guide._unconstrained_shapes.items())
    if theirs != ours:
        raise ValueError("FromGuide: the fitted guide's latent sites "
                         f"{[k for k, _ in theirs]} differ from this model's "
                         f"{[k for k, _ in ours]}")


def _moments(fitted: Any, guide: Any, args: tuple, kwargs: dict):
    """(mean, kind, payload): kind 'diag' (scales), 'tril' (L) or 'lowrank' ((W, d))."""
    _check_fitted(fitted)
    if isinstance(fitted, AutoLaplaceApproximation):  # needs autograd for its Hessian
        # the first guide call may run inside an ELBO's trace (and a vectorized-particle
        # plate), or under no_grad: the Laplace fit's own model runs must not reach those
        # handlers, and its Hessian needs gradients
        with poutine.block(), torch.enable_grad():
            try:
                gaussian = fitted.laplace_approximation(*args, **kwargs)
            except torch.linalg.LinAlgError as err:
                raise ValueError(
                    "FromGuide: the Laplace approximation's covariance (the inverse "
                    "Hessian at the fitted MAP) is not positive definite, so it cannot start "
                    "the flow: the MAP is degenerate (e.g. a funnel's scale going to 0) or not "
                    "converged. Fit the AutoLaplaceApproximation longer, or warm-start from "
                    "an AutoNormal or AutoMultivariateNormal instead") from err
        return _moments(gaussian, guide, args, kwargs)
    with torch.no_grad():
        if isinstance(fitted, AutoNormal):
            locs, scales = [], []
            for name in guide._unconstrained_shapes:
                try:
                    locs.append(_deep_getattr(fitted.locs, name).reshape(-1))
                    scales.append(_deep_getattr(fitted.scales, name).reshape(-1))
                except AttributeError:
                    raise ValueError(f"FromGuide: the fitted AutoNormal has no "
                                     f"site {name!r}; was it fitted on this model?") from None
            return torch.cat(locs), "diag", torch.cat(scales)
        _same_sites(fitted, guide)
        if isinstance(fitted, AutoMultivariateNormal):
            return fitted.loc, "tril", fitted.scale[..., None] * fitted.scale_tril
        if isinstance(fitted, AutoLowRankMultivariateNormal):
            scale = fitted.scale
            return fitted.loc, "lowrank", (fitted.cov_factor * scale[..., None], scale * scale)
        return fitted.loc, "diag", fitted.scale


def _marginal(index: torch.Tensor, mean: torch.Tensor, kind: str, payload: Any):
    """The moments of the coordinates ``index`` alone: a fitted Gaussian over every packed
    coordinate, for a guide that pins some (:mod:`pyro_nf.densities.pinning`)."""
    index = index.to(mean.device)
    if kind == "diag":
        return mean[index], payload[index]
    if kind == "tril":
        tril = payload[index]
        return mean[index], torch.linalg.cholesky(tril @ tril.T)
    W, d = payload
    return mean[index], (W[index], d[index])


def gaussian_of(fitted: Any, guide: Any, base: str, args: tuple, kwargs: dict):
    """``(loc, scale, base_params)`` for ``guide`` (an AutoFlow with ``base``) reproducing the
    fitted Gaussian as closely as the base allows."""
    ref = guide._prototype_tensor
    mean, kind, payload = _moments(fitted, guide, args, kwargs)
    if guide.pins is not None and mean.shape[-1] == len(guide.pins.free):
        mean, payload = _marginal(guide.pins.index, mean, kind, payload)
    to = {"dtype": ref.dtype, "device": ref.device}
    mean = mean.detach().to(**to)
    if mean.shape != ref.shape:
        raise ValueError(f"FromGuide: the fitted guide has {mean.numel()} latent "
                         f"dimensions, this model {ref.numel()}")
    if kind == "diag":
        return mean, payload.detach().to(**to), {}
    if kind == "tril":
        tril = payload.detach().to(**to)
        sigma = tril.pow(2).sum(-1).sqrt()
        return mean, sigma, ({"scale_tril": tril / sigma[:, None]} if base == "full" else {})
    W, d = (t.detach().to(**to) for t in payload)
    sigma = (W.pow(2).sum(-1) + d).sqrt()
    if base == "lowrank":
        return mean, sigma, {"cov_factor": W / sigma[:, None], "cov_diag": d / sigma ** 2}
    if base == "full":
        Wn, dn = W / sigma[:, None], d / sigma ** 2
        corr = Wn @ Wn.T + torch.diag(dn)
        return mean, sigma, {"scale_tril": torch.linalg.cholesky(corr)}
    return mean, sigma, {}
