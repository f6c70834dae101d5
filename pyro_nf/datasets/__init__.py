"""Data sets used by the examples and benchmarks. Nothing is ever downloaded: every loader
reads a local file and says where it looked when the file is missing."""

from pyro_nf.datasets.mnist import MNIST_ENV, BinarizedMNIST, binarized_mnist

__all__ = ["binarized_mnist", "BinarizedMNIST", "MNIST_ENV"]
