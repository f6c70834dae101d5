"""pyro_nf.datasets.binarized_mnist: known answers from ../shared/data/README.md, the search
order, and clear errors."""

import hashlib

import numpy as np
import pytest
import torch

from pyro_nf.datasets import MNIST_ENV, binarized_mnist

# From ../shared/data/README.md: sha256 of the unpacked (N, 784) uint8 arrays, pixel means.
SHA = {"train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
       "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
       "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86"}
MEANS = {"train": 0.130562, "valid": 0.131127, "test": 0.132512}


@pytest.fixture(scope="module")
def mnist():
    return binarized_mnist()


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_known_contents(mnist, split):
    x = getattr(mnist, split)
    assert x.shape == ({"train": 50000}.get(split, 10000), 784)
    assert x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    assert abs(x.mean().item() - MEANS[split]) < 5e-7
    raw = np.ascontiguousarray(x.numpy().astype(np.uint8))
    assert hashlib.sha256(raw.tobytes()).hexdigest() == SHA[split]


def test_explicit_path_dtype_and_env(tmp_path, monkeypatch, mnist):
    small = tmp_path / "small.npz"
    packed = {s: np.packbits(getattr(mnist, s)[:5].numpy().astype(np.uint8), axis=1)
              for s in ("train", "valid", "test")}
    np.savez(small, **packed)
    got = binarized_mnist(small, dtype=torch.float64)
    assert got.train.dtype == torch.float64 and got.path == small
    torch.testing.assert_close(got.test.float(), mnist.test[:5])
    monkeypatch.setenv(MNIST_ENV, str(small))
    assert binarized_mnist().path == small  # without a path, the variable is where it looks


def test_no_path_and_no_variable_says_so(monkeypatch):
    monkeypatch.delenv(MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"nowhere \(no path given and \$PYRO_NF_MNIST"):
        binarized_mnist()


def test_missing_file_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv(MNIST_ENV, str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match="absent.npz") as err:
        binarized_mnist(tmp_path / "absent.npz")  # an explicit path is the only place looked
    assert "nope.npz" not in str(err.value) and "downloaded" in str(err.value)
    # a folder without the file: the resolved file name is reported
    with pytest.raises(FileNotFoundError, match="binarized_mnist.npz"):
        binarized_mnist(tmp_path)


def test_bad_contents_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train=np.zeros((2, 98), np.uint8))
    with pytest.raises(ValueError, match=r"bad.npz.*missing \['valid', 'test'\]"):
        binarized_mnist(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, train=np.zeros((2, 10)), valid=np.zeros((2, 10)), test=np.zeros((2, 10)))
    with pytest.raises(ValueError, match="wrong.npz.*uint8"):
        binarized_mnist(wrong)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz"):
        binarized_mnist(text)
