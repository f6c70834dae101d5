"""One registry of flow layers, and the spec builder that composes them.

Every layer family registers a constructor ``f(dim, **options) -> TransformModule`` under a name
with its metadata (paper, exact or numerical inverse, volume preserving, kind). A constructor
with a keyword ``context_dim`` takes a context: ``f(dim, context_dim=C, **options)`` with
C > 0 is the family's conditional layer (the entry's ``conditional``;
``available(conditional=True)`` lists them). The registry drives :func:`build_flow`
(conditional with ``context_dim > 0``), the CLI's ``pyro-nf flows`` table and the test
batteries: registering a layer is enough to have it tested.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransform,
)
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule

from pyro_nf.transforms.base import check_context_dim, check_dim
from pyro_nf.transforms.context import ContextFlow

#: Kinds of layer. Coupling and autoregressive layers only mix dimensions in one direction, so
#: :func:`build_flow` puts a permutation between two consecutive ones.
KINDS = ("coupling", "autoregressive", "elementwise", "linear", "permutation", "residual")
MIXING_KINDS = ("coupling", "autoregressive")


@dataclass(frozen=True)
class FlowInfo:
    """Metadata of a registered flow layer.

    ``options`` are the constructor's options (all its parameters after ``dim``, except
    ``context_dim``) with their defaults. ``conditional`` says whether the layer takes a
    context (its constructor has a ``context_dim`` keyword), ``context_options`` which options
    only a conditional layer takes (a hypernetwork's ``hidden`` and ``activation``)."""

    name: str
    constructor: Callable[..., TransformModule]
    paper: str
    inverse: str
    kind: str
    volume_preserving: bool = False
    min_dim: int = 1
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False
    context_options: tuple[str, ...] = ()

    def accepts(self, option: str, context_dim: int = 0) -> bool:
        """Whether the layer takes ``option`` when built with ``context_dim``."""
        return option in self.options and (context_dim > 0
                                           or option not in self.context_options)


#: name -> entry
_REGISTRY: dict[str, FlowInfo] = {}


def _constructor_options(fn: Callable) -> tuple[dict[str, Any], bool]:
    """The options of a constructor (its parameters after ``dim``, ``context_dim`` aside) with
    their defaults, and whether it takes ``context_dim``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    options = {p.name: None if p.default is p.empty else p.default for p in params[1:]
               if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "context_dim"}
    return options, any(p.name == "context_dim" for p in params[1:])


def check_metadata(inverse: str, kind: str, name: str | None = None) -> None:
    """The checks of a layer's metadata and, if given, name."""
    if name is not None and (not isinstance(name, str)
                             or not re.fullmatch(r"[a-z][a-z0-9_]*", name)):
        raise ValueError(f"flow name must match [a-z][a-z0-9_]*, got {name!r}")
    if inverse not in ("exact", "numerical"):
        raise ValueError(f"inverse must be 'exact' or 'numerical', got {inverse!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def register(
    name: str,
    *,
    paper: str,
    inverse: str,
    kind: str,
    volume_preserving: bool = False,
    min_dim: int = 1,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[Callable[..., TransformModule]], Callable[..., TransformModule]]:
    """Decorator registering a flow-layer constructor ``f(dim, **options)`` under ``name``.

    A constructor with a keyword ``context_dim`` (0 for no context, as every
    :class:`~pyro_nf.transforms.context.ContextFlow` has) takes a context, and
    ``build_flow(spec, dim, context_dim=C)`` builds it as a conditional layer; the options
    named by its ``context_options`` attribute are given to it only then.

    Example::

        @pyro_nf.transforms.register("my_layer", paper="Me (2026)", inverse="exact",
                                     kind="elementwise")
        class MyLayer(pyro_nf.transforms.Flow): ...

    Args:
        name: lower-case identifier used in flow specs (``"my_layer*4"``).
        paper: the reference the layer implements.
        inverse: ``"exact"`` (closed form or finite sequential passes) or ``"numerical"``
            (root finding to a stated tolerance with implicit gradients).
        kind: one of :data:`KINDS`.
        volume_preserving: log|det J| is identically zero.
        min_dim: the smallest event dimension the layer supports.
        description: one line (default: the constructor docstring's first line).
        overwrite: allow replacing an existing entry.
    """
    check_metadata(inverse, kind, name)

    def decorator(fn: Callable[..., TransformModule]) -> Callable[..., TransformModule]:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a flow named {name!r} is already registered; pass overwrite=True")
        options, conditional = _constructor_options(fn)
        _REGISTRY[name] = FlowInfo(
            name, fn, paper, inverse, kind, volume_preserving, min_dim,
            description or (inspect.getdoc(fn) or "").split("\n")[0], options, conditional,
            tuple(getattr(fn, "context_options", ())))
        return fn

    return decorator


def unregister(name: str) -> None:
    """Remove layer ``name`` from the registry (a layer registered for a while, by a test)."""
    if _REGISTRY.pop(name, None) is None:
        raise ValueError(_unknown(name))


def available(conditional: bool = False) -> list[str]:
    """The registered flow names, sorted; with ``conditional=True`` those that take a
    context."""
    return sorted(name for name, e in _REGISTRY.items() if e.conditional or not conditional)


def info(name: str) -> FlowInfo:
    """The metadata of flow ``name``."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(_unknown(name))
    return entry


def _unknown(name: object, context_dim: int = 0) -> str:
    if context_dim:
        return (f"unknown flow {name!r}; the flows that take a context: "
                f"{', '.join(available(conditional=True))}")
    return f"unknown flow {name!r}; available flows: {', '.join(available())}"


def _no_context(name: str, context_dim: int) -> str:
    return (f"flow {name!r} takes no context, so it cannot be a layer of a flow with "
            f"context_dim={context_dim}: use a flow that takes one "
            f"({', '.join(available(conditional=True))}) or context_dim=0")


def check_layer_call(entry: FlowInfo, dim: Any, options: dict, context_dim: int = 0) -> None:
    """The checks of building one registered layer: a context only for a layer that takes
    one, ``dim`` at least the entry's minimum, every option one the layer accepts."""
    if context_dim and not entry.conditional:
        raise ValueError(_no_context(entry.name, context_dim))
    name = entry.name
    if isinstance(dim, int) and not isinstance(dim, bool) and dim < entry.min_dim:
        raise ValueError(f"flow {name!r} needs dim >= {entry.min_dim}, got dim={dim}")
    bad = [k for k in options if not entry.accepts(k, context_dim)]
    if bad:
        own = sorted(k for k in entry.options if entry.accepts(k, context_dim))
        where = " without a context" if any(k in entry.context_options for k in bad) else ""
        raise ValueError(f"flow {name!r} has no option(s) {bad}{where}; its options are "
                         f"{own or 'none'}")


def build_layer(name: str, dim: int, *, context_dim: int = 0, **options: Any) -> Any:
    """Build one registered layer for event size ``dim``; with ``context_dim > 0`` the
    conditional layer for context size ``context_dim``."""
    check_context_dim(context_dim, "build_layer")
    entry = info(name)
    check_layer_call(entry, dim, options, context_dim)
    if context_dim:
        return entry.constructor(dim, context_dim=context_dim, **options)
    return entry.constructor(dim, **options)


FlowSpec = str | TransformModule | Callable[[int], Any] | Iterable[Any]

_ITEM = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:\*\s*(\d+))?\s*$")
_GRAMMAR = ("a flow spec is a name ('maf'), a repeated name ('planar*8'), a list of names, "
            "(name, options) pairs or modules, or a callable dim -> module(s)")


