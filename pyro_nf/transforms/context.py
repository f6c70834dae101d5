"""Base classes of the conditional (amortized) flow layers; each family's conditional form
lives in the family's module (``ConditionalPlanar`` in :mod:`pyro_nf.transforms.planar`, ...).

A conditional layer is a bijection f(. ; h) of R^D for every context h in R^C. As a Pyro
:class:`~pyro.distributions.conditional.ConditionalTransformModule`, ``layer.condition(h)``
returns the map for a context of shape (..., C): a :class:`ConditionedFlow`, which is a
:class:`~pyro_nf.transforms.Flow` (``forward_and_log_det``, ``inverse_and_log_det``, ``inv``,
``log_abs_det_jacobian``) batched over data points. An input x of shape (..., D) and the
context broadcast in their batch dimensions: x[n] goes through f(. ; h[n]).

Two ways of making a layer depend on h, both from the literature:

* *hypernetwork* (planar, radial, Sylvester): every flow parameter is an output of a network of
  h, theta(h) = b + W g(h) (:class:`HyperNet`), and the layer's invertibility constraints
  (planar's u_hat, radial's beta >= -alpha, Sylvester's diag(R) diag(R~) > -1 and orthonormal
  Q) are applied per data point to theta(h) by the same functions the unconditional layer uses.
  This is the amortization of Rezende & Mohamed (2015, Sec. 4) and of van den Berg et al.
  (2018, Sec. 3, "amortized" Sylvester flows), where the encoder outputs the flow parameters.
* *conditioner input* (coupling, autoregressive): the conditioner network takes h as an extra
  input (concatenated for coupling MLPs; for MADE fed unmasked to the first hidden layer, so
  every output depends on h, as in IAF's context (Kingma et al., 2016)).

Every conditional layer starts as its unconditional twin does, for every context: the output
layer's weights are zero, so theta(h) = b is the unconditional layer's initial value (the
identity map) whatever h is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn

from pyro_nf.transforms.base import Flow, check_context_dim, check_dim, check_tensor
from pyro_nf.transforms.nets import MLP, _hidden_tuple

Tensor = torch.Tensor


def hyper_hidden(hidden: int | Sequence[int] | None, width: int) -> tuple[int, ...]:
    """Hidden widths of a hypernetwork: default ``clip(4 width, 32, 256)`` twice; an empty
    list gives a linear map of the context (the literature's encoder output layer)."""
    if hidden is not None and not isinstance(hidden, int) and len(hidden) == 0:
        return ()
    return _hidden_tuple(hidden, width)


class HyperNet(nn.Module):
    """An MLP of the context h giving named raw flow parameters per data point.

    ``theta(h) = b + W g(h) / sqrt(F)``: the output layer's weight W is zero-initialised and
    its bias b holds ``init`` (the unconditional layer's initial raw parameters), so at
    initialisation every context gets exactly the unconditional layer's initial map. F is the
    output layer's fan-in (the context size for a linear map). Without the 1 / sqrt(F) an Adam
    step, which moves every weight by about the learning rate, moves each flow parameter by up
    to F times that: with the encoder's 300 features as context, an amortized planar flow of
    16 layers trained on a fixed MNIST decoder reached a -ELBO 2.7 nats worse than a diagonal
    Gaussian after 5 epochs, and 0.7 nats better with the scaling
    (``docs/notes/mnist_flow_length.md``).

    Args:
        context_dim: C.
        init: the raw parameters' initial values, by name (any shapes).
        hidden: hidden widths (``[]`` for a linear map).
        activation: hidden activation.
    """

    def __init__(self, context_dim: int, init: dict[str, Tensor], hidden: Sequence[int],
                 activation: str = "elu") -> None:
        super().__init__()
        self.names = list(init)
        self.shapes = [tuple(v.shape) for v in init.values()]
        self.sizes = [v.numel() for v in init.values()]
        self.net = MLP(context_dim, sum(self.sizes), hidden, activation=activation)
        last = self.net.net[-1]
        self.gain = 1.0 / math.sqrt(last.in_features)
        with torch.no_grad():
            last.bias.copy_(torch.cat([v.reshape(-1) for v in init.values()]))

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        last = self.net.net[-1]
        features = self.net.net[:-1](context)
        flat = nn.functional.linear(features, last.weight * self.gain, last.bias)
        batch = context.shape[:-1]
        return {name: part.reshape(batch + shape) for name, shape, part
                in zip(self.names, self.shapes, flat.split(self.sizes, dim=-1))}


class ConditionalFlow(ConditionalTransformModule):
    """Base class of the conditional layers: ``condition(h)`` gives a :class:`ConditionedFlow`.

    Subclasses implement :meth:`flow_parameters` (what the map needs from the context,
    computed once per ``condition``; by default the context itself, for layers whose
    conditioner reads it on every pass), :meth:`forward_and_log_det` and
    :meth:`inverse_and_log_det` given those parameters.

    Args:
        dim: the event size D.
        context_dim: the context size C.
    """

    #: The registry kind, as for :class:`~pyro_nf.transforms.Flow`.
    kind: str | None = None
    volume_preserving = False
    #: The sign of det J for every context, as for :class:`~pyro_nf.transforms.Flow`.
    sign = 1

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.dim = check_dim(dim, type(self).__name__)
        self.context_dim = check_context_dim(context_dim, type(self).__name__)

    # -- what subclasses write ---------------------------------------------------------------
    def flow_parameters(self, context: Tensor) -> Any:
        """The per-data-point parameters of the map for ``context`` (..., C)."""
        return context

    def forward_and_log_det(self, x: Tensor, params: Any) -> tuple[Tensor, Tensor]:
        """``(f(x; h), log|det J|)`` for the parameters of :meth:`flow_parameters`."""
        raise NotImplementedError

    def inverse_and_log_det(self, y: Tensor, params: Any) -> tuple[Tensor, Tensor]:
        """``(f^{-1}(y; h), log|det J_f|)`` at the pre-image."""
        raise NotImplementedError

    # -- the Pyro protocol -------------------------------------------------------------------
    def condition(self, context: Tensor) -> Flow:
        """The map f(. ; h) for a context of shape (..., C), batched over data points.

        The parameters are computed from the context here, once: condition again after the
        network's weights change (an optimiser step), as Pyro's conditional transforms do.

        Raises:
            ValueError: the context's last dimension is not ``context_dim``.
            TypeError: the context is not a tensor, or not of the layer's dtype.
        """
        context = self.check_context(context)
        return ConditionedFlow(self, context, self.flow_parameters(context))

    def check_context(self, context: Tensor) -> Tensor:
        """Validate a context (a tensor of shape (..., C) of the layer's dtype); returns it."""
        check_tensor(context, self._name(), "the context", self.context_dim, "context_dim",
                     next((p for p in self.parameters() if p.is_floating_point()), None),
                     strict_dtype=True)
        return context

    def _name(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, context_dim={self.context_dim})"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, context_dim={self.context_dim}"


class HyperResidual(ConditionalFlow):
    """A residual layer (planar, radial) whose parameters an MLP of the context outputs per
    data point, started at the unconditional layer's initial values for every context (zero
    output weights, output bias = :meth:`initial`).

    Args:
        dim: the event size D.
        context_dim: the context size C.
        hidden: hypernetwork hidden widths (default ``clip(4 (D + C), 32, 256)`` twice; ``[]``
            for a linear map of the context).
        activation: hypernetwork activation.
    """

    kind = "residual"

    def __init__(self, dim: int, context_dim: int, hidden: int | Sequence[int] | None = None,
                 activation: str = "elu") -> None:
        super().__init__(dim, context_dim)
        self.hyper = HyperNet(context_dim, self.initial(),
                              hyper_hidden(hidden, self.dim + context_dim), activation)

    def initial(self) -> dict[str, Tensor]:
        """The unconditional layer's initial parameters by name (the hypernetwork's outputs)."""
        raise NotImplementedError


class ConditionerFlow(ConditionalFlow):
    """A layer whose conditioner network reads the context on every pass (coupling,
    autoregressive): subclasses give :meth:`one_pass`, both directions in one function, a
    ``transformer`` and, in ``shown``, the name of the attribute their repr shows with it."""

    shown = ""

    def one_pass(self, v: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """``(f(v; h), log|det J|)``, or with ``inverse`` ``(f^{-1}(v; h), log|det J_f|)``."""
        raise NotImplementedError

    def forward_and_log_det(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return self.one_pass(x, context, inverse=False)

    def inverse_and_log_det(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return self.one_pass(y, context, inverse=True)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, {self.shown}={getattr(self, self.shown)!r}, "
                f"transformer={self.transformer}")


class _Wrapper:
    """A layer that wraps another and takes its kind, volume preservation and sign."""

    def _adopt(self, layer: Any) -> None:
        self.kind = layer.kind
        self.volume_preserving = layer.volume_preserving

    @property
    def sign(self) -> int:
        return self.layer.sign


class ConditionedFlow(_Wrapper, Flow):
    """A conditional layer bound to a context h of shape (..., C): the :class:`Flow`
    x -> f(x; h), with x of shape (..., D) broadcasting against h's batch dimensions.

    The layer is referenced, not registered as a submodule (its parameters belong to the
    conditional layer); the per-data-point parameters computed from h are kept with their
    graph, so gradients reach the layer's networks through every pass.
    """

    def __init__(self, layer: ConditionalFlow, context: Tensor, params: Any) -> None:
        super().__init__(layer.dim)
        object.__setattr__(self, "layer", layer)  # a reference, not a submodule
        self.context = context
        self.params = params
        self._adopt(layer)

    def _batch_check(self, v: Tensor) -> None:
        try:
            torch.broadcast_shapes(v.shape[:-1], self.context.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"{self._name()}: input batch shape {tuple(v.shape[:-1])} does not broadcast "
                f"with the context's batch shape {tuple(self.context.shape[:-1])}") from None

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_check(x)
        return self.layer.forward_and_log_det(x, self.params)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_check(y)
        return self.layer.inverse_and_log_det(y, self.params)

    def _reference_parameter(self) -> Tensor | None:
        return self.context

    def _name(self) -> str:
        return (f"{self.layer._name()} conditioned on a context of shape "
                f"{tuple(self.context.shape)}")

    def extra_repr(self) -> str:
        return f"{self.layer._name()}, context shape {tuple(self.context.shape)}"


class ContextFree(_Wrapper, ConditionalFlow):
    """A layer that does not depend on the context (a permutation) in a conditional stack:
    ``condition(h)`` checks h and gives the layer's map, broadcast against h's batch
    dimensions like every conditioned layer.

    Args:
        layer: the unconditional layer.
        context_dim: C, checked on every ``condition``.
    """

    def __init__(self, layer: Flow, context_dim: int) -> None:
        super().__init__(layer.dim, context_dim)
        self.layer = layer
        self._adopt(layer)

    @staticmethod
    def _broadcast(out: tuple[Tensor, Tensor], context: Tensor) -> tuple[Tensor, Tensor]:
        v, ladj = out
        batch = torch.broadcast_shapes(v.shape[:-1], context.shape[:-1])
        return v.expand(batch + v.shape[-1:]), ladj.expand(batch)

    def forward_and_log_det(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return self._broadcast(self.layer.forward_and_log_det(x), context)

    def inverse_and_log_det(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return self._broadcast(self.layer.inverse_and_log_det(y), context)

    def _name(self) -> str:
        return (f"{type(self.layer).__name__}(dim={self.dim}) in a conditional stack "
                f"(context_dim={self.context_dim})")
