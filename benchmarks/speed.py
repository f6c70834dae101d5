"""Milliseconds per SVI step of the same flow in pyro-nf, in Pyro's built-ins and in zuko.

    python -m benchmarks.speed                   # D in {10, 100, 1000}; about 5 minutes
    python -m benchmarks.speed --quick           # D in {10, 100}, short blocks
    python -m benchmarks.speed --out benchmarks/results/speed.md   # also writes speed.json

What is measured: milliseconds of one ``SVI.step()`` (Trace_ELBO, one particle, Adam, lr 1e-3)
on the model of ``_timing.make_model`` (a D-dimensional latent ``z ~ N(0, I)`` observed through
``x ~ N(z, I)``), with one torch thread. For each flow and D the contenders are built and
stepped 5 times (untimed), then timed round-robin: in each round (the order rotating) every
contender runs one block of steps (block length chosen so that a block lasts about
``--block-seconds``); the reported figure is the median over rounds of the mean CPU time
(``time.process_time``) per step in a block. CPU time leaves out the time spent waiting for a
core, so it stays put on a shared machine; on an idle machine it equals the wall-clock time
with one thread. Wall-clock figures are in the JSON.

Contenders, with the same architecture (L layers; MADE conditioners with two hidden layers of
width H = max(64, D), ReLU; Pyro's AutoRegressiveNN needs H >= D):

* pyro-nf: ``AutoFlow(model, flow=[(name, {"hidden": [H, H], "activation": "relu", ...})] * L)``
  (consecutive MADEs in alternating orders, and AutoFlow's learnable elementwise loc/scale
  map, which Pyro's guides lack);
* Pyro: ``AutoIAFNormal(model, hidden_dim=[H, H], num_transforms=L)`` for IAF, and
  ``AutoNormalizingFlow`` with ``SplineAutoregressive`` (quadratic order, bound 5, built with
  an ``AutoRegressiveNN(param_dims=[K, K, K - 1])`` since Pyro's ``spline_autoregressive``
  helper only builds the linear-order network) or ``planar`` layers;
* zuko: ``zuko.flows.MAF`` / ``zuko.flows.NSF`` (fully autoregressive, bound 5) with
  ``flow.transform = flow.transform.inv``, i.e. the inverse-autoregressive (IAF) form that
  samples in one pass (zuko's default MAF samples by inversion, D passes per layer), used as a
  guide through ``pyro.contrib.zuko.ZukoToPyro`` as in Pyro's tutorial: the guide function
  registers the flow with ``pyro.module`` and samples ``z`` from ``ZukoToPyro(flow())``, whose
  ``rsample_and_log_prob`` gives the log-density of the sample in the same pass. zuko has no
  planar flow (n/a). Without zuko the zuko column is skipped, with a note.

All contenders sample in one pass (the IAF direction) and score the sample just drawn from a
cache, never by inversion. Targets: pyro-nf <= 1.0x Pyro and <= 1.2x zuko.
"""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow
from pyro.nn import AutoRegressiveNN

from benchmarks._timing import (
    Timing,
    TimingSettings,
    adaptive_blocks,
    make_model,
    prepare_svi,
    time_interleaved,
)
from benchmarks.common import (
    command_line,
    machine_info,
    machine_line,
    settings_overrides,
    timing_parser,
    write_report,
)
from pyro_nf import AutoFlow

try:
    import zuko
    from pyro.contrib.zuko import ZukoToPyro
except ImportError:  # zuko is an optional benchmark dependency
    zuko = None
    ZukoToPyro = None

FLOWS = ("iaf", "spline", "planar")
LIBRARIES = ("pyro-nf", "Pyro", "zuko")
TARGET_PYRO, TARGET_ZUKO = 1.0, 1.2
ZUKO_SKIPPED = "zuko is not importable: its column is skipped (pip install zuko)."


@dataclass
class Settings(TimingSettings):
    """What one run measures: the timing settings, the flows and their sizes."""

    flows: tuple[str, ...] = FLOWS
    iaf_layers: int = 4
    spline_layers: int = 2
    planar_layers: int = 8
    bins: int = 8
    bound: float = 5.0
    min_hidden: int = 64


QUICK = dict(dims=(10, 100), rounds=5, block_seconds=0.1, max_block=10, warmup=2)
TINY = dict(dims=(6,), rounds=2, block_seconds=0.01, max_block=2, warmup=1, iaf_layers=2,
            spline_layers=1, planar_layers=2)


def hidden_width(dim: int, settings: Settings) -> int:
    """H = max(min_hidden, D): Pyro's AutoRegressiveNN refuses hidden layers narrower than D."""
    return max(settings.min_hidden, dim)


def architecture(flow: str, settings: Settings) -> str:
    """A one-line description of the flow compared (H: the hidden width)."""
    if flow == "iaf":
        return (f"{settings.iaf_layers} affine autoregressive layers, IAF direction (one-pass "
                "sampling), MADE with hidden layers [H, H], ReLU")
    if flow == "spline":
        return (f"{settings.spline_layers} rational-quadratic spline autoregressive layer(s), "
                f"IAF direction, {settings.bins} bins on [-{settings.bound:g}, "
                f"{settings.bound:g}] (identity tails), MADE with hidden layers [H, H], ReLU")
    return f"{settings.planar_layers} planar layers"


