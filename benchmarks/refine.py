"""Refine against NUTS: time to a bulk ESS of 400, end to end, CPU seconds on one machine.

    python -m benchmarks.refine --out benchmarks/results/refine.md
    python -m benchmarks.refine --quick                # tiny budgets, no anchor (smoke run)
    python -m benchmarks.refine --posteriors funnel10 --seeds 0 1 2

Posteriors (each written identically in Pyro and in NumPyro below, same site names):

* ``funnel10``: Neal's funnel, centred, v ~ N(0, 3), x_i ~ N(0, exp(v / 2)), i = 1..9
  (``pyro_nf.models.neals_funnel(10)``). Exact: v ~ N(0, 3), so sd(v) = 3 and
  P(v < -4) = Phi(-4 / 3) = 0.0912 (the neck, where centred samplers lose their way).
* ``horseshoe``: sparse linear regression, N = 100 rows, D = 20 standard normal predictors
  (numpy seed 0), coefficients (3, -2, 1.5, 0, ..., 0), noise sd 1; centred horseshoe prior
  tau ~ HalfCauchy(1), lambda_j ~ HalfCauchy(1), beta_j ~ N(0, tau lambda_j),
  sigma ~ HalfNormal(1), y ~ N(X beta, sigma). No exact answer: sd(log tau) and the mean sd of
  the 17 zero coefficients, side by side.
* ``eight_schools``: centred (``pyro_nf.models.eight_schools``): mu ~ N(0, 5),
  tau ~ HalfCauchy(5), theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j). sd(log tau) and
  P(tau < 1) against posteriordb's reference draws where ``shared/posteriordb`` is present.

Methods, one after another in this process (never in parallel), each timed end to end:

* ``refine``: ``AutoFlow(model)``, ``pyro_nf.fit(model, guide, seed=s, progress=False,
  refine=False)`` (fit's self-tuning default, its checks included), then
  ``pyro_nf.refine(model, guide, seed=s)`` (16 chains in one batch, stops by itself at a bulk
  ESS of 400 and R-hat < 1.01). float32. Time: fit + refine, both reported; no extrapolation
  (marked when refine stopped at its budget instead).
* ``Pyro NUTS``: ``NUTS(model, jit_compile=True)``, float64, ``--nuts-chains`` chains (default 4)
  run one after another (``num_chains=1`` each, seeds 100 s + c; each chain pays its own JIT
  trace and warm-up), ``--warmup`` + ``--samples`` (500 + 1000) per chain.
* ``NumPyro NUTS``: ``MCMC(NUTS(model), num_chains=4, chain_method="sequential")``, float32 (JAX's
  default; x64 not enabled), same budgets; ``mcmc.warmup`` then ``mcmc.run``, the first
  warm-up including the JIT compilation (first run of that model in the process). NumPyro
  compiles each sequential chain's loop anew in ``run`` too (~5 s a chain here): those seconds
  (JAX's own compile events) are counted once, as the warm-up, not scaled with the sampling
  time. "not installed" when numpyro or jax is not importable.
* ``NeuTra NUTS`` (funnel10 only): the refine row's fitted guide, ``NeuTraReparam`` + Pyro NUTS
  (jit, float32), one chain of ``--neutra-warmup`` + ``--neutra-samples`` (300 + 500); its time
  includes the fit. It shows what the flow's coordinates give NUTS run chain by chain, against
  refine's many chains in one batch.

NUTS time to a bulk ESS of 400 (as ``benchmarks.time_to_accuracy``): the warm-up time (all
chains) plus the sampling time (all chains) scaled by 400 / the lowest bulk ESS -- measured when
the run reaches 400, extrapolated (marked) when it does not, as ESS grows linearly with draws.
The column "one warm-up" charges a single chain's warm-up instead (the least a NUTS user could
pay, giving NUTS the benefit of the doubt). The ESS is the lowest rank-normalized bulk ESS over
every scalar latent of the constrained draws, from all chains (``arviz_compat.ess`` on
(chain, draw, ...)); R-hat is the largest rank-normalized split R-hat. Divergences: sampling
iterations only. Times are CPU seconds of this process (``time.process_time``, one torch thread,
XLA's CPU thread pools off), so that other jobs on the machine do not distort them; wall seconds
are in the JSON. The ratio column is NumPyro NUTS seconds / the row's seconds (above 1: faster
than NumPyro).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.reparam import NeuTraReparam

import pyro_nf
from benchmarks.common import command_line, machine_info, machine_line, script_parser, write_report
from pyro_nf.models import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, eight_schools, neals_funnel
from pyro_nf.utils import arviz_compat

ESS_TARGET = 400.0
FUNNEL_DIM = 10
HS_N, HS_D, HS_BETA = 100, 20, (3.0, -2.0, 1.5)
#: single-threaded XLA on CPU, set before jax is first imported (as torch.set_num_threads(1))
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
POSTERIORS = ("funnel10", "horseshoe", "eight_schools")
METHODS = ("refine", "Pyro NUTS", "NumPyro NUTS", "NeuTra NUTS")


@dataclass(frozen=True)
class Budget:
    fit_max_steps: int | None = None  # None: fit's own default
    refine_warmup: int | None = None  # None: refine's own defaults
    refine_max_iterations: int | None = None
    warmup: int = 500
    samples: int = 1000
    nuts_chains: int = 4
    neutra_warmup: int = 300
    neutra_samples: int = 500
    autoflow: dict[str, Any] = field(default_factory=dict)  # AutoFlow's options


#: the smoke run: tiny budgets, and no Gaussian anchor (``start=None``): the anchor's
#: Pathfinder alone takes minutes on the centred horseshoe
QUICK = Budget(fit_max_steps=200, refine_warmup=20, refine_max_iterations=30, warmup=20,
               samples=20, nuts_chains=2, neutra_warmup=20, neutra_samples=20,
               autoflow={"start": None})

Draws = dict[str, np.ndarray]  # site -> (chain, draw, *shape), float64, constrained


# ---------------------------------------------------------------------------- Pyro models
def funnel10() -> None:
    """Neal's funnel, centred, in 10 dimensions (``pyro_nf.models.neals_funnel``)."""
    neals_funnel(FUNNEL_DIM)


