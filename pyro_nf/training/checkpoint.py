"""Checkpoints of :func:`pyro_nf.fit`: parameters, the guide's buffers, optimizer state, RNG
states and losses, written atomically and read back with ``torch.load(weights_only=True)`` so
that a checkpoint from someone else cannot run code while it loads."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def save_checkpoint(path: Path, optim, result: Any, lr_factor: float) -> None:
    store = pyro.get_param_store()
    state = {
        "params": {name: p.detach().clone() for name, p in store.named_parameters()},
        "buffers": _guide_buffers(result.guide),
        "optim": optim.get_state(),
        "losses": list(result.losses),
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "converged_at": result.converged_at,
        "lr_factor": lr_factor,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": numpy_state_out()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, state)


def _guide_buffers(guide: Any) -> dict[str, torch.Tensor]:
    """The guide's buffers (AutoFlow's Gaussian anchor, permutations): state a checkpoint
    must restore along with the parameters, since a resumed guide's set-up may differ."""
    if not isinstance(guide, torch.nn.Module):
        return {}
    return {name: b for name, b in guide.named_buffers() if b is not None}


def numpy_state_out() -> dict:
    """NumPy's global MT19937 state (the one users seed) as tensors and numbers only, so that
    the checkpoint loads with ``weights_only=True``."""
    name, key, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def numpy_state_in(state: dict) -> None:
    key = state["key"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], key, state["pos"], state["has_gauss"],  # noqa: NPY002
                         state["gauss"]))


def _load_checkpoint(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``: a checkpoint holds tensors, numbers, strings
    and containers only, so a file that would build any other object (a crafted pickle can run
    code while it loads) is refused before anything in it runs."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"fit: refused to load checkpoint {path}: it holds objects other than "
                         "tensors and numbers (not a pyro-nf checkpoint, or not a safe file); "
                         f"resume only from checkpoints you wrote. {str(exc).splitlines()[0]}"
                         ) from None
    except Exception as exc:  # noqa: BLE001 - reported with the file's name
        raise ValueError(f"fit: could not read checkpoint {path}: {exc}") from exc


def restore_checkpoint(path: Path, model, guide, loss_fn, optim, result: Any, args, kwargs):
    state = _load_checkpoint(path)
    with torch.no_grad():
        loss_fn.loss(model, guide, *args, **kwargs)  # creates every parameter
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    missing = sorted(set(state["params"]) - set(current))
    if missing:
        raise ValueError(f"fit: checkpoint {path} has parameters {missing} that this "
                         "model/guide does not create; was it written by another model?")
    with torch.no_grad():
        for name, value in state["params"].items():
            current[name].copy_(value)
        buffers = _guide_buffers(guide)
        for name, value in state.get("buffers", {}).items():
            if name not in buffers or buffers[name].shape != value.shape:
                raise ValueError(f"fit: checkpoint {path} has the guide buffer {name} "
                                 f"{tuple(value.shape)}, which this guide does not have in that "
                                 "shape; was it written by another guide?")
            buffers[name].copy_(value)
    optim.set_state(state["optim"])
    result.losses = list(state["losses"])
    result.steps = int(state["steps"])
    result.skipped_steps = int(state["skipped_steps"])
    result.converged_at = state["converged_at"]
    result.converged = result.converged_at is not None
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    numpy_state_in(state["rng"]["numpy"])
    return float(state["lr_factor"])
