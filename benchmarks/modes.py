"""Posteriors with several modes: the default AutoFlow against ``AutoFlowMixture(model)``, the
missed-mode check, and what the mode search costs on the 15 unimodal posteriordb posteriors.

    python -m benchmarks.modes --out benchmarks/results/modes.md
    python -m benchmarks.modes --quick             # one mixture, one seed, no posteriordb

Part 1, mixtures with known masses (2-D 0.3/0.7 and 0.1/0.9, a 10-D two-mode mixture with
correlated components, a 2-D mixture of four), seeds 0-2: each guide fitted by
``pyro_nf.fit(model, guide, seed=seed)`` with fit's defaults; the mass a guide puts on each
mode is the share of 8000 of its draws nearest that mode's center. A mode is *missed* by a
guide that holds under 2% of it while it holds at least 5% of the posterior; *reported* when
``diagnose(model, guide, modes=find_modes(model))`` lists it.

Part 2, label switching: a three-component mixture with unordered means, the search's report.

Part 3, the 15 posteriordb posteriors (all unimodal): the default AutoFlow (pass or fail as in
``benchmarks.accuracy``, its seconds, the modes the search finds and whether the check fires on it)
and ``AutoFlowMixture(model)`` (components, pass, seconds including the search).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import pyro_nf
from benchmarks import accuracy, posteriordb
from benchmarks.common import machine_info, machine_line, script_parser, write_report

IDX = torch.arange(10.0)
CASES = {
    "2-D, 0.3 / 0.7": ([[-2.0, 0.0], [2.0, 0.0]], (0.3, 0.7), 0.25 * torch.eye(2)),
    "2-D, 0.1 / 0.9": ([[-2.0, 0.0], [2.0, 0.0]], (0.1, 0.9), 0.25 * torch.eye(2)),
    "10-D correlated, 0.3 / 0.7": ([[-1.5] * 10, [1.5] * 10], (0.3, 0.7),
                                   0.3 * 0.8 ** (IDX[:, None] - IDX[None, :]).abs()),
    "2-D, four modes": ([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]],
                        (0.1, 0.2, 0.3, 0.4), 0.25 * torch.eye(2)),
}


def mixture_model(locs, weights, cov):
    """A flat prior on z and the mixture's log density as a factor: the posterior is the
    mixture sum_k w_k N(locs[k], cov) exactly."""
    locs = torch.as_tensor(locs)
    target = dist.MixtureSameFamily(
        dist.Categorical(torch.as_tensor(weights)),
        dist.MultivariateNormal(locs, covariance_matrix=cov.expand(len(locs), -1, -1)))

    def model():
        z = pyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), (len(cov),)))
        pyro.factor("mixture", target.log_prob(z))
    return model


def shares(guide, locs) -> list[float]:
    z = guide.sample_posterior(8000)["z"].double() if hasattr(guide, "sample_posterior") \
        else pyro.infer.Predictive(guide, num_samples=8000)()["z"].double()
    nearest = (z[:, None, :] - torch.tensor(locs, dtype=torch.float64)).norm(dim=-1).argmin(-1)
    return (torch.bincount(nearest, minlength=len(locs)) / len(z)).tolist()


def fit_case(model, make_guide, locs, seed: int) -> tuple[list[float], float, object]:
    pyro.clear_param_store()
    t0 = time.perf_counter()
    guide = make_guide(model)
    pyro_nf.fit(model, guide, seed=seed, progress=False)
    return shares(guide, locs), time.perf_counter() - t0, guide


def run_mixture(name: str, seed: int) -> dict:
    locs, weights, cov = CASES[name]
    model = mixture_model(locs, weights, cov)
    t0 = time.perf_counter()
    search = pyro_nf.find_modes(model, seed=seed)
    search_seconds = time.perf_counter() - t0
    row = {"case": name, "seed": seed, "truth": list(weights),
           "search_seconds": search_seconds, "modes_found": len(search.modes)}
    default, row["default_seconds"], guide = fit_case(model, pyro_nf.AutoFlow, locs, seed)
    report = pyro_nf.diagnose(model, guide, num_samples=2000, modes=search)
    row["default_shares"] = default
    row["missed"] = sum(w >= 0.05 and s < 0.02 for w, s in zip(weights, default))
    row["reported"] = len(report.missed_modes)
    row["default_verdict"] = report.verdict
    mixture, row["mixture_seconds"], guide = fit_case(
        model, lambda m: pyro_nf.AutoFlowMixture(m), locs, seed)
    row["mixture_shares"] = mixture
    row["components"] = len(guide.components)
    row["max_error"] = max(abs(s - w) for s, w in zip(mixture, weights))
    return row


def label_switching_model():
    """90 points from three clusters (-4, 0, 4), a mixture of three Normals with unordered
    means: the posterior is 3! = 6 relabellings of one mode."""
    torch.manual_seed(0)
    y = torch.cat([torch.randn(30) * 0.5 - 4, torch.randn(30) * 0.5, torch.randn(30) * 0.5 + 4])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.MixtureSameFamily(dist.Categorical(torch.ones(3) / 3),
                                                    dist.Normal(mu, 0.5)), obs=y)
    return model


def label_switching() -> dict:
    model = label_switching_model()
    t0 = time.perf_counter()
    search = pyro_nf.find_modes(model, num_starts=30)
    return {"modes": len(search.modes), "groups": search.relabellings(),
            "seconds": time.perf_counter() - t0, "report": str(search)}


def run_posteriordb() -> list[dict]:
    rows = []
    for name in posteriordb.NAMES:
        dtype = torch.float64 if name.startswith("gp_pois_regr") else torch.float32
        post = posteriordb.load(name, dtype=dtype)
        default = accuracy.evaluate(post, "AutoFlow (default)", 0, auto=True, check_modes=True)
        mixture = accuracy.evaluate(post, "AutoFlow (modes='auto')", 0, auto=True)
        rows.append({"posterior": name, "default": default, "mixture": mixture})
        print(f"{name}: default {default['seconds']:.1f} s pass={default['passes']} "
              f"missed={default['missed_modes']}; mixture {mixture['seconds']:.1f} s "
              f"K={mixture.get('components')} pass={mixture['passes']}", flush=True)
    return rows


def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def markdown(mixtures: list[dict], labels: dict | None, pdb: list[dict],
             info: dict | None = None) -> str:
    lines = ["# Posteriors with several modes", "", "    python -m benchmarks.modes --out "
             "benchmarks/results/modes.md", "", machine_line(info), "",
             "## Mixtures with known masses", "",
             "Mass per mode (share of 8000 draws nearest each center), seeds 0-2; *missed*: "
             "modes with >= 5% of the posterior and < 2% of the guide; *reported*: modes "
             "`diagnose(..., modes=find_modes(model))` lists.", "",
             "| case | seed | truth | default AutoFlow | missed / reported | modes='auto' | "
             "K | max error | s default | s auto (search alone) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in mixtures:
        lines.append(f"| {r['case']} | {r['seed']} | {_fmt(r['truth'])} | "
                     f"{_fmt(r['default_shares'])} | {r['missed']} / {r['reported']} | "
                     f"{_fmt(r['mixture_shares'])} | {r['components']} | {r['max_error']:.3f} | "
                     f"{r['default_seconds']:.1f} | {r['mixture_seconds']:.1f} "
                     f"({r['search_seconds']:.1f}) |")
    if mixtures:
        worst = max(r["max_error"] for r in mixtures)
        caught = sum(r["reported"] >= r["missed"] for r in mixtures)
        lines += ["", f"Worst mass error of modes='auto': {worst:.3f} (target 0.05). Runs whose "
                  f"missed modes were all reported: {caught} of {len(mixtures)}."]
    if labels:
        lines += ["", "## Label switching", "", "Three exchangeable components with unordered "
                  f"means: {labels['modes']} modes found in {labels['seconds']:.1f} s, "
                  f"relabelling groups {labels['groups']}.", "", "```", labels["report"],
                  "```"]
    if pdb:
        lines += ["", "## The 15 posteriordb posteriors (unimodal)", "",
                  "| posterior | default: pass, s | modes found (search s) | check fires | "
                  "modes='auto': K, pass, s | time ratio |", "|---|---|---|---|---|---|"]
        ratios = []
        for r in pdb:
            d, m = r["default"], r["mixture"]
            ratios.append(m["seconds"] / d["seconds"])
            lines.append(f"| {r['posterior']} | {'pass' if d['passes'] else 'FAIL'}, "
                         f"{d['seconds']:.1f} | {d['modes_found']} ({d['search_seconds']:.1f}) "
                         f"| {'yes' if d['missed_modes'] else 'no'} | {m.get('components')}, "
                         f"{'pass' if m['passes'] else 'FAIL'}, {m['seconds']:.1f} | "
                         f"{ratios[-1]:.2f} |")
        ratios.sort()
        lines += ["", f"Time ratio modes='auto' / default: median {ratios[len(ratios) // 2]:.2f}, "
                  f"max {ratios[-1]:.2f} (target <= 1.5)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "one mixture, one seed",
                           "markdown file; the JSON goes next to it (.json)")
    parser.add_argument("--skip-posteriordb", action="store_true")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="take parts 1 and 2 from this earlier run's .json, run part 3")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = list(CASES)[:1] if args.quick else list(CASES)
    seeds = [0] if args.quick else [0, 1, 2]
    mixtures, labels = [], None
    if args.reuse is not None:
        earlier = json.loads(args.reuse.read_text())
        mixtures, labels, names = earlier["mixtures"], earlier["labels"], []
    for name in names:
        for seed in seeds:
            mixtures.append(run_mixture(name, seed))
            r = mixtures[-1]
            print(f"{name} seed {seed}: default {_fmt(r['default_shares'])} missed "
                  f"{r['missed']} reported {r['reported']}; auto {_fmt(r['mixture_shares'])}",
                  flush=True)
    if labels is None and not args.quick:
        labels = label_switching()
    pdb = [] if args.quick or args.skip_posteriordb else run_posteriordb()
    info = machine_info()
    write_report(args.out, markdown(mixtures, labels, pdb, info),
                 {"machine": info, "mixtures": mixtures, "labels": labels, "posteriordb": pdb})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
