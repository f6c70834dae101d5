"""The flow-length sweep on binarized MNIST (Rezende & Mohamed 2015, Table 2): -log p(x)
against the number of flow layers K, every run at one budget.

    python -m benchmarks.mnist --sweep --jobs 2 --out benchmarks/results/mnist_sweep.md
    python -m benchmarks.mnist --sweep --from out/mnist_sweep --out ...   # tabulate
    python -m benchmarks.mnist --sweep --quick                            # smoke run

Each run is ``examples/vae_mnist.py`` in its own process (one CPU thread; ``--jobs`` of them at
a time): latent 40, MLP 784-300-300 encoder and its mirror decoder, batch 100, ClippedAdam lr
1e-3, ``--epochs`` epochs with the KL weight warmed up linearly from 0.01 over the first
``--warmup``, the hypernetwork flows' parameters a linear map of the encoder's last hidden
layer (as in the paper). Test -log p(x) is importance-sampled with ``--iw`` draws per image on
all 10,000 test images; "se" is its standard error over the images, and "gain over plain" the
difference from the plain VAE image by image (same images, so its standard error is far
smaller than either run's). "train s" is wall time with two runs (at times other jobs too)
sharing the machine's 2 cores: not a speed comparison.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: (flow, K): the plain VAE, planar and radial at K in {2, 8, 16, 32}, Sylvester and IAF at
#: the K where they are cheapest.
SWEEP = [("none", 0)] + [(f, k) for f in ("planar", "radial") for k in (2, 8, 16, 32)] + \
    [("sylvester", 2), ("sylvester", 8), ("iaf", 2), ("iaf", 8)]
QUICK_SWEEP = [("none", 0), ("planar", 2), ("radial", 2)]
#: Rezende & Mohamed (2015), Table 2: the bound on -log p(x) for planar flows of length K
#: (latent 40, MLP, far longer training than here).
PUBLISHED_PLANAR = {0: 89.9, 10: 87.5, 20: 86.5, 40: 85.7, 80: 85.1}
ROOT = Path(__file__).resolve().parents[1]


def _name(flow: str, k: int) -> str:
    return "plain" if flow == "none" else f"{flow}{k}"


def _one(flow: str, k: int, work: Path, epochs: int, warmup: int, iw: int, quick: bool) -> Path:
    out = work / _name(flow, k)
    argv = [sys.executable, str(ROOT / "examples" / "vae_mnist.py"), "--flow", flow,
            "--layers", str(max(k, 1)), "--epochs", str(epochs), "--warmup", str(warmup),
            "--iw-samples", str(iw), "--no-progress", "--out", str(out)]
    if quick:
        argv.append("--quick")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(work / f"{_name(flow, k)}.log", "w") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"mnist sweep: {flow} K = {k} failed; see {work / _name(flow, k)}.log")
    return out


def run(work: Path, epochs: int, warmup: int, iw: int, quick: bool, jobs: int,
        flows: list[str] | None = None) -> list[dict]:
    """Train the sweep's runs (only those of ``flows``, when given: the others' earlier runs
    in ``work`` are tabulated with them)."""
    work.mkdir(parents=True, exist_ok=True)
    sweep = QUICK_SWEEP if quick else SWEEP
    todo = [c for c in sweep if flows is None or c[0] in flows]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda c: _one(*c, work, epochs, warmup, iw, quick), todo))
    return collect([work / _name(*c) for c in sweep])


def collect(folders: list[Path]) -> list[dict]:
    """The runs' summaries, each with its image-by-image difference from the plain VAE."""
    import torch

    rows = [json.loads((f / "summary.json").read_text()) for f in folders]
    plain = next((i for i, r in enumerate(rows) if r["flow"] == "none"), None)
    base = None if plain is None else torch.load(folders[plain] / "test_neg_log_px.pt")
    for folder, row in zip(folders, rows):
        row.pop("history", None)
        mine = torch.load(folder / "test_neg_log_px.pt")
        if base is not None and len(mine) == len(base):
            diff = (base - mine).double()
            row["gain"] = float(diff.mean())
            row["gain_se"] = float(diff.std() / math.sqrt(len(diff)))
    return rows


def table(rows: list[dict], doc: str) -> str:
    lines = ["# -log p(x) against flow length on binarized MNIST", "",
             "    python -m benchmarks.mnist --sweep --jobs 2 --out "
             "benchmarks/results/mnist_sweep.md", "", doc.split("\n\n", 2)[2].strip(), "",
             "| flow | K | epochs | train s | test -ELBO | test -log p(x) | se | gain over plain "
             "(image by image) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = f"{r['gain']:+.2f} +- {r['gain_se']:.2f}" if "gain" in r and r["layers"] else ""
        lines.append(f"| {r['flow']} | {r['layers']} | {r['epochs']} | {r['train_seconds']:.0f} "
                     f"| {r['test_neg_elbo']:.2f} | {r['test_neg_log_px']:.2f} | "
                     f"{r.get('test_neg_log_px_se', math.nan):.2f} | {gain} |")
    lines += ["", "Rezende & Mohamed (2015), Table 2, planar (for scale; trained far longer): " +
              ", ".join(f"K = {k}: {v}" for k, v in PUBLISHED_PLANAR.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """-log p(x) against K per family, beside the published planar points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ours, paper) = plt.subplots(1, 2, figsize=(10, 4))
    plain = next((r for r in rows if r["flow"] == "none"), None)
    for family in dict.fromkeys(r["flow"] for r in rows if r["flow"] != "none"):
        mine = sorted((r for r in rows if r["flow"] == family), key=lambda r: r["layers"])
        if plain is not None:
            mine = [plain] + mine
        ks = [r["layers"] for r in mine]
        ours.errorbar(ks, [r["test_neg_log_px"] for r in mine],
                      yerr=[r.get("test_neg_log_px_se", 0) for r in mine], marker="o",
                      capsize=3, label=family)
    ours.set(xscale="symlog", xlabel="K (flow layers)", ylabel="test -log p(x) (nats)",
             title=f"this run ({rows[0]['epochs']} epochs, CPU)")
    ours.legend()
    paper.plot(list(PUBLISHED_PLANAR), list(PUBLISHED_PLANAR.values()), "s-", color="k",
               label="Rezende & Mohamed 2015, planar")
    paper.set(xscale="symlog", xlabel="K (flow layers)", ylabel="-log p(x) bound (nats)",
              title="published")
    paper.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
