"""One registry of flow layers, and the spec builder that composes them.

Every layer family registers a constructor ``f(dim, **options) -> TransformModule`` under a name
with its metadata (paper, exact or numerical inverse, volume preserving, kind), and, where it has
one, its conditional form ``f(dim, context_dim, **options)`` under the same name
(:func:`register_conditional`; the entry's ``conditional`` field). The registry drives
:func:`build_flow` (conditional with ``context_dim``), the CLI's ``pyro-nf flows`` table and the
test batteries: registering a layer is enough to have it tested.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from pyro.distributions.conditional import (
    ConditionalComposeTransformModule,
    ConditionalTransform,
)
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule

from pyro_nf.transforms.base import check_context_dim, check_dim

#: Kinds of layer. Coupling and autoregressive layers only mix dimensions in one direction, so
#: :func:`build_flow` puts a permutation between two consecutive ones.
KINDS = ("coupling", "autoregressive", "elementwise", "linear", "permutation", "residual")
_MIXING_KINDS = ("coupling", "autoregressive")


@dataclass(frozen=True)
class FlowInfo:
    """Metadata of a registered flow layer. ``conditional`` is its conditional form's (the
    constructor ``f(dim, context_dim, **options)``, paper, options), None where it has none; an
    entry registered only in conditional form has ``constructor`` None."""

    name: str
    constructor: Callable[..., TransformModule] | None
    paper: str
    inverse: str
    kind: str
    volume_preserving: bool = False
    min_dim: int = 1
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    conditional: FlowInfo | None = None

    def accepts(self, option: str) -> bool:
        return option in self.options

    @property
    def conditional_twin(self) -> bool:
        """Whether the layer has a conditional form (:func:`available_conditional`)."""
        return self.conditional is not None


#: name -> entry; an entry with ``constructor`` None exists only in conditional form.
_REGISTRY: dict[str, FlowInfo] = {}


def _plain() -> dict[str, FlowInfo]:
    """The entries with a plain (unconditional) constructor."""
    return {name: e for name, e in _REGISTRY.items() if e.constructor is not None}


def _conditional() -> dict[str, FlowInfo]:
    """The conditional forms, by name."""
    return {name: e.conditional for name, e in _REGISTRY.items() if e.conditional is not None}


def _signature_options(fn: Callable, positional: int = 1) -> dict[str, Any]:
    """The options of a constructor: its parameters after the first ``positional`` ones (dim,
    and context_dim for conditional layers), with their defaults."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return {p.name: None if p.default is p.empty else p.default for p in params[positional:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_metadata(inverse: str, kind: str, name: str | None = None) -> None:
    """The checks of a layer's metadata (plain or conditional form) and, if given, name."""
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
        overwrite: allow replacing an existing entry.
    """
    check_metadata(inverse, kind, name)

    def decorator(fn: Callable[..., TransformModule]) -> Callable[..., TransformModule]:
        old = _REGISTRY.get(name)
        if old is not None and old.constructor is not None and not overwrite:
            raise ValueError(f"a flow named {name!r} is already registered; pass overwrite=True")
        # a conditional form registered before (or with) the plain layer stays attached
        _REGISTRY[name] = replace(_entry(name, fn, paper, inverse, kind, volume_preserving,
                                         min_dim, description),
                                  conditional=old.conditional if old is not None else None)
        return fn

    return decorator


def _entry(name: str, fn: Callable[..., Any], paper: str, inverse: str, kind: str,
           volume_preserving: bool, min_dim: int, description: str,
           positional: int = 1) -> FlowInfo:
    """The metadata of constructor ``fn``: its options are its parameters after the first
    ``positional`` ones, its description defaults to its docstring's first line."""
    options = _signature_options(fn.__init__ if inspect.isclass(fn) else fn, positional)
    return FlowInfo(name, fn, paper, inverse, kind, volume_preserving, min_dim,
                    description or (inspect.getdoc(fn) or "").split("\n")[0], options)


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
    """Decorator registering the conditional form ``f(dim, context_dim, **options)`` (returning
    a :class:`~pyro.distributions.conditional.ConditionalTransformModule`) of layer ``name``.

    ``inverse``, ``kind``, ``volume_preserving`` and ``min_dim`` default to those of the plain
    layer of the same name, whose entry the conditional form is attached to; without a plain
    layer they must be given, and the name exists only in conditional form.

    Args:
        name: the spec name, normally the plain layer's.
        paper: the references (the layer and its amortization).
        overwrite: allow replacing an existing conditional form.
    """
    twin = _plain().get(name)

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
    check_metadata(inverse, kind, name)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _REGISTRY.get(name)
        if old is not None and old.conditional is not None and not overwrite:
            raise ValueError(f"a conditional flow named {name!r} is already registered; pass "
                             "overwrite=True")
        form = _entry(name, fn, paper, inverse, kind, volume_preserving, min_dim, description,
                      positional=2)
        if old is None or old.constructor is None:  # conditional only
            _REGISTRY[name] = replace(form, constructor=None, conditional=form)
        else:
            _REGISTRY[name] = replace(old, conditional=form)
        return fn

    return decorator


