"""The registry of conditional flow layers and :func:`build_conditional_flow`.

A conditional layer is registered under the name of its unconditional twin (``"planar"``,
``"iaf"``, ...) with a constructor ``f(dim, context_dim, **options)``; its metadata (kind,
inverse, volume preserving, min D) default to the twin's. Specs use the grammar of
:func:`~pyro_nf.transforms.build_flow`, and the registry's ``markdown_table`` marks the layers
that have a conditional twin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransform,
)

from pyro_nf.transforms import registry as _flows
from pyro_nf.transforms.base import check_dim
from pyro_nf.transforms.registry import (
    FlowInfo,
    _signature_options,
    assemble,
    check_entry_call,
    check_metadata,
)

_CONDITIONAL: dict[str, FlowInfo] = {}


def register_conditional(
    name: str,
    *,
    paper: str,
    inverse: str | None = None,
    kind: str | None = None,
    volume_preserving: bool | None = None,
    min_dim: int | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a conditional layer constructor ``f(dim, context_dim, **options)``
    (returning a :class:`~pyro.distributions.conditional.ConditionalTransformModule`).

    ``inverse``, ``kind``, ``volume_preserving`` and ``min_dim`` default to those of the
    unconditional layer of the same name (and must be given when there is none).

    Args:
        name: the spec name, normally the unconditional twin's.
        paper: the references (the layer and its amortization).
        overwrite: allow replacing an existing entry.
    """
    twin = _flows._REGISTRY.get(name)

    def pick(value: Any, attr: str) -> Any:
        if value is not None:
            return value
        if twin is None:
            raise ValueError(f"conditional flow {name!r} has no unconditional twin to take "
                             f"{attr!r} from; pass {attr}= explicitly")
        return getattr(twin, attr)

    inverse, kind = pick(inverse, "inverse"), pick(kind, "kind")
    volume_preserving = pick(volume_preserving, "volume_preserving")
    min_dim = pick(min_dim, "min_dim")
    check_metadata(inverse, kind)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _CONDITIONAL and not overwrite:
            raise ValueError(f"a conditional flow named {name!r} is already registered; pass "
                             "overwrite=True")
        options = _signature_options(fn.__init__ if inspect.isclass(fn) else fn, positional=2)
        _CONDITIONAL[name] = FlowInfo(name, fn, paper, inverse, kind, volume_preserving,
                                      min_dim, description or (inspect.getdoc(fn) or "")
                                      .split("\n")[0], options)
        return fn

    return decorator


def available_conditional() -> list[str]:
    """The registered conditional flow names, sorted."""
    return sorted(_CONDITIONAL)


def _unknown(name: object) -> str:
    return (f"unknown conditional flow {name!r}; available conditional flows: "
            f"{', '.join(available_conditional())}")


def conditional_info(name: str) -> FlowInfo:
    """The metadata of conditional flow ``name``."""
    try:
        return _CONDITIONAL[name]
    except KeyError:
        raise ValueError(_unknown(name)) from None


def build_conditional_layer(name: str, dim: int, context_dim: int, **options: Any) -> Any:
    """Build one registered conditional layer for event size ``dim`` and context size
    ``context_dim``."""
    entry = conditional_info(name)
    check_entry_call(entry, "conditional flow", name, dim, options)
    return entry.constructor(dim, context_dim, **options)


def build_conditional_flow(spec: Any, dim: int, context_dim: int, *,
                           permutation: str | None = "reverse", seed: int = 0,
                           **options: Any) -> ConditionalComposeTransformModule:
    """Compose the conditional layers named by ``spec`` for event size ``dim`` and context size
    ``context_dim``; ``.condition(h)`` of the result is the flow for the context h, a
    :class:`~pyro.distributions.torch_transform.ComposeTransformModule`.

    Args:
        spec: as for :func:`~pyro_nf.transforms.build_flow`: ``"planar*10"``,
            ``["realnvp", "reverse"] * 4``, ``[("iaf", {"hidden": 64})]``; modules
            (conditional ones, or plain transforms used for every context) or callables
            ``(dim, context_dim) -> module(s)``.
        dim: the event size D.
        context_dim: the context size C.
        permutation: inserted between two consecutive coupling/autoregressive layers:
            ``"reverse"``, ``"random"`` (seeded by ``seed`` and the position) or ``None``.
        seed: seed of the random permutations.
        **options: passed to every named layer that accepts them; an option no layer accepts
            is an error.

    Raises:
        ValueError: an unknown name (the message lists the conditional flows), a malformed
            spec, an option no layer accepts, or a bad ``dim``/``context_dim``.
    """
    check_dim(dim, "build_conditional_flow")
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
        raise ValueError(f"build_conditional_flow: context_dim must be a positive integer, got "
                         f"{context_dim!r}")

    def other(payload: Any) -> list[Any]:
        usable = (ConditionalTransform, torch.distributions.Transform)
        built = payload if isinstance(payload, usable) else payload(dim, context_dim)
        mods = list(built) if isinstance(built, (list, tuple)) else [built]
        for mod in mods:
            if not isinstance(mod, usable):
                raise ValueError(f"a callable conditional flow spec returned "
                                 f"{type(mod).__name__}, not a (conditional) transform")
        return mods

    layers = assemble(spec, dim, permutation=permutation, seed=seed, options=options,
                      entries=_CONDITIONAL, unknown=_unknown,
                      build_named=lambda name, **kw: build_conditional_layer(
                          name, dim, context_dim, **kw),
                      build_other=other)
    return ConditionalComposeTransformModule(layers)
