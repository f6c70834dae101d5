"""Every example runs in its --quick mode, so none can rot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.common import load_example as _load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_example_quick_mode_runs(name, tmp_path):
    result = _load(name).main(["--quick", "--out", str(tmp_path)])
    assert result, f"{name}.main returned nothing to check"
    for value in result.values():
        assert math.isfinite(value)


def test_eight_schools_example_fits_eight_schools(tmp_path):
    """The example runs the demo's workflow on eight schools, not on the demo's funnel."""
    from pyro_nf.utils import arviz_compat

    _load("eight_schools").main(["--quick", "--out", str(tmp_path)])
    posterior = arviz_compat.from_netcdf(tmp_path / "AutoFlow.nc").posterior
    assert {"mu", "tau", "theta"} <= set(posterior.data_vars)


@pytest.mark.slow
def test_vae_conv_architecture_and_frozen_decoder(tmp_path):
    """--arch conv builds van den Berg et al.'s gated convolutional encoder and decoder (28 x 28
    in, 784 logits out, latent 64); --freeze-decoder then trains only a guide on that decoder,
    which stays exactly as saved."""
    import json

    import torch

    vae = _load("vae_mnist")
    encoder, decoder, features = vae.networks("conv", 300, 64)
    x = torch.rand(3, 784)
    assert encoder(x).shape == (3, features) and decoder(torch.randn(2, 3, 64)).shape == (2, 3, 784)
    first = tmp_path / "conv"
    vae.main(["--quick", "--arch", "conv", "--latent", "64", "--flow", "planar",
              "--out", str(first)])
    saved = torch.load(first / "checkpoint.pt", weights_only=False)["decoder"]
    summary = json.loads((first / "summary.json").read_text())
    assert (summary["arch"], summary["latent"], summary["layers"]) == ("conv", 64, 2)
    second = tmp_path / "frozen"
    result = vae.main(["--quick", "--arch", "conv", "--latent", "64", "--flow", "none",
                       "--freeze-decoder", str(first / "checkpoint.pt"), "--out", str(second)])
    kept = torch.load(second / "checkpoint.pt", weights_only=False)["decoder"]
    assert all(torch.equal(saved[k], kept[k]) for k in saved)
    assert math.isfinite(result["test_neg_log_px"])
