"""Test configuration.

``PYRO_NF_TEST_DEVICE=cuda pytest tests/test_battery.py`` runs the battery with every tensor and
layer on that device (through torch's default device), to check that layers create their tensors
on the input's device. CI has no GPU and runs on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

# The library finds data only through explicit paths or these variables; the tests use the
# project's copies in ../shared beside the repository unless the caller has set them.
_SHARED = Path(__file__).resolve().parents[2] / "shared"
os.environ.setdefault("PYRO_NF_MNIST", str(_SHARED / "data"))
os.environ.setdefault("PYRO_NF_POSTERIORDB", str(_SHARED / "posteriordb"))

# one torch thread per process when pytest-xdist runs one process per core (make test)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

_DEVICE = os.environ.get("PYRO_NF_TEST_DEVICE")
if _DEVICE:
    torch.set_default_device(_DEVICE)


@pytest.fixture(autouse=True)
def _empty_param_store():
    """Every test starts with an empty Pyro param store, whatever ran before it (a guide's
    parameters left by another test would be taken up by a new guide of the same name)."""
    pyro.clear_param_store()
    yield


@pytest.fixture
def fresh_store():
    """An empty Pyro param store and a fixed seed (0) for the test, the store emptied after."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()




def _ids(name: str) -> set[str]:
    return {line.strip() for line in (Path(__file__).with_name(name)).read_text().splitlines()
            if line.strip() and not line.startswith("#")}


#: The fit-accuracy tests (tests/fit_accuracy_tests.txt): CI's second lane (ArviZ 1.x, other
#: CPU kernels) runs these and the fast tier.
_FIT_ACCURACY_IDS = _ids("fit_accuracy_tests.txt")
#: The measured slow tier (see the file's header): these ids get the ``slow`` marker.
_SLOW_IDS = _ids("slow_tests.txt")


def pytest_collection_modifyitems(config, items):
    """Mark the tests of tests/slow_tests.txt slow (``-m "not slow"`` is the fast tier) and
    those of tests/fit_accuracy_tests.txt fit_accuracy."""
    for item in items:
        if item.nodeid in _SLOW_IDS:
            item.add_marker(pytest.mark.slow)
        if item.nodeid.split("[")[0] in _FIT_ACCURACY_IDS:
            item.add_marker(pytest.mark.fit_accuracy)


def pytest_report_header(config):
    """Which CPU kernels torch runs (ATEN_CPU_CAPABILITY picks others): a fit's rounding,
    and so a result that hinges on it, depends on them."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
            + (f" (ATEN_CPU_CAPABILITY={forced})" if forced else ""))
