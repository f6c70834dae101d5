"""Data-parallel throughput: the MNIST VAE of ``examples/distributed_vae.py`` on 1 and 2
processes (``torchrun``, gloo, one thread each), images per second and the time spent
exchanging gradients, and what that ratio predicts for more processes.

    python -m benchmarks.distributed --out benchmarks/results/distributed.md
    python -m benchmarks.distributed --quick     # a few hundred images (the tests' smoke run)

Each process takes minibatches of ``--batch-size`` images; one step of W processes covers W
times as many. The estimate for W processes assumes what a ring all-reduce gives: each step
costs the compute time of one process plus a communication time that does not grow with W
(each rank sends and receives about twice the gradient's size whatever W is), so the speed-up
is W * (c + m1) / (c + m), with c and m the measured compute and communication seconds per
step. On this machine's two cores, two processes share the cores the one process had to itself
(torch runs one thread per process here), so the measured gain is bounded by that.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_line, script_parser, write_report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "distributed_vae.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, out: Path, options: list[str]) -> dict:
    """The example on ``processes`` processes; its summary (rank 0's)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(EXAMPLE), "--out", str(out), *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed benchmark: {processes} process(es) failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def report(rows: list[dict], options: list[str]) -> str:
    one = rows[0]
    lines = ["# Data-parallel SVI: the MNIST VAE on 1 and 2 processes", "",
             "    python -m benchmarks.distributed --out benchmarks/results/distributed.md", "",
             machine_line(), "", f"Example options: `{' '.join(options)}`; each process runs "
             "one torch thread (`OMP_NUM_THREADS=1`).", "",
             "| processes | steps | seconds | images / s | speed-up | communication s "
             "| compute s / step | communication s / step | test -ELBO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_step = (r["seconds"] - r["communication_seconds"]) / r["steps"]
        lines.append(f"| {r['world_size']} | {r['steps']} | {r['seconds']:.1f} | "
                     f"{r['points_per_second']:.0f} | "
                     f"{r['points_per_second'] / one['points_per_second']:.2f}x | "
                     f"{r['communication_seconds']:.1f} | {per_step * 1e3:.1f} ms | "
                     f"{r['communication_seconds'] / r['steps'] * 1e3:.1f} ms | "
                     f"{r['neg_elbo']:.2f} |")
    two = rows[-1]
    c = (one["seconds"] - one["communication_seconds"]) / one["steps"]
    m = two["communication_seconds"] / two["steps"]
    lines += ["", "Both runs cover the same epochs, so W processes take 1/W as many steps of W "
              "times the images: the images per second are throughput, not time to the same "
              "ELBO (the test -ELBO column).", "",
              "Estimate for W processes, each with its own core (module docstring): "
              "speed-up W c / (c + m) with c = "
              f"{c * 1e3:.1f} ms (one process's step) and m = {m * 1e3:.1f} ms (the measured "
              "exchange per step, waiting for the other rank included):", "",
              "| W | 2 | 4 | 8 | 16 |", "|---|---|---|---|---|",
              "| speed-up | " + " | ".join(f"{w * c / (c + m):.1f}x" for w in (2, 4, 8, 16))
              + " |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = script_parser(__doc__).parse_args(argv)
    options = (["--quick"] if args.quick else
               ["--test-size", "500", "--iw-samples", "10", "--batch-size", "100",
                "--epochs", "1", "--layers", "4"])
    with tempfile.TemporaryDirectory() as work:
        rows = [run(p, Path(work) / f"p{p}", options) for p in (1, 2)]
    text = report(rows, options)
    write_report(args.out, text, {"options": options, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
