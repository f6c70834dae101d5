"""A subsampled model's log density over all of its data, read in chunks.

A model written for stochastic VI draws a minibatch in its plate
(``pyro.plate("data", N, subsample_size=B)``) and scales the minibatch's log likelihood by
N / B: an unbiased but noisy estimate. Everything that needs the density itself (the Gaussian
anchor's L-BFGS paths, the importance checks that decide when a fit is accurate, PSIS k-hat)
must not see that noise. :func:`plate_indices` makes such a plate take given indices instead of
a random minibatch, of any length (Pyro itself insists on exactly B), so the whole data set is
read in chunks whose size fits memory, and :class:`Chunks` adds the chunks' log likelihoods
back up to exactly log p(x, z) (Pyro's scale N / C of a chunk of C rows undone, the sites
outside the plate counted once).

Only plates that subsample by themselves (``subsample_size`` given, ``subsample`` not) are
read this way; one such plate per model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pyro.poutine.subsample_messenger import SubsampleMessenger, _Subsample

#: draws x rows per chunk: the chunk's rows shrink as the draws evaluated together grow.
CHUNK_ELEMENTS = 2 ** 22


@contextmanager
def plate_indices(indices: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within this block, the plates named in ``indices`` that would draw a random
    subsample take exactly those indices (of any length; the plate's scale becomes
    size / len(indices)). With no indices Pyro is left untouched."""
    if not indices:  # the common case (no subsampled plate): nothing to patch
        yield
        return
    original = SubsampleMessenger.__dict__["_subsample"]

    def chosen(name: str, size: Any = None, subsample_size: Any = None, subsample: Any = None,
               use_cuda: Any = None, device: Any = None) -> Any:
        if name in indices and subsample is None and subsample_size is not None:
            return original.__func__(name, size, None, indices[name], use_cuda, device)
        return original.__func__(name, size, subsample_size, subsample, use_cuda, device)

    SubsampleMessenger._subsample = staticmethod(chosen)
    try:
        yield
    finally:
        SubsampleMessenger._subsample = original


def reads_all_rows(target: Any) -> bool:
    """Whether ``target`` (a LogDensity, a wrapper with a ``log_density``, or None) reads all
    the rows of a subsampled plate, in chunks, at every draw: where each draw costs a pass
    over the data."""
    inner = getattr(target, "log_density", target)
    return getattr(inner, "chunks", None) is not None


def subsampled_plate(trace: Any) -> tuple[str, int] | None:
    """``(name, size)`` of the plate that subsamples in ``trace`` (a model's), or None; an
    error for more than one."""
    found = {name: site["fn"].size for name, site in trace.nodes.items()
             if site["type"] == "sample" and isinstance(site.get("fn"), _Subsample)
             and site["fn"].subsample_size is not None
             and site["fn"].subsample_size < site["fn"].size}
    if len(found) > 1:
        raise ValueError(f"LogDensity: plates {sorted(found)} all subsample; a full-data log "
                         "density reads one subsampled plate in chunks: subsample one plate")
    return next(iter(found.items()), None)


class Chunks:
    """The chunks of one subsampled plate of ``size`` rows, for ``draws`` points evaluated
    together, and the weight that turns a chunk's Pyro-scaled log density back into its
    share of the full data's."""

    def __init__(self, name: str, size: int, device: Any = None) -> None:
        self.name, self.size, self.device = name, int(size), device

    def __call__(self, draws: int) -> Iterator[tuple[int, torch.Tensor]]:
        rows = max(1, min(self.size, CHUNK_ELEMENTS // max(1, draws)))
        for k, start in enumerate(range(0, self.size, rows)):
            yield k, torch.arange(start, min(start + rows, self.size), device=self.device)

    def inside(self, site: dict) -> bool:
        """Whether ``site`` sits in the plate (its log density is read chunk by chunk)."""
        return any(frame.name == self.name for frame in site["cond_indep_stack"])

    def unscale(self, chunk: torch.Tensor) -> float:
        """Pyro scales a chunk's sites by size / len(chunk): this undoes it."""
        return len(chunk) / self.size


def _few_of_many(size: int, batch: int, device: Any) -> torch.Tensor:
    """``batch`` distinct indices of range(size), uniformly at random, in O(batch) work for
    batch << size (Pyro's ``torch.randperm(size)[:batch]`` is O(size) at every step)."""
    found = torch.empty(0, dtype=torch.long, device=device)
    while len(found) < batch:
        more = torch.randint(size, (batch + batch // 4 + 8,), device=device)
        found = torch.unique(torch.cat([found, more]))
    return found[torch.randperm(len(found), device=device)[:batch]]


@contextmanager
def fast_minibatches() -> Iterator[None]:
    """Within this block every plate that subsamples ``subsample_size`` of ``size`` rows,
    ``size`` at least 8 times larger, draws its minibatch in O(subsample_size) work instead of
    Pyro's O(size) ``randperm``: the same distribution (a uniformly random subset), so a step
    of ``fit`` costs the same at 10^4 or 10^7 rows. (A plate's subsample drawn by another
    sampler, as a data-parallel fit's shards, is left alone.)"""
    original = _Subsample.sample

    def sample(self: _Subsample, sample_shape: Any = ()) -> torch.Tensor:
        batch = self.subsample_size
        if sample_shape or not batch or batch * 8 > self.size:
            return original(self, sample_shape)
        out = _few_of_many(self.size, batch, self.device)
        return out.cuda() if self.use_cuda else out

    _Subsample.sample = sample
    try:
        yield
    finally:
        _Subsample.sample = original