def expand_spec(spec: Any, *, context_dim: int = 0,
                ) -> list[tuple[str | None, dict[str, Any] | TransformModule | Callable]]:
    """Flatten a flow spec into ``(name, options)`` items and ``(None, module_or_callable)``
    items, checking every name: registered, and taking a context if ``context_dim > 0``.

    Raises:
        ValueError: a malformed spec or a name that is unknown (the message lists the valid
            names) or takes no context where one is asked for.
    """
    if isinstance(spec, TransformModule):
        return [(None, spec)]
    if isinstance(spec, str):
        m = _ITEM.match(spec)
        if m is None:
            raise ValueError(f"malformed flow spec {spec!r}: {_GRAMMAR}; available flows: "
                             f"{', '.join(available(conditional=context_dim > 0))}")
        name, times = m.group(1), int(m.group(2) or 1)
        if name not in _REGISTRY:
            raise ValueError(_unknown(name, context_dim))
        if context_dim and not _REGISTRY[name].conditional:
            raise ValueError(_no_context(name, context_dim))
        if times < 1:
            raise ValueError(f"flow spec {spec!r}: the repeat count must be at least 1")
        return [(name, {})] * times
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) \
            and isinstance(spec[1], dict):
        return [(name, {**spec[1]}) for name, _ in expand_spec(spec[0], context_dim=context_dim)]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"empty flow spec: {_GRAMMAR}")
        return [item for part in spec for item in expand_spec(part, context_dim=context_dim)]
    if callable(spec):
        return [(None, spec)]
    raise ValueError(f"malformed flow spec {spec!r} of type {type(spec).__name__}: {_GRAMMAR}")


