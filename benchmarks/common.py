"""What the benchmark scripts share. Not a script.

* Guide tables: :data:`BASELINE_GUIDES`, the four guides every accuracy comparison runs
  (Pyro's AutoNormal, AutoMultivariateNormal and AutoIAFNormal, and the default AutoFlow).
* The machine header every results file carries: :func:`machine_info` (platform, CPU count,
  torch threads, library versions, the pyro-nf source measured) and :func:`machine_line`.
* The command line: :func:`script_parser` (``--quick``, ``--out``), :func:`timing_parser`
  (adds ``--tiny``, ``--dims``, ``--rounds``, ``--block-seconds``) with
  :func:`settings_overrides`, and :func:`command_line` (the command a results file records).
* The accuracy pass criterion against reference draws: :func:`passes` (k-hat < 0.7, every
  standardized mean error < 0.1, every sd ratio in [0.9, 1.1]), :func:`why` (what a failure
  misses) and :func:`accuracy_row` (the figures it judges, from a guide's draws).
* :func:`write_report`: the markdown report, and its JSON beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

import pyro_nf

# ---------------------------------------------------------------------------- guide tables
GuideMaker = Callable[[Callable], Callable]

#: label -> guide(model): Pyro's three autoguides (AutoIAFNormal with two IAF layers, Pyro's
#: default is one) and the default AutoFlow, each otherwise with its library's defaults.
BASELINE_GUIDES: dict[str, GuideMaker] = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "Pyro AutoIAFNormal": lambda model: AutoIAFNormal(model, num_transforms=2),
    "AutoFlow (default)": pyro_nf.AutoFlow,
}


# ---------------------------------------------------------------------------- machine header
def load_example(name: str) -> Any:
    """The example ``examples/<name>.py`` as a module, loaded from its file: ``examples/`` is a
    folder of scripts, not a package (the tests load the examples the same way)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_versions() -> dict[str, str]:
    """Versions of torch, pyro, arviz and (when importable) zuko."""
    from pyro_nf.utils import arviz_compat

    out = {"torch": torch.__version__, "pyro": pyro.__version__}
    try:
        import zuko
    except ImportError:
        out["zuko"] = "not installed"
    else:
        out["zuko"] = getattr(zuko, "__version__", "unknown")
    out["arviz"] = arviz_compat.version()
    return out