def available() -> list[str]:
    """The registered flow names (those with a plain form), sorted."""
    return sorted(_plain())


def available_conditional() -> list[str]:
    """The names of the layers with a conditional form, sorted."""
    return sorted(_conditional())


def info(name: str) -> FlowInfo:
    """The metadata of flow ``name`` (its conditional form's in ``.conditional``)."""
    entry = _plain().get(name)
    if entry is None:
        raise ValueError(_unknown(name))
    return entry


def conditional_info(name: str) -> FlowInfo:
    """The metadata of the conditional form of flow ``name``."""
    entry = _conditional().get(name)
    if entry is None:
        raise ValueError(_unknown_conditional(name))
    return entry


def _unknown(name: object) -> str:
    if name in _conditional():
        return (f"flow {name!r} exists only in conditional form; pass context_dim (e.g. "
                f"build_flow({name!r}, dim, context_dim=C))")
    return f"unknown flow {name!r}; available flows: {', '.join(available())}"


def _unknown_conditional(name: object) -> str:
    return (f"unknown conditional flow {name!r}; available conditional flows: "
            f"{', '.join(available_conditional())}")


def build_layer(name: str, dim: int, context_dim: int | None = None, **options: Any) -> Any:
    """Build one registered layer for event size ``dim``; with ``context_dim``, its
    conditional form for context size ``context_dim`` (:func:`build_conditional_layer`)."""
    if context_dim is not None:
        return build_conditional_layer(name, dim, context_dim, **options)
    entry = info(name)
    check_entry_call(entry, "flow", name, dim, options)
    return entry.constructor(dim, **options)


def build_conditional_layer(name: str, dim: int, context_dim: int, **options: Any) -> Any:
    """Build the conditional form of layer ``name`` for event size ``dim`` and context size
    ``context_dim``."""
    entry = conditional_info(name)
    check_entry_call(entry, "conditional flow", name, dim, options)
    return entry.constructor(dim, context_dim, **options)


def check_entry_call(entry: FlowInfo, kind: str, name: str, dim: Any, options: dict) -> None:
    """The checks of building one registered layer (``kind``: "flow" or "conditional flow"):
    ``dim`` at least the entry's minimum, every option one the entry accepts."""
    if isinstance(dim, int) and not isinstance(dim, bool) and dim < entry.min_dim:
        raise ValueError(f"{kind} {name!r} needs dim >= {entry.min_dim}, got dim={dim}")
    bad = [k for k in options if k not in entry.options]
    if bad:
        raise ValueError(f"{kind} {name!r} has no option(s) {bad}; its options are "
                         f"{sorted(entry.options) or 'none'}")


FlowSpec = str | TransformModule | Callable[[int], Any] | Iterable[Any]

_ITEM = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:\*\s*(\d+))?\s*$")
_GRAMMAR = ("a flow spec is a name ('maf'), a repeated name ('planar*8'), a list of names, "
            "(name, options) pairs or modules, or a callable dim -> module(s)")