def build_flow(spec: FlowSpec, dim: int, *, context_dim: int = 0,
               permutation: str | None = "reverse", seed: int = 0,
               **options: Any) -> ComposeTransformModule | ConditionalComposeTransformModule:
    """Compose the layers named by ``spec`` for event size ``dim``; with ``context_dim > 0``,
    the conditional layers for context size ``context_dim``.

    Args:
        spec: ``"planar*8"``; ``["realnvp", "reverse"] * 4``; ``[("maf", {"hidden": 64})]``;
            a ``TransformModule``; or a callable ``dim -> module or list of modules``
            (``(dim, context_dim) -> ...`` with a context; conditional modules and plain
            transforms, used for every context, mix with names).
        dim: the event size D.
        context_dim: the context size C: C > 0 builds the conditional flow, whose
            ``.condition(h)`` is the flow for a context h of shape (..., C), from layers that
            take a context (``available(conditional=True)``); 0 (default): a plain flow.
        permutation: how two consecutive coupling/autoregressive layers that have no other
            layer between them are mixed: ``"reverse"``, ``"random"`` (seeded by ``seed`` and
            the position) or ``None`` for no mixing. Between two autoregressive layers the
            second layer's MADE takes the permuted order (no data moves, no extra layer);
            elsewhere a permutation layer is inserted.
        seed: seed of the random permutations.
        **options: passed to every named layer that accepts them (e.g. ``hidden=64``); an
            option that no layer in the spec accepts is an error.

    Returns:
        a :class:`~pyro.distributions.torch_transform.ComposeTransformModule` of the layers, or
        with a context a
        :class:`~pyro.distributions.conditional.ConditionalComposeTransformModule`.

    Raises:
        ValueError: an unknown name (the message lists the valid flows), a layer that takes no
            context in a conditional flow, a malformed spec, an option no layer accepts, or a
            bad ``dim``/``context_dim``.
    """
    check_dim(dim, "build_flow")
    check_context_dim(context_dim, "build_flow")
    if permutation not in ("reverse", "random", None):
        raise ValueError(f"permutation must be 'reverse', 'random' or None, got {permutation!r}")
    layers, kinds = _spec_layers(spec, dim, context_dim, options)
    layers = _mix(layers, kinds, dim, context_dim, permutation, seed)
    return (ConditionalComposeTransformModule if context_dim else ComposeTransformModule)(layers)