def source_info() -> dict[str, Any]:
    """The pyro-nf code measured: git commit, whether the working tree differs from it, and a
    SHA-256 over the package's ``.py`` files (the working tree may carry uncommitted edits)."""
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
    """Platform, CPU count, torch threads, library versions and the pyro-nf source."""
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            **library_versions(), **source_info()}


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One markdown line describing the machine (``info`` by default :func:`machine_info`;
    an older run's record may lack some fields, which are then left out)."""
    info = info or machine_info()
    libs = ", ".join(f"{name} {info[name]}" for name in ("torch", "pyro", "zuko", "arviz")
                     if name in info)
    line = (f"Machine: {info['platform']} ({info.get('machine', info.get('processor'))}), "
            f"{info['cpu_count']} CPUs, {info['torch_threads']} torch thread(s); {libs}, "
            f"Python {info['python']}")
    if "pyro_nf_sha256" in info:
        dirty = " with uncommitted changes" if info.get("pyro_nf_uncommitted_changes") else ""
        line += (f"; pyro-nf at commit {info.get('git_commit')}{dirty} "
                 f"(source sha256 {info['pyro_nf_sha256']})")
    return line + "."


# ---------------------------------------------------------------------------- command line
def script_parser(doc: str, quick_help: str = "a smoke run",
                  out_help: str = "write the markdown report here") -> argparse.ArgumentParser:
    """The options every script takes (``--quick``, ``--out``), its description the first
    line of ``doc``; each script adds its own after."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    return parser


def timing_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """:func:`script_parser` and the options of the SVI timing scripts (speed, scaling)."""
    parser = script_parser(doc, quick_help, "markdown file; the JSON goes next to it (.json)")
    parser.add_argument("--tiny", action="store_true", help="one tiny case (smoke tests)")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block-seconds", type=float, default=None)
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


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m MODULE ARGS``: how this run was started (``argv`` by default the
    process's own arguments)."""
    return " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


# ---------------------------------------------------------------------------- pass criterion
KHAT_MAX = 0.7
MEAN_ERROR_MAX = 0.1  # |mean - mean_ref| / sd_ref
SD_RATIO_RANGE = (0.9, 1.1)  # sd / sd_ref
CRITERION = (f"k-hat < {KHAT_MAX:g}, every standardized mean error < {MEAN_ERROR_MAX:g}, "
             f"every sd ratio in [{SD_RATIO_RANGE[0]:g}, {SD_RATIO_RANGE[1]:g}]")


def passes(row: Mapping[str, Any]) -> bool:
    """Whether a guide's draws match the reference: :data:`CRITERION` on the row's ``khat``,
    ``worst_std_mean_error`` and ``worst_sd_ratio``."""
    # MCMC draws (a refined fit's) have no importance weights: k-hat does not apply
    khat_ok = row.get("source") == "refined" or row["khat"] < KHAT_MAX
    return (khat_ok and row["worst_std_mean_error"] < MEAN_ERROR_MAX
            and SD_RATIO_RANGE[0] <= row["worst_sd_ratio"] <= SD_RATIO_RANGE[1])


def why(row: Mapping[str, Any]) -> str:
    """The criteria a failing row misses, with the offending parameter."""
    out = []
    if row.get("source") != "refined" and not row["khat"] < KHAT_MAX:
        out.append(f"k-hat {row['khat']:.2f}")
    if not row["worst_std_mean_error"] < MEAN_ERROR_MAX:
        out.append(f"mean off by {row['worst_std_mean_error']:.2f} sd ({row['worst_mean_param']})")
    if not SD_RATIO_RANGE[0] <= row["worst_sd_ratio"] <= SD_RATIO_RANGE[1]:
        out.append(f"sd ratio {row['worst_sd_ratio']:.2f} ({row['worst_sd_param']})")
    return "; ".join(out)


def reference_draws(post: Any) -> dict[str, np.ndarray]:
    """A posteriordb posterior's reference draws with the chains pooled: site -> (draws,
    *site_shape)."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in post.reference.items()}


def accuracy_row(idata: Any, reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What the criterion judges, from a guide's draws (``pyro_nf.to_inference_data``) against
    the reference draws (site -> (draws, *shape)): PSIS k-hat, the worst standardized mean
    error and the sd ratio farthest from 1 in log terms (each with its parameter), the lowest
    90% interval coverage and the energy distance; then ``passes`` and ``why``."""
    from pyro_nf.utils import arviz_compat

    refined = arviz_compat.attrs(idata).get("inference") == "mcmc"
    khat = math.nan if refined else float(pyro_nf.diagnose(idata).khat)
    table = pyro_nf.compare_posteriors({"guide": idata, "reference": reference},
                                       reference="reference", var_names=list(reference))
    rows = table.loc["guide"]
    ratios = rows["sd_ratio"].to_numpy()
    worst = int(np.argmax(np.abs(np.log(ratios))))
    summary = table.attrs["summary"]
    out: dict[str, Any] = {
        "khat": khat,
        "worst_std_mean_error": float(rows["std_mean_error"].max()),
        "worst_mean_param": str(rows["std_mean_error"].idxmax()),
        "worst_sd_ratio": float(ratios[worst]),
        "worst_sd_param": str(rows.index[worst]),
        "min_coverage90": float(rows["coverage90"].min()),
        "energy_distance": (float(summary.loc["guide", "energy_distance"])
                            if "energy_distance" in summary.columns else float("nan")),
    }
    out["source"] = "refined" if refined else "flow"
    out["passes"] = passes(out)
    out["why"] = "" if out["passes"] else why(out)
    return out


# ---------------------------------------------------------------------------- reports
def write_report(out: Path | str | None, text: str, payload: Any) -> None:
    """Print the markdown report; with ``out``, write it there and the JSON payload beside it
    (same name, ``.json``)."""
    print(text)
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
