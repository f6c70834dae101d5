"""Going round a lake: a posterior with two modes of unequal mass.

A path from (-3, 0) to (3, 0) passes through one waypoint z in the plane. Short paths are
preferred, and a lake (a disc of radius 1.5 centered a little north of the straight line, at
(0, 0.1)) is nearly impassable, so the waypoint's posterior has two modes: round the lake on
the south side (shorter, so heavier) or on the north side:

    z ~ N(0, 4^2 I),   log p(plan | z) = -2 (|z - a| + |b - z|)
                                         - 25 sum_legs sigmoid((1.5 - dist(c, leg)) / 0.1)

The true share of each side comes from the density on a grid. Reverse KL is mode-seeking: a
guide fitted by the ELBO, Gaussian or flow, keeps one side, and PSIS k-hat cannot see the other
(no draw of the guide goes there). The script fits, each with ``fit``'s defaults, AutoNormal,
the default ``AutoFlow(model)`` and ``AutoFlowMixture(model)`` (a mixture of flows, one
per mode that ``find_modes`` finds, weighted by the mass it covers), prints each one's share
north of the lake beside the truth, its k-hat and what ``diagnose(..., modes=search)`` says,
and draws the true density beside each guide's draws. Results: docs/guides.md.

    python examples/lake_bimodal.py --out out/lake       # figure lake_bimodal.png
    python examples/lake_bimodal.py --quick              # a few steps (used by the tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_nf

START, GOAL, RADIUS, CENTER = (-3.0, 0.0), (3.0, 0.0), 1.5, (0.0, 0.1)


def _distance_to_center(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distance from the lake's center to the segment p -> q."""
    c = p.new_tensor(CENTER)
    p, q = p - c, q - c
    d = q - p
    t = (-(p * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (p + t.unsqueeze(-1) * d).norm(dim=-1)


def log_plan(z: torch.Tensor) -> torch.Tensor:
    """The unnormalized log-likelihood of waypoint z: the path a -> z -> b should be short and
    both of its legs should keep out of the lake."""
    a, b = z.new_tensor(START).expand_as(z), z.new_tensor(GOAL).expand_as(z)
    length = (z - a).norm(dim=-1) + (b - z).norm(dim=-1)
    wet = sum(torch.sigmoid((RADIUS - _distance_to_center(p, q)) / 0.1)
              for p, q in ((a, z), (z, b)))
    return -2.0 * length - 25.0 * wet


def model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 4.0).to_event(1))
    pyro.factor("plan", log_plan(z))


def true_density(n: int = 200, lim: float = 4.0):
    xs = torch.linspace(-lim, lim, n)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)
    logp = log_plan(grid) + dist.Normal(0.0, 4.0).log_prob(grid).sum(-1)
    p = torch.exp(logp - logp.max())
    return xs, p / p.sum()


def north_share(n: int = 400, lim: float = 8.0) -> float:
    """The true posterior mass north of the lake's center (a grid over [-8, 8]^2)."""
    xs, p = true_density(n, lim)
    return float(p[xs > CENTER[1], :].sum())


def fit_all(quick: bool, seed: int, draws: int = 4000) -> dict:
    search = pyro_nf.find_modes(model, seed=seed)
    guides = {
        "AutoNormal": lambda: AutoNormal(model),
        "AutoFlow (default)": lambda: pyro_nf.AutoFlow(model),
        "AutoFlowMixture": lambda: pyro_nf.AutoFlowMixture(model, search=search),
    }
    options = {"num_steps": 20} if quick else {}
    out = {}
    for name, make in guides.items():
        pyro.clear_param_store()
        guide = make()
        pyro_nf.fit(model, guide, seed=seed, progress=False, **options)
        with torch.no_grad():
            z = pyro.infer.Predictive(model, guide=guide, num_samples=draws)()["z"].reshape(-1, 2)
        report = pyro_nf.diagnose(model, guide, num_samples=draws, modes=search)
        out[name] = {"draws": z, "north": float((z[:, 1] > CENTER[1]).float().mean()),
                     "khat": report.khat, "verdict": report.verdict,
                     "missed": [str(m) for m in report.missed_modes]}
    return out, search


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/lake")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results, search = fit_all(args.quick, args.seed, draws=300 if args.quick else 4000)
    truth = north_share()
    print(search)
    print(f"{'guide':24s} {'mass north of the lake':>23s} {'k-hat':>6s}  verdict")
    print(f"{'truth':24s} {truth:23.3f}")
    for name, r in results.items():
        print(f"{name:24s} {r['north']:23.3f} {r['khat']:6.2f}  {r['verdict']}")
        for missed in r["missed"]:
            print(f"{'':24s} missed: {missed}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xs, p = true_density()
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3.2 * (len(results) + 1), 3.8))
    extent = (xs[0], xs[-1], xs[0], xs[-1])
    axes[0].imshow(p.numpy(), origin="lower", extent=extent, cmap="Blues")
    axes[0].set_title(f"true posterior (north {truth:.2f})", fontsize=9)
    for ax, (name, r) in zip(axes[1:], results.items()):
        d = r["draws"].numpy()
        ax.hist2d(d[:, 0], d[:, 1], bins=80, range=[[-4, 4], [-4, 4]], cmap="Blues")
        ax.set_title(f"{name}\nnorth {r['north']:.2f}, k-hat {r['khat']:.2f}", fontsize=9)
    for ax in axes:
        ax.add_patch(plt.Circle(CENTER, RADIUS, fill=False, color="tab:red", lw=1))
        ax.plot(*zip(START, GOAL), "k.", ms=6)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = out / "lake_bimodal.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return {f"north {k}": v["north"] for k, v in results.items()}


if __name__ == "__main__":
    main()