def horseshoe(x: torch.Tensor, y: torch.Tensor) -> None:
    """Centred horseshoe regression (module docstring); broadcasts over batched draws."""
    one = x.new_tensor(1.0)
    tau = pyro.sample("tau", dist.HalfCauchy(one))
    with pyro.plate("predictors", x.shape[-1]):
        lam = pyro.sample("lambda", dist.HalfCauchy(one))
        beta = pyro.sample("beta", dist.Normal(0.0 * one, tau * lam))
    sigma = pyro.sample("sigma", dist.HalfNormal(one))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((x * beta.unsqueeze(-2)).sum(-1), sigma), obs=y)


def horseshoe_data() -> tuple[np.ndarray, np.ndarray]:
    """X (100, 20) standard normal and y = X beta + N(0, 1) noise, numpy seed 0."""
    rng = np.random.RandomState(0)
    x = rng.standard_normal((HS_N, HS_D))
    beta = np.zeros(HS_D)
    beta[:len(HS_BETA)] = HS_BETA
    return x, x @ beta + rng.standard_normal(HS_N)


# ---------------------------------------------------------------------------- NumPyro models
def numpyro_models() -> dict[str, Callable]:
    """The same three models in NumPyro (imported here: numpyro is optional)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def funnel() -> None:
        v = numpyro.sample("v", nd.Normal(0.0, 3.0))
        with numpyro.plate("funnel_dims", FUNNEL_DIM - 1):
            numpyro.sample("x", nd.Normal(0.0, jnp.exp(v / 2)))

    def hs(x: Any, y: Any) -> None:
        tau = numpyro.sample("tau", nd.HalfCauchy(1.0))
        with numpyro.plate("predictors", x.shape[-1]):
            lam = numpyro.sample("lambda", nd.HalfCauchy(1.0))
            beta = numpyro.sample("beta", nd.Normal(0.0, tau * lam))
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
        with numpyro.plate("data", len(y)):
            numpyro.sample("y", nd.Normal(x @ beta, sigma), obs=y)

    def schools(y: Any, sigma: Any) -> None:
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("schools", len(sigma)):
            theta = numpyro.sample("theta", nd.Normal(mu, tau))
            numpyro.sample("obs", nd.Normal(theta, sigma), obs=y)

    return {"funnel10": funnel, "horseshoe": hs, "eight_schools": schools}


# ---------------------------------------------------------------------------- accuracy
def _pooled(draws: Draws, site: str) -> np.ndarray:
    v = draws[site]
    return v.reshape((-1,) + v.shape[2:])


def funnel_accuracy(draws: Draws) -> dict[str, float]:
    v = _pooled(draws, "v")
    return {"sd(v)": float(v.std()), "P(v<-4)": float((v < -4).mean())}


def horseshoe_accuracy(draws: Draws) -> dict[str, float]:
    beta = _pooled(draws, "beta")[:, len(HS_BETA):]
    return {"sd(log tau)": float(np.log(_pooled(draws, "tau")).std()),
            "sd(beta_0) mean": float(beta.std(0).mean())}


def schools_accuracy(draws: Draws) -> dict[str, float]:
    tau = _pooled(draws, "tau")
    return {"sd(log tau)": float(np.log(tau).std()), "P(tau<1)": float((tau < 1).mean())}


def schools_reference() -> dict[str, float]:
    """The same figures from posteriordb's reference draws; {} where they are not available."""
    try:
        from benchmarks import posteriordb

        ref = posteriordb.load("eight_schools-eight_schools_centered").reference
    except Exception:  # noqa: BLE001 - the data folder is optional: no reference column
        return {}
    return schools_accuracy({"tau": np.asarray(ref["tau"], dtype=np.float64)})


