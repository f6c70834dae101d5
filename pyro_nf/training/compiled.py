"""The compiled ELBO that :func:`~pyro_nf.fit` uses by default where it is exact.

An SVI step of a flow guide spends most of its time in Python: Pyro's traces of the guide and
the model (one message per site through every handler), the per-site packing, the centering
layer's prior run. ``torch.jit.trace`` records the tensor operations of one such step once and
replays them without the Python (Pyro's ``JitTrace_ELBO``) with the same loss and gradients
to float round-off (the step's cost, measured: ``benchmarks/results/overhead.md``).

The traced graph runs under ``torch.jit.optimized_execution(False)``: the optimizing executor
swaps in its own derivatives after a few calls, and on eight schools those gave NaN gradients
where autograd's are finite (for some initializations, from the third call on).

A trace is only right for a model whose structure does not change between calls. So
:func:`compiled_elbo` compares the compiled loss and gradients with the eager ones on the same
draws at three seeds before it is used, and keeps the eager ELBO (with a one-line note) when
they differ, when tracing fails, or where a trace cannot be right by construction:
subsampled plates (a fresh minibatch per call), an ELBO other than a plain ``Trace_ELBO``.
Tensors passed to the model by keyword are held in the trace as constants (Pyro's JIT keys
its traces by their identity), so they must not be changed in place during the fit. If a
compiled step later raises, that step and the rest of the fit run eagerly.
A trace also freezes whatever Python state the model reads (a call counter, an annealing
weight kept in a global): the loss is compared again every :data:`RECHECK_EVERY` steps, and
the ELBO falls back to eager when it no longer agrees, but between checks such a model is
fitted as it was when traced: pass ``elbo="trace"`` for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO
from pyro.poutine.util import site_is_subsample

#: Relative tolerance of the loss and of each gradient (against its largest entry) for the
#: compiled ELBO to count as equal to the eager one (float32 round-off is about 1e-6 here).
RTOL = 1e-4
#: The seeds at which the two are compared (several draws: a branch on a latent value that
#: the trace froze shows as a difference at one of them).
CHECK_SEEDS = (11, 12, 13)
#: Steps between two comparisons of the compiled loss with the eager one during a fit.
RECHECK_EVERY = 200


class CompiledTrace_ELBO(Trace_ELBO):
    """A ``Trace_ELBO`` that runs a checked ``JitTrace_ELBO`` and falls back to itself, for
    the rest of its life, at the first compiled step that raises."""

    _pyro_nf_checked = True  # the particle check ran on the eager ELBO it was made from

    def __init__(self, eager: Trace_ELBO, jit: JitTrace_ELBO) -> None:
        super().__init__(num_particles=eager.num_particles,
                         max_plate_nesting=plate_nesting(eager),
                         vectorize_particles=eager.vectorize_particles)
        self.jit: JitTrace_ELBO | None = jit
        self.steps = 0

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                       ) -> float:
        if self.jit is not None:
            self.steps += 1
            try:
                if self.steps % RECHECK_EVERY == 0:
                    self._recheck(model, guide, args, kwargs)
                if self.jit is not None:
                    with torch.jit.optimized_execution(False):
                        return self.jit.loss_and_grads(model, guide, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the eager step says what is wrong
                self.jit = None
                _note(f"a compiled step failed ({_first_line(error)})")
        return super().loss_and_grads(model, guide, *args, **kwargs)

    @torch.no_grad()
    def _recheck(self, model, guide, args, kwargs) -> None:
        """Compare the compiled loss with the eager one on the same draws; on a difference
        (the model's Python state moved on since the trace) run eagerly from now on."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), torch.jit.optimized_execution(False):
            torch.manual_seed(CHECK_SEEDS[0])
            eager = float(super().loss(model, guide, *args, **kwargs))
            torch.manual_seed(CHECK_SEEDS[0])
            compiled = float(self.jit.loss_and_surrogate_loss(model, guide, *args,
                                                               **kwargs)[0])
        difference = _difference((eager, {}), (compiled, {}))
        if difference:
            self.jit = None
            _note(f"its loss no longer agrees with the eager one after {self.steps} steps "
                  f"({difference}): does the model read Python state that changes?")


def compiled_elbo(loss_fn: ELBO, model: Callable, guide: Callable, args: tuple,
                  kwargs: dict) -> ELBO:
    """``loss_fn`` compiled (:class:`CompiledTrace_ELBO`) when that is exact for this model and
    guide (module docstring), else ``loss_fn`` itself. Runs under a forked RNG and leaves no
    gradient behind; call it once the guide's parameters exist."""
    if type(loss_fn) is not Trace_ELBO:
        return loss_fn
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    jit = JitTrace_ELBO(num_particles=loss_fn.num_particles,
                        max_plate_nesting=plate_nesting(loss_fn),
                        vectorize_particles=loss_fn.vectorize_particles,
                        ignore_jit_warnings=True)
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(), \
                torch.jit.optimized_execution(False):
            # torch 2.13 deprecates torch.jit.trace, which Pyro's JIT uses; when it is gone
            # the trace raises here and the ELBO stays eager
            warnings.simplefilter("ignore", DeprecationWarning)
            if _subsampled(model, guide, args, kwargs):
                return loss_fn
            # the first call traces (it runs the model and guide several times, drawing as
            # it goes); the comparisons are of later calls, as the fit makes them
            _loss_and_grads(jit, model, guide, args, kwargs, CHECK_SEEDS[0])
            for seed in CHECK_SEEDS:
                eager = _loss_and_grads(loss_fn, model, guide, args, kwargs, seed)
                compiled = _loss_and_grads(jit, model, guide, args, kwargs, seed)
                difference = _difference(eager, compiled)
                if difference:
                    _note(f"its loss or gradients differ from the eager ones ({difference}): "
                          "does the model's structure depend on a latent value?")
                    return loss_fn
    except Exception as error:  # noqa: BLE001 - tracing failed: eager, as before
        _note(f"it does not compile ({_first_line(error)})")
        return loss_fn
    finally:
        for p in params + [p.unconstrained() for p in pyro.get_param_store().values()]:
            p.grad = None
    return CompiledTrace_ELBO(loss_fn, jit)


def plate_nesting(loss_fn: ELBO) -> float:
    """The model's plate nesting as an ELBO's constructor takes it (the ELBO holds one more
    when it vectorizes its particles: theirs is the leftmost plate)."""
    extra = loss_fn.vectorize_particles and loss_fn.num_particles > 1
    return loss_fn.max_plate_nesting - (1 if extra else 0)


def _loss_and_grads(loss_fn: ELBO, model, guide, args, kwargs, seed: int
                    ) -> tuple[float, dict[str, torch.Tensor]]:
    store = pyro.get_param_store()
    for p in store.values():
        p.unconstrained().grad = None
    torch.manual_seed(seed)
    loss = loss_fn.loss_and_grads(model, guide, *args, **kwargs)
    grads = {name: p.unconstrained().grad.detach().clone() for name, p in store.items()
             if p.unconstrained().grad is not None}
    return float(loss), grads


def _difference(eager: tuple, compiled: tuple) -> str:
    """'' when the two (loss, gradients) agree to RTOL, else what differs."""
    (loss_a, grads_a), (loss_b, grads_b) = eager, compiled
    if not (math.isfinite(loss_a) and math.isfinite(loss_b)):
        return "a loss is not finite" if loss_a != loss_b else ""
    if abs(loss_a - loss_b) > RTOL * max(1.0, abs(loss_a)):
        return f"loss {loss_a:.6g} against {loss_b:.6g}"
    if grads_a.keys() != grads_b.keys():
        return "not the same parameters"
    for name, a in grads_a.items():
        b = grads_b[name]
        finite = torch.isfinite(a)
        if not torch.equal(finite, torch.isfinite(b)):
            return f"the gradient of {name} (not finite in one of the two)"
        scale = float(a[finite].abs().max()) if bool(finite.any()) else 0.0
        if not torch.allclose(a[finite], b[finite], rtol=0.0, atol=RTOL * max(scale, 1e-12)):
            return f"the gradient of {name}"
    return ""


@torch.no_grad()
def _subsampled(model, guide, args, kwargs) -> bool:
    """Whether the guide or the model subsamples a plate (a new minibatch every call)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args,
                                                                                   **kwargs)
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample" and site_is_subsample(site):
                fn = site["fn"]
                if getattr(fn, "subsample_size", None) not in (None, getattr(fn, "size", None)):
                    return True
    return False


def _first_line(error: Exception) -> str:
    line = next(iter(str(error).splitlines()), "")[:160]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _note(why: str) -> None:
    warnings.warn(f"fit: the ELBO runs eagerly (slower): the compiled one is not used because "
                  f"{why}. Pass elbo='trace' to skip the attempt.", UserWarning, stacklevel=4)
