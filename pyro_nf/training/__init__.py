"""Training: :func:`fit`, the :class:`Engine` that takes guarded SVI steps, and the schedules
that drive it (:class:`FixedSchedule`, :class:`SelfTuningSchedule`), and :func:`refine`: exact
draws by HMC in a fitted guide's coordinates, the self-tuning fit's last stage where its
checks fail."""

from pyro_nf.training.elbo import STLTrace_ELBO
from pyro_nf.training.engine import Engine
from pyro_nf.training.fit import fit
from pyro_nf.training.refinement import RefineResult, refine
from pyro_nf.training.result import FitResult
from pyro_nf.training.schedules import FixedSchedule, SelfTuningSchedule
from pyro_nf.training.step import NonFiniteLossError

__all__ = ["fit", "Engine", "FixedSchedule", "SelfTuningSchedule", "FitResult",
           "NonFiniteLossError", "STLTrace_ELBO", "refine", "RefineResult"]
