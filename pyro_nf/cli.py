"""The ``pyro-nf`` command line: demo, fit, diagnose, compare, flows.

Errors are one line on stderr with a non-zero exit code (2 for usage, 1 otherwise); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _load_model(target: str):
    if ":" not in target:
        raise CLIError(f"expected FILE.py:MODEL, got {target!r}")
    file, name = target.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - reported with the file's name
        raise CLIError(f"could not import {path}: {type(exc).__name__}: {exc}") from exc
    model = getattr(module, name, None)
    if not callable(model):
        found = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        raise CLIError(f"{path} has no model function {name!r}; functions there: {found}")
    return model


def _load_data(path: str | None, model) -> dict[str, Any]:
    import torch

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"no such data file: {p}")
    if p.suffix == ".json":
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise CLIError(f"{p} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CLIError(f"{p} must hold a JSON object mapping argument names to values")
    elif p.suffix == ".npz":
        with np.load(p) as npz:
            raw = {k: npz[k] for k in npz.files}
    else:
        raise CLIError(f"data must be .json or .npz, got {p.suffix!r}")
    params = inspect.signature(model).parameters
    accepts_any = any(v.kind == v.VAR_KEYWORD for v in params.values())
    unknown = [k for k in raw if k not in params and not accepts_any]
    if unknown:
        raise CLIError(f"data keys {unknown} are not arguments of {model.__name__}"
                       f"({', '.join(params)})")
    data = {}
    for k, v in raw.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "iub" or arr.dtype.kind == "f":
            t = torch.as_tensor(arr)
            data[k] = t.float() if t.is_floating_point() else t
        else:
            data[k] = v
    return data


def cmd_flows(args) -> int:
    from pyro_nf.transforms.registry import markdown_table

    print(markdown_table())
    return 0


def cmd_demo(args) -> int:
    from pyro_nf.demo import run_demo

    run_demo(args.out, posterior=args.posterior, quick=args.quick, steps=args.steps,
             seed=args.seed, posteriordb=args.posteriordb)
    return 0


def cmd_fit(args) -> int:
    import pyro

    from pyro_nf.diagnostics import diagnose, to_inference_data
    from pyro_nf.guides import AutoFlow, AutoFlowMixture
    from pyro_nf.training import fit
    from pyro_nf.utils import arviz_compat

    model = _load_model(args.target)
    data = _load_data(args.data, model)
    try:
        modes = _modes(args.modes)
        guide = (AutoFlow(model, flow=args.flow) if modes == 1 else
                 AutoFlowMixture(model, flow=args.flow, modes=modes))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    pyro.clear_param_store()
    try:
        particles = args.particles or (16 if args.steps is not None else None)
        schedule = ({"refine": not args.no_refine} if args.steps is None else
                    {"num_steps": args.steps, "lr": args.lr or 5e-3})
        if args.steps is None and args.lr is not None:
            raise CLIError("--lr needs --steps (without it the fit tunes its own step size)")
        result = fit(model, guide, num_particles=particles, seed=args.seed,
                     progress=not args.quiet, model_kwargs=data, **schedule)
    except TypeError as exc:
        raise CLIError(f"the data do not match {model.__name__}'s arguments: {exc}") from exc
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if result.source == "refined":
        return _save_refined(result, out)
    idata = to_inference_data(model, guide, num_samples=args.samples, fit_result=result,
                              **data)
    arviz_compat.to_netcdf(idata, out)
    search = None
    if args.check_modes:
        from pyro_nf.approximations.modes import find_modes

        search = getattr(guide, "search", None) or find_modes(model, **data)
    print(diagnose(idata, label=f"{args.target} ({args.flow})", modes=search))
    print(f"\nsaved {out}")
    return 0


def _save_refined(result, out: Path) -> int:
    """The fit's checks failed and it refined: the MCMC draws are what is saved."""
    from pyro_nf.diagnostics import from_mcmc
    from pyro_nf.utils import arviz_compat

    arviz_compat.to_netcdf(from_mcmc(result.refined), out)
    print(f"the flow: {result.verdict}")
    print(f"saved draws: refined by HMC in the flow's coordinates, {result.refined!r}")
    print(f"{result.refined.stop_reason}\n")
    result.refined.print_summary()
    print(f"\nsaved {out}")
    return 0