def _compose(layer: Callable[[int], Any], n: int, dim: int) -> T.ComposeTransformModule:
    return T.ComposeTransformModule([layer(dim) for _ in range(n)])


def _pyro_spline(dim: int, hidden: int, bins: int, bound: float) -> T.SplineAutoregressive:
    arn = AutoRegressiveNN(dim, [hidden, hidden], param_dims=[bins, bins, bins - 1])
    return T.SplineAutoregressive(dim, arn, count_bins=bins, bound=bound, order="quadratic")


def zuko_guide(flow: torch.nn.Module, name: str = "zuko_flow") -> Callable[[], None]:
    """Pyro's tutorial guide for a zuko flow: the latent ``z`` sampled from ZukoToPyro."""

    def guide() -> None:
        pyro.module(name, flow)
        pyro.sample("z", ZukoToPyro(flow()))

    return guide


def contenders(flow: str, model: Callable, dim: int, settings: Settings,
               use_zuko: bool = True) -> dict[str, Callable[[], Callable] | None]:
    """Guide factories per library for one flow at one D (None: the library has no such
    flow)."""
    h = hidden_width(dim, settings)
    makers: dict[str, Callable[[], Callable] | None] = {}
    if flow == "iaf":
        opts = {"hidden": [h, h], "activation": "relu"}
        makers["pyro-nf"] = lambda: AutoFlow(model, flow=[("iaf", opts)] * settings.iaf_layers)
        makers["Pyro"] = lambda: AutoIAFNormal(model, hidden_dim=[h, h],
                                               num_transforms=settings.iaf_layers)

        def make_zuko() -> Callable:
            f = zuko.flows.MAF(dim, transforms=settings.iaf_layers, hidden_features=(h, h))
            f.transform = f.transform.inv  # IAF form: one-pass sampling
            return zuko_guide(f)
    elif flow == "spline":
        opts = {"hidden": [h, h], "activation": "relu", "bins": settings.bins,
                "bound": settings.bound}
        makers["pyro-nf"] = lambda: AutoFlow(
            model, flow=[("spline_autoregressive", opts)] * settings.spline_layers)
        layer = functools.partial(_pyro_spline, hidden=h, bins=settings.bins,
                                  bound=settings.bound)
        makers["Pyro"] = lambda: AutoNormalizingFlow(
            model, functools.partial(_compose, layer, settings.spline_layers))

        def make_zuko() -> Callable:
            # zuko's spline domain is [-5, 5]
            f = zuko.flows.NSF(dim, transforms=settings.spline_layers, bins=settings.bins,
                               hidden_features=(h, h))
            f.transform = f.transform.inv  # IAF form: one-pass sampling
            return zuko_guide(f)
    elif flow == "planar":
        makers["pyro-nf"] = lambda: AutoFlow(model, flow=f"planar*{settings.planar_layers}")
        makers["Pyro"] = lambda: AutoNormalizingFlow(
            model, functools.partial(_compose, T.planar, settings.planar_layers))
        make_zuko = None
    else:
        raise ValueError(f"unknown flow {flow!r}; choose from {FLOWS}")
    if use_zuko and zuko is not None:
        makers["zuko"] = make_zuko
    return makers


