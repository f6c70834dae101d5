"""The "sticking the landing" gradient estimator (Roeder, Wu & Duvenaud, 2017).

The reparametrized ELBO gradient of E_q[log p(z) - log q_phi(z)], z = T_phi(eps), contains
the score term E_q[d/dphi log q_phi(z)] at fixed z, whose expectation is zero but whose variance
is not. Dropping it leaves the path derivative (d/dz [log p(z) - log q(z)]) dz/dphi, which
vanishes exactly when q = p: its variance goes to zero at the optimum. The ELBO value is
unchanged; only the surrogate that autograd differentiates changes.
"""

from __future__ import annotations

from typing import Any

from pyro.distributions.score_parts import ScoreParts
from pyro.infer import Trace_ELBO


def stl_sites(guide: Any, args: tuple = (), kwargs: dict | None = None) -> dict[str, Any]:
    """``{site name: log-density with detached parameters}`` for every pyro-nf guide inside
    ``guide`` (itself, or the members of an ``AutoGuideList``), given the model's arguments."""
    out: dict[str, Any] = {}
    kwargs = kwargs or {}
    if hasattr(guide, "stl_log_densities"):
        out.update(guide.stl_log_densities(*args, **kwargs))
    for member in getattr(guide, "_modules", {}).values():
        if hasattr(member, "stl_log_densities"):
            out.update(member.stl_log_densities(*args, **kwargs))
    return out


class STLTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose gradient drops the score term of log q for pyro-nf guides.

    Usable with :class:`~pyro_nf.AutoFlow` (alone or in an ``AutoGuideList``); other guides'
    sites keep Trace_ELBO's estimator. Costs one extra log-density evaluation of the fresh
    sample per step (for IAF layers, whose inverse takes D passes, this is D extra passes:
    prefer MAF-direction or coupling layers with STL). Vectorized particles are supported.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stl: dict[str, Any] = {}

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        for name, log_density in self._stl.items():
            site = guide_trace.nodes.get(name)
            if site is None or site["type"] != "sample":
                continue
            lp, score, _ = site["score_parts"]
            scale = site["scale"]
            entropy = log_density(site["value"]) * scale
            site["score_parts"] = ScoreParts(log_prob=lp, score_function=score,
                                             entropy_term=entropy)
        return model_trace, guide_trace

    def _with_guide(self, method, model, guide, *args, **kwargs):
        self._stl = stl_sites(guide, args, kwargs)
        try:
            return method(model, guide, *args, **kwargs)
        finally:
            self._stl = {}

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self._with_guide(super().loss_and_grads, model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._with_guide(super().differentiable_loss, model, guide, *args, **kwargs)
