"""The pyro-nf command line: each subcommand, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyro_nf.cli import main

MODEL = '''
import pyro, pyro.distributions as dist, torch

def model(x=None, scale=1.0):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, scale), obs=x)
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    (tmp_path / "d.json").write_text(json.dumps({"x": [0.1, 0.4, -0.3, 1.2]}))
    (tmp_path / "bad.json").write_text(json.dumps({"y": [1.0]}))
    return tmp_path


BIMODAL = '''
import pyro, pyro.distributions as dist, torch

def model(sign=1.0):
    # y = z^2 + noise observed at 4: z near +2 or -2, equal mass
    z = pyro.sample("z", dist.Normal(0.0, 3.0))
    pyro.sample("y", dist.Normal(z ** 2, 0.5), obs=torch.tensor(4.0 * sign))
'''


def test_fit_with_modes_and_the_mode_check(tmp_path, capsys):
    (tmp_path / "b.py").write_text(BIMODAL)
    common = [f"{tmp_path}/b.py:model", "--steps", "200", "--samples", "500", "--quiet"]
    assert main(["fit", *common, "--check-modes", "--out", str(tmp_path / "one.nc")]) == 0
    out = capsys.readouterr().out
    assert "unreliable: " in out and "missed mode(s)" in out
    assert "holds 50% of the posterior" in out
    assert main(["fit", *common, "--modes", "auto", "--check-modes",
                 "--out", str(tmp_path / "two.nc")]) == 0
    out = capsys.readouterr().out
    assert "the guide holds every mode the search found" in out
    assert main(["fit", *common, "--modes", "two", "--out", str(tmp_path / "x.nc")]) == 1
    assert "--modes must be 'auto' or a positive integer" in capsys.readouterr().err


def test_fit_diagnose_compare(files, capsys):
    a, b = files / "a.nc", files / "b.nc"
    common = ["--data", str(files / "d.json"), "--steps", "30", "--samples", "200", "--quiet"]
    assert main(["fit", f"{files}/m.py:model", *common, "--flow", "iaf*2", "--out", str(a)]) == 0
    assert main(["fit", f"{files}/m.py:model", *common, "--flow", "planar*2",
                 "--out", str(b)]) == 0
    assert a.exists() and b.exists()
    assert main(["diagnose", str(a)]) == 0
    assert "PSIS k-hat" in capsys.readouterr().out
    assert main(["compare", str(a), "--reference", str(b)]) == 0
    assert "ranked" in capsys.readouterr().out


def test_flows_lists_the_registry(capsys):
    assert main(["flows"]) == 0
    out = capsys.readouterr().out
    assert "`planar`" in out and "`bnaf`" in out


@pytest.mark.parametrize("argv, message", [
    (["fit", "missing.py:model"], "no such file"),
    (["fit", "{d}/m.py:nomodel"], "has no model function 'nomodel'"),
    (["fit", "{d}/m.py:model", "--flow", "nosuch*2"], "unknown flow"),
    (["fit", "{d}/m.py:model", "--data", "{d}/bad.json"], "not arguments of model"),
    (["fit", "{d}/m.py"], "FILE.py:MODEL"),
    (["diagnose", "{d}/none.nc"], "no such InferenceData file"),
])
def test_errors_are_one_line_with_nonzero_exit(files, capsys, argv, message):
    argv = [a.format(d=files) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("posterior, reference", [("funnel", "exact"),
                                                   ("schools", "posteriordb")])
def test_demo_quick(tmp_path, capsys, posterior, reference):
    assert main(["demo", "--quick", "--posterior", posterior, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Verdicts:" in out and (tmp_path / "pair.png").exists()
    assert "divergent transitions" in out
    for name in ("AutoNormal", "AutoFlow", "NUTS", reference):
        assert (tmp_path / f"{name}.nc").exists(), name
    assert (tmp_path / "elbo.png").exists()


@pytest.mark.slow
def test_demo_seed_option_reproduces_and_varies_the_fits(tmp_path):
    from pyro_nf.utils import arviz_compat

    def autoflow_draws(seed: int, folder: str):
        out = tmp_path / folder
        assert main(["demo", "--quick", "--seed", str(seed), "--out", str(out)]) == 0
        return arviz_compat.from_netcdf(out / "AutoFlow.nc").posterior["v"].values

    first, again, other = autoflow_draws(1, "a"), autoflow_draws(1, "b"), autoflow_draws(2, "c")
    assert (first == again).all()
    assert not (first == other).all()


def test_funnel_reference_is_exact():
    from pyro_nf.demo import funnel_reference

    post = funnel_reference(200000, seed=1).posterior
    v, x = post["v"].values.ravel(), post["x"].values.reshape(-1, 9)
    assert abs(v.mean()) < 0.03 and abs(v.std() - 3.0) < 0.03
    # x_i / exp(v / 2) is standard normal, independent of v
    u = x / np.exp(v / 2)[:, None]
    assert np.all(np.abs(u.std(0) - 1) < 0.01) and abs(np.corrcoef(u[:, 0], v)[0, 1]) < 0.01


def test_posteriordb_is_found_by_explicit_path_or_variable_only(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from pyro_nf.demo import find_posteriordb

    shared = Path(os.environ["PYRO_NF_POSTERIORDB"])  # conftest: ../shared/posteriordb
    assert find_posteriordb() == shared
    assert find_posteriordb(tmp_path) is None  # not a checkout
    monkeypatch.delenv("PYRO_NF_POSTERIORDB")
    assert find_posteriordb() is None  # no ../shared guess in library code
    assert find_posteriordb(shared) == shared
