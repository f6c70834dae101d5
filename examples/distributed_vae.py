"""The MNIST VAE of ``vae_mnist.py`` (amortized planar flow) fitted data-parallel: every process
takes its own minibatch of the subsampled plate over the images, gradients are averaged every
step (``pyro_nf.fit(..., distributed=True)``), rank 0 writes the checkpoint and the summary.

    torchrun --nproc_per_node 2 examples/distributed_vae.py --quick
    torchrun --nproc_per_node 2 examples/distributed_vae.py --epochs 5 --out out/dvae
    # several nodes (run on each; HOST is the first node), or through SLURM:
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/distributed_vae.py --epochs 5
    srun --nodes 2 --ntasks-per-node 1 torchrun --nnodes 2 --nproc_per_node 4 \\
        --rdzv-backend c10d --rdzv-endpoint $(hostname):29500 examples/distributed_vae.py
    python examples/distributed_vae.py --quick       # one process: the usual fit

``--batch-size`` is per process: the step's minibatch is ``world size x batch size`` images and
an epoch has ``len(train) / (world size x batch size)`` steps. The KL weight is 1 throughout
(no warm-up: fit passes the same arguments to every step). ``--resume`` continues from the
checkpoint on any number of processes; ``--epochs`` counts steps at the current number, so
resuming on another number changes the total of steps (and the learning-rate decay).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch

import pyro_nf
from pyro_nf.datasets import binarized_mnist


def _vae_mnist():
    """``vae_mnist.py`` beside this file, loaded from its path: ``examples/`` is a folder of
    scripts, not a package, and this one may be started from anywhere."""
    path = Path(__file__).resolve().with_name("vae_mnist.py")
    spec = importlib.util.spec_from_file_location("vae_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VAE = _vae_mnist()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flow", choices=sorted(VAE.FLOWS), default="planar")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--latent", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--data", default=None, help="path to binarized_mnist.npz")
    parser.add_argument("--out", default="out/distributed_vae")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--quick", action="store_true", help="a few hundred images")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.iw_samples = 400, 100, 10
        args.hidden, args.layers, args.batch_size = 64, 2, 20
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = binarized_mnist(args.data)
    train = data.train[:args.train_size] if args.train_size else data.train
    test = data.test[:args.test_size]
    pyro.clear_param_store()
    encoder, decoder, features = VAE.networks("mlp", args.hidden, args.latent)
    model = VAE.make_model(decoder, args.latent)
    guide, _ = VAE.make_guide(model, VAE.FLOWS[args.flow], args.layers, encoder, features)
    steps = args.epochs * math.ceil(len(train) / (args.batch_size * world))
    start = time.perf_counter()
    result = pyro_nf.fit(model, guide, train, 1.0, args.batch_size, num_steps=steps,
                         lr=args.lr, seed=0, distributed=True, progress=not args.quick,
                         checkpoint=out / "checkpoint.pt", resume=args.resume)
    seconds = time.perf_counter() - start
    summary = {"world_size": world, "steps": result.steps, "seconds": seconds,
               "points_per_second": steps * args.batch_size * world / seconds,
               "communication_seconds": result.communication_seconds,
               "final_elbo_per_image": result.final_elbo / len(train)}
    if rank == 0:
        with torch.no_grad():
            scores = VAE.evaluate(model, guide, test, samples=args.iw_samples)
            scores.pop("per_image")  # a tensor: the summary keeps the averages
            summary.update(scores)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"{world} process(es), {result.steps} steps of {args.batch_size * world} images "
              f"in {seconds:.1f} s ({summary['points_per_second']:.0f} images/s, "
              f"{result.communication_seconds:.1f} s exchanging gradients); test -ELBO "
              f"{summary['neg_elbo']:.2f}, -log p(x) {summary['neg_log_px']:.2f}")
    return summary


if __name__ == "__main__":
    main()
