"""How step time and peak memory grow with the latent dimension D, for three default guides.

    python -m benchmarks.scaling                 # D in {10, 100, 1000, 5000}; about 5 minutes
    python -m benchmarks.scaling --quick         # D in {10, 100}, few steps (under a minute)
    python -m benchmarks.scaling --out benchmarks/results/scaling.md  # also writes scaling.json

Guides, each with its library defaults: ``pyro_nf.AutoFlow(model)`` (``"iaf*3"``, MADE
conditioners of width clip(4 D, 32, 256)), Pyro's ``AutoMultivariateNormal(model)`` (a full
Cholesky factor) and Pyro's ``AutoIAFNormal(model)`` (one IAF layer of width 3 D + 1). The model
is ``benchmarks._timing.make_model`` (z ~ N(0, I_D), x ~ N(z, I) observed).

Time: ms per ``SVI.step()`` (Trace_ELBO, 1 particle, Adam lr 1e-3, one torch thread), the three
guides of one D timed in one process, round-robin (order rotating) in blocks of about
``--block-seconds`` (at least one step); figure = median over rounds of the mean CPU time
(``time.process_time``, which leaves out waiting for a core on a shared machine) per step in a
block; wall-clock figures are in the JSON. Slow configurations get blocks of one step, so their
step count is lower; the table gives the count.

Memory: each (guide, D) runs in a fresh subprocess (the guides of one D side by side, before
the timing), which first runs the same guide on a D = 2
model (so that imports, lazy code paths and allocator arenas are warm), then builds the
D-dimensional model and records the resident set size (``VmRSS``) as the baseline, resets the
kernel's high-water mark (``/proc/self/clear_refs``), builds the guide and runs ``--mem-steps``
SVI steps; the figure is ``VmHWM - baseline``: the peak extra memory of the guide's parameters,
gradients, Adam state and one step's autograd graph. Where the reset is impossible (not Linux)
``ru_maxrss`` is used instead (noted in the output).

Growth exponents: the slope of log(time) and log(memory) against log(D), between D = 1000 and
5000 and by least squares over every D measured. Target: the default AutoFlow close to linear.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoIAFNormal

from benchmarks._timing import (
    TimingSettings,
    adaptive_blocks,
    make_model,
    prepare_svi,
    time_interleaved,
)
from benchmarks.common import (
    BASELINE_GUIDES,
    GuideMaker,
    command_line,
    machine_info,
    machine_line,
    settings_overrides,
    timing_parser,
    write_report,
)
from pyro_nf import DEFAULT_FLOW

#: key -> (label, guide(model)): the baseline guides, but Pyro's AutoIAFNormal with its own
#: default of one layer
GUIDES: dict[str, tuple[str, GuideMaker]] = {
    "autoflow": (f"AutoFlow(model) ({DEFAULT_FLOW})", BASELINE_GUIDES["AutoFlow (default)"]),
    "mvn": ("Pyro AutoMultivariateNormal", BASELINE_GUIDES["AutoMultivariateNormal"]),
    "iaf": ("Pyro AutoIAFNormal (1 layer, H = 3D+1)", AutoIAFNormal),
}
ROOT = Path(__file__).resolve().parents[1]  # the memory workers run from here (python -m)
LINEAR_TOLERANCE = 1.2  # "close to linear": growth exponent at most this


@dataclass
class Settings(TimingSettings):
    """What one run measures: the timing settings (up to D = 5000, 9 rounds, 3 warm-up
    steps), the guides and the memory workers."""

    dims: tuple[int, ...] = (10, 100, 1000, 5000)
    rounds: int = 9
    warmup: int = 3
    guides: tuple[str, ...] = tuple(GUIDES)
    mem_steps: int = 3
    mem_timeout: float = 600.0
    mem_jobs: int = 3


QUICK = dict(dims=(10, 100), rounds=3, block_seconds=0.1, max_block=10, warmup=2, mem_steps=2)
TINY = dict(dims=(8,), rounds=2, block_seconds=0.01, max_block=2, warmup=1, mem_steps=1)


# ---------------------------------------------------------------------------- memory (worker)
def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kb() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, kB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def _run_guide(key: str, dim: int, steps: int) -> int:
    model = make_model(dim)
    guide = GUIDES[key][1](model)
    prepare_svi(model, guide, warmup=steps)
    return sum(p.numel() for _, p in pyro.get_param_store().named_parameters())


def memory_worker(key: str, dim: int, steps: int) -> dict[str, Any]:
    """Peak extra memory (kB) of ``steps`` SVI steps of guide ``key`` at D = ``dim``; run in a
    fresh process (see the module docstring)."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    _run_guide(key, 2, 2)  # warm imports, code paths and allocator arenas
    pyro.clear_param_store()
    gc.collect()
    pyro.set_rng_seed(0)
    model = make_model(dim)
    gc.collect()
    exact = _reset_peak()
    baseline = _proc_status_kb("VmRSS") if exact else _maxrss_kb()
    guide = GUIDES[key][1](model)
    prepare_svi(model, guide, warmup=steps)
    peak = _proc_status_kb("VmHWM") if exact else _maxrss_kb()
    params = sum(p.numel() for _, p in pyro.get_param_store().named_parameters())
    return {"guide": key, "D": dim, "steps": steps, "baseline_kb": baseline, "peak_kb": peak,
            "delta_mb": (peak - baseline) / 1024, "params": params,
            "method": "VmHWM - VmRSS (clear_refs)" if exact else "ru_maxrss difference"}


