"""What single planar and radial layers do to the plane: a grid and a cloud of points, with a
line from each point to its image (as in Rezende & Mohamed, 2015, Fig. 1).

    python examples/visualize_layers.py              # figure in out/visualize_layers
    python examples/visualize_layers.py --quick      # no figure (used by the tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_nf.transforms import build_layer


def layers() -> dict:
    """A planar layer (contracting along w) and a radial one (expanding around z0)."""
    planar = build_layer("planar", 2)
    radial = build_layer("radial", 2)
    with torch.no_grad():
        planar.w.copy_(torch.tensor([2.0, 1.0]))
        planar.u.copy_(torch.tensor([-0.3, 1.2]))
        planar.b.fill_(0.0)
        radial.z0.copy_(torch.tensor([0.5, -0.3]))
        radial.raw_alpha.fill_(0.0)
        radial.raw_beta.fill_(1.5)
    return {"planar": planar, "radial": radial}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/visualize_layers"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    axis = torch.linspace(-2.5, 2.5, 21)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    cloud = torch.randn(300, 2)
    stats = {}
    images = {}
    with torch.no_grad():
        for name, layer in layers().items():
            moved_grid, moved_cloud = layer(grid), layer(cloud)
            back = layer.inv(moved_cloud.clone())
            stats[f"{name} mean displacement"] = float((moved_cloud - cloud).norm(dim=-1).mean())
            stats[f"{name} round-trip error"] = float((back - cloud).abs().max())
            images[name] = (moved_grid, moved_cloud)
    for k, v in stats.items():
        print(f"{k}: {v:.3g}")
    if not args.quick:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(8, 8))
        for col, (name, (moved_grid, moved_cloud)) in enumerate(images.items()):
            g = moved_grid.reshape(len(axis), len(axis), 2)
            ax = axes[0, col]
            for i in range(len(axis)):
                ax.plot(g[i, :, 0], g[i, :, 1], color="0.4", lw=0.6)
                ax.plot(g[:, i, 0], g[:, i, 1], color="0.4", lw=0.6)
            ax.set_title(f"{name}: image of a grid")
            ax = axes[1, col]
            for p, q in zip(cloud, moved_cloud):
                ax.plot([p[0], q[0]], [p[1], q[1]], color="0.7", lw=0.5)
            ax.scatter(*cloud.T, s=4, color="C0", label="x")
            ax.scatter(*moved_cloud.T, s=4, color="C3", label="f(x)")
            ax.set_title(f"{name}: points and their images")
            ax.legend(fontsize=7)
        for ax in axes.flat:
            ax.set_aspect("equal")
        args.out.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(args.out / "layers.png", dpi=80)
        print(f"figure written to {args.out / 'layers.png'}")
    return stats


if __name__ == "__main__":
    main()
