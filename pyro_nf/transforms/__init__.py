"""Flow layers as Pyro ``TransformModule``s, one family per module, behind one registry.

``available()`` lists the registered names, ``info(name)`` their metadata, ``register`` adds a
layer and ``build_flow(spec, dim)`` composes a flow from a spec such as ``"planar*8"``. The
conditional twins (:mod:`pyro_nf.transforms.conditional`) have ``available_conditional()`` and
``build_conditional_flow(spec, dim, context_dim)``.
"""

from pyro_nf.transforms import (  # noqa: F401  (importing registers the layers)
    autoregressive,
    bnaf,
    coupling,
    elementwise,
    householder,
    linear,
    normalization,
    permutation,
    planar,
    radial,
    sylvester,
)
from pyro_nf.transforms.autoregressive import (
    AffineAutoregressive,
    Autoregressive,
    SplineAutoregressive,
)
from pyro_nf.transforms.base import Flow, InverseNotConvergedError, inverse_tolerance
from pyro_nf.transforms.conditional import (
    available_conditional,
    build_conditional_flow,
    register_conditional,
)
from pyro_nf.transforms.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
from pyro_nf.transforms.elementwise import DiagonalScale, ElementwiseAffine
from pyro_nf.transforms.householder import Householder
from pyro_nf.transforms.linear import LULinear
from pyro_nf.transforms.normalization import ActNorm
from pyro_nf.transforms.permutation import Permutation, RandomPermutation, Reverse
from pyro_nf.transforms.registry import FlowInfo, available, build_flow, build_layer, info, register
from pyro_nf.transforms.transformers import Additive, Affine, RationalQuadraticSpline, Transformer

__all__ = [
    "Flow", "FlowInfo", "InverseNotConvergedError", "inverse_tolerance",
    "available", "build_flow", "build_layer", "info", "register",
    "Transformer", "Additive", "Affine", "RationalQuadraticSpline",
    "Coupling", "AdditiveCoupling", "AffineCoupling", "SplineCoupling",
    "Autoregressive", "AffineAutoregressive", "SplineAutoregressive",
    "ElementwiseAffine", "DiagonalScale", "Permutation", "Reverse", "RandomPermutation",
    "LULinear", "ActNorm", "Householder",
    "available_conditional", "build_conditional_flow", "register_conditional",
]
