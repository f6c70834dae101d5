"""Flow layers as Pyro ``TransformModule``s, one family per module, behind one registry.

``available()`` lists the registered names, ``info(name)`` their metadata, ``register`` adds a
layer and ``build_flow(spec, dim)`` composes a flow from a spec such as ``"planar*8"``. Each
family is one class with a keyword ``context_dim``: 0 (the default) gives an ordinary
``TransformModule``, C > 0 the same layer conditional on a context of size C (Pyro's
conditional protocol: ``layer.condition(h)`` is the map for a context h). The layers that take
a context are ``available(conditional=True)`` (``info(name).conditional``), and
``build_flow(spec, dim, context_dim=C)`` composes them into a conditional flow. The machinery
of the context (``ContextFlow``, ``FlowAtContext``, ``HyperNet``, ...) is in
:mod:`pyro_nf.transforms.context`.
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
from pyro_nf.transforms.bnaf import BlockNeuralAutoregressive
from pyro_nf.transforms.context import (
    ContextFlow,
    ContextFlowInverse,
    FlowAtContext,
    HyperNet,
    ResidualFlow,
)
from pyro_nf.transforms.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
from pyro_nf.transforms.elementwise import DiagonalScale, ElementwiseAffine
from pyro_nf.transforms.householder import Householder
from pyro_nf.transforms.linear import LULinear
from pyro_nf.transforms.normalization import ActNorm
from pyro_nf.transforms.permutation import Permutation, RandomPermutation, Reverse
from pyro_nf.transforms.planar import Planar
from pyro_nf.transforms.radial import Radial
from pyro_nf.transforms.registry import (
    FlowInfo,
    available,
    build_flow,
    build_layer,
    expand_spec,
    info,
    register,
    unregister,
)
from pyro_nf.transforms.sylvester import (
    HouseholderSylvester,
    OrthogonalSylvester,
    Sylvester,
    TriangularSylvester,
)
from pyro_nf.transforms.transformers import Additive, Affine, RationalQuadraticSpline, Transformer

__all__ = [
    "Flow", "FlowInfo", "InverseNotConvergedError", "inverse_tolerance",
    "available", "build_flow", "build_layer", "expand_spec", "info", "register", "unregister",
    "ContextFlow", "ContextFlowInverse", "FlowAtContext", "HyperNet", "ResidualFlow",
    "Transformer", "Additive", "Affine", "RationalQuadraticSpline",
    "Coupling", "AdditiveCoupling", "AffineCoupling", "SplineCoupling",
    "Autoregressive", "AffineAutoregressive", "SplineAutoregressive",
    "BlockNeuralAutoregressive",
    "ElementwiseAffine", "DiagonalScale", "Permutation", "Reverse", "RandomPermutation",
    "LULinear", "ActNorm", "Householder",
    "Planar", "Radial", "Sylvester", "OrthogonalSylvester", "HouseholderSylvester",
    "TriangularSylvester",
]
