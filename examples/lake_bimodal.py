"""Going round a lake: a posterior with two modes, fitted by a Gaussian guide and by flows.

A path from (-3, 0) to (3, 0) passes through one waypoint z in the plane. Short paths are
preferred, and a lake (a disc of radius 1.5 at the origin) is nearly impassable, so the
waypoint's posterior has two mirror-image modes: go round the lake on the north side or on the
south side, each with probability 1/2 by symmetry:

    z ~ N(0, 4^2 I),   log p(plan | z) = -2 (|z - a| + |b - z|)
                                         - 25 sum_legs sigmoid((1.5 - dist(0, leg)) / 0.1)

A Gaussian guide fitted by reverse KL (the ELBO) must choose: it lands in one mode or, started
symmetric, straddles the lake. A flow guide started wide enough to cover both sides can keep
both. The script fits AutoNormal, AutoMultivariateNormal and AutoFlow with a planar and a spline
flow, each started broad (init_scale 2) at the lake's centre, reports the share of each guide's
mass north of the lake (truth: 0.5) and PSIS k-hat, and draws the true density beside each
guide's draws. Measured (1500 steps, seed 0): both Gaussians stay a broad blob over the lake
(north 0.50; their gradient vanishes at the symmetric start); planar*16 keeps both modes
(north 0.45); spline_coupling*4 collapses onto the southern mode (north 0.00), the reverse-KL
mode seeking a flow is not immune to. PSIS k-hat cannot see either failure (the broad blobs'
weights are bounded, a missed mode leaves no large weight): look at the picture.

    python examples/lake_bimodal.py --out out/lake       # figure lake_bimodal.png
    python examples/lake_bimodal.py --quick              # a few steps (used by the tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value

import pyro_nf

START, GOAL, RADIUS = (-3.0, 0.0), (3.0, 0.0), 1.5


def _distance_to_centre(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distance from the lake's centre (the origin) to the segment p -> q."""
    d = q - p
    t = (-(p * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (p + t.unsqueeze(-1) * d).norm(dim=-1)


def log_plan(z: torch.Tensor) -> torch.Tensor:
    """The unnormalised log-likelihood of waypoint z: the path a -> z -> b should be short and
    both of its legs should keep out of the lake."""
    a, b = z.new_tensor(START).expand_as(z), z.new_tensor(GOAL).expand_as(z)
    length = (z - a).norm(dim=-1) + (b - z).norm(dim=-1)
    wet = sum(torch.sigmoid((RADIUS - _distance_to_centre(p, q)) / 0.1)
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


def fit_all(steps: int, seed: int, draws: int = 4000) -> dict:
    centre = init_to_value(values={"z": torch.zeros(2)})  # every guide starts in the lake
    broad = {"init_loc_fn": centre, "init_scale": 2.0}
    guides = {
        "AutoNormal": lambda: AutoNormal(model, **broad),
        "AutoMultivariateNormal": lambda: AutoMultivariateNormal(model, **broad),
        "AutoFlow planar*16": lambda: pyro_nf.AutoFlow(model, flow="planar*16", **broad),
        "AutoFlow spline_coupling*4": lambda: pyro_nf.AutoFlow(
            model, flow="spline_coupling*4", **broad),
    }
    out = {}
    for name, make in guides.items():
        pyro.clear_param_store()
        guide = make()
        pyro_nf.fit(model, guide, num_steps=steps, num_particles=16, seed=seed, progress=False)
        with torch.no_grad():
            z = pyro.infer.Predictive(model, guide=guide, num_samples=draws)()["z"].reshape(-1, 2)
        idata = pyro_nf.to_inference_data(model, guide, num_samples=draws)
        out[name] = {"draws": z, "north": float((z[:, 1] > 0).float().mean()),
                     "khat": pyro_nf.diagnose(idata).khat}
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/lake")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps
    results = fit_all(steps, args.seed, draws=300 if args.quick else 4000)
    print(f"{'guide':28s} {'mass north of the lake':>24s} {'PSIS k-hat':>11s}")
    print(f"{'truth':28s} {0.5:24.3f}")
    for name, r in results.items():
        print(f"{name:28s} {r['north']:24.3f} {r['khat']:11.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xs, p = true_density()
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3.2 * (len(results) + 1), 3.4))
    extent = (xs[0], xs[-1], xs[0], xs[-1])
    axes[0].imshow(p.numpy(), origin="lower", extent=extent, cmap="Blues")
    axes[0].set_title("true posterior (north 0.50)", fontsize=9)
    for ax, (name, r) in zip(axes[1:], results.items()):
        d = r["draws"].numpy()
        ax.hist2d(d[:, 0], d[:, 1], bins=80, range=[[-4, 4], [-4, 4]], cmap="Blues")
        ax.set_title(f"{name}\nnorth {r['north']:.2f}, k-hat {r['khat']:.2f}", fontsize=9)
    for ax in axes:
        ax.add_patch(plt.Circle((0, 0), RADIUS, fill=False, color="tab:red", lw=1))
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