@dataclass
class Posterior:
    name: str
    pyro_model: Callable
    pyro_args: Callable[[torch.dtype], tuple]
    numpyro_args: Callable[[], tuple]
    accuracy: Callable[[Draws], dict[str, float]]
    reference: Callable[[], dict[str, float]] = dict
    neutra: bool = False


def _jnp(*arrays: np.ndarray) -> tuple:
    import jax.numpy as jnp

    return tuple(jnp.asarray(a, dtype=jnp.float32) for a in arrays)


def posteriors() -> dict[str, Posterior]:
    hs = horseshoe_data()
    schools = (EIGHT_SCHOOLS_Y.numpy(), EIGHT_SCHOOLS_SIGMA.numpy())
    exact_funnel = {"sd(v)": 3.0, "P(v<-4)": 0.5 * math.erfc(4.0 / 3.0 / math.sqrt(2.0))}
    return {
        "funnel10": Posterior("funnel10", funnel10, lambda dtype: (), lambda: (),
                              funnel_accuracy, lambda: exact_funnel, neutra=True),
        "horseshoe": Posterior("horseshoe", horseshoe,
                               lambda dtype: tuple(torch.tensor(a, dtype=dtype) for a in hs),
                               lambda: _jnp(*hs), horseshoe_accuracy),
        "eight_schools": Posterior("eight_schools", eight_schools,
                                   lambda dtype: tuple(torch.tensor(a, dtype=dtype)
                                                       for a in schools),
                                   lambda: _jnp(*schools), schools_accuracy, schools_reference),
    }


