"""One optimizer step over all of a fit's parameters at once.

``pyro.optim.Adam`` keeps one torch optimizer per parameter tensor and steps them one by one;
a flow guide has a few dozen tensors, so a step of :func:`~pyro_nf.fit` spent about as long in
that Python loop (and in its own per-tensor guards) as in the flow itself. Here the same
arithmetic runs as a handful of ``torch._foreach_*`` kernels over the list of tensors:

- :class:`JointAdam`: Adam (Kingma & Ba, 2015) with per-parameter state, stepped through
  ``torch.optim.adam.adam`` with ``fused=True`` (``foreach=True`` where torch has no fused
  kernel); its state reads and writes in the format of
  ``pyro.optim.Adam`` (a one-tensor torch state dict per parameter name), so checkpoints move
  between the two.
- :func:`finite_norms`, :func:`clip_per_tensor` and :class:`Snapshot`: ``fit``'s non-finite
  guard, per-tensor clipping and restore point on the same lists.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.optim
import torch
from torch.optim.adam import adam

_ADAM_ARGS = {"lr", "betas", "eps", "weight_decay"}


class JointAdam(pyro.optim.PyroOptim):
    """Adam over every parameter in one fused (or foreach) step; a drop-in for
    ``pyro.optim.Adam``.

    Args:
        optim_args: ``{"lr": ..., "betas": ..., "eps": ..., "weight_decay": ...}`` as for
            ``pyro.optim.Adam`` (missing keys: torch's defaults).

    A parameter is stepped only when it has a gradient, as Pyro's per-tensor optimizers do.
    ``lr_factor`` multiplies the learning rate (``fit``'s schedule and guard set it).
    """

    def __init__(self, optim_args: dict[str, Any]) -> None:
        unknown = set(optim_args) - _ADAM_ARGS
        if unknown:
            raise ValueError(f"JointAdam: unknown argument(s) {sorted(unknown)}; it takes "
                             f"{sorted(_ADAM_ARGS)}")
        super().__init__(torch.optim.Adam, dict(optim_args))
        self.lr = float(optim_args.get("lr", 1e-3))
        self.betas = tuple(optim_args.get("betas", (0.9, 0.999)))
        self.eps = float(optim_args.get("eps", 1e-8))
        self.weight_decay = float(optim_args.get("weight_decay", 0.0))
        self.lr_factor = 1.0
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        #: torch's fused Adam (one kernel for all tensors; the timings against foreach:
        #: docs/notes/step_cost_limits.md); off for good once torch refuses it (a device or
        #: dtype it lacks)
        self.fused = True

    def _register(self, p: torch.Tensor) -> None:
        name = pyro.get_param_store().param_name(p)
        saved = self._state_waiting_to_be_consumed.pop(name, None)
        self.state[p] = _from_torch_state(saved or {"state": {}}, p)

    @torch.no_grad()
    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Step every parameter of ``params`` that has a gradient."""
        stepped = []
        for p in params:
            if p not in self.state:
                self._register(p)
            if p.grad is not None:
                stepped.append(p)
        if not stepped:
            return
        states = [self.state[p] for p in stepped]
        lists = ([p.detach() for p in stepped], [p.grad for p in stepped],
                 [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                 [s["step"] for s in states])
        options = dict(amsgrad=False, beta1=self.betas[0], beta2=self.betas[1],
                       lr=self.lr * self.lr_factor, weight_decay=self.weight_decay,
                       eps=self.eps, maximize=False)
        if self.fused:  # one kernel for all tensors; torch checks device and dtype first
            try:
                adam(*lists, foreach=False, fused=True, **options)
                return
            except RuntimeError:
                self.fused = False
        adam(*lists, foreach=True, **options)

    def get_state(self) -> dict[str, Any]:
        """``{parameter name: a one-tensor torch Adam state dict}``, as ``pyro.optim.Adam``."""
        store = pyro.get_param_store()
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                 "weight_decay": self.weight_decay, "amsgrad": False, "maximize": False,
                 "foreach": True, "capturable": False, "differentiable": False,
                 "fused": None, "params": [0]}
        return {store.param_name(p): {"state": {0: {k: v.clone() for k, v in s.items()}},
                                      "param_groups": [dict(group)]}
                for p, s in self.state.items()}

    def set_state(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`get_state` (or ``pyro.optim.Adam``'s): each parameter's state is
        taken up when the parameter is next seen."""
        self.state.clear()
        # copies: a torch optimizer's state dict holds its live tensors
        self._state_waiting_to_be_consumed.update(
            {name: {"state": {k: {key: v.clone() if torch.is_tensor(v) else v
                                  for key, v in inner.items()}
                              for k, inner in saved["state"].items()}}
             for name, saved in state_dict.items()})


def _from_torch_state(saved: dict[str, Any], p: torch.Tensor) -> dict[str, torch.Tensor]:
    """A parameter's state from a one-tensor torch Adam state dict (fresh when empty)."""
    inner = saved["state"].get(0) or saved["state"].get("0") or {}
    # a float32 step on the parameter's device, as torch's fused Adam keeps it
    step = torch.as_tensor(inner.get("step", 0.0), dtype=torch.float32).to(p.device).clone()
    if not inner:  # none saved, or a torch optimizer that had not stepped yet
        return {"step": step, "exp_avg": torch.zeros_like(p.detach()),
                "exp_avg_sq": torch.zeros_like(p.detach())}
    return {"step": step,
            "exp_avg": inner["exp_avg"].to(p).clone(),
            "exp_avg_sq": inner["exp_avg_sq"].to(p).clone()}


@torch.no_grad()
def finite_norms(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[bool]]:
    """Every tensor's 2-norm (one foreach kernel) and whether the tensor is finite. A norm that
    overflows although every entry is finite (float32 entries above about 1e19) is told apart
    from a non-finite entry by a direct look at that tensor."""
    if not tensors:
        return torch.zeros(0), []
    norms = torch.stack(torch._foreach_norm(tensors))
    finite = torch.isfinite(norms)
    if bool(finite.all()):  # the usual case: one synchronisation
        return norms, [True] * len(tensors)
    flags = finite.tolist()
    return norms, [ok or bool(torch.isfinite(t).all()) for ok, t in zip(flags, tensors)]


@torch.no_grad()
def clip_per_tensor(grads: list[torch.Tensor], norms: torch.Tensor, max_norm: float) -> None:
    """Scale each gradient whose norm exceeds ``max_norm`` down to it (the same arithmetic as
    ``torch.nn.utils.clip_grad_norm_`` applied to each tensor alone)."""
    if not grads:
        return
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coef.to(grads[0].dtype).unbind()))


class Snapshot:
    """A restore point of a list of parameters: :meth:`save` copies them (one foreach copy
    while the list is the same as last time), :meth:`restore` puts them back."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []

    @torch.no_grad()
    def save(self, params: list[torch.Tensor]) -> None:
        same = len(params) == len(self.params) and all(
            a is b and a.shape == c.shape and a.dtype == c.dtype
            for a, b, c in zip(params, self.params, self.buffers))
        if same:
            torch._foreach_copy_(self.buffers, [p.detach() for p in params])
        else:
            self.params, self.buffers = list(params), [p.detach().clone() for p in params]

    @torch.no_grad()
    def restore(self, params: list[torch.Tensor]) -> None:
        """Put back the saved values of ``params`` (those not saved, or reshaped: as is)."""
        saved = {id(p): b for p, b in zip(self.params, self.buffers)}
        for p in params:
            buf = saved.get(id(p))
            if buf is not None and buf.shape == p.shape:
                p.copy_(buf)
