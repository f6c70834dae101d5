"""``refine``: exact draws where a fitted guide is close but not exact, by HMC in the guide's
own coordinates (NeuTra: Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte
Carlo using neural transport"; flowMC: Gabrie, Rotskoff & Vanden-Eijnden 2022).

A guide q is a base distribution N(m, L L^T) pushed through a map T (the flow, its Gaussian
anchor, the centering). With b = m + L u, the posterior in u has density
p(T(b)) |det J_T(b)| |det L|; where q is the posterior this is a standard normal, and where q
is close it is nearly one, which HMC crosses in a few leapfrog steps. The chains start at guide
draws (u ~ N(0, I)), so warm-up has little to find, and their draws are exact as they grow:
the guide only changes the coordinates, never the target.

The sampler is many chains in one batch (:mod:`~pyro_nf.training.hmc`): every leapfrog step
moves all chains with one batched call of the model's log density. It stops by itself when
every scalar of the packed latent has a bulk effective sample size of ``target_ess`` and a
rank-normalized split R-hat below ``max_rhat`` (Vehtari et al. 2021, "Rank-normalization,
folding, and localization: an improved R-hat"), or at ``max_iterations``.

A mixture of flows q = sum_k w_k q_k is refined component by component, each in its own
coordinates: component k's chains sample p(z) w_k q_k(z) / q(z), its part of the posterior (the
parts sum to p), so they stay in its mode; the chains are shared out in proportion to the
weights w_k, the mixture's estimates of the parts' masses.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_nf.densities import LogDensity
from pyro_nf.training import hmc
from pyro_nf.training.certify import advice, attach, model_density
from pyro_nf.training.compiled import RTOL
from pyro_nf.utils.rng import forked_rng

#: the bulk effective sample size at which refine stops (every scalar)
TARGET_ESS = 400
#: the largest rank-normalized split R-hat at which refine stops (every scalar)
MAX_RHAT = 1.01
#: chains run in one batch
CHAINS = 16
#: chains where the model does not broadcast over a batch of draws (each chain then costs a
#: model run of its own)
FEW_CHAINS = 4
#: warm-up iterations (the chains start at guide draws: little to adapt)
WARMUP = 100
#: the most iterations after warm-up
MAX_ITERATIONS = 2000
#: the first block of iterations before the stopping rule is read
FIRST_BLOCK = 50


class FlowMap:
    """The map u -> (z, log |det dz/du|) of a guide's posterior over the packed latent: a
    (multivariate) normal base, then the posterior's transforms."""

    def __init__(self, q: Any) -> None:
        base, self.transforms = q, []
        if isinstance(q, dist.TransformedDistribution):
            base, self.transforms = q.base_dist, list(q.transforms)
        while isinstance(base, dist.Independent):
            base = base.base_dist
        if isinstance(base, dist.Normal):
            self.loc, self.scale, self.tril = base.loc, base.scale, None
        elif isinstance(base, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
            self.loc, self.scale, self.tril = base.loc, None, base.scale_tril
        else:
            raise TypeError(f"refine: the guide's posterior has a {type(base).__name__} base; "
                            "refine needs a normal base pushed through transforms (AutoFlow, "
                            "AutoFlowMixture or a Gaussian AutoContinuous guide)")
        self.dim = int(self.loc.shape[-1])
        #: for a mixture's component: z -> log of its share of the mixture at z
        self.share: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = u.to(self.loc)
        if self.tril is None:
            x = self.loc + self.scale * u
        else:
            x = self.loc + u @ self.tril.transpose(-1, -2)
        ladj = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        for t in self.transforms:
            y = t(x)
            j = t.log_abs_det_jacobian(x, y)
            ladj = ladj + (j.reshape(*u.shape[:-1], -1).sum(-1) if j.dim() > ladj.dim() else j)
            x = y
        return x, ladj


def _components(q: Any, chains: int) -> list[tuple[FlowMap, int, float]]:
    """Each component's map, its number of chains and its weight (one for a single flow)."""
    if not hasattr(q, "components"):
        return [(FlowMap(q), chains, 1.0)]
    weights = q.logits.detach().softmax(-1).cpu().numpy()
    share = weights * chains
    counts = np.maximum(2, np.floor(share)).astype(int)
    for k in np.argsort(-(share - np.floor(share))):
        if counts.sum() >= max(chains, 2 * len(weights)):
            break
        counts[k] += 1
    maps = []
    for k, component in enumerate(q.components):
        flow = FlowMap(component)
        flow.share = _responsibility(q, k)
        maps.append(flow)
    return [(f, int(n), float(w)) for f, n, w in zip(maps, counts, weights)]


def _responsibility(q: Any, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """z -> log of component k's share w_k q_k(z) / sum_j w_j q_j(z) of the mixture at z.
    The posterior is the sum over k of p(z) times these shares, so chains of component k
    sampling p(z) times its share are exact for that part, and cannot wander into another
    component's mode, where the share vanishes."""
    def log_share(z: torch.Tensor) -> torch.Tensor:
        each = q.component_log_probs(z)
        return each[..., k] - each.logsumexp(-1)
    return log_share


@dataclass
class RefineResult:
    """What :func:`refine` returns: MCMC draws, used like those of ``pyro.infer.MCMC``
    (``get_samples``, ``print_summary``; ``pyro_nf.from_mcmc(result)`` makes them an
    InferenceData with ``sample_stats``).

    Attributes:
        samples: each latent site's draws in constrained space, shaped (chains, draws, *site).
        latent: the packed unconstrained draws, (chains, draws, D).
        sample_stats: per chain and draw: ``diverging``, ``acceptance_rate``, ``energy``,
            ``n_steps`` (leapfrog steps), ``step_size``, ``lp`` (log density in the guide's
            coordinates).
        ess_bulk: the smallest bulk ESS over the packed latent's scalars.
        rhat: the largest rank-normalized split R-hat over them.
        converged: whether both met the targets (``stop_reason`` says why it stopped).
        gradient_evaluations: gradients of the log density, all chains, warm-up included.
        seconds: wall time, warm-up included.
        source: "refined" (draws from MCMC, exact as the chains grow).
    """

    samples: dict[str, torch.Tensor]
    latent: torch.Tensor
    sample_stats: dict[str, np.ndarray]
    ess_bulk: float
    rhat: float
    converged: bool
    stop_reason: str
    gradient_evaluations: int
    seconds: float
    warmup_iterations: int
    step_size: list[float] = field(default_factory=list)
    trajectory_length: list[float] = field(default_factory=list)
    component_weights: list[float] = field(default_factory=list)
    model: Callable | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    source: str = "refined"

    @property
    def num_chains(self) -> int:
        return int(self.latent.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.latent.shape[1])

    @property
    def divergences(self) -> int:
        return int(self.sample_stats["diverging"].sum())

    def get_samples(self, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        """Each site's draws: (chains, draws, *site), or (chains * draws, *site)."""
        if group_by_chain:
            return dict(self.samples)
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def summary(self, prob: float = 0.9) -> str:
        """A table of every scalar: mean, sd, median, the central ``prob`` interval, bulk ESS
        and R-hat (as ``pyro.infer.MCMC.summary``), then the divergences."""
        return summary_table(self.samples, prob) + f"\nNumber of divergences: {self.divergences}"

    def print_summary(self, prob: float = 0.9) -> None:
        print(self.summary(prob))

    def __repr__(self) -> str:
        return (f"RefineResult(chains={self.num_chains}, draws={self.num_draws}, "
                f"ess_bulk={self.ess_bulk:.0f}, rhat={self.rhat:.3f}, "
                f"divergences={self.divergences}, converged={self.converged}, "
                f"seconds={self.seconds:.1f})")


def summary_table(samples: dict[str, torch.Tensor], prob: float) -> str:
    """One row per scalar of each site's (chains, draws, *site) draws."""
    from pyro_nf.utils import arviz_compat

    lo, hi = (1 - prob) / 2, (1 + prob) / 2
    rows = [f"{'':>16} {'mean':>9} {'std':>9} {'median':>9} {lo * 100:>8.1f}% "
            f"{hi * 100:>8.1f}% {'n_eff':>8} {'r_hat':>6}"]
    for name, value in samples.items():
        x = value.detach().double().cpu().numpy()
        x = x.reshape(x.shape[:2] + (-1,))
        ess, rhat = arviz_compat.ess(x), arviz_compat.rhat(x)
        flat = x.reshape(-1, x.shape[-1])
        for i in range(x.shape[-1]):
            label = name if x.shape[-1] == 1 else f"{name}[{i}]"
            q = np.quantile(flat[:, i], [0.5, lo, hi])
            rows.append(f"{label[:16]:>16} {flat[:, i].mean():9.3f} {flat[:, i].std():9.3f} "
                        f"{q[0]:9.3f} {q[1]:9.3f} {q[2]:9.3f} {ess[i]:8.1f} {rhat[i]:6.3f}")
    return "\n".join(rows)


class _Group:
    """The chains of one component: their target in the guide's coordinates, state and
    record."""

    def __init__(self, log_density: LogDensity, flow: FlowMap, chains: int) -> None:
        def log_prob(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # a trajectory may reach extreme points: an invalid parameter there (a scale of
            # 0) is a non-finite density, which rejects the proposal, not an error
            with pyro.validation_enabled(False):
                z, ladj = flow(u)
                lp = log_density(z).to(ladj.dtype) + ladj
                if flow.share is not None:  # a mixture's component: its part of p
                    lp = lp + flow.share(z).to(lp.dtype)
                return lp, z

        self.target = hmc.value_and_grad(log_prob)
        dtype = torch.promote_types(flow.loc.dtype, log_density.dtype)
        u = self._start(flow, chains, dtype)
        fast = compiled(log_prob, u)
        if fast is not None:
            self.target = hmc.value_and_grad(fast, fallback=log_prob)
        lp, grad, z = self.target(u)
        ones = torch.ones(flow.dim, dtype=dtype, device=u.device)
        self.state = hmc.State(u, lp, grad, z, step_size=0.5, trajectory=math.pi / 2,
                               inv_mass=ones, gradients=1)
        self.draws: list[torch.Tensor] = []
        self.stats: dict[str, list] = {k: [] for k in ("diverging", "acceptance_rate", "energy",
                                                       "n_steps", "step_size", "lp")}

    def _start(self, flow: FlowMap, chains: int, dtype: torch.dtype) -> torch.Tensor:
        """Guide draws (u ~ N(0, I)); a draw where the density is not finite is drawn again
        (a few times)."""
        u = torch.randn(chains, flow.dim, dtype=dtype, device=flow.loc.device)
        for _ in range(10):
            with torch.no_grad():
                bad = ~torch.isfinite(self.target(u)[0])
            if not bad.any():
                break
            u[bad] = torch.randn(int(bad.sum()), flow.dim, dtype=dtype, device=u.device)
        return u

    def step(self) -> None:
        step = hmc.transition(self.target, self.state)
        self.draws.append(self.state.aux.clone())
        s = self.stats
        s["diverging"].append(step.diverging.cpu())
        s["acceptance_rate"].append(step.accept_prob.cpu())
        s["energy"].append(step.energy.cpu())
        s["n_steps"].append(torch.full_like(step.accept_prob, step.num_steps).cpu())
        s["step_size"].append(torch.full_like(step.accept_prob, self.state.step_size).cpu())
        s["lp"].append(self.state.lp.cpu())

    def latent(self) -> torch.Tensor:
        """The draws so far, (chains, draws, D)."""
        return torch.stack(self.draws, 1)


def compiled(log_prob: Callable, u: torch.Tensor) -> Callable | None:
    """``log_prob`` at a batch shaped like ``u`` recorded by ``torch.jit.trace`` and replayed
    without Python (Pyro's traces of the model are most of a batch's cost), or None where
    tracing fails or the replay differs from ``log_prob`` (values or gradients beyond
    :data:`~pyro_nf.training.compiled.RTOL`) at three batches near ``u``: a model whose
    structure depends on the values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(log_prob, (u.detach().clone(),), check_trace=False)
    except Exception:  # noqa: BLE001 - the eager density serves
        return None

    def replay(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the optimizing executor swaps in its own derivatives (training.compiled)
        with torch.jit.optimized_execution(False):
            return traced(v)

    eager, fast = hmc.value_and_grad(log_prob), hmc.value_and_grad(replay)
    generator = torch.Generator(device=u.device).manual_seed(0)
    try:
        for _ in range(3):
            v = u + 0.3 * torch.randn(u.shape, dtype=u.dtype, device=u.device,
                                      generator=generator)
            if not all(_close(a, b) for a, b in zip(eager(v), fast(v))):
                return None
    except Exception:  # noqa: BLE001
        return None
    return replay


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    finite = torch.isfinite(a)
    if not torch.equal(finite, torch.isfinite(b)):
        return False
    a, b = a[finite].double(), b[finite].double()
    scale = float(a.abs().max()) if a.numel() else 0.0
    return bool(((a - b).abs() <= RTOL * max(scale, 1.0)).all())


def _diagnostics(groups: list[_Group]) -> tuple[float, float]:
    """The smallest bulk ESS and the largest R-hat over every scalar of the packed latent; for
    a mixture, R-hat within each component and each component's ESS scaled by its share of the
    chains (the draws are pooled in that proportion). A coordinate that never moved has ESS 0."""
    from pyro_nf.utils import arviz_compat

    chains = sum(len(g.state.u) for g in groups)
    ess, worst = math.inf, 1.0
    for g in groups:
        x = g.latent().detach().double().cpu().numpy()
        each = np.where(x.reshape(-1, x.shape[-1]).std(0) > 0, arviz_compat.ess(x), 0.0)
        each = np.nan_to_num(each, nan=0.0)
        ess = min(ess, float(each.min()) * chains / len(g.state.u))
        r = arviz_compat.rhat(x)
        worst = max(worst, float(np.max(r)) if np.isfinite(r).all() else math.inf)
    return ess, worst


def refine(model: Callable, guide: Any, *args: Any, chains: int | None = None,
           target_ess: float = TARGET_ESS, max_rhat: float = MAX_RHAT, warmup: int = WARMUP,
           max_iterations: int = MAX_ITERATIONS, seed: int | None = None,
           model_kwargs: dict | None = None, log_density: LogDensity | None = None
           ) -> RefineResult:
    """Exact posterior draws of ``model`` by HMC in the fitted ``guide``'s coordinates
    (module docstring): ``refine(model, guide, *args)``.

    Args:
        model: a Pyro model.
        guide: its fitted guide over the packed latent (AutoFlow, AutoFlowMixture, or a
            Gaussian ``AutoContinuous`` guide such as ``AutoMultivariateNormal``).
        *args: the model's positional arguments.
        chains: chains, run as one batch (at least 2: R-hat compares them); default 16, or 4
            where the model does not broadcast over a batch of draws.
        target_ess: stop once every scalar has this bulk effective sample size ...
        max_rhat: ... and a rank-normalized split R-hat below this.
        warmup: iterations adapting the step size, a diagonal mass matrix and the trajectory
            length (ChEES), discarded.
        max_iterations: the most iterations after warm-up (``converged`` False if reached).
        seed: ``pyro.set_rng_seed(seed)`` first.
        model_kwargs: the model's keyword arguments.
        log_density: the model's :class:`~pyro_nf.densities.LogDensity`, if already built.

    Returns:
        a :class:`RefineResult`.
    """
    _check_options(CHAINS if chains is None else chains, target_ess, max_rhat, warmup,
                   max_iterations)
    kwargs = dict(model_kwargs or {})
    if seed is not None:
        pyro.set_rng_seed(seed)
    started = time.perf_counter()
    if log_density is None:
        log_density = LogDensity(model, *args, **kwargs)
    if chains is None:
        chains = CHAINS if log_density.batched else FEW_CHAINS
    if not hasattr(guide, "get_posterior"):
        raise TypeError(f"refine: {type(guide).__name__} has no get_posterior(); refine needs a "
                        "guide over the packed latent (AutoFlow, AutoFlowMixture, or an "
                        "AutoContinuous guide)")
    if getattr(guide, "prototype_trace", True) is None:
        guide._setup_prototype(*args, **kwargs)
    with _frozen(guide):  # the guide's parameters are constants here
        q = guide.get_posterior(*args, **kwargs)
        parts = _components(q, chains)
        if parts[0][0].dim != log_density.dim:
            raise ValueError(f"refine: the guide's latent has {parts[0][0].dim} coordinates, "
                             f"the model's {log_density.dim}; pass the guide fitted to this "
                             "model")
        groups = [_Group(log_density, flow, n) for flow, n, _ in parts]
        for g in groups:
            hmc.warmup(g.target, g.state, warmup)
        ess, rhat, reason = _sample(groups, target_ess, max_rhat, max_iterations)
    return _result(groups, parts, log_density, ess, rhat, reason, warmup,
                   time.perf_counter() - started, model, args, kwargs)


@contextlib.contextmanager
def _frozen(guide: Any) -> Iterator[None]:
    """The guide's parameters without gradients while the chains run (then as they were)."""
    params = [p for p in getattr(guide, "parameters", lambda: [])() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _sample(groups: list[_Group], target_ess: float, max_rhat: float, max_iterations: int
            ) -> tuple[float, float, str]:
    """Iterate every group in blocks until the stopping rule holds or the budget ends."""
    done, block = 0, min(FIRST_BLOCK, max_iterations)
    while True:
        for _ in range(block):
            for g in groups:
                g.step()
        done += block
        ess, rhat = _diagnostics(groups)
        if ess >= target_ess and rhat < max_rhat:
            return ess, rhat, (f"bulk ESS {ess:.0f} >= {target_ess:g} and R-hat "
                               f"{rhat:.3f} < {max_rhat:g} after {done} iterations")
        if done >= max_iterations:
            return ess, rhat, (f"max_iterations={max_iterations} reached: bulk ESS {ess:.0f} "
                               f"(target {target_ess:g}), R-hat {rhat:.3f} (target "
                               f"< {max_rhat:g})")
        # the iterations the ESS says are still needed, with a margin, within the budget
        need = done * (target_ess / max(ess, 1.0) - 1.0) * 1.2 if ess > 0 else done
        block = int(min(max_iterations - done, max(FIRST_BLOCK // 2, need, 0.25 * done)))


def _result(groups: list[_Group], parts: list, log_density: LogDensity, ess: float,
            rhat: float, reason: str, warmup: int, seconds: float, model: Callable,
            args: tuple, kwargs: dict) -> RefineResult:
    latent = torch.cat([g.latent() for g in groups]).detach()
    stats = {k: torch.cat([torch.stack(g.stats[k], 1) for g in groups]).numpy()
             for k in groups[0].stats}
    stats["diverging"] = stats["diverging"].astype(bool)
    with torch.no_grad():
        samples = {k: v.detach() for k, v in log_density.unpack(latent).items()}
    gradients = sum(g.state.gradients * len(g.state.u) for g in groups)
    return RefineResult(
        samples=samples, latent=latent, sample_stats=stats, ess_bulk=ess, rhat=rhat,
        converged=reason.startswith("bulk"), stop_reason=reason,
        gradient_evaluations=int(gradients), seconds=seconds, warmup_iterations=warmup,
        step_size=[g.state.step_size for g in groups],
        trajectory_length=[g.state.trajectory for g in groups],
        component_weights=[w for _, _, w in parts], model=model, args=args, kwargs=kwargs)


def _check_options(chains: Any, target_ess: Any, max_rhat: Any, warmup: Any,
                   max_iterations: Any) -> None:
    for name, value, least in (("chains", chains, 2), ("warmup", warmup, 10),
                               ("max_iterations", max_iterations, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"refine: {name} must be an integer >= {least}, got {value!r}")
    if not (isinstance(target_ess, (int, float)) and target_ess > 0):
        raise ValueError(f"refine: target_ess must be a positive number, got {target_ess!r}")
    if not (isinstance(max_rhat, (int, float)) and max_rhat > 1):
        raise ValueError(f"refine: max_rhat must be a number above 1, got {max_rhat!r}")


def last_stage(result: Any, model: Callable, guide: Any, args: tuple, kwargs: dict,
               log_density: LogDensity | None, search: Any = None, refine_draws: bool = True,
               stacklevel: int = 7) -> None:
    """The fit's checks (:func:`~pyro_nf.training.certify.attach`) and, where they call the
    guide "unreliable", :func:`refine` with its default budget: ``result.refined`` holds the
    draws and ``result.source`` becomes "refined". Not where a mode was missed: chains started
    in the guide's mode would stay there and pass R-hat; the warning names the mixture."""
    if log_density is None:
        log_density = model_density(model, guide, args, kwargs)
    certificate = attach(result, model, guide, args, kwargs, log_density, search=search,
                         warn=not refine_draws)
    if certificate is None or not refine_draws or not result.verdict.startswith("unreliable"):
        return
    if "modes" in {c.name for c in certificate.checks if c.status == "fail"}:
        # chains started in one mode stay there: their R-hat would pass with a mode missing
        warnings.warn(f"fit: {result.verdict}. {advice(certificate)}, then pyro_nf.refine("
                      "model, mixture) for exact draws (not run here: HMC does not cross "
                      "between separated modes)", RuntimeWarning, stacklevel=stacklevel)
        return
    try:
        with forked_rng():
            refined = refine(model, guide, *args, model_kwargs=kwargs, log_density=log_density)
    except Exception as error:  # noqa: BLE001 - the fit is kept, the failure said
        warnings.warn(f"fit: {result.verdict}. {advice(certificate)}; refine failed "
                      f"({type(error).__name__}: {next(iter(str(error).splitlines()), '')})",
                      RuntimeWarning, stacklevel=stacklevel)
        return
    result.refined, result.source = refined, "refined"
    draws = (f"{refined.num_chains} chains x {refined.num_draws} draws, bulk ESS "
             f"{refined.ess_bulk:.0f}, R-hat {refined.rhat:.3f}, {refined.divergences} "
             "divergences")
    if refined.converged:
        text = (f"the flow is {result.verdict}. Exact draws by HMC in the flow's coordinates "
                f"are in result.refined ({draws}); pyro_nf.from_mcmc(result.refined) makes "
                "them an InferenceData")
    else:
        text = (f"{result.verdict}. refine did not converge either ({refined.stop_reason}; "
                f"{draws}). {advice(certificate)}")
    warnings.warn(f"fit: {text}", RuntimeWarning, stacklevel=stacklevel)