# ---------------------------------------------------------------------------- measurement
def clock() -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds)."""
    return time.process_time(), time.perf_counter()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    cpu, wall = clock()
    return cpu - t0[0], wall - t0[1]


def diagnostics(draws: Draws) -> dict[str, float]:
    """The lowest bulk ESS and the largest R-hat over every scalar latent; a scalar whose draws
    never move (a stuck chain) has ESS 0, not the number of draws ArviZ gives it."""
    ess, rhat = [], []
    for v in draws.values():
        x = v.reshape(v.shape[:2] + (-1,))
        stuck = np.ptp(x.reshape(-1, x.shape[-1]), axis=0) == 0
        ess.append(np.where(stuck, 0.0, np.asarray(arviz_compat.ess(x), dtype=float).ravel()))
        rhat.append(np.asarray(arviz_compat.rhat(x), dtype=float).ravel())
    e, r = np.concatenate(ess), np.concatenate(rhat)
    return {"min_bulk_ess": float(np.nan_to_num(e, nan=0.0).min()),
            "rhat_max": float(r.max()) if np.isfinite(r).all() else math.nan}


def to_ess(warm: float, sampling: float, ess: float) -> tuple[float, bool]:
    """Warm-up plus the sampling time to a bulk ESS of 400; whether it is extrapolated
    (infinite where the ESS is 0: stuck chains never get there)."""
    if not ess > 0:
        return math.inf, True
    return warm + min(sampling, sampling * ESS_TARGET / ess), ess < ESS_TARGET


@dataclass
class Row:
    posterior: str
    method: str
    seed: int
    seconds: float = math.nan  # CPU seconds to a bulk ESS of 400 (see the module docstring)
    wall_seconds: float = math.nan
    extrapolated: bool = False
    reached: bool = True  # refine: stopped by its rule, not its budget
    seconds_one_warmup: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    chains: int = 0
    draws: int = 0
    min_bulk_ess: float = math.nan
    rhat_max: float = math.nan
    divergences: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def finish(self, draws: Draws, accuracy: Callable[[Draws], dict[str, float]]) -> Row:
        first = next(iter(draws.values()))
        self.chains, self.draws = int(first.shape[0]), int(first.shape[1])
        for k, v in diagnostics(draws).items():
            setattr(self, k, v)
        self.accuracy = accuracy(draws)
        return self


# ---------------------------------------------------------------------------- refine
def run_refine(post: Posterior, budget: Budget, seed: int) -> tuple[Row, Any]:
    """AutoFlow + fit (refine=False) + refine: the row and the fitted guide."""
    model, args = post.pyro_model, post.pyro_args(torch.float32)
    fit_options = {} if budget.fit_max_steps is None else {"max_steps": budget.fit_max_steps}
    refine_options = {k: v for k, v in (("warmup", budget.refine_warmup),
                                        ("max_iterations", budget.refine_max_iterations))
                      if v is not None}
    pyro.clear_param_store()
    t0 = clock()
    guide = pyro_nf.AutoFlow(model, **budget.autoflow)
    fitted = pyro_nf.fit(model, guide, *args, seed=seed, progress=False, refine=False,
                         **fit_options)
    fit_cpu, fit_wall = since(t0)
    t1 = clock()
    result = pyro_nf.refine(model, guide, *args, seed=seed, **refine_options)
    ref_cpu, ref_wall = since(t1)
    draws = {k: v.detach().double().cpu().numpy() for k, v in result.samples.items()}
    row = Row(post.name, "refine", seed, seconds=fit_cpu + ref_cpu,
              wall_seconds=fit_wall + ref_wall, reached=bool(result.converged),
              parts={"fit": fit_cpu, "refine": ref_cpu},
              divergences=int(result.divergences))
    row.extra = {"fit_steps": int(getattr(fitted, "steps", 0) or 0),
                 "fit_verdict": str(getattr(fitted, "verdict", "")),
                 "stop_reason": result.stop_reason, "converged": bool(result.converged),
                 "refine_ess_bulk": float(result.ess_bulk), "refine_rhat": float(result.rhat),
                 "gradient_evaluations": int(result.gradient_evaluations),
                 "warmup_iterations": int(result.warmup_iterations),
                 "step_size": list(result.step_size),
                 "trajectory_length": list(result.trajectory_length),
                 "fit_wall_seconds": fit_wall, "refine_wall_seconds": ref_wall,
                 "refine_wall_seconds_reported": float(result.seconds)}
    if not result.converged:
        row.note = "refine stopped at its budget"
    return row.finish(draws, post.accuracy), guide


# ---------------------------------------------------------------------------- Pyro NUTS
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def pyro_chain(model: Callable, args: tuple, warmup: int, samples: int, seed: int
               ) -> dict[str, Any]:
    """One Pyro NUTS chain (jit): its samples, divergences, and warm-up and sampling times
    (CPU and wall), the sampling start marked by MCMC's hook."""
    pyro.set_rng_seed(seed)
    marks: dict[str, tuple[float, float]] = {}

    def hook(kernel: Any, params: Any, stage: str, i: int) -> None:
        if stage == "Sample" and "sample" not in marks:
            marks["sample"] = clock()

    mcmc = MCMC(NUTS(model, jit_compile=True, ignore_jit_warnings=True), num_samples=samples,
                warmup_steps=warmup, disable_progbar=True, hook_fn=hook)
    t0 = clock()
    mcmc.run(*args)
    end = clock()
    start = marks.get("sample", end)
    return {"samples": {k: v.detach() for k, v in mcmc.get_samples().items()},
            "divergences": len(mcmc.diagnostics()["divergences"]["chain 0"]),
            "warm": (start[0] - t0[0], start[1] - t0[1]),
            "sampling": (end[0] - start[0], end[1] - start[1])}