def _expand(spec: Any, entries: Mapping[str, FlowInfo] | None = None,
            unknown: Callable[[object], str] = _unknown,
            ) -> list[tuple[str | None, dict[str, Any] | TransformModule | Callable]]:
    """Flatten a spec into ``(name, options)`` items and ``(None, module_or_callable)`` items,
    with names looked up in ``entries`` (default: the plain forms; the conditional flow passes
    the conditional ones) and ``unknown`` giving the error message of a name not there."""
    entries = _plain() if entries is None else entries
    if isinstance(spec, TransformModule):
        return [(None, spec)]
    if isinstance(spec, str):
        m = _ITEM.match(spec)
        if m is None:
            raise ValueError(f"malformed flow spec {spec!r}: {_GRAMMAR}; available flows: "
                             f"{', '.join(sorted(entries))}")
        name, times = m.group(1), int(m.group(2) or 1)
        if name not in entries:
            raise ValueError(unknown(name))
        if times < 1:
            raise ValueError(f"flow spec {spec!r}: the repeat count must be at least 1")
        return [(name, {})] * times
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) \
            and isinstance(spec[1], dict):
        return [(name, {**spec[1]}) for name, _ in _expand(spec[0], entries, unknown)]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"empty flow spec: {_GRAMMAR}")
        return [item for part in spec for item in _expand(part, entries, unknown)]
    if callable(spec):
        return [(None, spec)]
    raise ValueError(f"malformed flow spec {spec!r} of type {type(spec).__name__}: {_GRAMMAR}")


def _kind_of(module: Any) -> str | None:
    return getattr(module, "kind", None)


def build_flow(spec: FlowSpec, dim: int, *, context_dim: int | None = None,
               permutation: str | None = "reverse", seed: int = 0,
               **options: Any) -> ComposeTransformModule | ConditionalComposeTransformModule:
    """Compose the layers named by ``spec`` for event size ``dim``; with ``context_dim``, their
    conditional forms for context size ``context_dim``.

    Args:
        spec: ``"planar*8"``; ``["realnvp", "reverse"] * 4``; ``[("maf", {"hidden": 64})]``;
            a ``TransformModule``; or a callable ``dim -> module or list of modules``
            (``(dim, context_dim) -> ...`` with ``context_dim``; conditional modules and plain
            transforms, used for every context, mix with names).
        dim: the event size D.
        context_dim: the context size C: build the conditional flow, whose ``.condition(h)`` is
            the flow for a context h of shape (..., C). None (default): a plain flow.
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
        with ``context_dim`` a
        :class:`~pyro.distributions.conditional.ConditionalComposeTransformModule`.

    Raises:
        ValueError: an unknown name (the message lists the flows of the asked form), a
            malformed spec, an option no layer accepts, or a bad ``dim``/``context_dim``.
    """
    check_dim(dim, "build_flow")
    conditional = context_dim is not None
    if conditional:
        check_context_dim(context_dim, "build_flow")
    layers = assemble(spec, dim, permutation=permutation, seed=seed, options=options,
                      entries=_conditional() if conditional else _plain(),
                      unknown=_unknown_conditional if conditional else _unknown,
                      build_named=lambda name, **kw: build_layer(name, dim, context_dim, **kw),
                      build_other=lambda payload: _built_modules(payload, dim, context_dim))
    return (ConditionalComposeTransformModule if conditional else ComposeTransformModule)(layers)


def build_conditional_flow(spec: Any, dim: int, context_dim: int, *,
                           permutation: str | None = "reverse", seed: int = 0,
                           **options: Any) -> ConditionalComposeTransformModule:
    """``build_flow(spec, dim, context_dim=context_dim, ...)``: the conditional flow, whose
    ``.condition(h)`` is the flow (a ``ComposeTransformModule``) for the context h."""
    check_context_dim(context_dim, "build_conditional_flow")
    return build_flow(spec, dim, context_dim=context_dim, permutation=permutation, seed=seed,
                      **options)


