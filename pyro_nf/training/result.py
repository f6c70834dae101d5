"""What a fit returns: :class:`FitResult`, the same for every schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        guide: the fitted guide (the same object that was passed in).
        losses: the loss (negative ELBO estimate) of every step, in order (resumed runs
            include the steps before the checkpoint).
        steps: the number of steps taken in total.
        seconds: wall time of this call.
        converged: whether the smoothed loss stopped changing (see :func:`fit`).
        converged_at: the step at which that was first detected, or None.
        skipped_steps: steps skipped by the non-finite guard.
        lr_factor: what the guard left of the learning rate (each skipped step halves it).
    """

    guide: Any
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    converged: bool = False
    converged_at: int | None = None
    skipped_steps: int = 0
    lr_factor: float = 1.0
    #: without ``num_steps``: the stage that ended the fit ("start": the guide passed the
    #: importance check before any step; "optimize": it passed once the loss was stationary,
    #: or the cap; "average": converged, its parameters averaged) and why, the step size the
    #: pilot chose from its scores (``pilot``: lr -> ELBO), the fitted guide's ELBO on fixed
    #: draws (a subsampled model's: the full-data importance check's draws) and, for an
    #: AutoFlow with a Gaussian anchor, the anchor's (the last check).
    stage: str = "fixed"
    stop_reason: str = "num_steps"
    lr: float | None = None
    pilot: dict[str, float] = field(default_factory=dict)
    elbo_estimate: float | None = None
    anchor_elbo: float | None = None
    #: the last check's PSIS k-hats of the fitted guide (a guide over the packed latent) and of
    #: its anchor, the guide's chi^2(p || q) estimate, and which of guide and anchor it
    #: recommends ("flow" or "anchor"; None without an anchor)
    khat: float | None = None
    chi2: float | None = None
    anchor_khat: float | None = None
    recommendation: str | None = None
    #: what the checks allow us to say of the fitted guide (:mod:`~pyro_nf.training.certify`):
    #: "reliable" (every check passed), "usable with care" or "unreliable", then the checks
    #: that decided it; "not checked" where none ran (a fixed schedule: ``diagnose`` checks
    #: the fit). ``checks``: each check's status and finding; ``mode_search``: the mode
    #: screen's :class:`~pyro_nf.approximations.modes.ModeSearch` (``AutoFlowMixture(model,
    #: search=result.mode_search)`` fits every mode it found)
    verdict: str = "not checked: a fixed number of steps; diagnose(model, guide) checks the fit"
    checks: list = field(default_factory=list)
    mode_search: Any = None
    #: seconds of those checks (part of ``seconds``)
    check_seconds: float = 0.0
    #: which draws answer the question: "flow" (the fitted guide's) or "refined" (the
    #: checks called the guide unreliable, so the fit drew exact samples by HMC in its
    #: coordinates: ``refined``, a :class:`~pyro_nf.training.refinement.RefineResult`; its
    #: ``converged`` says whether they met their ESS and R-hat targets)
    source: str = "flow"
    refined: Any = None
    #: for a mixture of flows (``AutoFlowMixture(model, modes=...)``): each component's own result
    #: (the mixture's ``khat`` is that of the weighted mixture, ``steps`` and ``losses``
    #: the components' together)
    components: list | None = None
    #: a data-parallel fit (``distributed=True`` under ``torchrun``): the number of processes
    #: and the seconds this one spent exchanging gradients with the others
    world_size: int = 1
    communication_seconds: float = 0.0

    @property
    def final_elbo(self) -> float:
        """Mean ELBO over the last 10% of steps (at least 1, at most 500)."""
        if not self.losses:
            return float("nan")
        n = min(500, max(1, len(self.losses) // 10))
        return -float(np.mean(self.losses[-n:]))

    def __repr__(self) -> str:
        return (f"FitResult(steps={self.steps}, final_elbo={self.final_elbo:.4g}, "
                f"converged={self.converged}, seconds={self.seconds:.1f}, "
                f"skipped_steps={self.skipped_steps}, "
                f"verdict={self.verdict.split(':')[0]!r}, source={self.source!r})")