def nuts_row(post: Posterior, method: str, seed: int, chains: list[dict], draws: Draws,
             before: tuple[float, float] = (0.0, 0.0)) -> Row:
    """The row of NUTS chains run one after another (``before``: CPU and wall seconds spent
    first, e.g. the fit NeuTra samples in). A chain's "compile" seconds (NumPyro's sampling
    loop) are counted once, not scaled with the sampling time."""
    def total(key: str) -> list[float]:
        return [sum(c.get(key, (0.0, 0.0))[i] for c in chains) for i in (0, 1)]

    warm, sampling, compiling = total("warm"), total("sampling"), total("compile")
    row = Row(post.name, method, seed, divergences=sum(c["divergences"] for c in chains))
    row.finish(draws, post.accuracy)
    fixed = [before[i] + warm[i] + compiling[i] for i in (0, 1)]
    row.seconds, row.extrapolated = to_ess(fixed[0], sampling[0], row.min_bulk_ess)
    row.wall_seconds = to_ess(fixed[1], sampling[1], row.min_bulk_ess)[0]
    one = before[0] + (warm[0] + compiling[0]) / row.chains
    row.seconds_one_warmup = to_ess(one, sampling[0], row.min_bulk_ess)[0]
    row.parts = {"fit": before[0], "warm-up": warm[0], "compile": compiling[0],
                 "sampling": sampling[0]}
    row.parts = {k: v for k, v in row.parts.items() if v or k in ("warm-up", "sampling")}
    return row


def run_pyro_nuts(post: Posterior, budget: Budget, seed: int) -> Row:
    """``budget.nuts_chains`` float64 chains, one after another."""
    chains, samples = [], []
    with default_dtype(torch.float64):
        args = post.pyro_args(torch.float64)
        for c in range(budget.nuts_chains):
            chains.append(pyro_chain(post.pyro_model, args, budget.warmup, budget.samples,
                                     100 * seed + c))
            samples.append(chains[-1]["samples"])
    draws = {k: torch.stack([s[k] for s in samples]).double().numpy() for k in samples[0]}
    return nuts_row(post, "Pyro NUTS", seed, chains, draws)


def run_neutra(post: Posterior, budget: Budget, seed: int, guide: Any, fit: tuple[float, float]
               ) -> Row:
    """Pyro NUTS (jit, one chain) in the fitted guide's coordinates; ``fit``: the fit's CPU
    and wall seconds, charged to this row too."""
    neutra = NeuTraReparam(guide.requires_grad_(False))
    model = poutine.reparam(post.pyro_model, config=lambda _: neutra)
    args = post.pyro_args(torch.float32)
    chain = pyro_chain(model, args, budget.neutra_warmup, budget.neutra_samples, seed)
    with torch.no_grad():
        base = next(iter(chain["samples"].values()))
        sites = guide.unpack_batch(neutra.transform(base))
    draws = {k: v.double().numpy()[None] for k, v in sites.items()}
    return nuts_row(post, "NeuTra NUTS", seed, [chain], draws, before=fit)


# ---------------------------------------------------------------------------- NumPyro NUTS
def numpyro_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("numpyro", "jax"))


