"""Statically binarized MNIST (Larochelle & Murray, AISTATS 2011).

The split used by the normalizing-flow VAE literature (Rezende & Mohamed 2015; Kingma et al.
2016; van den Berg et al. 2018): 50,000 train, 10,000 validation and 10,000 test images of
28 x 28 = 784 binary pixels. The file is ``binarized_mnist.npz`` with keys ``train``,
``valid`` and ``test``: uint8 arrays of ``numpy.packbits`` rows (98 bytes per image).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: Environment variable naming the ``.npz`` file (or a folder holding it).
MNIST_ENV = "PYRO_NF_MNIST"
_FILENAME = "binarized_mnist.npz"
_SPLITS = ("train", "valid", "test")
_PIXELS = 784
_WHERE = ("it is the statically binarized MNIST of Larochelle & Murray (2011), e.g. the "
          "binarized_mnist_{train,valid,test}.amat files of the public repository "
          "mingzhang-yin/ARM-gradient packed with numpy.packbits into one .npz with keys "
          "train/valid/test; pass its path or set $PYRO_NF_MNIST (this project's copy lives "
          "in ../shared/data beside the repository)")


@dataclass(frozen=True)
class BinarizedMNIST:
    """The three splits as float tensors of 0/1 pixels, shape (N, 784)."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    path: Path

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in _SPLITS)
        return f"BinarizedMNIST({sizes}, path={str(self.path)!r})"


def _candidates(path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        return [Path(path)]
    return [Path(os.environ[MNIST_ENV])] if os.environ.get(MNIST_ENV) else []


def _resolve(candidate: Path) -> Path:
    return candidate / _FILENAME if candidate.is_dir() else candidate


def binarized_mnist(path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> BinarizedMNIST:
    """Load statically binarized MNIST.

    Looks at ``path`` (the ``.npz`` file or a folder holding ``binarized_mnist.npz``), else at
    ``$PYRO_NF_MNIST`` (the Makefile and the tests point it at ``../shared/data``). Raises
    ``FileNotFoundError`` naming the place looked at (or that none was given), and
    ``ValueError`` naming the file when its contents are not the expected splits.

    Returns:
        :class:`BinarizedMNIST` with ``train`` (50000, 784), ``valid`` (10000, 784) and
        ``test`` (10000, 784) tensors of 0.0/1.0 in ``dtype`` on ``device``.
    """
    tried = [_resolve(c) for c in _candidates(path)]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        looked = ", ".join(str(p) for p in tried) or \
            f"nowhere (no path given and ${MNIST_ENV} is not set)"
        raise FileNotFoundError(
            f"binarized MNIST not found; looked at: {looked}. Pass path=... or set "
            f"${MNIST_ENV} to the file; {_WHERE}. Nothing is downloaded automatically.")
    try:
        with np.load(found) as npz:
            arrays = {s: npz[s] for s in _SPLITS if s in npz.files}
            keys = list(npz.files)
    except (OSError, ValueError) as err:
        raise ValueError(f"{found}: not a readable .npz file ({err})") from err
    missing = [s for s in _SPLITS if s not in arrays]
    if missing:
        raise ValueError(f"{found}: expected keys {list(_SPLITS)}, missing {missing} "
                         f"(the file has {keys})")
    splits = {}
    for split, packed in arrays.items():
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] * 8 < _PIXELS:
            raise ValueError(f"{found}: split {split!r} has dtype {packed.dtype} and shape "
                             f"{packed.shape}; expected uint8 packbits rows of 98 bytes")
        pixels = np.unpackbits(packed, axis=1)[:, :_PIXELS]
        splits[split] = torch.as_tensor(pixels).to(dtype=dtype, device=device)
    return BinarizedMNIST(path=found, **splits)