def measure_memory(key: str, dim: int, settings: Settings) -> dict[str, Any]:
    """Run :func:`memory_worker` in a fresh subprocess and return its record."""
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--memory-worker", key, str(dim),
           str(settings.mem_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.mem_timeout,
                         env=env, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker {key} D={dim} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- time
def measure_time(dim: int, settings: Settings) -> dict[str, dict[str, Any]]:
    """ms/step of every guide at one D, timed interleaved in this process."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model(dim)
    svis = {key: prepare_svi(model, GUIDES[key][1](model), warmup=settings.warmup)
            for key in settings.guides}
    steppers = {key: svi.step for key, svi in svis.items()}
    blocks = adaptive_blocks(steppers, block_seconds=settings.block_seconds,
                             max_block=settings.max_block)
    times = time_interleaved(steppers, rounds=settings.rounds, block=blocks)
    out = {key: {"ms_per_step": 1e3 * t.cpu_block_median,
                 "wall_ms_per_step": 1e3 * t.block_median, "steps_timed": t.num_steps,
                 "block": blocks[key]} for key, t in times.items()}
    del svis, steppers
    pyro.clear_param_store()
    gc.collect()
    return out


# ---------------------------------------------------------------------------- exponents
def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x) over the pairs with y > 0 (None if fewer
    than two such pairs)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None


def exponents(records: list[dict[str, Any]], key: str, quantity: str) -> dict[str, Any]:
    """Growth exponents of ``quantity`` for guide ``key``: 1000 -> 5000 and whole range."""
    rows = sorted((r for r in records if r["guide"] == key), key=lambda r: r["D"])
    dims = [r["D"] for r in rows]
    values = [r[quantity] for r in rows]
    pair = None
    if 1000 in dims and 5000 in dims:
        a, b = values[dims.index(1000)], values[dims.index(5000)]
        if a and b and a > 0 and b > 0:
            pair = math.log(b / a) / math.log(5)
    return {"1000-5000": pair, "all": slope(dims, values)}


# ---------------------------------------------------------------------------- report
def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def report(records: list[dict[str, Any]], growth: dict[str, Any], settings: Settings,
           info: dict[str, Any], command: str) -> str:
    """The markdown report: one table of measurements and one of growth exponents."""
    methods = sorted({r["mem_method"] for r in records})
    lines = ["# Scaling with the latent dimension D: step time and peak memory", "",
             machine_line(info), "",
             "Settings: Trace_ELBO, 1 particle, Adam (lr 1e-3), one torch thread; model "
             "z ~ N(0, I_D), x ~ N(z, I) observed. Time: the guides of one D timed in one "
             f"process, {settings.rounds} interleaved rounds (order rotating) of blocks of "
             f"about {settings.block_seconds:g} s (at least 1 step, at most "
             f"{settings.max_block}); figure = median over rounds of the mean CPU ms/step in a "
             "block (process CPU time: waiting for a core on this shared machine is left out; "
             "wall-clock figures are in the JSON; 'steps' = steps timed, slow configurations "
             "get fewer). Memory: a fresh subprocess per (guide, D) "
             "warms up on D = 2, builds the model, takes the baseline RSS, resets the "
             f"high-water mark, then builds the guide and runs {settings.mem_steps} SVI steps; "
             f"peak extra memory = {' / '.join(methods)} (params, grads, Adam state, one "
             "step's graph; about 1 MB of noise). 'params' = guide parameters.", "",
             "| D | guide | ms/step | steps | peak extra memory (MB) | params |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["D"], settings.guides.index(r["guide"]))):
        lines.append(f"| {r['D']} | {GUIDES[r['guide']][0]} | {r['ms_per_step']:.2f} | "
                     f"{r['steps_timed']} | {r['mem_mb']:.1f} | {r['params']:,} |")
    lines += ["", "Growth exponents (slope of log quantity against log D; 1 = linear, "
              "2 = quadratic):", "",
              "| guide | time, 1000->5000 | time, all D | memory, 1000->5000 | memory, all D "
              "| params, all D |", "|---|---|---|---|---|---|"]
    for key in settings.guides:
        g = growth[key]
        lines.append(f"| {GUIDES[key][0]} | {_fmt(g['time']['1000-5000'])} | "
                     f"{_fmt(g['time']['all'])} | {_fmt(g['memory']['1000-5000'])} | "
                     f"{_fmt(g['memory']['all'])} | {_fmt(g['params']['all'])} |")
    verdict = growth.get("autoflow", {}).get("time", {})
    tail = verdict.get("1000-5000")
    if tail is not None:
        ok = tail <= LINEAR_TOLERANCE
        lines += ["", f"Target (default AutoFlow close to linear, exponent <= "
                  f"{LINEAR_TOLERANCE:g} between D = 1000 and 5000): time exponent "
                  f"{tail:.2f}, {'met' if ok else 'not met'}."]
    lines += ["", "Memory exponents over all D use every D whose measured increase is above "
              "zero; at small D the increase is within the measurement noise, so the "
              "1000->5000 figures are the meaningful ones.", "", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def run(settings: Settings, *, verbose: bool = True,
        command: str = "python -m benchmarks.scaling") -> tuple[str, dict[str, Any]]:
    """Measure memory (subprocesses) then time (this process) for every D; return the
    markdown report and the JSON payload."""
    torch.set_num_threads(1)
    info = machine_info()
    records: list[dict[str, Any]] = []
    for dim in settings.dims:
        # the workers are separate processes, each measuring its own RSS: they can run side by
        # side (the timing below runs alone, after them)
        with ThreadPoolExecutor(max_workers=settings.mem_jobs) as pool:
            futures = {key: pool.submit(measure_memory, key, dim, settings)
                       for key in settings.guides}
            mem = {key: f.result() for key, f in futures.items()}
        times = measure_time(dim, settings)
        for key in settings.guides:
            rec = {"guide": key, "label": GUIDES[key][0], "D": dim, **times[key],
                   "mem_mb": mem[key]["delta_mb"], "mem_method": mem[key]["method"],
                   "mem_steps": mem[key]["steps"], "params": mem[key]["params"]}
            records.append(rec)
            if verbose:
                print(f"D={dim:5d} {GUIDES[key][0]:40s} {rec['ms_per_step']:9.2f} ms/step "
                      f"({rec['steps_timed']} steps), +{rec['mem_mb']:.1f} MB, "
                      f"{rec['params']:,} params", flush=True)
    growth = {key: {"time": exponents(records, key, "ms_per_step"),
                    "memory": exponents(records, key, "mem_mb"),
                    "params": exponents(records, key, "params")} for key in settings.guides}
    text = report(records, growth, settings, info, command)
    payload = {"machine": info, "settings": asdict(settings), "records": records,
               "growth_exponents": growth, "linear_tolerance": LINEAR_TOLERANCE}
    return text, payload


def main(argv: list[str] | None = None) -> int:
    parser = timing_parser(__doc__, "D in {10, 100}, few steps")
    parser.add_argument("--guides", nargs="+", choices=list(GUIDES), default=None)
    parser.add_argument("--mem-steps", type=int, default=None)
    parser.add_argument("--memory-worker", nargs=3, metavar=("GUIDE", "D", "STEPS"),
                        default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        key, dim, steps = args.memory_worker
        print(json.dumps(memory_worker(key, int(dim), int(steps))))
        return 0
    overrides = settings_overrides(args, TINY, QUICK, "mem_steps", "guides")
    settings = Settings(**overrides)
    text, payload = run(settings, command=command_line("benchmarks.scaling", argv))
    write_report(args.out, text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
