"""``fit`` without ``num_steps``: a fit that chooses its step size and stops by itself.

Stages, each a small function below:

1. **pilot**: from the same start, a short run at each of ``PILOT_LRS``; the step size whose
   run ends with the highest ELBO, estimated on the same fixed draws for every candidate
   (common random numbers, so the comparison is not drowned in Monte Carlo noise), wins.
2. **optimise**: Adam in windows of ``WINDOW`` steps. Once the loss is stationary (the means of
   the last two windows agree within their standard errors: the iterates only bounce around
   the optimum, Dhaka et al., 2020, "Robust, accurate stochastic optimization for variational
   inference"; at the first learning rate, windows twice as long), the learning rate is
   halved, ``HALVINGS`` times in all (Welandawe et al., 2024,
   "A framework for improving the reliability of black-box variational inference").
3. **average**: at the smallest learning rate, the parameters are averaged over the last
   ``AVERAGE_WINDOWS`` windows (Polyak & Juditsky, 1992) and the average is returned: it has
   a fraction of a single iterate's Monte Carlo error.

**Accurate early.** Before the first step and whenever the loss has become stationary, a
guide over the packed latent (``AutoContinuous``: AutoFlow, Pyro's Gaussian and IAF guides) is
checked by importance sampling: from :data:`CHECK_DRAWS` of its draws, the weights
w = p(z | x) / q(z) estimate the chi-square divergence chi^2(p || q) = E_q[w^2] - 1. By the
Cauchy-Schwarz inequality |E_p f - E_q f| = |Cov_q(w, f)| <= sqrt(chi^2) sd_q(f) for every f,
so once ``chi^2 + 2 se <= accuracy^2`` (and PSIS k-hat < 0.5, so that the weights' variance is
finite and the estimate means something) every posterior mean is within ``accuracy`` guide
sds of the guide's, and (with f the squared deviation of a near-Gaussian marginal) every sd
within about ``1.4 accuracy``: training further cannot improve what a user reads off the draws,
and the fit stops. An AutoFlow whose Gaussian anchor is already that close (a regression, a
posterior that is Gaussian) stops before its first step. Like every importance diagnostic it
cannot see regions the guide never visits (a missed mode).

The run stops there, or at ``max_steps``; :class:`~pyro_nf.FitResult` says which
(``stage``, ``stop_reason``). For an AutoFlow with a Gaussian anchor a last check compares the
fitted guide's ELBO with the anchor's, and warns when the flow did worse than where it began.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import Trace_ELBO

from pyro_nf.densities.full_data import reads_all_rows

PILOT_LRS = (0.01, 0.005, 0.002)
PILOT_STEPS = 75
WINDOW = 200
HALVINGS = 4
AVERAGE_WINDOWS = 2
MAX_STEPS = 10000
#: Draws of the fixed-draw ELBO estimates (pilot, last check).
SCORE_PARTICLES = 256
#: ``fit``'s default accuracy: stop once every posterior mean is provably this many guide sds
#: from the guide's (module docstring, "Accurate early").
ACCURACY = 0.1
#: Draws of each importance check (module docstring, "Accurate early"; the last check), and
#: their number for a model that runs one draw at a time (it does not broadcast over a batch).
CHECK_DRAWS = 2000
LOOP_CHECK_DRAWS = 500
#: A subsampled model's check reads all its rows for every draw: its draws are cut (to no
#: fewer than LOOP_CHECK_DRAWS) so that draws x rows stays within this.
CHECK_ROWS = 2 * 10 ** 8
#: The importance check's k-hat bound: below it the weights have a finite variance.
CHECK_KHAT = 0.5


@dataclass(frozen=True)
class ImportanceCheck:
    """Importance weights p(z | x) / q(z) of a guide's draws: their PSIS k-hat and the
    chi-square divergence chi^2(p || q) = E_q[w^2] - 1 of the self-normalised weights, with its
    Monte Carlo standard error (``inf`` when a draw's weight is not finite)."""

    khat: float
    chi2: float
    chi2_se: float
    #: the same draws' ELBO, mean(log p(x, z) - log q(z)), and its standard error
    elbo: float = -math.inf
    elbo_se: float = math.inf

    def within(self, accuracy: float) -> bool:
        """Whether every posterior mean is provably within ``accuracy`` guide sds of the
        guide's (module docstring), with two standard errors of margin."""
        return self.khat < CHECK_KHAT and self.chi2 + 2 * self.chi2_se <= accuracy ** 2

    def fails(self, accuracy: float) -> bool:
        """Whether it is clearly not within ``accuracy``, so more draws would not change that:
        chi^2 two standard errors above ``accuracy^2``, or k-hat 0.7 or more (weights too
        heavy-tailed for importance sampling to be reliable at any practical number of draws,
        Vehtari et al. 2024)."""
        return self.khat >= 0.7 or self.chi2 - 2 * self.chi2_se > accuracy ** 2

    def __str__(self) -> str:
        return f"chi^2(p || q) {self.chi2:.4f} +- {self.chi2_se:.4f}, k-hat {self.khat:.2f}"


def _devices() -> list[int]:
    """The CUDA device whose generator torch.manual_seed also seeds, to fork it too."""
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


def _store_values() -> dict[str, torch.Tensor]:
    return {name: p.detach().clone()
            for name, p in pyro.get_param_store().named_parameters()}


@torch.no_grad()
def _load_values(values: dict[str, torch.Tensor]) -> None:
    params = dict(pyro.get_param_store().named_parameters())
    for name, value in values.items():
        params[name].copy_(value)


def fixed_draw_elbo(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                    num: int = SCORE_PARTICLES, seed: int = 0, vectorize: Any = None
                    ) -> tuple[float, float]:
    """The ELBO and its standard error from ``num`` draws under a fixed seed (the caller's
    random stream is left as it was); ``vectorize``: a vectorised ELBO of the fit whose
    ``max_plate_nesting`` the particles may use (the draws then run as batches)."""
    from pyro_nf.training.compiled import plate_nesting

    batched = bool(getattr(vectorize, "vectorize_particles", False))
    elbo = Trace_ELBO(num_particles=max(1, num // 8), vectorize_particles=batched,
                      max_plate_nesting=plate_nesting(vectorize) if batched else math.inf)
    values = []
    with torch.random.fork_rng(devices=_devices()), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(8):  # 8 batches: a standard error from their spread
            values.append(-elbo.loss(model, guide, *args, **kwargs))
    mean = sum(values) / len(values)
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return mean, se


def full_data_elbo(log_density: Any, q: Any, num: int = SCORE_PARTICLES, seed: int = 0
                   ) -> float:
    """The ELBO of ``q`` (over the packed latent) against ``log_density`` from ``num`` draws
    under a fixed seed (the caller's random stream is left as it was); -inf where a draw's
    density is not finite."""
    with torch.random.fork_rng(devices=_devices()), torch.no_grad():
        torch.manual_seed(seed)
        z = q.sample((num,))
        lw = log_density(z.double()).double() - q.log_prob(z).double()
    return float(lw.mean()) if bool(torch.isfinite(lw).all()) else -math.inf


def _pilot(run: Callable, model, guide, args, kwargs, loss_fn: Any = None,
           log_density: Any = None) -> tuple[float, dict[str, float]]:
    """Stage 1: the step size whose short run ends with the best fixed-draw ELBO; for a
    subsampled model, the full data's (``log_density`` read in chunks): a minibatch ELBO's
    noise, N / B times a row's, would pick the step size at random."""
    with torch.no_grad():  # every parameter, the model's own pyro.param too, exists now
        Trace_ELBO().loss(model, guide, *args, **kwargs)
    start = _store_values()
    scores = {}
    for lr in PILOT_LRS:
        _load_values(start)
        try:
            run(PILOT_STEPS, lr, warmup=PILOT_STEPS // 4, fresh=True)
        except FloatingPointError:  # NonFiniteLossError: this step size diverges
            scores[lr] = -math.inf
            continue
        if reads_all_rows(log_density):
            elbo = full_data_elbo(log_density, guide.get_posterior(*args, **kwargs))
        else:
            elbo = fixed_draw_elbo(model, guide, args, kwargs, vectorize=loss_fn)[0]
        scores[lr] = elbo if math.isfinite(elbo) else -math.inf
    _load_values(start)
    if not any(math.isfinite(v) for v in scores.values()):
        best = min(scores)  # every step size diverged: the main stage starts at the smallest
    else:
        best = max(scores, key=scores.get)
    return best, {str(k): v for k, v in scores.items()}


def auto_fit(model: Callable, guide: Callable, args: tuple, kwargs: dict, fit_fn: Callable,
             *, max_steps: int = MAX_STEPS, num_particles: int = 8, seed: int | None = None,
             accuracy: float | None = ACCURACY, **options: Any) -> Any:
    """Run the stages (module docstring) with ``fit_fn`` (:func:`pyro_nf.fit` with an explicit
    ``num_steps``) doing every window of steps."""
    from pyro_nf.training.fit import FitResult

    started = time.perf_counter()
    if seed is not None:
        pyro.set_rng_seed(seed)
    from pyro_nf.training.compiled import compiled_elbo
    from pyro_nf.training.fit import (
        _make_elbo,
        _particles_that_work,
        not_positive_definite,
        numerics_error,
    )
    from pyro_nf.training.optim import JointAdam

    elbo = options.pop("elbo", None)
    loss_fn = _make_elbo(elbo, num_particles, options.pop("vectorize_particles", True))
    try:
        with torch.no_grad():
            pyro.poutine.block(guide)(*args, **kwargs)  # the set-up (AutoFlow: its anchor)
    except (torch.linalg.LinAlgError, ValueError) as exc:
        if not_positive_definite(exc):
            raise numerics_error(exc) from exc
        raise
    state: dict[str, Any] = {"optim": None, "base_lr": None}

    def run(steps: int, lr: float, warmup: int = 0, fresh: bool = False,
            hook: Callable | None = None) -> Any:
        if fresh or state["optim"] is None:
            state["optim"], state["base_lr"] = JointAdam({"lr": lr}), lr
        base = state["base_lr"]
        return fit_fn(model, guide, *args, num_steps=steps, optim=state["optim"],
                      elbo=loss_fn, lr_decay=None, warmup_steps=warmup, progress=False,
                      lr_schedule=lambda step: lr / base, _step_hook=hook, **options,
                      **kwargs)

    check = _Accuracy(model, guide, args, kwargs, accuracy)
    checked = None  # the ELBO once its particles are known to broadcast (or run in turn)
    if check.reached():  # the start (AutoFlow: its Gaussian anchor) is already that close
        total = FitResult(guide=guide, stage="start", stop_reason=check.reason())
    else:
        loss_fn = checked = _particles_that_work(loss_fn, model, guide, args, kwargs)
        if elbo is None or isinstance(elbo, str):  # an ELBO of the fit's own making
            loss_fn = _with_control_variate(loss_fn, guide, args, kwargs, check.log_density)
        if elbo is None:  # the default: compiled where that is exact
            loss_fn = compiled_elbo(loss_fn, model, guide, args, kwargs)
        lr, pilot_scores = _pilot(run, model, guide, args, kwargs, loss_fn, check.log_density)
        state["optim"] = None
        total = _optimise(run, lr, max_steps, pilot_scores, guide, check)
    try:  # a fit that stopped at its start is still the guide the first check saw
        _last_check(total, model, guide, args, kwargs, check.log_density, checked,
                    check.last if total.stage == "start" else None)
    except Exception as error:  # noqa: BLE001 - a finished fit is not thrown away for it
        warnings.warn(f"fit: the last check against the anchor failed ({type(error).__name__}: "
                      f"{next(iter(str(error).splitlines()), '')})", RuntimeWarning,
                      stacklevel=3)
    total.seconds = time.perf_counter() - started
    return total


def _with_control_variate(loss_fn: Any, guide, args, kwargs, log_density: Any) -> Any:
    """``loss_fn`` with :mod:`~pyro_nf.densities.control_variate`'s control variate, for a model
    that subsamples a plate (z0: the mean of 256 draws of the guide as it starts)."""
    if log_density is None or log_density.chunks is None:
        return loss_fn
    from pyro_nf.densities.control_variate import ControlVariate

    with torch.random.fork_rng(devices=_devices()), torch.no_grad():
        torch.manual_seed(3)
        center = guide.get_posterior(*args, **kwargs).sample((SCORE_PARTICLES,)).mean(0)
    return ControlVariate(log_density, center, f"_{guide._pyro_name}_latent").attach(loss_fn)


def _optimise(run: Callable, lr: float, max_steps: int, pilot_scores: dict, guide,
              check: _Accuracy) -> Any:
    """Stages 2 and 3: windows until stationary (then the importance check), halvings, then
    the averaged parameters."""
    from pyro_nf.training.fit import FitResult, _converged

    total = FitResult(guide=guide, pilot=pilot_scores, lr=lr)
    halvings, stage_losses, average, count = 0, [], None, 0
    stage, reason = "optimise", f"the cap of {max_steps} steps"

    def accumulate(_step: int) -> None:
        nonlocal average, count
        values = _store_values()
        count += 1
        if average is None:
            average = values
        else:
            for name, value in values.items():
                average[name] += (value - average[name]) / count

    while total.steps < max_steps:
        averaging = halvings == HALVINGS
        windows_left = AVERAGE_WINDOWS if averaging else 1
        steps = min(WINDOW * windows_left, max_steps - total.steps)
        result = run(steps, lr * 0.5 ** halvings, warmup=50 if total.steps == 0 else 0,
                     hook=accumulate if averaging else None)
        total.losses += result.losses
        total.steps += result.steps
        total.skipped_steps += result.skipped_steps
        total.seconds += result.seconds
        stage_losses += result.losses
        if averaging:
            stage = "average"
            reason = (f"the loss was stationary after {HALVINGS} halvings of the learning "
                      f"rate; the parameters are averaged over the last {count} steps")
            break
        # the first stage compares windows twice as long: early on the loss still drifts by
        # less than its noise per window while it has far to go
        if _converged(stage_losses, WINDOW * (2 if halvings == 0 else 1), 0.0):
            halvings += 1
            stage_losses = []
            total.converged, total.converged_at = True, total.steps
            if check.reached():
                reason = check.reason()
                break
    if average is not None:
        _load_values(average)
    total.stage, total.stop_reason = stage, reason
    return total


def importance_check(log_density: Any, q: Any, num: int | None = None,
                     accuracy: float | None = None) -> ImportanceCheck:
    """:class:`ImportanceCheck` of ``q`` (a distribution over the packed latent) against the
    model's ``log_density``, from ``num`` draws under a fixed seed (the caller's random stream
    is left as it was; default :data:`CHECK_DRAWS`, :data:`LOOP_CHECK_DRAWS` for a model that
    runs one draw at a time, fewer for a subsampled model with many rows: :data:`CHECK_ROWS`).
    A ``q`` without spread (a point mass) is never within any accuracy.

    With ``accuracy``, a subsampled model (every draw reads all its data) is checked on the
    first :data:`LOOP_CHECK_DRAWS` draws, and on all ``num`` only where those neither pass nor
    clearly fail (:meth:`ImportanceCheck.fails`)."""
    if num is None:
        num = CHECK_DRAWS if log_density.batched else LOOP_CHECK_DRAWS
        rows = getattr(getattr(log_density, "chunks", None), "size", 0)
        if rows:  # a subsampled model read over all its data: bound the rows read
            num = max(LOOP_CHECK_DRAWS, min(num, CHECK_ROWS // rows))
    first = num
    if accuracy is not None and reads_all_rows(log_density):
        first = min(num, LOOP_CHECK_DRAWS)
    with torch.random.fork_rng(devices=_devices()), torch.no_grad():
        torch.manual_seed(1)
        z = q.sample((num,))
        log_q = q.log_prob(z).double()
        # in float64: a large data set's log density is too big for float32's resolution
        lw = log_density(z[:first].double()).double() - log_q[:first]
        check = _weights_check(lw, z[:first])
        if first < num and not check.within(accuracy) and not check.fails(accuracy):
            rest = log_density(z[first:].double()).double() - log_q[first:]
            check = _weights_check(torch.cat([lw, rest]), z)
    return check


def _weights_check(lw: torch.Tensor, z: torch.Tensor) -> ImportanceCheck:
    """k-hat, chi^2 and the ELBO of the log weights ``lw`` of the draws ``z``."""
    from pyro_nf.utils import arviz_compat

    num = len(lw)
    finite = torch.isfinite(lw)
    if int(finite.sum()) < num // 2:
        return ImportanceCheck(math.inf, math.inf, math.inf)
    khat = float(arviz_compat.psis(lw[finite].numpy())[1])
    if not bool(finite.all()) or not bool((z.std(0) > 0).all()):
        return ImportanceCheck(khat, math.inf, math.inf)
    w2 = torch.exp(2 * (lw - torch.logsumexp(lw, 0) + math.log(num)))
    return ImportanceCheck(khat, float(w2.mean() - 1), float(w2.std() / math.sqrt(num)),
                           float(lw.mean()), float(lw.std() / math.sqrt(num)))


class _Accuracy:
    """The importance check of a guide over the packed latent as it stands (``reached``);
    inert (never reached) for other guides, ``accuracy=None``, or a model whose log density
    cannot be set up."""

    def __init__(self, model, guide, args, kwargs, accuracy: float | None) -> None:
        from pyro.infer.autoguide import AutoContinuous

        self.guide, self.args, self.kwargs, self.accuracy = guide, args, kwargs, accuracy
        self.log_density, self.last = None, None
        if accuracy and isinstance(guide, AutoContinuous):
            from pyro_nf.densities.logdensity import LogDensity

            try:  # its initial point may draw from the prior: not from the fit's stream
                with torch.random.fork_rng(devices=_devices()):
                    self.log_density = LogDensity(model, *args, **kwargs)
            except Exception:  # noqa: BLE001 - no check, the fit runs its whole schedule
                self.log_density = None

    def reached(self) -> bool:
        if self.log_density is None:
            return False
        q = self.guide.get_posterior(*self.args, **self.kwargs)
        self.last = importance_check(self.log_density, q, accuracy=self.accuracy)
        return self.last.within(self.accuracy)

    def reason(self) -> str:
        return (f"the guide is within the accuracy asked for ({self.last}: every posterior "
                f"mean within {self.accuracy:g} guide sds of the guide's)")


def recommend(elbo: float, se: float, anchor_elbo: float, khat: float, anchor_khat: float
              ) -> str:
    """"anchor" when the fitted flow is worse than its anchor, else "flow": the anchor's ELBO
    higher by more than three standard errors (plus 0.05 nats), or the flow's k-hat 0.7 or
    more with the anchor's below both and the anchor's ELBO at least as high. k-hat from 2000
    draws is noisy, so alone it does not decide: on garch and hmm_example an anchor with the
    lower k-hat but a lower ELBO had means 0.3 and 0.2 sd off where the flow's were within
    0.04."""
    worse_elbo = elbo < anchor_elbo - 3 * se - 0.05
    worse_khat = khat >= 0.7 and anchor_khat < min(0.7, khat) and anchor_elbo >= elbo
    return "anchor" if worse_elbo or worse_khat else "flow"


def _last_check(result: Any, model, guide, args, kwargs, log_density: Any = None,
                loss_fn: Any = None, start: ImportanceCheck | None = None) -> None:
    """The fitted guide's ELBO on fixed draws and, for a guide over the packed latent, its
    importance check; for an AutoFlow, the same for its Gaussian anchor: warn and recommend
    the anchor where it is the better of the two. ``start``: the check of a guide that has
    not moved since (its own and its anchor's: a subsampled model's check reads all the
    data, so it is not run thrice). A subsampled model's ELBO is the full-data check's (its
    draws' mean log weight), not a minibatch estimate: exact in the data, and comparable
    with the anchor's, which reads all the data too."""
    anchor = getattr(guide, "anchor_info", None) or {}
    if log_density is None and anchor:
        from pyro_nf.densities.logdensity import LogDensity

        with torch.random.fork_rng(devices=_devices()):
            log_density = LogDensity(model, *args, **kwargs)
    # a report, not a stopping rule: a subsampled model's draws each read all its data
    full_data = reads_all_rows(log_density)
    num = LOOP_CHECK_DRAWS if full_data else None
    mine = None
    if log_density is not None:
        mine = start or importance_check(log_density, guide.get_posterior(*args, **kwargs),
                                         num)
        result.khat, result.chi2 = mine.khat, mine.chi2
    if mine is not None and full_data and math.isfinite(mine.elbo):
        elbo, se = mine.elbo, mine.elbo_se
    else:
        elbo, se = fixed_draw_elbo(model, guide, args, kwargs, vectorize=loss_fn)
    result.elbo_estimate = elbo
    if not anchor:
        return
    result.anchor_elbo = anchor["elbos"][anchor["method"]]
    result.anchor_khat = (start or importance_check(
        log_density, guide.anchor_posterior(*args, **kwargs), num)).khat
    result.recommendation = recommend(elbo, se, result.anchor_elbo, result.khat,
                                      result.anchor_khat)
    if result.recommendation == "anchor":
        warnings.warn(f"fit: the fitted flow (k-hat {result.khat:.2f}, ELBO {elbo:.3f} +- "
                      f"{se:.3f}) is worse than its Gaussian anchor (k-hat "
                      f"{result.anchor_khat:.2f}, ELBO {result.anchor_elbo:.3f}, "
                      f"{anchor['method']}): use the anchor with guide.reset_to_anchor().",
                      RuntimeWarning, stacklevel=4)
