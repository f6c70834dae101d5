"""One registry of flow layers, and the spec builder that composes them.

Every layer family registers a constructor ``f(dim, **options) -> TransformModule`` under a name
with its metadata (paper, exact or numerical inverse, volume preserving, kind). The registry
drives :func:`build_flow`, the CLI's ``pyro-nf flows`` table and the test battery: registering a
layer is enough to have it tested.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule

#: Kinds of layer. Coupling and autoregressive layers only mix dimensions in one direction, so
#: :func:`build_flow` puts a permutation between two consecutive ones.
KINDS = ("coupling", "autoregressive", "elementwise", "linear", "permutation", "residual")
_MIXING_KINDS = ("coupling", "autoregressive")


@dataclass(frozen=True)
class FlowInfo:
    """Metadata of a registered flow layer."""

    name: str
    constructor: Callable[..., TransformModule]
    paper: str
    inverse: str
    kind: str
    volume_preserving: bool = False
    min_dim: int = 1
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def accepts(self, option: str) -> bool:
        return option in self.options

    @property
    def conditional_twin(self) -> bool:
        """Whether a conditional layer of the same name is registered
        (:func:`pyro_nf.transforms.available_conditional`)."""
        from pyro_nf.transforms.conditional.registry import available_conditional

        return self.name in available_conditional()


_REGISTRY: dict[str, FlowInfo] = {}


def _signature_options(fn: Callable, positional: int = 1) -> dict[str, Any]:
    """The options of a constructor: its parameters after the first ``positional`` ones (dim,
    and context_dim for conditional layers), with their defaults."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    out = {}
    for p in params[positional:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        name = p.name
        out[name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def check_metadata(inverse: str, kind: str) -> None:
    """The checks every registry (plain or conditional) applies to a layer's metadata."""
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
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"flow name must match [a-z][a-z0-9_]*, got {name!r}")
    check_metadata(inverse, kind)

    def decorator(fn: Callable[..., TransformModule]) -> Callable[..., TransformModule]:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a flow named {name!r} is already registered; pass overwrite=True")
        options = _signature_options(fn.__init__ if inspect.isclass(fn) else fn)
        _REGISTRY[name] = FlowInfo(name, fn, paper, inverse, kind, volume_preserving, min_dim,
                                   description or (inspect.getdoc(fn) or "").split("\n")[0],
                                   options)
        return fn

    return decorator


def available() -> list[str]:
    """The registered flow names, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> FlowInfo:
    """The metadata of flow ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(_unknown(name)) from None


def _unknown(name: object) -> str:
    return f"unknown flow {name!r}; available flows: {', '.join(available())}"


def build_layer(name: str, dim: int, **options: Any) -> TransformModule:
    """Build one registered layer for event size ``dim``."""
    entry = info(name)
    check_entry_call(entry, "flow", name, dim, options)
    return entry.constructor(dim, **options)


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
    with names looked up in ``entries`` (default: this registry; the conditional registry
    passes its own, and ``unknown`` for its error message)."""
    if entries is None:
        entries = _REGISTRY
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


def build_flow(spec: FlowSpec, dim: int, *, permutation: str | None = "reverse", seed: int = 0,
               **options: Any) -> ComposeTransformModule:
    """Compose the layers named by ``spec`` for event size ``dim``.

    Args:
        spec: ``"planar*8"``; ``["realnvp", "reverse"] * 4``; ``[("maf", {"hidden": 64})]``;
            a ``TransformModule``; or a callable ``dim -> module or list of modules``.
        dim: the event size D.
        permutation: how two consecutive coupling/autoregressive layers that have no other
            layer between them are mixed: ``"reverse"``, ``"random"`` (seeded by ``seed`` and
            the position) or ``None`` for no mixing. Between two autoregressive layers the
            second layer's MADE takes the permuted order (no data moves, no extra layer);
            elsewhere a permutation layer is inserted.
        seed: seed of the random permutations.
        **options: passed to every named layer that accepts them (e.g. ``hidden=64``); an
            option that no layer in the spec accepts is an error.

    Returns:
        a :class:`~pyro.distributions.torch_transform.ComposeTransformModule` of the layers.
    """
    from pyro_nf.transforms.base import check_dim

    check_dim(dim, "build_flow")

    def other(payload: Any) -> list[Any]:
        built = payload if isinstance(payload, TransformModule) else payload(dim)
        mods = list(built) if isinstance(built, (list, tuple)) else [built]
        for mod in mods:
            if not isinstance(mod, torch.distributions.Transform):
                raise ValueError(f"a callable flow spec returned {type(mod).__name__}, "
                                 "not a Transform")
        return mods

    layers = assemble(spec, dim, permutation=permutation, seed=seed, options=options,
                      entries=_REGISTRY, unknown=_unknown,
                      build_named=lambda name, **kw: build_layer(name, dim, **kw),
                      build_other=other)
    return ComposeTransformModule(layers)


def assemble(spec: Any, dim: int, *, permutation: str | None, seed: int,
             options: dict[str, Any], entries: Mapping[str, FlowInfo],
             unknown: Callable[[object], str], build_named: Callable[..., Any],
             build_other: Callable[[Any], list[Any]]) -> list[Any]:
    """The layers of a flow spec, with permutations between consecutive mixing layers: the
    machinery shared by :func:`build_flow` and
    :func:`~pyro_nf.transforms.conditional.build_conditional_flow`.

    ``entries`` is the registry the names are looked up in, ``build_named(name, **options)``
    builds one named layer (also ``"reverse"`` and ``"permute"``, the inserted permutations)
    and ``build_other(payload)`` turns a module or callable item of the spec into modules.
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
    for name in available():
        e = _REGISTRY[name]
        lines.append(f"| `{name}` | {e.kind} | {e.inverse} | "
                     f"{'yes' if e.volume_preserving else 'no'} | {e.min_dim} | "
                     f"{'yes' if e.conditional_twin else 'no'} | {e.paper} |")
    return "\n".join(lines)