def _spec_layers(spec: Any, dim: int, context_dim: int,
                 options: dict[str, Any]) -> tuple[list[Any], list[str | None]]:
    """The layers of a flow spec and their kinds, each named layer built with the options it
    accepts; an option no layer accepts is an error."""
    used: set[str] = set()
    layers: list[Any] = []
    kinds: list[str | None] = []
    for name, payload in expand_spec(spec, context_dim=context_dim):
        if name is None:
            for mod in _built_modules(payload, dim, context_dim):
                layers.append(mod)
                kinds.append(getattr(mod, "kind", None))
            continue
        entry = _REGISTRY[name]
        own = {k: v for k, v in options.items() if entry.accepts(k, context_dim)}
        used.update(own)
        layers.append(build_layer(name, dim, context_dim=context_dim, **{**own, **payload}))
        kinds.append(entry.kind)
    unused = set(options) - used
    if unused:
        raise ValueError(f"option(s) {sorted(unused)} are accepted by none of the layers in "
                         f"the flow spec {spec!r}")
    return layers, kinds


def _built_modules(payload: Any, dim: int, context_dim: int) -> list[Any]:
    """The modules of a module or callable item of a spec (called with ``(dim,)``, or
    ``(dim, context_dim)`` for a conditional flow), checked to be transforms of the flow's
    context size."""
    usable: tuple[type, ...] = (torch.distributions.Transform,)
    if context_dim:
        usable += (ConditionalTransform,)
    args = (dim, context_dim) if context_dim else (dim,)
    built = payload if isinstance(payload, usable) else payload(*args)
    mods = list(built) if isinstance(built, (list, tuple)) else [built]
    for mod in mods:
        if not isinstance(mod, usable):
            what = "(conditional) transform" if context_dim else "Transform"
            raise ValueError(f"a callable flow spec returned {type(mod).__name__}, not a {what}")
        if isinstance(mod, ContextFlow) and mod.context_dim not in (0, context_dim):
            raise ValueError(f"a {type(mod).__name__} with context_dim={mod.context_dim} in a "
                             f"flow with context_dim={context_dim}: build it with "
                             f"context_dim={context_dim}")
    return mods


def _mix(layers: list[Any], kinds: list[str | None], dim: int, context_dim: int,
         permutation: str | None, seed: int) -> list[Any]:
    """The layers with permutations between consecutive mixing layers (coupling,
    autoregressive); between two autoregressive layers the second MADE's order is permuted
    instead."""
    out: list[Any] = []
    for i, (layer, kind) in enumerate(zip(layers, kinds)):
        if (permutation is not None and i > 0 and kind in MIXING_KINDS
                and kinds[i - 1] in MIXING_KINDS and dim > 1):
            if permutation == "reverse":
                mixer = build_layer("reverse", dim, context_dim=context_dim)
            else:
                mixer = build_layer("permute", dim, context_dim=context_dim, seed=seed + i)
            previous, current = _made_of(layers[i - 1]), _made_of(layer)
            if previous is not None and current is not None:
                # two autoregressive layers: vary the MADE's order instead of moving the data
                # (the same family of flows as with the permutation layer, one layer fewer)
                current.set_order(previous.order[mixer.perm])
            else:
                out.append(mixer)
        out.append(layer)
    return out


def _made_of(layer: Any) -> Any:
    """The MADE conditioner of an autoregressive layer whose order may be set, else None."""
    made = getattr(layer, "made", None)
    return (made if getattr(layer, "kind", None) == "autoregressive"
            and hasattr(made, "set_order") else None)


def markdown_table() -> str:
    """The registry as a markdown table (used by docs/layers.md and ``pyro-nf flows``)."""
    lines = ["| name | kind | inverse | volume preserving | min D | context | paper |",
             "|---|---|---|---|---|---|---|"]
    for name, e in sorted(_REGISTRY.items()):
        lines.append(f"| `{name}` | {e.kind} | {e.inverse} | "
                     f"{'yes' if e.volume_preserving else 'no'} | {e.min_dim} | "
                     f"{'yes' if e.conditional else 'no'} | {e.paper} |")
    return "\n".join(lines)