def measure(flow: str, dim: int, settings: Settings, use_zuko: bool = True) -> dict[str, Any]:
    """ms/step of every library for one flow at one D, timed interleaved."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model(dim)
    makers = contenders(flow, model, dim, settings, use_zuko)
    svis = {lib: prepare_svi(model, make(), warmup=settings.warmup)
            for lib, make in makers.items() if make is not None}
    steppers = {lib: svi.step for lib, svi in svis.items()}
    blocks = adaptive_blocks(steppers, block_seconds=settings.block_seconds,
                             max_block=settings.max_block)
    times = time_interleaved(steppers, rounds=settings.rounds, block=blocks)
    ms = {lib: 1e3 * t.cpu_block_median for lib, t in times.items()}
    record: dict[str, Any] = {
        "flow": flow, "D": dim, "architecture": architecture(flow, settings),
        "hidden": hidden_width(dim, settings) if flow != "planar" else None,
        "ms_per_step": {lib: ms.get(lib) for lib in LIBRARIES},
        "wall_ms_per_step": {lib: 1e3 * t.block_median for lib, t in times.items()},
        "wall_step_median_ms": {lib: 1e3 * t.step_median for lib, t in times.items()},
        "steps_timed": {lib: t.num_steps for lib, t in times.items()},
    }
    for other in ("Pyro", "zuko"):
        key = f"pyro-nf/{other}"
        record[key] = paired_ratio(times["pyro-nf"], times[other]) if other in times else None
    return record


def paired_ratio(ours: Timing, theirs: Timing) -> dict[str, float]:
    """Round-by-round ratios of CPU time per step (blocks of the same round ran within seconds
    of each other, so a change of load cancels): their median and quartiles."""
    ratios = sorted(a / b for a, b in zip(ours.cpu_blocks, theirs.cpu_blocks))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def _fmt_ratio(value: dict[str, float] | None, target: float) -> str:
    if value is None:
        return "n/a"
    verdict = "met" if value["median"] <= target else "not met"
    return f"{value['median']:.2f}x [{value['q1']:.2f}, {value['q3']:.2f}] {verdict}"


def table(records: list[dict[str, Any]], flow: str, zuko_available: bool,
          settings: Settings) -> list[str]:
    """The markdown table of one flow: one row per D (zuko: "n/a" where it has no such flow,
    "skipped" where it is not importable)."""
    rows = [r for r in records if r["flow"] == flow]
    zuko_missing = "n/a" if flow == "planar" else None if zuko_available else "skipped"
    lines = [f"## {flow}: {architecture(flow, settings)}", "",
             "| D | H | pyro-nf ms/step | Pyro ms/step | zuko ms/step | pyro-nf/Pyro "
             "| pyro-nf/zuko |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms_per_step"]
        zuko_ms = zuko_missing or f"{ms['zuko']:.2f}"
        zuko_ratio = zuko_missing or _fmt_ratio(r["pyro-nf/zuko"], TARGET_ZUKO)
        lines.append(f"| {r['D']} | {r['hidden'] or '-'} | {ms['pyro-nf']:.2f} | "
                     f"{ms['Pyro']:.2f} | {zuko_ms} | "
                     f"{_fmt_ratio(r['pyro-nf/Pyro'], TARGET_PYRO)} | {zuko_ratio} |")
    return lines


def report(records: list[dict[str, Any]], settings: Settings, info: dict[str, Any],
           zuko_available: bool, command: str) -> str:
    """The whole markdown report."""
    lines = ["# SVI step time: pyro-nf vs Pyro built-ins vs zuko (same flow)", "",
             machine_line(info), "",
             f"Settings: Trace_ELBO, 1 particle, Adam (lr 1e-3), one torch thread; "
             f"{settings.warmup} untimed warm-up steps; {settings.rounds} interleaved rounds "
             "(the order rotating), blocks of about "
             f"{settings.block_seconds:g} s (at most {settings.max_block} steps); figure = "
             "median over rounds of the mean CPU ms/step in a block (process CPU time, which "
             "leaves out waiting for a core on this shared machine; wall-clock figures are in "
             "the JSON). Ratios: median over rounds of the ratio of the two libraries' blocks "
             "in the same round, with its quartiles in brackets; H = max(64, D) (Pyro's "
             "AutoRegressiveNN refuses H < D). "
             "Model: z ~ N(0, I_D), x ~ N(z, I) observed. All three sample in one pass "
             "(IAF direction; zuko flows used as `flow.transform = flow.transform.inv`, "
             "through `pyro.contrib.zuko.ZukoToPyro`). "
             f"Targets: pyro-nf/Pyro <= {TARGET_PYRO:g}x, pyro-nf/zuko <= {TARGET_ZUKO:g}x.", ""]
    if not zuko_available:
        lines += [f"Note: {ZUKO_SKIPPED}", ""]
    for flow in settings.flows:
        lines += table(records, flow, zuko_available, settings) + [""]
    if "planar" in settings.flows:
        lines += ["zuko has no planar flow (n/a).", ""]
    lines += [f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def run(settings: Settings, *, use_zuko: bool = True, verbose: bool = True,
        command: str = "python -m benchmarks.speed") -> tuple[str, dict[str, Any]]:
    """Measure every (flow, D) and return the markdown report and the JSON payload."""
    torch.set_num_threads(1)
    zuko_available = use_zuko and zuko is not None
    info = machine_info()
    records = []
    for flow in settings.flows:
        for dim in settings.dims:
            rec = measure(flow, dim, settings, use_zuko=zuko_available)
            records.append(rec)
            if verbose:
                ms = ", ".join(f"{k} {v:.2f}" for k, v in rec["ms_per_step"].items()
                               if v is not None)
                print(f"{flow:7s} D={dim:5d}: {ms} ms/step", flush=True)
    text = report(records, settings, info, zuko_available, command)
    payload = {"machine": info, "settings": asdict(settings), "zuko_available": zuko_available,
               "zuko_note": None if zuko_available else ZUKO_SKIPPED,
               "targets": {"pyro-nf/Pyro": TARGET_PYRO, "pyro-nf/zuko": TARGET_ZUKO},
               "records": records}
    return text, payload


def main(argv: list[str] | None = None) -> int:
    parser = timing_parser(__doc__, "D in {10, 100}, short blocks")
    parser.add_argument("--flows", nargs="+", choices=FLOWS, default=None)
    parser.add_argument("--no-zuko", action="store_true", help="leave zuko out")
    args = parser.parse_args(argv)
    overrides = settings_overrides(args, TINY, QUICK, "flows")
    settings = Settings(**overrides)
    text, payload = run(settings, use_zuko=not args.no_zuko,
                        command=command_line("benchmarks.speed", argv))
    write_report(args.out, text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
