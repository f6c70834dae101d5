"""Rezende & Mohamed (2015), Figure 3: the four 2-D unnormalized densities U1-U4 of their
Table 1, each fitted by reverse KL with planar flows of K = 2, 8, 32 layers and, for
comparison, radial flows of K = 32; true density beside each fit, and each fit's
KL(q || p) = log Z + E_q[log q + U] with log Z by quadrature (U2-U4 made proper by a wide
Gaussian factor on z1: :mod:`pyro_nf.datasets.energies`). ``benchmarks/energies.py`` makes the
full table with standard errors.

    python examples/energy_2d.py                 # 2000 steps per fit, figure in out/energy_2d
    python examples/energy_2d.py --quick         # 20 steps, no figure (used by the tests)

The fits are drawn as histograms of their draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro.distributions as dist
import torch

from pyro_nf.datasets.energies import NAMES, energy, log_normalizer
from pyro_nf.transforms import build_flow

FLOWS = {"planar K=2": "planar*2", "planar K=8": "planar*8", "planar K=32": "planar*32",
         "radial K=32": "radial*32"}


def fit(energy, spec: str, steps: int, seed: int = 0, batch: int = 256):
    """Minimize KL(q || p) = E_q[log q(z) + U(z)] + log Z with Adam; returns (q, bound)."""
    torch.manual_seed(seed)
    flow = build_flow(spec, 2)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    q = dist.TransformedDistribution(base, list(flow.parts))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / max(steps, 1)))
    for _ in range(steps):
        z = q.rsample((batch,))
        loss = (q.log_prob(z) + energy(z)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        sched.step()
    with torch.no_grad():
        z = q.sample((4000,))
        bound = float((q.log_prob(z) + energy(z)).mean())  # KL(q || p) - log Z
    return q, bound


def figure(fits: dict, labels: list[str], path: Path, draws: int = 200_000) -> None:
    """The paper's Figure 3 from ``fits[energy name, label]`` (distributions with ``sample``):
    exp(-U) and a histogram of ``draws`` of each fit on [-4, 4]^2, one row per energy.
    Histograms of draws, not densities on a grid: the grid's points would need the flows'
    numerical inverses far outside where they put their mass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = torch.linspace(-4, 4, 150)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)
    fig, axes = plt.subplots(len(NAMES), 1 + len(labels),
                             figsize=(2.2 * (1 + len(labels)), 2.2 * len(NAMES)))
    with torch.no_grad():
        for i, name in enumerate(NAMES):
            axes[i, 0].imshow(torch.exp(-energy(name)(grid)), extent=(-4, 4, -4, 4),
                              origin="lower", cmap="magma")
            for j, label in enumerate(labels, start=1):
                z = fits[name, label].sample((draws,)).reshape(-1, 2).numpy()
                axes[i, j].hist2d(z[:, 0], z[:, 1], bins=150, range=[[-4, 4], [-4, 4]],
                                  cmap="magma")
            axes[i, 0].set_ylabel(name)
    for j, title in enumerate(["exp(-U)", *labels]):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("out/energy_2d"))
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps
    results, fits = {}, {}
    for ename in NAMES:
        log_z = log_normalizer(ename)
        for fname, spec in FLOWS.items():
            q, bound = fit(energy(ename), spec, steps)
            results[f"{ename} {fname}"] = log_z + bound
            fits[ename, fname] = q
            print(f"{ename}  {fname:>12}: KL(q || p) = {log_z + bound:.3f}", flush=True)
    if not args.quick:
        path = args.out / "energy_2d.png"
        figure(fits, list(FLOWS), path)
        print(f"figure written to {path}")
    return results


if __name__ == "__main__":
    main()
