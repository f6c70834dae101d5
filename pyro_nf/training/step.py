"""One guarded SVI step of :func:`~pyro_nf.fit`: the loss and gradients, the non-finite guard
(a step whose loss, gradients or update is not finite is undone), per-tensor clipping, the
restore point and the optimizer's step, on the lists of :mod:`pyro_nf.training.optim`."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import ELBO

from pyro_nf.training.optim import JointAdam, Snapshot, clip_per_tensor, finite_norms

#: What a float32 failure says: the one switch to float64 for the whole model and guide.
_FLOAT64_HINT = ("; the model runs in float32, whose range and resolution fail for some "
                 "numerics (a long recursion that overflows, a 1e-10 kernel jitter): fit it in "
                 "float64 with torch.set_default_dtype(torch.float64) before building the "
                 "model's data and the guide.")
#: Below this the guard stops the fit with NonFiniteLossError (40 halvings, about 1e-12).
MIN_LR_FACTOR = 0.5 ** 40


class NonFiniteLossError(FloatingPointError):
    """Repeated non-finite losses, gradients or parameters that the guard could not recover."""


def not_positive_definite(exc: Exception) -> bool:
    first = next(iter(str(exc).splitlines()), "")
    return isinstance(exc, torch.linalg.LinAlgError) or "PositiveDefinite" in first


def numerics_error(exc: Exception) -> NonFiniteLossError:
    """The error for a model whose covariance fails at its start, naming float64 in float32."""
    first = next(iter(str(exc).splitlines()), "")
    hint = _FLOAT64_HINT if torch.get_default_dtype() == torch.float32 else "."
    return NonFiniteLossError(f"fit: a covariance or Cholesky factor of the model is not "
                              f"positive definite ({first[:160]}){hint}")


def _optimizers(optim: pyro.optim.PyroOptim):
    return list(getattr(optim, "optim_objs", {}).values())


def _ensure_optimizers(optim: pyro.optim.PyroOptim, params: list[torch.Tensor]) -> None:
    """Create the per-parameter optimizers of new parameters without stepping them (torch
    optimizers skip a parameter whose grad is None), so their learning rate can be set
    before their first step (JointAdam has one learning rate for all: nothing to do)."""
    if isinstance(optim, JointAdam):
        return
    known = getattr(optim, "optim_objs", {})
    for p in params:
        if p not in known:
            grad, p.grad = p.grad, None
            optim([p])
            p.grad = grad


def _set_lr_factor(optim: pyro.optim.PyroOptim, factor: float) -> None:
    if isinstance(optim, JointAdam):
        optim.lr_factor = factor
        return
    for opt in _optimizers(optim):
        # a pyro.optim LR scheduler holds its torch optimizer in .optimizer
        for group in getattr(opt, "optimizer", opt).param_groups:
            group.setdefault("pyro_nf_base_lr", group["lr"])
            group["lr"] = group["pyro_nf_base_lr"] * factor


def _param_names() -> dict[int, str]:
    return {id(p): name for name, p in pyro.get_param_store().named_parameters()}


def guarded_step(loss_fn: ELBO, model, guide, args, kwargs, optim, factor: float,
                 clip_norm: float | None, snapshot: Snapshot, started: bool,
                 reduce: Callable[[float, list], tuple[float, list]] | None = None):
    """One guarded step: ``(loss, None)``, or ``(loss, (what, parameters))`` when the loss,
    a gradient (``"gradients"``) or an updated value (``"values"``) was not finite and the
    parameters were put back as they were before it. ``reduce(loss, params)`` (data-parallel
    fits: :mod:`pyro_nf.training.distributed`) averages the gradients and the loss over the
    processes before anything looks at them and returns the mean loss and the parameters to
    step (every parameter of the fit, in one order on every process, whatever this process's
    step touched), so every process takes the same decisions on the same tensors."""
    try:
        with poutine.trace(param_only=True) as capture:
            loss = loss_fn.loss_and_grads(model, guide, *args, **kwargs)
    except (torch.linalg.LinAlgError, ValueError) as exc:
        linalg = not_positive_definite(exc)
        if linalg and not started:  # at the start: the model's numerics
            raise numerics_error(exc) from exc
        # later, or Pyro's validation refusing a non-finite parameter: a bad step
        if not linalg and ("invalid values" not in str(exc) or not started):
            raise
        params = _captured(capture)
        _drop_grads(params)
        if reduce is not None:  # the other processes wait for this one's part
            params = reduce(float("nan"), params)[1]
            _drop_grads(params)
        snapshot.restore(params)
        return float("nan"), ("gradients", [])
    params = _captured(capture)
    if reduce is not None:
        loss, params = reduce(loss, params)
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    norms, finite = finite_norms(grads)
    if not math.isfinite(loss) or not all(finite):
        bad = [p for p, ok in zip(with_grad, finite) if not ok]
        _drop_grads(params)
        snapshot.restore(params)
        return loss, ("gradients", bad)
    if clip_norm is not None:  # per tensor: see fit's docstring
        clip_per_tensor(grads, norms, clip_norm)
    snapshot.save(params)
    _ensure_optimizers(optim, params)
    _set_lr_factor(optim, factor)
    optim(params)
    _drop_grads(params)
    finite = finite_norms([p.detach() for p in params])[1]
    broken = [p for p, ok in zip(params, finite) if not ok]
    if broken:
        snapshot.restore(params)
        return loss, ("values", broken)
    return loss, None


def _drop_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def _captured(capture) -> list[torch.Tensor]:
    """The unconstrained parameters a step touched, in a deterministic order."""
    return list(dict.fromkeys(site["value"].unconstrained()
                              for site in capture.trace.nodes.values()))


def raise_if_stuck(bad_in_a_row: int, limit: int, params, what: str, loss: float,
                    lr_factor: float) -> None:
    if bad_in_a_row < limit and lr_factor >= MIN_LR_FACTOR:
        return
    names = _param_names()
    labels = sorted({names.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in params})
    what = (f"{bad_in_a_row} consecutive steps with non-finite {what}" if bad_in_a_row >= limit
            else f"steps with non-finite {what} halved the learning rate to "
                 f"{lr_factor:.1e} of its value, where the fit cannot move")
    raise NonFiniteLossError(
        f"fit: {what} (last loss {loss}); "
        f"parameters affected: {labels or 'none (the loss itself is not finite)'}. Check the "
        "model for invalid parameter values (e.g. a scale that can reach 0), lower the "
        "learning rate, or start the guide closer to the posterior (init_scale, init_loc_fn)"
        + (_FLOAT64_HINT if any(p.dtype == torch.float32 for p in params) else ".")
    )
