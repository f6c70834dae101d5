"""Test configuration.

``PYRO_NF_TEST_DEVICE=cuda pytest tests/test_battery.py`` runs the battery with every tensor and
layer on that device (through torch's default device), to check that layers create their tensors
on the input's device. CI has no GPU and runs on the CPU.
"""

from __future__ import annotations

import os

import torch

_DEVICE = os.environ.get("PYRO_NF_TEST_DEVICE")
if _DEVICE:
    torch.set_default_device(_DEVICE)