def _built_modules(payload: Any, dim: int, context_dim: int | None) -> list[Any]:
    """The modules of a module or callable item of a spec (called with ``(dim,)``, or
    ``(dim, context_dim)`` for a conditional flow), checked to be transforms."""
    usable: tuple[type, ...] = (torch.distributions.Transform,)
    if context_dim is not None:
        usable += (ConditionalTransform,)
    args = (dim,) if context_dim is None else (dim, context_dim)
    built = payload if isinstance(payload, usable) else payload(*args)
    mods = list(built) if isinstance(built, (list, tuple)) else [built]
    for mod in mods:
        if not isinstance(mod, usable):
            what = "Transform" if context_dim is None else "(conditional) transform"
            raise ValueError(f"a callable flow spec returned {type(mod).__name__}, not a {what}")
    return mods


def assemble(spec: Any, dim: int, *, permutation: str | None, seed: int,
             options: dict[str, Any], entries: Mapping[str, FlowInfo],
             unknown: Callable[[object], str], build_named: Callable[..., Any],
             build_other: Callable[[Any], list[Any]]) -> list[Any]:
    """The layers of a flow spec, with permutations between consecutive mixing layers: the
    machinery of :func:`build_flow`, plain or conditional.

    ``entries`` are the forms (plain or conditional) the names are looked up in,
    ``build_named(name, **options)`` builds one named layer (also ``"reverse"`` and
    ``"permute"``, the inserted permutations) and ``build_other(payload)`` turns a module or
    callable item of the spec into modules.
    """
    if permutation not in ("reverse", "random", None):
        raise ValueError(f"permutation must be 'reverse', 'random' or None, got {permutation!r}")
    items = _expand(spec, entries, unknown)
    used: set[str] = set()
    layers: list[Any] = []
    kinds: list[str | None] = []
    for name, payload in items:
        if name is None:
            for mod in build_other(payload):
                layers.append(mod)
                kinds.append(_kind_of(mod))
            continue
        entry = entries[name]
        own = {k: v for k, v in options.items() if entry.accepts(k)}
        used.update(own)
        layers.append(build_named(name, **{**own, **payload}))
        kinds.append(entry.kind)
    unused = set(options) - used
    if unused:
        raise ValueError(f"option(s) {sorted(unused)} are accepted by none of the layers in "
                         f"the flow spec {spec!r}")
    out: list[Any] = []
    for i, (layer, kind) in enumerate(zip(layers, kinds)):
        if (permutation is not None and i > 0 and kind in _MIXING_KINDS
                and kinds[i - 1] in _MIXING_KINDS and dim > 1):
            perm = "reverse" if permutation == "reverse" else "permute"
            extra = {"seed": seed + i} if perm == "permute" else {}
            mixer = build_named(perm, **extra)
            previous = _made_of(layers[i - 1])
            current = _made_of(layer)
            if previous is not None and current is not None:
                # two autoregressive layers: vary the MADE's order instead of moving the data
                # (the same family of flows as with the permutation layer, one layer fewer)
                perm_vector = getattr(mixer, "layer", mixer).perm  # ContextFree wraps
                current.set_order(previous.order[perm_vector])
            else:
                out.append(mixer)
        out.append(layer)
    return out


def _made_of(layer: Any) -> Any:
    """The MADE conditioner of an autoregressive layer whose order may be set, else None."""
    made = getattr(layer, "made", None)
    return made if _kind_of(layer) == "autoregressive" and hasattr(made, "set_order") else None


def markdown_table() -> str:
    """The registry as a markdown table (used by docs/layers.md and ``pyro-nf flows``)."""
    lines = ["| name | kind | inverse | volume preserving | min D | conditional twin | paper |",
             "|---|---|---|---|---|---|---|"]
    for name, e in sorted(_plain().items()):
        lines.append(f"| `{name}` | {e.kind} | {e.inverse} | "
                     f"{'yes' if e.volume_preserving else 'no'} | {e.min_dim} | "
                     f"{'yes' if e.conditional_twin else 'no'} | {e.paper} |")
    return "\n".join(lines)
