"""Time every pyro-nf layer's forward+log-det and inverse, side by side with Pyro's built-in
counterpart built with the same sizes, in one run.

    python -m benchmarks.layers                 # D in {2, 16, 128, 512}, batch 256
    python -m benchmarks.layers --quick         # D in {2, 16}, fewer repeats (a smoke run)
    python -m benchmarks.layers --out benchmarks/results/layers.md

Timings are medians of repeated calls under ``torch.no_grad()`` on this machine's CPU threads;
the ratio column is ours / Pyro's (below 1.0 means pyro-nf is faster). Pyro's planar, radial,
Sylvester and block-autoregressive layers have no inverse, hence "n/a" in their inverse column;
for ours the "inv/fwd" column reports inverse time over forward time (target: within 20x for
planar, radial and Sylvester).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import pyro
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN, DenseNN

from benchmarks.common import command_line, machine_line, script_parser
from pyro_nf.transforms import available, build_layer
from pyro_nf.transforms.nets import default_hidden

BINS, BOUND = 8, 3.0


def _pyro_counterpart(name: str, dim: int, hidden: int):
    """Pyro's built-in layer with the same architecture as ours, or None."""
    h = [hidden, hidden]
    if name == "planar":
        return T.Planar(dim)
    if name == "radial":
        return T.Radial(dim)
    if name == "sylvester_householder":
        return T.Sylvester(dim, count_transforms=min(dim, 8))
    if name == "realnvp":
        return T.affine_coupling(dim, hidden_dims=h)
    if name == "iaf":
        return T.affine_autoregressive(dim, hidden_dims=h, stable=False)
    if name == "spline_coupling":
        split = dim // 2
        nn = DenseNN(split, h, param_dims=[(dim - split) * BINS, (dim - split) * BINS,
                                           (dim - split) * (BINS - 1)])
        return T.SplineCoupling(dim, split, nn, BINS, BOUND, order="quadratic", identity=True)
    if name == "spline_autoregressive":
        arn = AutoRegressiveNN(dim, h, param_dims=[BINS, BINS, BINS - 1])
        return T.SplineAutoregressive(dim, arn, BINS, BOUND, order="quadratic")
    if name == "bnaf":
        return T.BlockAutoregressive(dim, hidden_factors=[8, 8])
    return None


def _ours(name: str, dim: int, hidden: int):
    opts: dict = {}
    if name in ("realnvp", "iaf", "maf", "nice", "spline_coupling", "spline_autoregressive"):
        opts["hidden"] = [hidden, hidden]
        opts["activation"] = "relu"  # Pyro's conditioners use ReLU (ours default to ELU)
    if name in ("spline_coupling", "spline_autoregressive"):
        opts.update(bins=BINS, bound=BOUND)
    if name == "sylvester_householder":
        opts.update(m=dim, reflections=min(dim, 8))
    if name == "bnaf":
        opts.update(hidden_factor=8, layers=2)
    try:
        return build_layer(name, dim, **opts)
    except (ValueError, TypeError):
        return build_layer(name, dim)


def _median_time(fn: Callable[[], object], budget: float) -> float:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd(layer, x):
    def run():
        xx = x.clone()  # a fresh tensor: no cache hit
        y = layer(xx)
        return layer.log_abs_det_jacobian(xx, y)
    return run


def _inv(layer, y):
    def run():
        return layer.inv(y.clone())  # a fresh tensor: no cache hit
    return run


def measure(dims, batch: int, budget: float, names=None) -> list[dict]:
    rows = []
    names = names or available()
    for dim in dims:
        hidden = max(default_hidden(dim), dim)  # Pyro's MADE needs hidden >= D
        for name in names:
            try:
                ours = _ours(name, dim, hidden)
            except ValueError:
                continue  # below the layer's min_dim
            torch.manual_seed(0)
            x = torch.randn(batch, dim)
            row = {"layer": name, "D": dim}
            with torch.no_grad():
                y = ours(x)
                row["ours_fwd"] = _median_time(_fwd(ours, x), budget)
                inv_budget = budget if dim <= 128 else budget / 4
                row["ours_inv"] = _median_time(_inv(ours, y), inv_budget)
                pyro_layer = _pyro_counterpart(name, dim, hidden)
                if pyro_layer is not None:
                    row["pyro_fwd"] = _median_time(_fwd(pyro_layer, x), budget)
                    try:
                        yp = pyro_layer(x)
                        pyro_layer._cached_x_y = None, None
                        if hasattr(pyro_layer, "_cache_size"):
                            pyro_layer._cache_size = 0
                        row["pyro_inv"] = _median_time(_inv(pyro_layer, yp), inv_budget)
                    except (NotImplementedError, KeyError):
                        row["pyro_inv"] = None
            rows.append(row)
            print(_fmt_row(row), flush=True)
    return rows


def _ms(v):
    return "n/a" if v is None else f"{1e3 * v:.3f}"


def _fmt_row(r: dict) -> str:
    ratio = (f"{r['ours_fwd'] / r['pyro_fwd']:.2f}x" if r.get("pyro_fwd") else "-")
    pinv = _ms(r.get("pyro_inv")) if "pyro_fwd" in r else "-"
    return (f"| {r['layer']} | {r['D']} | {_ms(r['ours_fwd'])} | "
            f"{_ms(r.get('pyro_fwd')) if 'pyro_fwd' in r else '-'} | {ratio} | "
            f"{_ms(r['ours_inv'])} | {pinv} | "
            f"{'-' if r['ours_inv'] is None else format(r['ours_inv'] / r['ours_fwd'], '.1f')}x |")


HEADER = ("| layer | D | ours fwd+logdet (ms) | Pyro fwd+logdet (ms) | ours/Pyro | "
          "ours inverse (ms) | Pyro inverse (ms) | ours inv/fwd |\n"
          "|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = script_parser(__doc__, "D in {2, 16}, short budgets",
                           "write the markdown table here")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--layers", nargs="+", default=None)
    args = parser.parse_args(argv)
    dims = args.dims or ([2, 16] if args.quick else [2, 16, 128, 512])
    budget = 0.05 if args.quick else 0.5
    pyro.set_rng_seed(0)
    machine = machine_line()
    print(f"# Layer timings, batch {args.batch}\n\n{machine}\n\n{HEADER}", flush=True)
    rows = measure(dims, args.batch, budget, args.layers)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join(_fmt_row(r) for r in rows)
        args.out.write_text(f"# Layer timings, batch {args.batch}\n\n{machine}\n"
                            f"Command: `{command_line('benchmarks.layers', argv)}`\n\n"
                            f"{HEADER}\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
