"""Layers that take an optional context: one class per flow family, whose keyword
``context_dim`` says whether it is conditional (as zuko's ``context=0``).

Built with ``context_dim=0`` (the default), a layer is an ordinary Pyro ``TransformModule``: a
bijection f of R^D with its own parameters. Built with ``context_dim=C > 0``, the same class is
a conditional layer: a bijection f(. ; h) of R^D for every context h in R^C, following Pyro's
conditional protocol (:class:`~pyro.distributions.conditional.ConditionalTransform`).
``layer.condition(h)`` returns the map for a context of shape (..., C): a
:class:`FlowAtContext`, which is a :class:`~pyro_nf.transforms.Flow` (``forward_and_log_det``,
``inverse_and_log_det``, ``inv``, ``log_abs_det_jacobian``) batched over data points. An input
x of shape (..., D) and the context broadcast in their batch dimensions: x[n] goes through
f(. ; h[n]). ``condition`` of an unconditional layer returns the layer itself (the context is
ignored, as by Pyro's ``ConstantConditionalTransform``), so both mix in a conditional stack.

Two ways of making a layer depend on h, both from the literature:

* *hypernetwork* (planar, radial, Sylvester: :class:`ResidualFlow`): every raw flow parameter
  is an output of a network of h, theta(h) = b + W g(h) (:class:`HyperNet`), and the layer's
  invertibility constraints (planar's u_hat, radial's beta >= -alpha, Sylvester's
  diag(R) diag(R~) > -1 and orthonormal Q) are applied per data point to theta(h) by the same
  functions the unconditional layer applies to its own parameters. This is the amortization of
  Rezende & Mohamed (2015, Sec. 4) and of van den Berg et al. (2018, Sec. 3, "amortized"
  Sylvester flows), where the encoder outputs the flow parameters.
* *conditioner input* (coupling, autoregressive): the conditioner network takes h as an extra
  input (concatenated for coupling MLPs; for MADE fed unmasked to the first hidden layer, so
  every output depends on h, as in IAF's context (Kingma et al., 2016)).

Permutations are the same map for every context; with ``context_dim > 0`` they check the
context and broadcast against it like every conditioned layer.

Every conditional layer starts as the unconditional one does, for every context: the output
layer's weights are zero, so theta(h) = b is the unconditional layer's initial value (the
identity map) whatever h is.

A family writes :meth:`ContextFlow.map_parameters` (what its map needs: from the layer's own
parameters, or per data point from a context, computed once per ``condition``) and the two
passes given those, :meth:`ContextFlow.forward_with` and :meth:`ContextFlow.inverse_with`; the
unconditional passes and the conditional protocol are built on these three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransform, ConditionalTransformModule
from torch import nn

from pyro_nf.transforms.base import Flow, check_context_dim, check_tensor
from pyro_nf.transforms.nets import MLP, hidden_widths

Tensor = torch.Tensor


def hyper_hidden(hidden: int | Sequence[int] | None, width: int) -> tuple[int, ...]:
    """Hidden widths of a hypernetwork: default ``clip(4 width, 32, 256)`` twice; an empty
    list gives a linear map of the context (the literature's encoder output layer)."""
    if hidden is not None and not isinstance(hidden, int) and len(hidden) == 0:
        return ()
    return hidden_widths(hidden, width)


class HyperNet(nn.Module):
    """An MLP of the context h giving named raw flow parameters per data point.

    ``theta(h) = b + W g(h) / sqrt(F)``: the output layer's weight W is zero-initialized and
    its bias b holds ``init`` (the unconditional layer's initial raw parameters), so at
    initialization every context gets exactly the unconditional layer's initial map. F is the
    output layer's fan-in (the context size for a linear map). Without the 1 / sqrt(F) an Adam
    step, which moves every weight by about the learning rate, moves each flow parameter by up
    to F times that: with the encoder's 300 features as context, an amortized planar flow
    trained on a fixed MNIST decoder fit markedly worse than a diagonal Gaussian without the
    scaling and better with it (the numbers are in docs/notes/transform_timings.md and
    ``docs/notes/mnist_flow_length.md``).

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


class ContextFlow(Flow, ConditionalTransform):
    """Base of the flow families that take an optional context (see the module docstring).

    With ``context_dim=0`` the layer is an ordinary :class:`~pyro_nf.transforms.Flow`; with
    ``context_dim=C > 0`` it is conditional: ``condition(h)`` gives its map at the context h
    (a :class:`FlowAtContext`), and calling the layer without a context is an error that says
    so. Subclasses implement :meth:`map_parameters`, :meth:`forward_with` and
    :meth:`inverse_with`.

    Args:
        dim: the event size D.
        context_dim: the context size C; 0 (the default) for an unconditional layer.
    """

    #: The family's options that only a conditional layer takes (a hypernetwork's): the
    #: registry gives them to the layer only when it is built with a context.
    context_options: tuple[str, ...] = ()

    def __init__(self, dim: int, *, context_dim: int = 0) -> None:
        super().__init__(dim)
        self.context_dim = check_context_dim(context_dim, type(self).__name__)

    # -- what subclasses write ---------------------------------------------------------------
    def map_parameters(self, context: Tensor | None) -> Any:
        """The parameters of the map: from the layer's own parameters for ``context`` None (an
        unconditional layer), else per data point from a context of shape (..., C). By default
        the context itself, for layers whose conditioner reads it on every pass."""
        return context

    def forward_with(self, x: Tensor, params: Any) -> tuple[Tensor, Tensor]:
        """``(f(x), log|det J_f(x)|)`` for the parameters of :meth:`map_parameters`."""
        raise NotImplementedError

    def inverse_with(self, y: Tensor, params: Any) -> tuple[Tensor, Tensor]:
        """``(f^{-1}(y), log|det J_f|)`` at the pre-image, for the parameters of
        :meth:`map_parameters`."""
        raise NotImplementedError

    # -- the unconditional passes ------------------------------------------------------------
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.context_dim:
            raise self._needs_context()
        return self.forward_with(x, self.map_parameters(None))

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.context_dim:
            raise self._needs_context()
        return self.inverse_with(y, self.map_parameters(None))

    def _needs_context(self) -> ValueError:
        return ValueError(f"{self._name()} is conditional, its map depends on a context: use "
                          f"layer.condition(context) with a context of shape (..., "
                          f"{self.context_dim}), or build the layer with context_dim=0")

    # -- the Pyro conditional protocol ---------------------------------------------------------
    def condition(self, context: Tensor) -> Flow:
        """The map f(. ; h) for a context of shape (..., C), batched over data points; for an
        unconditional layer (``context_dim=0``) the layer itself, whatever ``context`` is.

        The parameters are computed from the context here, once: condition again after the
        network's weights change (an optimizer step), as Pyro's conditional transforms do.

        Raises:
            ValueError: the context's last dimension is not ``context_dim``.
            TypeError: the context is not a tensor, or not of the layer's dtype.
        """
        if not self.context_dim:
            return self
        context = self.check_context(context)
        return FlowAtContext(self, context, self.map_parameters(context))

    def check_context(self, context: Tensor) -> Tensor:
        """Validate a context (a tensor of shape (..., C) of the layer's dtype); returns it."""
        check_tensor(context, self._name(), "the context", self.context_dim, "context_dim",
                     self._reference_parameter(), strict_dtype=True)
        return context

    @property
    def inv(self) -> Any:
        """The inverse map; for a conditional layer a conditional transform whose
        ``condition(h)`` is the inverse of ``self.condition(h)``, as Pyro's conditional
        modules have it."""
        if self.context_dim:
            return ContextFlowInverse(self)
        return super().inv

    def _name(self) -> str:
        return f"{type(self).__name__}({self.extra_repr_head()})"

    def extra_repr_head(self) -> str:
        """``dim=D``, with ``, context_dim=C`` for a conditional layer."""
        shown = f", context_dim={self.context_dim}" if self.context_dim else ""
        return f"dim={self.dim}{shown}"

    def extra_repr(self) -> str:
        return self.extra_repr_head()


class ContextFlowInverse(ConditionalTransformModule):
    """The inverse of a conditional layer: ``condition(h)`` is the inverse of the layer's map
    at h, and ``inv`` the layer."""

    def __init__(self, layer: ContextFlow) -> None:
        super().__init__()
        self.layer = layer

    @property
    def inv(self) -> ContextFlow:
        return self.layer

    def condition(self, context: Tensor) -> Any:
        return self.layer.condition(context).inv


class FlowAtContext(Flow):
    """A conditional layer at a context h of shape (..., C): the :class:`Flow` x -> f(x; h),
    with x of shape (..., D) broadcasting against h's batch dimensions. Its kind, volume
    preservation and sign are the layer's.

    The layer is referenced, not registered as a submodule (its parameters belong to the
    conditional layer); the per-data-point parameters computed from h are kept with their
    graph, so gradients reach the layer's networks through every pass.
    """

    def __init__(self, layer: ContextFlow, context: Tensor, params: Any) -> None:
        super().__init__(layer.dim)
        object.__setattr__(self, "layer", layer)  # a reference, not a submodule
        self.context = context
        self.params = params
        self.kind = layer.kind
        self.volume_preserving = layer.volume_preserving

    @property
    def sign(self) -> int:
        return self.layer.sign

    def _batch_check(self, v: Tensor) -> None:
        try:
            torch.broadcast_shapes(v.shape[:-1], self.context.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"{self._name()}: input batch shape {tuple(v.shape[:-1])} does not broadcast "
                f"with the context's batch shape {tuple(self.context.shape[:-1])}") from None

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_check(x)
        return self.layer.forward_with(x, self.params)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._batch_check(y)
        return self.layer.inverse_with(y, self.params)

    def _reference_parameter(self) -> Tensor | None:
        return self.context

    def _name(self) -> str:
        return (f"{self.layer._name()} conditioned on a context of shape "
                f"{tuple(self.context.shape)}")

    def extra_repr(self) -> str:
        return f"{self.layer._name()}, context shape {tuple(self.context.shape)}"


class ResidualFlow(ContextFlow):
    """A residual layer f(z) = z + g(z) (planar, radial, Sylvester), invertible through the
    constraints its parametrization keeps: the registry kind "residual".

    Its raw parameters (:meth:`hold_raw`) are the layer's own with ``context_dim=0``; with a
    context they are, per data point, the outputs of a :class:`HyperNet` of the context whose
    output bias holds the same initial values, so that the layer starts as the unconditional
    one does for every context. The hypernetwork's ``hidden`` widths (default
    ``clip(4 (D + C), 32, 256)`` twice; ``[]`` for a linear map of the context) and
    ``activation`` are options of a conditional layer only.
    """

    kind = "residual"
    context_options = ("hidden", "activation")

    def hold_raw(self, init: dict[str, Tensor], hidden: int | Sequence[int] | None,
                 activation: str) -> None:
        """Hold the raw parameters ``init`` (by name): as parameters of the layer, or as the
        initial outputs of a hypernetwork of the context."""
        self.raw_names = tuple(init)
        if self.context_dim:
            self.hyper = HyperNet(self.context_dim, init,
                                  hyper_hidden(hidden, self.dim + self.context_dim), activation)
            return
        if hidden is not None or activation != "elu":
            raise ValueError(f"{self._name()}: hidden= and activation= shape the hypernetwork "
                             "of a conditional layer; pass context_dim > 0 or leave them out")
        for name, value in init.items():
            setattr(self, name, nn.Parameter(value))

    def raw(self, context: Tensor | None) -> dict[str, Tensor]:
        """The raw parameters by name: the layer's own (``context`` None) or, per data point,
        the hypernetwork's outputs for ``context``."""
        if context is None:
            return {name: getattr(self, name) for name in self.raw_names}
        return self.hyper(context)
