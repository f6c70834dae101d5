"""The VAE-with-flows table on binarized MNIST: plain VAE, planar K = 10, orthogonal Sylvester
and IAF, trained with one CPU budget by ``examples/vae_mnist.py``.

    python -m benchmarks.mnist --out benchmarks/results/mnist.md            # trains all four
    python -m benchmarks.mnist --from out/mnist --out benchmarks/results/mnist.md   # tabulate
    python -m benchmarks.mnist --quick                                      # smoke run
    python -m benchmarks.mnist --sweep --jobs 2 --out benchmarks/results/mnist_sweep.md
                                            # -log p(x) against K (benchmarks/mnist_sweep.py)

Each configuration: latent 40, MLP encoder and decoder 784-300-300-40 / 40-300-300-784 (ELU),
batch 100 from a subsampled plate over the 50,000 training images, ClippedAdam lr 1e-3,
``--epochs`` epochs with a linear KL warm-up from 0.01 over the first ``--warmup`` epochs, one
CPU thread. Test -ELBO (one draw per image) and importance-sampled -log p(x) with ``--iw``
samples per image on all 10,000 test images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import load_example, script_parser, write_report

CONFIGS = [("none", 1, "plain VAE (diagonal Gaussian encoder)"),
           ("planar", 10, "planar, K = 10"),
           ("sylvester", 4, "orthogonal Sylvester, K = 4 (M = 16)"),
           ("iaf", 2, "IAF, K = 2 (MADE 300 hidden, context from the encoder)")]

# -ELBO / -log p(x) on statically binarized MNIST, from the papers (see the issue).
PUBLISHED = [
    ("Rezende & Mohamed 2015 (latent 40, MLP, 5000 IS): no flow", "-", "<= 89.9"),
    ("Rezende & Mohamed 2015: planar K = 10", "-", "<= 87.5"),
    ("van den Berg et al. 2018 (latent 64, conv, 5000 IS): plain VAE", "86.55", "82.14"),
    ("van den Berg et al. 2018: planar", "86.06", "81.91"),
    ("van den Berg et al. 2018: IAF", "84.20", "80.79"),
    ("van den Berg et al. 2018: orthogonal Sylvester", "83.32", "80.22"),
]


def run(out: Path, epochs: int, warmup: int, iw: int, quick: bool) -> list[dict]:
    vae_mnist = load_example("vae_mnist")
    rows = []
    for flow, layers, _ in CONFIGS:
        argv = ["--flow", flow, "--layers", str(layers), "--epochs", str(epochs),
                "--warmup", str(warmup), "--iw-samples", str(iw), "--no-progress",
                "--out", str(out / flow)]
        if quick:
            argv.append("--quick")
        print(f"== {flow} ==", flush=True)
        vae_mnist.main(argv)
        rows.append(json.loads((out / flow / "summary.json").read_text()))
    return rows


def table(rows: list[dict]) -> str:
    plain = next((r for r in rows if r["flow"] == "none"), None)
    lines = ["# VAE with amortized flows on binarized MNIST", "",
             "    python -m benchmarks.mnist --out benchmarks/results/mnist.md", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "| guide | epochs | train s | test -ELBO | test -log p(x) | gain over plain VAE "
             "(-log p(x)) | IS samples x test images |", "|---|---|---|---|---|---|---|"]
    for (_, _, label), r in zip(CONFIGS, rows):
        gain = "" if plain is None or r is plain else \
            f"{plain['test_neg_log_px'] - r['test_neg_log_px']:+.2f}"
        lines.append(f"| {label} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['test_neg_elbo']:.2f} | {r['test_neg_log_px']:.2f} | {gain} | "
                     f"{r['iw_samples']} x {r['test_images']} |")
    lines += ["", "Published (not comparable in budget or architecture; for scale):", "",
              "| source | -ELBO | -log p(x) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in PUBLISHED]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "the examples' --quick runs",
                           "markdown file; the JSON goes next to it (.json)")
    parser.add_argument("--from", dest="source", default=None,
                        help="tabulate the summary.json files of an earlier run in this folder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iw", type=int, default=200)
    parser.add_argument("--work", default=None, help="where the runs write (default "
                        "out/mnist, out/mnist_sweep with --sweep)")
    parser.add_argument("--sweep", action="store_true",
                        help="-log p(x) against flow length (benchmarks/mnist_sweep.py)")
    parser.add_argument("--flows", default=None,
                        help="--sweep: train only these flows (comma-separated; the others' "
                             "earlier runs in --work are tabulated with them)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="--sweep: runs at a time, one CPU thread each")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args)
    import torch

    torch.set_num_threads(1)
    if args.source:
        rows = [json.loads((Path(args.source) / f / "summary.json").read_text())
                for f, _, _ in CONFIGS]
    else:
        rows = run(Path(args.work or "out/mnist"), args.epochs, args.warmup, args.iw,
                   args.quick)
    write_report(args.out, table(rows), rows)
    return 0


def sweep(args) -> int:
    from benchmarks import mnist_sweep

    work = Path(args.work or "out/mnist_sweep")
    if args.source:
        configs = mnist_sweep.QUICK_SWEEP if args.quick else mnist_sweep.SWEEP
        rows = mnist_sweep.collect([Path(args.source) / mnist_sweep._name(*c) for c in configs])
    else:
        flows = args.flows.split(",") if args.flows else None
        rows = mnist_sweep.run(work, args.epochs, args.warmup, args.iw, args.quick, args.jobs,
                               flows)
    write_report(args.out, mnist_sweep.table(rows, mnist_sweep.__doc__), rows)
    figure = (Path(args.out).with_suffix(".png") if args.out else work / "mnist_sweep.png")
    mnist_sweep.plot(rows, figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
