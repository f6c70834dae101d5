"""Shared helpers of the SVI timing benchmarks (guides.py, speed.py, scaling.py).

Not a script. What it provides:

* :func:`make_model`: the benchmark model, a D-dimensional standard-normal latent ``z`` with one
  Gaussian observation per dimension;
* :func:`prepare_svi`: an ``SVI`` object (Trace_ELBO, one particle, Adam) already stepped a few
  times, so that lazy set-up (prototype trace, parameter creation, Adam state) is not timed;
* :func:`time_interleaved`: seconds per step of several contenders timed round-robin, in blocks,
  so that a change of load on a shared machine hits every contender alike;
* :func:`machine_info` and :func:`machine_line`: the header every results file carries;
* :func:`timing_parser` and :func:`settings_overrides`: the command line every timing script
  shares (``--quick``, ``--tiny``, ``--dims``, ``--rounds``, ``--block-seconds``, ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO


def make_model(dim: int) -> Callable[[], None]:
    """A model with a D-dimensional latent ``z ~ N(0, I)`` and data ``x ~ N(z, I)`` observed."""
    data = torch.randn(dim)

    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)

    return model


def prepare_svi(model: Callable, guide: Callable, *, lr: float = 1e-3, warmup: int = 5) -> SVI:
    """SVI with Trace_ELBO (1 particle) and Adam, stepped ``warmup`` times (not timed)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(warmup):
        svi.step()
    return svi


@dataclass
class Timing:
    """The times of one contender: ``blocks`` are the mean wall-clock seconds per step of each
    block, ``cpu_blocks`` the mean CPU seconds (``time.process_time``: all threads of this
    process) per step of each block, ``steps`` the wall-clock seconds of each step."""

    blocks: list[float] = field(default_factory=list)
    cpu_blocks: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    @property
    def block_median(self) -> float:
        """Median over blocks of the mean wall-clock seconds per step in a block."""
        return statistics.median(self.blocks)

    @property
    def cpu_block_median(self) -> float:
        """Median over blocks of the mean CPU seconds per step in a block. On a shared machine
        this excludes the time the process waits for a core, so it is the steadier figure."""
        return statistics.median(self.cpu_blocks)

    @property
    def step_median(self) -> float:
        """Median seconds of a single step."""
        return statistics.median(self.steps)

    @property
    def num_steps(self) -> int:
        return len(self.steps)


def time_interleaved(steppers: Mapping[str, Callable[[], Any]], *, rounds: int,
                     block: int | Mapping[str, int]) -> dict[str, Timing]:
    """Time ``rounds`` round-robin blocks: in each round every contender runs ``block`` steps
    (one number, or one per contender) back to back, each step timed with ``perf_counter``.
    The order rotates from round to round, so that no contender always follows the same one;
    garbage is collected between blocks, outside the timed region."""
    times = {name: Timing() for name in steppers}
    names = list(steppers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steppers[name]
            n = block if isinstance(block, int) else block[name]
            gc.collect()
            cpu_start, start = time.process_time(), time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                step()
                times[name].steps.append(time.perf_counter() - t0)
            times[name].blocks.append((time.perf_counter() - start) / n)
            times[name].cpu_blocks.append((time.process_time() - cpu_start) / n)
    return times


def adaptive_blocks(steppers: Mapping[str, Callable[[], Any]], *, block_seconds: float,
                    max_block: int) -> dict[str, int]:
    """Steps per block for each contender so that a block lasts about ``block_seconds``
    (judged from one untimed trial step each; at least 1, at most ``max_block``)."""
    out = {}
    for name, step in steppers.items():
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
        out[name] = int(min(max_block, max(1, round(block_seconds / max(seconds, 1e-6)))))
    return out


def time_guides(model: Callable, makers: Mapping[str, Callable[[], Callable]], steps: int,
                rounds: int = 10) -> dict[str, float]:
    """Median seconds per step of each guide, timed in interleaved blocks (round-robin over
    the guides, ``rounds`` blocks of ``steps / rounds`` steps each) so that a load change on
    the machine hits every guide alike."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svis = {name: prepare_svi(model, make()) for name, make in makers.items()}
    block = max(1, steps // rounds)
    times = time_interleaved({name: svi.step for name, svi in svis.items()}, rounds=rounds,
                             block=block)
    return {name: t.step_median for name, t in times.items()}


def library_versions() -> dict[str, str]:
    """Versions of torch, pyro and (when importable) zuko."""
    out = {"torch": torch.__version__, "pyro": pyro.__version__}
    try:
        import zuko
    except ImportError:
        out["zuko"] = "not installed"
    else:
        out["zuko"] = getattr(zuko, "__version__", "unknown")
    return out


def source_info() -> dict[str, Any]:
    """The pyro-nf code measured: git commit, whether the working tree differs from it, and a
    SHA-256 over the package's ``.py`` files (the working tree may carry uncommitted edits)."""
    import pyro_nf

    root = Path(pyro_nf.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    out: dict[str, Any] = {"pyro_nf_sha256": digest.hexdigest()[:16]}
    try:
        git = ["git", "-C", str(root.parent)]
        out["git_commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True,
                                           check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "pyro_nf"],
                               capture_output=True, text=True, check=True).stdout.strip()
        out["pyro_nf_uncommitted_changes"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch threads and library versions."""
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            **library_versions(), **source_info()}


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One markdown line describing the machine."""
    info = info or machine_info()
    return (f"Machine: {info['platform']} ({info['machine']}), {info['cpu_count']} CPUs, "
            f"{info['torch_threads']} torch thread(s); torch {info['torch']}, "
            f"pyro {info['pyro']}, zuko {info['zuko']}, Python {info['python']}; pyro-nf at "
            f"commit {info.get('git_commit')}"
            f"{' with uncommitted changes' if info.get('pyro_nf_uncommitted_changes') else ''}"
            f" (source sha256 {info.get('pyro_nf_sha256')}).")


def write_report(out: Path | str | None, text: str, payload: Any) -> None:
    """Print the markdown report; with ``out``, write it there and the JSON payload beside it
    (same name, ``.json``)."""
    print(text)
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def timing_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every timing script takes; each adds its own after."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--tiny", action="store_true", help="one tiny case (smoke tests)")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block-seconds", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown file; the JSON goes next to it (.json)")
    return parser


def settings_overrides(args: argparse.Namespace, tiny: Mapping[str, Any],
                       quick: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """The ``Settings`` fields the command line sets: the ``--tiny``/``--quick`` presets, then
    ``--dims``, ``--rounds``, ``--block-seconds`` and the script's own ``names`` (tuples for
    list options)."""
    overrides: dict[str, Any] = dict(tiny if args.tiny else quick if args.quick else {})
    for name in ("dims", "rounds", "block_seconds", *names):
        value = getattr(args, name)
        if value:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    return overrides
