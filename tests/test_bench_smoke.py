"""Smoke tests of the speed and scaling benchmarks: their ``--tiny`` code paths run end to end
and produce tables with the expected rows and finite positive numbers (about 20 s)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import autoflow_accuracy as aa
from benchmarks import overhead, scaling, speed


def _rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _positive(cell: str) -> float:
    value = float(cell.split()[0].rstrip("x").replace(",", ""))
    assert math.isfinite(value) and value > 0, cell
    return value


def _speed_tables(text: str) -> dict[str, list[list[str]]]:
    tables = {}
    for flow in speed.FLOWS:
        section = text.split(f"## {flow}:", 1)[1]
        tables[flow] = _rows(section, "D")
    return tables


def test_speed_tiny(tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    assert speed.main(["--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    payload = json.loads(out.with_suffix(".json").read_text())
    tables = _speed_tables(text)
    zuko_ok = speed.zuko is not None
    assert payload["zuko_available"] is zuko_ok
    for flow, rows in tables.items():
        assert [r[0] for r in rows] == ["6"], (flow, rows)
        ((_d, hidden, ours, pyro_ms, zuko_ms, r_pyro, r_zuko),) = rows
        assert hidden == ("-" if flow == "planar" else "64")
        _positive(ours), _positive(pyro_ms), _positive(r_pyro)
        if flow == "planar":
            assert zuko_ms == r_zuko == "n/a"
        elif zuko_ok:
            _positive(zuko_ms), _positive(r_zuko)
        else:
            assert zuko_ms == r_zuko == "skipped"
    assert ("zuko is not importable" in text) is (not zuko_ok)
    for rec in payload["records"]:
        for lib in ("pyro-nf", "Pyro"):
            assert math.isfinite(rec["ms_per_step"][lib]) and rec["ms_per_step"][lib] > 0


def test_speed_without_zuko_notes_the_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "zuko", None)
    settings = speed.Settings(**{**speed.TINY, "flows": ("iaf",)})
    text, payload = speed.run(settings, verbose=False)
    assert payload["zuko_available"] is False
    assert speed.ZUKO_SKIPPED in text
    (row,) = _rows(text.split("## iaf:", 1)[1], "D")
    assert row[4] == row[6] == "skipped"
    _positive(row[2]), _positive(row[3]), _positive(row[5])


@pytest.mark.slow
def test_scaling_tiny(tmp_path: Path) -> None:
    out = tmp_path / "scaling.md"
    assert scaling.main(["--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = _rows(text, "D")
    labels = [label for label, _ in scaling.GUIDES.values()]
    assert [(r[0], r[1]) for r in rows] == [("8", label) for label in labels]
    for _d, _label, ms, steps, mem, params in rows:
        _positive(ms), _positive(steps), _positive(params)
        assert math.isfinite(float(mem))  # a tiny guide's increase can be within the noise
    growth = _rows(text, "guide")
    assert [r[0] for r in growth] == labels
    assert len(payload["records"]) == 3
    for rec in payload["records"]:
        assert rec["mem_method"]
        assert rec["ms_per_step"] > 0 and math.isfinite(rec["ms_per_step"])


def test_autoflow_accuracy_rows_merge_over_seeds(tmp_path):
    refs = aa.reference_moments()
    rows = [aa.run_one("funnel", "AutoNormal", 3, seed, refs) for seed in (0, 1)]
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["khat"] != rows[1]["khat"]
    parts = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for row, part in zip(rows, parts):
        part.write_text(json.dumps(row) + "\n")
    out = tmp_path / "table.md"
    assert aa.main(["--from-jsonl", *map(str, parts), "--out", str(out)]) == 0
    (row,) = _rows(out.read_text(), "posterior")
    assert row[:2] == ["funnel", "AutoNormal"]
    assert row[2] == ", ".join(f"{r['khat']:.2f}" for r in rows)
    assert row[3] == f"{sum(r['khat'] < 0.5 for r in rows)} of 2"
    mean_err = max(abs(r["moments"]["v"][0]) / 3.0 for r in rows)
    assert row[4].startswith(f"v: {mean_err:.2f} / ")
    # rows merged from several runs come out in the benchmark's guide order, not file order
    other = tmp_path / "c.jsonl"
    other.write_text(json.dumps({**rows[0], "guide": "AutoMultivariateNormal"}) + "\n")
    assert aa.main(["--from-jsonl", str(other), *map(str, parts), "--out", str(out)]) == 0
    assert [r[1] for r in _rows(out.read_text(), "posterior")] == [
        "AutoNormal", "AutoMultivariateNormal"]


def test_autoflow_accuracy_runs_only_the_guides_asked_for(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert aa.main(["--quick", "--posteriors", "funnel", "--guides", "AutoNormal",
                    "--out", str(out)]) == 0
    rows = _rows(out.read_text(), "posterior")
    assert [row[:2] for row in rows] == [["funnel", "AutoNormal"]]
    with pytest.raises(SystemExit):
        aa.main(["--quick", "--guides", "NoSuchGuide"])
    assert "matches none of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # merging tabulates every row it is given
        aa.main(["--from-jsonl", str(out), "--guides", "AutoNormal"])
    assert "--guides" in capsys.readouterr().err


def test_overhead_quick_tables_every_row(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    assert overhead.main(["--quick", "--dims", "4", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    ms = payload["records"][0]["ms"]
    expected = {"model gradient (eager)", "AutoFlow fast", "AutoFlow eager",
                "AutoFlow fast, 16 particles", "pyro-nf iaf*4 fast"}
    assert expected <= set(ms) and all(math.isfinite(v) and v > 0 for v in ms.values())
    assert ("zuko iaf*4 fast" in ms) is (overhead.zuko is not None)
    assert "| 4 |" in out.read_text()


def test_benchmark_headlines_are_in_sync_with_the_results():
    """benchmarks/README.md is what python -m benchmarks.headlines writes from results/."""
    from benchmarks import headlines

    assert headlines.main(["--check"]) == 0, "run python -m benchmarks.headlines"


def test_benchmark_headlines_say_which_results_are_missing(tmp_path, monkeypatch):
    from benchmarks import headlines

    monkeypatch.setattr(headlines, "RESULTS", tmp_path)
    text = headlines.render()
    for name in headlines.SECTIONS:
        assert f"`{name}`: not run yet" in text


def test_calibration_counts_certified_failures_and_false_alarms(tmp_path):
    """The confusion table and headlines of benchmarks.calibration from rows of known
    verdicts, merged with a benchmarks.accuracy JSON's rows."""
    from benchmarks import calibration

    def row(case, verdict, passes):
        return {"family": "f", "case": case, "guide": "g", "seed": 0, "verdict": verdict,
                "passes": passes}

    rows = [row("a", "reliable: passed importance", True),
            row("b", "reliable: passed importance", False),
            row("c", "usable with care: moments", False),
            row("d", "unreliable: missed mode(s)", True),
            row("e", "unreliable: importance", False)]
    accuracy = tmp_path / "acc.json"
    accuracy.write_text(json.dumps({"results": [
        {"posterior": "p", "guide": "AutoFlow (default)", "verdict": "reliable: ...",
         "passes": True}, {"posterior": "q", "guide": "AutoNormal", "passes": False}]}))
    rows += calibration.accuracy_rows(accuracy)  # the row without a verdict is left out
    head = calibration.headline(rows)
    assert (head["trusted"], head["trusted_failing"], head["care"]) == (3, 1, 1)
    assert (head["passing"], head["false_alarms"]) == (3, 1)
    assert head["trusted_failing_rows"] == ["f b g seed 0"]
    table = calibration.confusion(rows)
    assert table["pass"]["reliable"] == 2 and table["fail"]["unreliable"] == 1
