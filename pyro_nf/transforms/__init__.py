"""Flow layers as Pyro ``TransformModule``s, one family per module, behind one registry.

``available()`` lists the registered names, ``info(name)`` their metadata, ``register`` adds a
layer and ``build_flow(spec, dim)`` composes a flow from a spec such as ``"planar*8"``. A family
with a conditional form (``info(name).conditional``; ``available_conditional()``) defines it in
the same module (``ConditionalPlanar`` next to ``Planar``) and registers it under the same name
with ``register_conditional``; ``build_flow(spec, dim, context_dim=C)`` composes the
conditional flow, whose ``.condition(h)`` is the flow for a context h. The conditional
machinery (``ConditionalFlow``, ``HyperNet``, ...) is in :mod:`pyro_nf.transforms.context`.
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
    ConditionalAffineAutoregressive,
    ConditionalAutoregressive,
    ConditionalSplineAutoregressive,
    SplineAutoregressive,
)
from pyro_nf.transforms.base import Flow, InverseNotConvergedError, inverse_tolerance
from pyro_nf.transforms.context import ConditionalFlow, ConditionedFlow, ContextFree, HyperNet
from pyro_nf.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    ConditionalCoupling,
    ConditionalSplineCoupling,
    Coupling,
    SplineCoupling,
)
from pyro_nf.transforms.elementwise import DiagonalScale, ElementwiseAffine
from pyro_nf.transforms.householder import Householder
from pyro_nf.transforms.linear import LULinear
from pyro_nf.transforms.normalization import ActNorm
from pyro_nf.transforms.permutation import Permutation, RandomPermutation, Reverse
from pyro_nf.transforms.planar import ConditionalPlanar
from pyro_nf.transforms.radial import ConditionalRadial
from pyro_nf.transforms.registry import (
    FlowInfo,
    available,
    available_conditional,
    build_conditional_flow,
    build_conditional_layer,
    build_flow,
    build_layer,
    conditional_info,
    info,
    register,
    register_conditional,
)
from pyro_nf.transforms.sylvester import (
    ConditionalHouseholderSylvester,
    ConditionalOrthogonalSylvester,
    ConditionalSylvester,
    ConditionalTriangularSylvester,
)
from pyro_nf.transforms.transformers import Additive, Affine, RationalQuadraticSpline, Transformer

__all__ = [
    "Flow", "FlowInfo", "InverseNotConvergedError", "inverse_tolerance",
    "available", "build_flow", "build_layer", "info", "register",
    "Transformer", "Additive", "Affine", "RationalQuadraticSpline",
    "Coupling", "AdditiveCoupling", "AffineCoupling", "SplineCoupling",
    "Autoregressive", "AffineAutoregressive", "SplineAutoregressive",
    "ElementwiseAffine", "DiagonalScale", "Permutation", "Reverse", "RandomPermutation",
    "LULinear", "ActNorm", "Householder",
    # the conditional forms, last: from "available_conditional" on, this is also the deprecated
    # pyro_nf.transforms.conditional's __all__
    "available_conditional", "build_conditional_flow", "build_conditional_layer",
    "conditional_info", "register_conditional",
    "ConditionalFlow", "ConditionedFlow", "ContextFree", "HyperNet",
    "ConditionalPlanar", "ConditionalRadial", "ConditionalSylvester",
    "ConditionalOrthogonalSylvester", "ConditionalHouseholderSylvester",
    "ConditionalTriangularSylvester", "ConditionalCoupling", "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling", "ConditionalSplineCoupling", "ConditionalAutoregressive",
    "ConditionalAffineAutoregressive", "ConditionalSplineAutoregressive",
]