def _modes(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise CLIError(f"--modes must be 'auto' or a positive integer, got {text!r}") from None


def _read(path: str):
    from pyro_nf.utils import arviz_compat

    try:
        return arviz_compat.from_netcdf(path)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - reported with the file's name
        raise CLIError(f"could not read {path} as InferenceData: {exc}") from exc


def cmd_diagnose(args) -> int:
    from pyro_nf.diagnostics import diagnose

    try:
        print(diagnose(_read(args.run), label=Path(args.run).stem))
    except ValueError as exc:
        raise CLIError(f"{args.run}: {exc}") from exc
    return 0


def cmd_compare(args) -> int:
    from pyro_nf.diagnostics import compare_posteriors, format_comparison

    runs = {Path(p).stem: _read(p) for p in args.runs}
    reference = None
    if args.reference:
        reference = Path(args.reference).stem
        runs[reference] = _read(args.reference)
    try:
        table = compare_posteriors(runs, reference=reference, var_names=args.var_names)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(format_comparison(table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-nf", description="Normalizing-flow "
                                     "posteriors for Pyro models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="AutoNormal vs AutoFlow vs NUTS on Neal's funnel or "
                       "eight schools")
    p.add_argument("--out", default="pyro-nf-demo", help="output folder")
    p.add_argument("--posterior", choices=["funnel", "schools"], default="funnel",
                   help="Neal's funnel in 10-D (exact reference draws) or eight schools, "
                   "centered (posteriordb reference draws)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    p.add_argument("--steps", type=int, default=5000, help="SVI steps per guide")
    p.add_argument("--seed", type=int, default=0, help="seed of the fits and of NUTS")
    p.add_argument("--posteriordb", default=None, help="a posteriordb checkout for the "
                   "schools' reference draws (default: $PYRO_NF_POSTERIORDB)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("fit", help="fit AutoFlow to a model in a Python file")
    p.add_argument("target", help="FILE.py:MODEL")
    p.add_argument("--data", help="DATA.json or DATA.npz: keyword arguments of the model")
    p.add_argument("--flow", default=None, help="flow spec, e.g. 'iaf*4' (default: AutoFlow's)")
    p.add_argument("--steps", type=int, default=None,
                   help="SVI steps (default: the fit tunes its step size and stops by itself)")
    p.add_argument("--particles", type=int, default=None,
                   help="particles per step (default: 8; 16 with --steps)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate with --steps (default 5e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4000, help="posterior draws to save")
    p.add_argument("--out", default="run.nc", help="InferenceData netCDF to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-refine", action="store_true", help="keep the flow's draws even "
                   "where its checks fail (default: exact draws by HMC in its coordinates)")
    p.add_argument("--modes", default="1", help="1 (one flow), 'auto' or K: a mixture of "
                   "flows, one per mode the mode search finds")
    p.add_argument("--check-modes", action="store_true", help="run the mode search and "
                   "report the modes the fitted guide misses")
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("diagnose", help="PSIS diagnostics of a saved run")
    p.add_argument("run", help="RUN.nc written by 'pyro-nf fit' or to_inference_data")
    p.set_defaults(func=cmd_diagnose)
    p = sub.add_parser("compare", help="compare saved posteriors")
    p.add_argument("runs", nargs="+", help="RUN.nc files")
    p.add_argument("--reference", help="the reference posterior (RUN.nc)")
    p.add_argument("--var-names", nargs="+", default=None)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("flows", help="the registered flow layers")
    p.set_defaults(func=cmd_flows)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "flow", "x") is None:
        from pyro_nf.guides import DEFAULT_FLOW

        args.flow = DEFAULT_FLOW
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"pyro-nf {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        print(f"pyro-nf {args.command}: error: {type(exc).__name__}: {_first_line(exc)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _first_line(exc: BaseException) -> str:
    """An exception's first non-blank line (Pyro appends its trace-shape table to errors)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


if __name__ == "__main__":
    sys.exit(main())
