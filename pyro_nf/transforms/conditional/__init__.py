"""Deprecated: the old home of the conditional layers, kept for one release.

Each family's conditional form now lives in the family's module (``ConditionalPlanar`` in
:mod:`pyro_nf.transforms.planar`, ...), the conditional machinery in
:mod:`pyro_nf.transforms.context` and the one registry in :mod:`pyro_nf.transforms.registry`;
:mod:`pyro_nf.transforms` exports every name. Build conditional flows with
``build_flow(spec, dim, context_dim=C)``. This package re-exports its former names, and its
former submodules (``.planar``, ``.base``, ``.registry``, ...) are aliases of the new modules.
"""

import sys
import warnings

from pyro_nf import transforms as _transforms

warnings.warn("pyro_nf.transforms.conditional is deprecated and will be removed in the next "
              "release; import its names from pyro_nf.transforms (the classes live in the "
              "families' modules, e.g. pyro_nf.transforms.planar.ConditionalPlanar) and build "
              "conditional flows with build_flow(spec, dim, context_dim=C)",
              DeprecationWarning, stacklevel=2)

#: the former names: the conditional part of pyro_nf.transforms.__all__, which comes last
__all__ = _transforms.__all__[_transforms.__all__.index("available_conditional"):]
globals().update((name, getattr(_transforms, name)) for name in __all__)

# the former submodules, importable by their old paths
for _name in ("autoregressive", "base", "coupling", "permutation", "planar", "radial",
              "registry", "sylvester"):
    _module = getattr(_transforms, "context" if _name == "base" else _name)
    sys.modules[f"{__name__}.{_name}"] = _module
    setattr(sys.modules[__name__], _name, _module)
del _name, _module
