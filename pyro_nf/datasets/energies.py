"""The four 2-D test energies of Rezende & Mohamed (2015, "Variational Inference with
Normalizing Flows", Table 1), with their log normalizing constants by quadrature, so that a
fit's KL(q || p) = log Z + E_q[log q + U] can be measured, not only its bound.

U1 is normalizable on R^2. U2-U4 depend on z1 only through the waves w_i(z1) and are flat
along z1: exp(-U) has no finite integral on R^2, and a reverse-KL fit can lower its bound
without limit by spreading along z1. :func:`energy` therefore makes them proper with a wide
Gaussian factor on z1, ``U(z) + z1^2 / (2 * Z1_SCALE^2)``: z1 ~ N(0, 2^2) before the energy,
which keeps the paper's box [-4, 4] within two standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor

#: The standard deviation of the Gaussian factor on z1 that makes U2-U4 proper.
Z1_SCALE = 2.0
NAMES = ("U1", "U2", "U3", "U4")


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)


def _u1(z: Tensor) -> Tensor:
    ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
    lobes = torch.logaddexp(-0.5 * ((z[..., 0] - 2) / 0.6) ** 2,
                            -0.5 * ((z[..., 0] + 2) / 0.6) ** 2)
    return ring - lobes


def _u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2


def _u3(z: Tensor) -> Tensor:
    return -torch.logaddexp(-0.5 * ((z[..., 1] - _w1(z)) / 0.35) ** 2,
                            -0.5 * ((z[..., 1] - _w1(z) + _w2(z)) / 0.35) ** 2)


def _u4(z: Tensor) -> Tensor:
    return -torch.logaddexp(-0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2,
                            -0.5 * ((z[..., 1] - _w1(z) + _w3(z)) / 0.35) ** 2)


_PAPER = {"U1": _u1, "U2": _u2, "U3": _u3, "U4": _u4}


def energy(name: str, proper: bool = True) -> Callable[[Tensor], Tensor]:
    """U(z) for ``z`` of shape (..., 2): the paper's energy ``name`` ("U1" to "U4"), with the
    Gaussian factor on z1 for U2-U4 when ``proper`` (module docstring)."""
    if name not in _PAPER:
        raise ValueError(f"energy: name must be one of {NAMES}, got {name!r}")
    u = _PAPER[name]
    if not proper or name == "U1":
        return u
    return lambda z: u(z) + 0.5 * (z[..., 0] / Z1_SCALE) ** 2


def log_normalizer(name: str, step: float = 0.01) -> float:
    """log Z = log of the integral of exp(-U) over R^2 for the proper energy ``name``: a sum
    over a grid of spacing ``step`` in float64, on a box where exp(-U) falls below e^-30 of its
    peak at the edges (|z1| <= 8 Z1_SCALE, |z2| <= 8), so the sum is the trapezoid rule; with
    spacing 0.01, about 1/35 of the narrowest scale (0.35), it is exact to float round-off for
    these smooth, fast-decaying integrands."""
    u = energy(name)
    half = (8.0, 8.0) if name == "U1" else (8.0 * Z1_SCALE, 8.0)
    axes = [torch.arange(-h, h + step / 2, step, dtype=torch.float64) for h in half]
    rows = []
    for z1 in axes[0].split(256):  # in chunks of rows: a few MB at a time
        grid = torch.stack(torch.meshgrid(z1, axes[1], indexing="ij"), -1)
        rows.append(torch.logsumexp(-u(grid), dim=-1))
    return float(torch.logsumexp(torch.cat(rows), 0)) + 2 * math.log(step)
