"""The headline numbers of ``benchmarks/results/``, written to ``benchmarks/README.md`` from the
JSON files the benchmarks leave there (never typed by hand), so the summary cannot drift from
the tables.

    python -m benchmarks.headlines              # rewrite benchmarks/README.md
    python -m benchmarks.headlines --check      # exit 1 if it is out of date (the tests do this)

A result file that is missing is reported as such: its benchmark has not been run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"
DEFAULT_GUIDE = "AutoFlow (default)"


def _load(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def accuracy(data: dict) -> str:
    rows = data["results"]
    guides = list(dict.fromkeys(r["guide"] for r in rows))
    count = {g: sum(r["passes"] for r in rows if r["guide"] == g) for g in guides}
    total = len({r["posterior"] for r in rows})
    default = [r["seconds"] for r in rows if r["guide"] == DEFAULT_GUIDE]
    median = f", median {statistics.median(default):.1f} s per posterior" if default else ""
    passed = "; ".join(f"{g} {count[g]}" for g in guides)
    return (f"posteriordb, fit's defaults for every guide: passes out of {total}: {passed}"
            f"{median} (`accuracy.md`).")


def time_to_accuracy(data: dict) -> str:
    cells = [f"{r['posterior'].split('-')[-1]} {r['autoflow']['seconds']:.1f} s against "
             f"{r['nuts']['seconds']:.1f} s ({r['ratio']:.1f}x)" for r in data["rows"]]
    return ("Time to the pass criterion, AutoFlow against NUTS to bulk ESS 400: "
            + "; ".join(cells) + " (`time_to_accuracy.md`).")


def overhead(data: dict) -> str:
    cells = []
    for r in data["records"]:
        ms = r["ms"]
        zuko = ms.get("zuko iaf*4 fast")
        against = (f", {ms['pyro-nf iaf*4 fast'] / zuko:.2f}x zuko's same flow"
                   if zuko else "")
        cells.append(f"D = {r['D']}: {ms['AutoFlow fast']:.2f} ms, "
                     f"{ms['AutoFlow fast'] / ms['model gradient (eager)']:.1f}x the model's "
                     f"eager gradient{against}")
    return "fit's step, default AutoFlow on the funnel: " + "; ".join(cells) + \
        " (`overhead.md`)."


def modes(data: dict) -> str:
    mixtures = data["mixtures"]
    worst = max(m["max_error"] for m in mixtures)
    missed = sum(m["missed"] > 0 for m in mixtures)
    reported = sum(m["missed"] > 0 and m["reported"] >= m["missed"] for m in mixtures)
    return (f"Several modes: AutoFlowMixture mass error at most {worst:.3f} on "
            f"{len(mixtures)} mixtures; the default guide's missed modes reported in "
            f"{reported} of {missed} runs that missed one (`modes.md`).")


def mnist(data: list) -> str:
    plain = next((r["test_neg_log_px"] for r in data if r["flow"] == "none"), None)
    cells = [f"{r['flow']} K = {r['layers']} {r['test_neg_log_px']:.2f}" for r in data
             if r["flow"] != "none"]
    head = f"plain VAE {plain:.2f}; " if plain is not None else ""
    return (f"Binarized MNIST VAE, test -log p(x) after {data[0]['epochs']} epochs: {head}"
            + "; ".join(cells) + " (`mnist.md`).")


def energies(data: dict) -> str:
    rows = [r for r in data["rows"] if r["fit"] == "planar K=32"]
    cells = [f"{r['energy']} {r['kl']:.3f}" for r in rows]
    return (f"2-D energies, KL(q || p) of planar K = 32 after {data['steps']} steps: "
            + ", ".join(cells) + " nats (`energies.md`).")


def distributed(data: dict) -> str:
    one, two = data["rows"][0], data["rows"][-1]
    return (f"Data-parallel MNIST VAE: {two['world_size']} processes "
            f"{two['points_per_second']:.0f} images/s against {one['points_per_second']:.0f} "
            f"for one ({two['points_per_second'] / one['points_per_second']:.2f}x on this "
            f"machine's two cores), {two['communication_seconds'] / two['steps'] * 1e3:.1f} ms "
            "per step exchanging gradients (`distributed.md`).")


def mnist_sweep(rows: list) -> str:
    cells = [f"{r['flow']} K = {r['layers']} {r['gain']:+.2f}" for r in rows
             if r["layers"] and "gain" in r]
    return (f"MNIST VAE, -log p(x) against flow length ({rows[0]['epochs']} epochs each), gain "
            "over the plain VAE in nats, image by image: " + ", ".join(cells)
            + " (`mnist_sweep.md`).")


def big_data(data: dict) -> str:
    cells = []
    for r in data["rows"]:
        a, nuts = r["autoflow"], r.get("numpyro")
        versus = (f" against NumPyro NUTS {nuts['seconds']:.1f} s "
                  f"({nuts['seconds'] / a['seconds']:.1f}x)") if nuts else ""
        cells.append(f"{r['posterior']} N = {r['rows']:.0e}: {a['seconds']:.1f} s"
                     f"{'' if a['passes'] else ' (fails the criterion)'}{versus}")
    return "Large data, AutoFlow on minibatches: " + "; ".join(cells) + " (`big_data.md`)."


SECTIONS: dict[str, Callable[[Any], str]] = {
    "accuracy": accuracy, "time_to_accuracy": time_to_accuracy, "overhead": overhead,
    "modes": modes, "mnist": mnist, "mnist_sweep": mnist_sweep, "energies": energies,
    "distributed": distributed, "big_data": big_data}


def render() -> str:
    lines = ["# Benchmark headlines", "",
             "Generated by `python -m benchmarks.headlines` from `results/*.json`; the tables, "
             "their machines and the commands that made them are in `results/`, how to read "
             "them in [docs/benchmarks.md](../docs/benchmarks.md).", ""]
    for name, line in SECTIONS.items():
        path = RESULTS / f"{name}.json"
        lines.append(f"- {line(_load(name))}" if path.exists()
                     else f"- `{name}`: not run yet (no `results/{name}.json`).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when benchmarks/README.md is not what it would write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = README.read_text() if README.exists() else ""
        if current != text:
            print("benchmarks/README.md is out of date: run python -m benchmarks.headlines",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
