"""Data-parallel fits on real process groups: two processes, gloo, on loopback only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_nf
from pyro_nf.training import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_NF_DIST_TIMEOUT": "60",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **extra}


def _torchrun(case: str, out: Path, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), case, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode == 0) == ok, proc.stderr[-4000:]
    return proc


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)
    pyro.clear_param_store()


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **tol)


def test_two_ranks_equal_one_process_with_their_union_minibatch(tmp_path, float64):
    """AutoFlow with a subsampled likelihood plate: two ranks with minibatches of 8 end, after
    50 steps, where one process with minibatches of 16 (the same indices) ends."""
    _torchrun("logistic", tmp_path / "p")
    ranks = [torch.load(tmp_path / f"p.{r}") for r in range(2)]
    _assert_same(ranks[0], ranks[1], rtol=0, atol=0)
    single = worker.run("logistic", 2 * worker.BATCH)
    _assert_same(ranks[0], single, rtol=1e-7, atol=1e-9)


class EmulatedWorld:
    """The ranks of a job run one after another in this process: each step, rank r's loss and
    gradients on its block of the minibatch from the same random state, then their mean."""

    def __init__(self, size: int, args: tuple) -> None:
        self.size, self.rank, self.leader, self.args = size, 0, True, args
        self.params: list[torch.Tensor] = []
        self.seconds = 0.0
        self.loss_fn = Trace_ELBO()
        self.fns: list = []

    def shard(self, fn):
        if len(self.fns) == 2:
            self.fns = []
        self.fns.append(fn)
        self.rng = torch.get_rng_state()
        return distributed._ShardPlates(0, self.size)(fn)

    def agree(self, what, value) -> None:
        pass

    def broadcast(self, params) -> None:
        pass

    def average(self, loss: float, touched=None) -> float:
        total = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                 for p in self.params]
        losses = [loss]
        model, guide = self.fns
        for rank in range(1, self.size):
            torch.set_rng_state(self.rng)
            for p in self.params:
                p.grad = None
            losses.append(self.loss_fn.loss_and_grads(
                distributed._ShardPlates(rank, self.size)(model),
                distributed._ShardPlates(rank, self.size)(guide), *self.args))
            for t, p in zip(total, self.params):
                if p.grad is not None:
                    t += p.grad
        for t, p in zip(total, self.params):
            p.grad = t / self.size
        return sum(losses) / self.size, self.params

    def share_random_state(self) -> None:
        pass


def test_amortized_ranks_equal_the_same_steps_taken_one_after_another(tmp_path, float64,
                                                                      monkeypatch):
    """AutoFlow over the globals and AmortizedFlow over a subsampled plate of local latents:
    the two ranks agree exactly and equal one process that computes each rank's part in
    turn from the same random state and averages (the same minibatches and draws)."""
    _torchrun("hierarchical", tmp_path / "p")
    ranks = [torch.load(tmp_path / f"p.{r}") for r in range(2)]
    _assert_same(ranks[0], ranks[1], rtol=0, atol=0)
    args = (*worker.hierarchical_data(), worker.BATCH)
    monkeypatch.setattr(distributed, "setup", lambda *a, **k: EmulatedWorld(2, args))
    emulated = worker.run("hierarchical", worker.BATCH, distributed=True)
    _assert_same(ranks[0], emulated, rtol=1e-7, atol=1e-9)


def test_ranks_that_disagree_about_the_plates_stop_with_a_clear_error(tmp_path):
    _torchrun("disagree", tmp_path / "p", ok=False)
    for rank in range(2):
        text = (tmp_path / f"p.{rank}.error").read_text()
        assert "disagree about the subsampled plates" in text


def test_a_dead_rank_stops_the_other_with_a_clear_error_and_the_checkpoint_resumes(
        tmp_path, float64):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), "die", str(tmp_path / "p")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    start = time.perf_counter()
    codes = [p.wait(timeout=120) for p in procs]
    assert codes[1] == 3 and codes[0] != 0
    assert time.perf_counter() - start < 120
    error = (tmp_path / "p.0.error").read_text()
    assert "could not exchange" in error and "resume=True" in error
    saved = torch.load(tmp_path / "p.ckpt", weights_only=False)
    assert saved["steps"] == 10
    # one process resumes the job where it stopped (the state is world-size independent)
    resumed = worker.run("logistic", 2 * worker.BATCH, checkpoint=str(tmp_path / "p.ckpt"),
                         resume=True)
    assert all(bool(torch.isfinite(v).all()) for v in resumed.values())
    assert torch.load(tmp_path / "p.ckpt", weights_only=False)["steps"] == worker.STEPS


def test_without_the_launcher_distributed_is_the_usual_fit(float64, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plain = worker.run("logistic", worker.BATCH)
    flagged = worker.run("logistic", worker.BATCH, distributed=True)
    _assert_same(plain, flagged, rtol=0, atol=0)


def test_a_job_without_a_subsampled_plate_or_num_steps_is_refused(monkeypatch, float64):
    monkeypatch.setattr(distributed, "launched", lambda: True)
    torch.set_default_dtype(torch.float64)
    x, y = worker.logistic_data()
    guide = pyro_nf.AutoFlow(worker.logistic, start=None)
    with pytest.raises(ValueError, match="distributed is not supported by SelfTuningSchedule"):
        pyro_nf.fit(worker.logistic, guide, x, y, None, distributed=True, progress=False)
    monkeypatch.setattr(distributed, "World", lambda device=None: _OneRank())
    with pytest.raises(distributed.DistributedError, match="nothing to share out"):
        pyro_nf.fit(worker.logistic, guide, x, y, None, num_steps=2, distributed=True,
                    progress=False)


class _OneRank:
    rank, size, leader = 0, 1, True

    def agree(self, what, value) -> None:
        pass


def test_buckets_split_by_size_dtype_and_device(monkeypatch):
    monkeypatch.setattr(distributed, "BUCKET_ELEMENTS", 10)
    tensors = [torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(20),
               torch.zeros(2, dtype=torch.float64)]
    sizes = [[t.numel() for t in bucket] for bucket in distributed._buckets(tensors)]
    assert sizes == [[4, 4], [4], [20], [2]]


def test_distributed_benchmark_runs_the_example_on_one_and_two_processes(tmp_path):
    """benchmarks/distributed.py --quick: examples/distributed_vae.py under torchrun with 1
    and 2 processes, each writing its summary; the report has both rows and the estimate."""
    from benchmarks import distributed as bench

    out = tmp_path / "distributed.md"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["world_size"] for r in rows] == [1, 2]
    assert rows[0]["communication_seconds"] == 0.0 < rows[1]["communication_seconds"]
    assert all(r["neg_elbo"] > 0 for r in rows)
    assert "| speed-up |" in out.read_text()