def run_numpyro(post: Posterior, budget: Budget, seed: int) -> Row:
    """NumPyro NUTS, ``budget.nuts_chains`` sequential chains: warm-up (JIT included), then
    draws with their divergences."""
    if not numpyro_available():
        return Row(post.name, "NumPyro NUTS", seed, note="not installed")
    import jax
    from numpyro.infer import MCMC as NumPyroMCMC
    from numpyro.infer import NUTS as NumPyroNUTS

    args = post.numpyro_args()
    mcmc = NumPyroMCMC(NumPyroNUTS(numpyro_models()[post.name]), num_warmup=budget.warmup,
                       num_samples=budget.samples, num_chains=budget.nuts_chains,
                       chain_method="sequential", progress_bar=False)
    t0 = clock()
    mcmc.warmup(jax.random.PRNGKey(seed), *args)
    jax.block_until_ready(mcmc.post_warmup_state)
    warm = since(t0)
    t1 = clock()
    with compile_seconds() as compiling:
        mcmc.run(mcmc.post_warmup_state.rng_key, *args, extra_fields=("diverging",))
        draws = {k: np.asarray(v, dtype=np.float64)
                 for k, v in mcmc.get_samples(group_by_chain=True).items()}
    run = since(t1)
    # XLA reports wall seconds: as CPU seconds at the run's own CPU / wall ratio
    compile_wall = min(compiling[0], run[1])
    compile_cpu = compile_wall * run[0] / max(run[1], 1e-9)
    chain = {"warm": warm, "compile": (compile_cpu, compile_wall),
             "sampling": (run[0] - compile_cpu, run[1] - compile_wall),
             "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())}
    return nuts_row(post, "NumPyro NUTS", seed, [chain], draws)


@contextlib.contextmanager
def compile_seconds() -> Iterator[list[float]]:
    """JAX's compilation seconds (tracing, lowering, XLA compile; wall) within the block: NumPyro
    compiles the sampling loop of every sequential chain anew when ``run`` follows
    ``warmup``, which is no part of the sampling rate."""
    import jax.monitoring

    total = [0.0]

    def listen(event: str, duration: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# ---------------------------------------------------------------------------- one posterior
def run_posterior(post: Posterior, budget: Budget, seed: int, methods: tuple[str, ...]
                  ) -> list[Row]:
    """Every method on one posterior and seed, one after another."""
    rows: list[Row] = []
    if "refine" in methods or (post.neutra and "NeuTra NUTS" in methods):
        row, guide = run_refine(post, budget, seed)
        rows.append(row)
        report(row)
        if post.neutra and "NeuTra NUTS" in methods:
            fit = (row.parts["fit"], row.extra["fit_wall_seconds"])
            rows.append(report(run_neutra(post, budget, seed, guide, fit)))
    if "Pyro NUTS" in methods:
        rows.append(report(run_pyro_nuts(post, budget, seed)))
    if "NumPyro NUTS" in methods:
        rows.append(report(run_numpyro(post, budget, seed)))
    numpyro = next((r for r in rows if r.method == "NumPyro NUTS"), None)
    for r in rows:
        if numpyro is not None and not numpyro.note and r is not numpyro:
            r.extra["numpyro_ratio"] = numpyro.seconds / r.seconds
    return [r for r in rows if r.method in methods]


def report(row: Row) -> Row:
    """Print one line of progress; return the row."""
    if row.note == "not installed":
        print(f"    {row.method}: not installed", flush=True)
        return row
    mark = " (extrapolated)" if row.extrapolated else "" if row.reached else " (not reached)"
    print(f"    {row.method}: {row.seconds:.1f} CPU s to ESS 400{mark}; min bulk ESS "
          f"{row.min_bulk_ess:.0f} ({row.chains} x {row.draws}), R-hat {row.rhat_max:.3f}, "
          f"{row.divergences} divergences; {accuracy_text(row.accuracy, {})}", flush=True)
    return row


# ---------------------------------------------------------------------------- the report
def accuracy_text(values: dict[str, float], exact: dict[str, float]) -> str:
    return "; ".join(f"{k} {v:.3g}" + (f" [{exact[k]:.3g}]" if k in exact else "")
                     for k, v in values.items())


def seconds_text(r: Row) -> str:
    mark = " (extrapolated)" if r.extrapolated else "" if r.reached else " (ESS 400 not reached)"
    parts = " + ".join(f"{k} {v:.1f}" for k, v in r.parts.items())
    one = f" | {r.seconds_one_warmup:.1f}" if r.seconds_one_warmup is not None else " | -"
    return f"{r.seconds:.1f}{mark} | {parts}{one}"


def table_line(r: Row, exact: dict[str, float]) -> str:
    if r.note == "not installed":
        return f"| {r.posterior} | {r.seed} | {r.method} | not installed | - | - |" + " - |" * 6
    ratio = r.extra.get("numpyro_ratio")
    ratio_text = "-" if ratio is None else f"{ratio:.2f}x" if r.reached else "n/a"
    return (f"| {r.posterior} | {r.seed} | {r.method} | {seconds_text(r)} | "
            f"{r.min_bulk_ess:.0f} | {r.chains} x {r.draws} | {r.rhat_max:.3f} | "
            f"{r.divergences} | {accuracy_text(r.accuracy, exact)} | {ratio_text} |")


def refine_line(r: Row) -> str:
    e = r.extra
    return (f"| {r.posterior} | {r.seed} | {e['fit_steps']} | {e['fit_verdict']} | "
            f"{e['refine_ess_bulk']:.0f} / {e['refine_rhat']:.3f} | "
            f"{e['gradient_evaluations']:,} | {e['converged']} | {e['stop_reason']} |")


def target_lines(rows: list[Row]) -> list[str]:
    """The issue's target: refine at least as fast as NumPyro's NUTS on funnel10 and the
    horseshoe, fit included, with no divergences."""
    out = []
    for r in rows:
        if r.method != "refine" or r.posterior not in ("funnel10", "horseshoe"):
            continue
        ratio = r.extra.get("numpyro_ratio")
        if ratio is None:
            out.append(f"- {r.posterior}, seed {r.seed}: no NumPyro row to compare")
            continue
        met = r.reached and ratio >= 1 and r.divergences == 0
        out.append(f"- {r.posterior}, seed {r.seed}: {'met' if met else 'NOT met'} (NumPyro / "
                   f"refine {ratio:.2f}x, {r.divergences} divergences, refine reached ESS "
                   f"400: {r.reached})")
    return out


def markdown(rows: list[Row], posts: dict[str, Posterior], info: dict, budget: Budget,
             quick: bool) -> str:
    exact = {name: p.reference() for name, p in posts.items()
             if any(r.posterior == name for r in rows)}
    lines = ["# Refine against NUTS: time to a bulk ESS of 400", "",
             "    " + command_line("benchmarks.refine"), "", machine_line(info), "",
             f"Budgets{' (--quick: the numbers mean nothing)' if quick else ''}: "
             f"{asdict(budget)}.", "", __doc__.split("\n\n", 2)[2].strip(), "",
             "Accuracy: [brackets] are the exact value (funnel10) or posteriordb's reference "
             "(eight_schools).", "",
             "| posterior | seed | method | CPU s to ESS 400 | parts (CPU s) | one warm-up "
             "| min bulk ESS | chains x draws | R-hat max | divergences | accuracy "
             "| NumPyro s / this s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [table_line(r, exact.get(r.posterior, {})) for r in rows]
    refined = [r for r in rows if r.method == "refine"]
    if refined:
        lines += ["", "## refine in detail", "",
                  "| posterior | seed | fit steps | fit verdict | refine's ESS / R-hat (packed "
                  "latent) | gradient evaluations (all chains) | converged | stop |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [refine_line(r) for r in refined]
        lines += ["", "## The target", "", *(target_lines(rows) or ["- no rows to judge"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "tiny budgets (smoke run)",
                           "markdown file; the JSON goes next to it (.json)")
    parser.add_argument("--posteriors", nargs="+", default=list(POSTERIORS),
                        choices=POSTERIORS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--nuts-chains", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("XLA_FLAGS", XLA_ONE_THREAD)  # before jax's first import
    torch.set_num_threads(1)
    budget = QUICK if args.quick else Budget()
    if args.nuts_chains:
        budget = Budget(**{**asdict(budget), "nuts_chains": args.nuts_chains})
    posts = posteriors()
    rows: list[Row] = []
    for seed in args.seeds:
        for name in args.posteriors:
            print(f"[{time.strftime('%H:%M:%S')}] {name}, seed {seed}", flush=True)
            rows += run_posterior(posts[name], budget, seed, tuple(args.methods))
    info = {**machine_info(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "numpyro": numpyro_version()}
    payload = {"machine": info, "budget": asdict(budget), "quick": args.quick,
               "rows": [asdict(r) for r in rows]}
    write_report(args.out, markdown(rows, posts, info, budget, args.quick), payload)
    return 0


def numpyro_version() -> str:
    if not numpyro_available():
        return "not installed"
    import jax
    import numpyro

    return f"numpyro {numpyro.__version__}, jax {jax.__version__}"


if __name__ == "__main__":
    sys.exit(main())
