"""Conditional (amortized) twins of the flow layers: ``layer.condition(h)`` is a
:class:`~pyro_nf.transforms.Flow` batched over data points, for a context h of shape (..., C).

``available_conditional()`` lists the names (those of the unconditional twins),
``build_conditional_flow(spec, dim, context_dim)`` composes a
:class:`~pyro.distributions.conditional.ConditionalComposeTransformModule` from a spec such as
``"planar*10"`` or ``"iaf*2"``, and ``register_conditional`` adds a layer. See
:mod:`pyro_nf.transforms.conditional.base` for how each family depends on the context.
"""

import sys

from pyro_nf.transforms import registry as _registry
from pyro_nf.transforms.conditional import (  # noqa: F401  (importing registers the layers)
    autoregressive,
    coupling,
    permutation,
    planar,
    radial,
    sylvester,
)
from pyro_nf.transforms.conditional.autoregressive import (
    ConditionalAffineAutoregressive,
    ConditionalAutoregressive,
    ConditionalSplineAutoregressive,
)
from pyro_nf.transforms.conditional.base import (
    ConditionalFlow,
    ConditionedFlow,
    ContextFree,
    HyperNet,
)
from pyro_nf.transforms.conditional.coupling import (
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    ConditionalCoupling,
    ConditionalSplineCoupling,
)
from pyro_nf.transforms.conditional.planar import ConditionalPlanar
from pyro_nf.transforms.conditional.radial import ConditionalRadial
from pyro_nf.transforms.conditional.sylvester import (
    ConditionalHouseholderSylvester,
    ConditionalOrthogonalSylvester,
    ConditionalSylvester,
    ConditionalTriangularSylvester,
)
from pyro_nf.transforms.registry import (
    available_conditional,
    build_conditional_flow,
    build_conditional_layer,
    conditional_info,
    register_conditional,
)

# the conditional registry is the one registry's conditional half
sys.modules[f"{__name__}.registry"] = registry = _registry

__all__ = [
    "available_conditional", "build_conditional_flow", "build_conditional_layer",
    "conditional_info", "register_conditional",
    "ConditionalFlow", "ConditionedFlow", "ContextFree", "HyperNet",
    "ConditionalPlanar", "ConditionalRadial", "ConditionalSylvester",
    "ConditionalOrthogonalSylvester", "ConditionalHouseholderSylvester",
    "ConditionalTriangularSylvester", "ConditionalCoupling", "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling", "ConditionalSplineCoupling", "ConditionalAutoregressive",
    "ConditionalAffineAutoregressive", "ConditionalSplineAutoregressive",
]
