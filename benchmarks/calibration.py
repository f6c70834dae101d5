"""Calibration of the fit's verdict: when pyro-nf says a posterior is reliable, is it right?

    python -m benchmarks.calibration --out benchmarks/results/calibration.md   # 32 fits
    python -m benchmarks.calibration --quick                 # 3 cases, tiny settings (smoke)
    python -m benchmarks.calibration --only funnel --seeds 0 1 --jsonl part.jsonl
    python -m benchmarks.calibration --from-jsonl a.jsonl b.jsonl --out ...   # merge, no fits
    python -m benchmarks.calibration --from-accuracy benchmarks/results/accuracy.json
    python -m benchmarks.calibration --posteriordb           # also the 15 posteriordb fits

Every row is one fit of a posterior whose truth is known, its *verdict* put beside a *pass
criterion*. Fits: ``pyro_nf.fit(model, guide, seed=seed)`` with fit's defaults (the self-tuning
schedule), except the undertrained rows (``num_steps=200``, the fixed schedule). The verdict is
``result.verdict`` ("reliable", "usable with care", "unreliable...", or "not checked ..."); where
the fit did not check itself (fixed steps, guides not over the packed latent), the verdict of
``pyro_nf.diagnose(model, guide, num_samples=4000)`` is used instead (both are recorded).

Cases (exact draws by ancestral sampling or the target's own transform):

* Neal's funnel, D = 2, 5, 10, 20, 50: v ~ N(0, 3), x ~ N(0, exp(v/2)) (D - 1 of them);
* bananas, b = 0.03, 0.1, 0.3: y1 = x1, y2 = x2 + b (x1^2 - 100), x ~ N(0, diag(100, 1));
* 2-D two-Gaussian mixtures (unit covariance), separations 3, 6, 10 sds, weights 0.5 and 0.8;
* Student-t, nu = 1..5, 4-D iid (moments exact);
* 5-D Gaussians, correlation 0.9, scales 1e-3, 1e-1, 1, 1e2, 1e4, and mixed scales (1e-3 ..
  1e4 across the coordinates) with means 3 x scale;
* undertrained AutoFlow (200 steps): funnel D = 10, banana b = 0.1, the mixed-scale Gaussian,
  the mixture at separation 6, weight 0.8;
* wrong family: AutoNormal and AutoDiagonalNormal on the scale-1 Gaussian, AutoNormal on the
  banana b = 0.1.

The banana and the mixtures are a wide N(0, 100^2) prior on the latent plus a ``pyro.factor``
of the target's log density minus that prior's: the posterior is the target exactly.

Criterion (``benchmarks.common.passes``, the one of ``benchmarks.accuracy``): PSIS k-hat of 4000
guide draws < 0.7, every standardized mean error |mean - mean_true| / sd_true < 0.1 and every
sd ratio sd / sd_true in [0.9, 1.1], on every scalar coordinate of the constrained site values,
against 20000 exact draws (``benchmarks.common.accuracy_row``). Where the sd is infinite or its
estimate meaningless, median and IQR / 1.349 stand for mean and sd: Student-t with nu <= 2 and
the funnel's x (its kurtosis is about 3 e^9: the sd of 4000 draws is off by ~250%). The Student-t
rows compare against exact moments (0 and sqrt(nu / (nu - 2)), or 0 and the exact IQR / 1.349).
For nu = 3 and 4 the fourth moment is infinite, so even an exact guide's sample sd is noisy.
k-hat is part of both the criterion and diagnose's verdict; they come from separate draws.

The confusion table crosses pass / fail with the verdict. Headlines: fits called reliable
that fail (target 0; "usable with care" is counted apart, neither certified nor flagged),
and false alarms: fits called unreliable that pass (target at most 10% of the passing fits).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from scipy import stats

import pyro_nf
from benchmarks.common import (
    CRITERION,
    accuracy_row,
    command_line,
    machine_info,
    machine_line,
    passes,
    reference_draws,
    script_parser,
    why,
    write_report,
)
from pyro_nf.diagnostics.compare import flat_draws

Draws = dict[str, np.ndarray]
GUIDES: dict[str, Callable[[Callable], Callable]] = {
    "AutoFlow": pyro_nf.AutoFlow, "AutoNormal": AutoNormal,
    "AutoDiagonalNormal": AutoDiagonalNormal}
VERDICTS = ("reliable", "usable with care", "unreliable", "not checked")
BASE_SCALE = 100.0  # the wide prior under the factor-defined targets
UNDERTRAINED_STEPS = 200
GAUSS_CORR = 0.9
FULL = {"draws": 4000, "criterion_draws": 10000, "exact_draws": 20000, "max_steps": None,
        "steps": UNDERTRAINED_STEPS}
QUICK = {"draws": 1000, "criterion_draws": 1000, "exact_draws": 4000, "max_steps": 300,
         "steps": 50}
QUICK_CASES = ("gaussian scale=1 AutoFlow", "undertrained banana",
               "wrong family gaussian scale=1 AutoNormal")


@dataclass
class Case:
    """A posterior with known truth and the guide to fit it. ``exact(n, rng)``: n exact draws,
    site -> (n, *shape); ``robust``: sites judged by median and IQR / 1.349; ``moments``: exact
    (location, scale) per site (every coordinate), overriding the draws' figures."""

    family: str
    name: str
    dim: int
    model: Callable[[], None] | None
    exact: Callable[[int, np.random.Generator], Draws] | None
    guide: str = "AutoFlow"
    steps: int | None = None  # a fixed-step fit (the undertrained rows)
    robust: tuple[str, ...] = ()
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family} {self.name} {self.guide}"


# ---------------------------------------------------------------------------- targets
def factor_model(site: str, dim: int, log_density: Callable[[torch.Tensor], torch.Tensor]
                 ) -> Callable[[], None]:
    """A wide N(0, BASE_SCALE^2) prior on ``site`` and a factor that turns it into
    ``log_density`` exactly."""
    base = dist.Normal(0.0, BASE_SCALE).expand([dim]).to_event(1)

    def model() -> None:
        z = pyro.sample(site, base)
        pyro.factor(f"{site}_target", log_density(z) - base.log_prob(z))
    return model


def funnel(dim: int) -> Case:
    def model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (dim - 1,))
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1))

    def exact(n: int, rng: np.random.Generator) -> Draws:
        v = 3.0 * rng.standard_normal(n)
        return {"v": v, "x": np.exp(v / 2)[:, None] * rng.standard_normal((n, dim - 1))}
    return Case("funnel", f"D={dim}", dim, model, exact, robust=("x",), moments={"v": (0, 3)})


def banana(b: float) -> Case:
    def log_density(y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., 0], y[..., 1]
        return (dist.Normal(0.0, 10.0).log_prob(y1)
                + dist.Normal(0.0, 1.0).log_prob(y2 - b * (y1 ** 2 - 100)))

    def exact(n: int, rng: np.random.Generator) -> Draws:
        x1, x2 = 10.0 * rng.standard_normal(n), rng.standard_normal(n)
        return {"y": np.stack([x1, x2 + b * (x1 ** 2 - 100)], 1)}
    return Case("banana", f"b={b:g}", 2, factor_model("y", 2, log_density), exact)


def mixture(separation: float, weight: float) -> Case:
    locs = torch.tensor([[-separation / 2, 0.0], [separation / 2, 0.0]])
    weights = torch.tensor([weight, 1 - weight])
    target = dist.MixtureSameFamily(dist.Categorical(weights),
                                    dist.Normal(locs, 1.0).to_event(1))

    def exact(n: int, rng: np.random.Generator) -> Draws:
        k = (rng.random(n) >= weight).astype(int)
        return {"z": locs.double().numpy()[k] + rng.standard_normal((n, 2))}
    return Case("mixture", f"sep={separation:g}, w={weight:g}", 2,
                factor_model("z", 2, target.log_prob), exact)


def student_t(nu: float, dim: int = 4) -> Case:
    def model() -> None:
        pyro.sample("z", dist.StudentT(nu, 0.0, 1.0).expand([dim]).to_event(1))

    def exact(n: int, rng: np.random.Generator) -> Draws:
        return {"z": rng.standard_t(nu, size=(n, dim))}
    robust = nu <= 2
    scale = (2 * stats.t.ppf(0.75, nu) / 1.349 if robust else math.sqrt(nu / (nu - 2)))
    return Case("student-t", f"nu={nu:g}", dim, model, exact, robust=("z",) if robust else (),
                moments={"z": (0.0, float(scale))})


def gaussian(scales: np.ndarray, loc: np.ndarray, name: str) -> Case:
    """``z ~ MultivariateNormal(loc, diag(scales) R diag(scales))``, R equicorrelated at
    GAUSS_CORR; the scale factor, not the covariance, is given (condition numbers of 1e14)."""
    dim = len(scales)
    corr = (1 - GAUSS_CORR) * np.eye(dim) + GAUSS_CORR
    tril = np.diag(scales) @ np.linalg.cholesky(corr)
    target = dist.MultivariateNormal(torch.tensor(loc, dtype=torch.float32),
                                     scale_tril=torch.tensor(tril, dtype=torch.float32))

    def model() -> None:
        pyro.sample("z", target)

    def exact(n: int, rng: np.random.Generator) -> Draws:
        return {"z": loc + rng.standard_normal((n, dim)) @ tril.T}
    return Case("gaussian", name, dim, model, exact)


def gaussian_scaled(scale: float, dim: int = 5) -> Case:
    return gaussian(np.full(dim, scale), np.zeros(dim), f"scale={scale:g}")


def gaussian_mixed(dim: int = 5) -> Case:
    scales = np.logspace(-3, 4, dim)
    return gaussian(scales, 3 * scales, "mixed scales 1e-3..1e4, mean 3 x scale")


def variant(case: Case, family: str, name: str, **changes: Any) -> Case:
    out = Case(**{**case.__dict__, **changes})
    out.family, out.name = family, name
    return out


def cases(steps: int = UNDERTRAINED_STEPS) -> list[Case]:
    """The 32 synthetic rows of one seed."""
    out = [funnel(d) for d in (2, 5, 10, 20, 50)]
    out += [banana(b) for b in (0.03, 0.1, 0.3)]
    out += [mixture(s, w) for s in (3, 6, 10) for w in (0.5, 0.8)]
    out += [student_t(nu) for nu in (1, 2, 3, 4, 5)]
    out += [gaussian_scaled(s) for s in (1e-3, 1e-1, 1.0, 1e2, 1e4)] + [gaussian_mixed()]
    for case in (funnel(10), banana(0.1), gaussian_mixed(), mixture(6, 0.8)):
        out.append(variant(case, "undertrained", f"{case.family} {case.name}, {steps} steps",
                           steps=steps))
    for guide, case in (("AutoNormal", gaussian_scaled(1.0)),
                        ("AutoDiagonalNormal", gaussian_scaled(1.0)),
                        ("AutoNormal", banana(0.1))):
        out.append(variant(case, "wrong family", f"{case.family} {case.name}", guide=guide))
    return out


def posteriordb_cases() -> list[Case]:
    from benchmarks import posteriordb

    return [Case("posteriordb", name, 0, None, None) for name in posteriordb.NAMES]


# ---------------------------------------------------------------------------- criterion
def loc_scale(x: np.ndarray, robust: bool) -> tuple[float, float]:
    """(mean, sd), or with ``robust`` (median, IQR / 1.349): the sd of a normal either way."""
    if robust:
        q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
        return float(q50), float((q75 - q25) / 1.349)
    return float(np.mean(x)), float(np.std(x, ddof=1))


def criterion_row(idata: Any, reference: Draws, case: Case) -> dict[str, Any]:
    """``accuracy_row``'s figures (k-hat, worst standardized mean error, worst sd ratio), and
    ``passes``; with robust sites or exact moments, those stand in for the reference draws'."""
    if not case.robust and not case.moments:
        return accuracy_row(idata, reference)
    guide_flat, ref_flat = flat_draws(idata), flat_draws(reference)
    errors, ratios = {}, {}
    for param, ref in ref_flat.items():
        site = param.split("[")[0]
        robust = site in case.robust
        loc, scale = loc_scale(guide_flat[param], robust)
        ref_loc, ref_scale = case.moments.get(site) or loc_scale(ref, robust)
        errors[param] = abs(loc - ref_loc) / ref_scale
        ratios[param] = scale / ref_scale
    worst_mean = max(errors, key=errors.__getitem__)
    worst_sd = max(ratios, key=lambda p: abs(math.log(ratios[p])))
    out: dict[str, Any] = {
        "khat": float(pyro_nf.diagnose(idata).khat),
        "worst_std_mean_error": errors[worst_mean], "worst_mean_param": worst_mean,
        "worst_sd_ratio": ratios[worst_sd], "worst_sd_param": worst_sd,
        "min_coverage90": float("nan"), "energy_distance": float("nan")}
    out["passes"] = passes(out)
    out["why"] = "" if out["passes"] else why(out)
    return out


# ---------------------------------------------------------------------------- one row
def target(case: Case) -> tuple[Callable, Callable[[int, np.random.Generator], Draws], int]:
    """(model, exact draws, dim); a posteriordb case is loaded here (float64 where float32
    cannot trace it), its reference the long NUTS draws whatever n."""
    if case.model is not None:
        return case.model, case.exact, case.dim
    from benchmarks import accuracy

    post, _, problem = accuracy.load_in_float32_or_64(case.name)
    if post is None:
        raise RuntimeError(problem)
    return post.model, lambda n, rng: reference_draws(post), post.dim


def run_case(case: Case, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Fit, diagnose and judge one case: the row."""
    pyro.clear_param_store()
    model, exact, dim = target(case)
    guide = GUIDES[case.guide](model)
    steps = settings["steps"] if case.steps else None
    options = ({"num_steps": steps} if steps else
               {"max_steps": settings["max_steps"]} if settings["max_steps"] else {})
    t0 = time.perf_counter()
    result = pyro_nf.fit(model, guide, seed=seed, progress=False, **options)
    fit_seconds = time.perf_counter() - t0
    fit_verdict = str(getattr(result, "verdict", "not checked (old)"))
    t0 = time.perf_counter()
    report = pyro_nf.diagnose(model, guide, num_samples=settings["draws"])
    diagnose_seconds = time.perf_counter() - t0
    idata = pyro_nf.to_inference_data(model, guide, num_samples=settings["criterion_draws"])
    reference = exact(settings["exact_draws"], np.random.default_rng(10_000 + seed))
    row = {"family": case.family, "case": case.name, "dim": dim, "seed": seed,
           "guide": case.guide, "steps": result.steps,
           "verdict": report.verdict if fit_verdict.startswith("not checked") else fit_verdict,
           "fit_verdict": fit_verdict, "diagnose_verdict": report.verdict,
           "diagnose_khat": float(report.khat), "fit_seconds": fit_seconds,
           "diagnose_seconds": diagnose_seconds,
           "checks": [str(c) for c in getattr(result, "checks", None) or []],
           **criterion_row(idata, reference, case)}
    return row


def error_row(case: Case, seed: int, err: Exception) -> dict[str, Any]:
    return {"family": case.family, "case": case.name, "dim": case.dim, "seed": seed,
            "guide": case.guide, "verdict": "error", "fit_verdict": "error",
            "diagnose_verdict": "error", "passes": False,
            "why": f"{type(err).__name__}: {next(iter(str(err).splitlines()), '')[:120]}"}


# ---------------------------------------------------------------------------- tables
def category(verdict: str) -> str:
    """The confusion table's column of a verdict ("error" for a fit that raised)."""
    for name in VERDICTS:
        if verdict.startswith(name):
            return name
    return "error" if verdict == "error" else "not checked"


def confusion(rows: list[dict]) -> dict[str, dict[str, int]]:
    """criterion ("pass" / "fail") -> verdict category -> count."""
    columns = list(VERDICTS) + (["error"] if any(r["verdict"] == "error" for r in rows) else [])
    table = {k: dict.fromkeys(columns, 0) for k in ("pass", "fail")}
    for r in rows:
        table["pass" if r["passes"] else "fail"][category(r["verdict"])] += 1
    return table


def headline(rows: list[dict]) -> dict[str, Any]:
    """The two numbers the verdict is judged by, with the rows behind them."""
    trusted = [r for r in rows if category(r["verdict"]) == "reliable"]
    missed = [r for r in trusted if not r["passes"]]
    care = [r for r in rows if category(r["verdict"]) == "usable with care"]
    passing = [r for r in rows if r["passes"]]
    alarms = [r for r in passing if category(r["verdict"]) == "unreliable"]
    return {"trusted": len(trusted), "trusted_failing": len(missed),
            "passing": len(passing), "false_alarms": len(alarms),
            "false_alarm_share": len(alarms) / len(passing) if passing else float("nan"),
            "trusted_failing_rows": [label(r) for r in missed],
            "care": len(care), "care_failing_rows": [label(r) for r in care if not r["passes"]],
            "false_alarm_rows": [label(r) for r in alarms]}


def label(row: dict) -> str:
    return f"{row['family']} {row['case']} {row['guide']} seed {row['seed']}"


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def confusion_lines(rows: list[dict]) -> list[str]:
    table = confusion(rows)
    columns = list(table["pass"])
    lines = ["| criterion | " + " | ".join(columns) + " | total |",
             "|---" * (len(columns) + 2) + "|"]
    for key, counts in table.items():
        lines.append(f"| {key} | " + " | ".join(str(counts[c]) for c in columns)
                     + f" | {sum(counts.values())} |")
    head = headline(rows)
    lines += ["", f"**Fits called reliable that fail the criterion: "
              f"{head['trusted_failing']}** of {head['trusted']} (target 0)"
              + (f": {'; '.join(head['trusted_failing_rows'])}." if head["trusted_failing"]
                 else "."),
              "", f"Called usable with care (neither certified nor flagged): {head['care']}, "
              f"of which {len(head['care_failing_rows'])} fail"
              + (f": {'; '.join(head['care_failing_rows'])}." if head["care_failing_rows"]
                 else "."),
              "", f"**False alarms** (called unreliable, pass): {head['false_alarms']}, "
              f"{_num(100 * head['false_alarm_share'], '.0f')}% of the {head['passing']} "
              "passing fits (target at most 10%)"
              + (f": {'; '.join(head['false_alarm_rows'])}." if head["false_alarms"] else ".")]
    return lines


def row_lines(rows: list[dict]) -> list[str]:
    lines = ["| family | case | dim | seed | guide | verdict | fit verdict | diagnose verdict "
             "| pass | worst mean err | worst sd ratio | k-hat | fit s | diagnose s | "
             "criteria missed |", "|---" * 15 + "|"]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['case']} | {r['dim']} | {r['seed']} | {r['guide']} | "
            f"{r['verdict']} | {r['fit_verdict']} | {r.get('diagnose_verdict') or '-'} | "
            f"{'pass' if r['passes'] else 'FAIL'} | "
            f"{_num(r.get('worst_std_mean_error'), '.3f')} | "
            f"{_num(r.get('worst_sd_ratio'), '.2f')} | {_num(r.get('khat'), '.2f')} | "
            f"{_num(r.get('fit_seconds'), '.1f')} | {_num(r.get('diagnose_seconds'), '.2f')} | "
            f"{r.get('why', '')} |")
    return lines


def markdown(rows: list[dict], command: str, info: dict | None = None) -> str:
    lines = ["# Calibration of the fit's verdict", "", f"    {command}", "",
             machine_line(info), "",
             f"Pass: {CRITERION} (medians and IQR / 1.349 for Student-t nu <= 2 and the "
             "funnel's x; module docstring). Verdict: the fit's, or diagnose's where the fit "
             "says \"not checked\".", "", "## Confusion table", "", *confusion_lines(rows),
             "", "## Rows", "", *row_lines(rows)]
    checked = [r for r in rows if r.get("checks") and not r["passes"]
               and category(r["verdict"]) in ("reliable", "usable with care")]
    if checked:
        lines += ["", "## The fit's checks on the fits it trusted that fail", ""]
        for r in checked:
            lines += [f"- {label(r)}: " + "; ".join(r["checks"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- command line
def accuracy_rows(path: Path) -> list[dict]:
    """The rows of a ``benchmarks.accuracy`` JSON that carry a verdict, as calibration rows."""
    data = json.loads(path.read_text())
    out = []
    for r in data.get("results", []) if isinstance(data, dict) else data:
        if "verdict" not in r:
            continue
        out.append({"family": "posteriordb", "case": r["posterior"], "dim": r.get("dim"),
                    "seed": r.get("seed", 0), "guide": r["guide"], "verdict": r["verdict"],
                    "fit_verdict": r.get("fit_verdict", r["verdict"]),
                    "diagnose_verdict": r.get("diagnose_verdict"), "passes": r["passes"],
                    "worst_std_mean_error": r.get("worst_std_mean_error"),
                    "worst_sd_ratio": r.get("worst_sd_ratio"), "khat": r.get("khat"),
                    "fit_seconds": r.get("seconds"),
                    "diagnose_seconds": r.get("diagnose_seconds"),
                    "why": r.get("why") or r.get("error", "")})
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = script_parser(__doc__, "3 cases, 300 steps at most, 1000 draws (smoke)",
                           "markdown report; the JSON goes next to it (.json)")
    parser.add_argument("--only", nargs="+", default=None, metavar="SUBSTRING",
                        help="run the cases whose 'family case guide' contains one of these")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--posteriordb", action="store_true",
                        help="also fit the default AutoFlow to the 15 posteriordb posteriors")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="append every row to this file as it finishes")
    parser.add_argument("--from-jsonl", type=Path, nargs="+", default=None,
                        help="tabulate the rows of earlier runs instead of fitting")
    parser.add_argument("--from-accuracy", type=Path, nargs="+", default=None,
                        help="add the rows of benchmarks.accuracy JSON files that carry a "
                             "verdict")
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[Case]:
    settings = QUICK if args.quick else FULL
    chosen = cases(settings["steps"]) + (posteriordb_cases() if args.posteriordb else [])
    if args.quick and not args.only:
        return [next(c for c in chosen if c.label.startswith(q)) for q in QUICK_CASES]
    return [c for c in chosen if not args.only or any(s in c.label for s in args.only)]


def fit_rows(args: argparse.Namespace) -> list[dict]:
    settings, rows = QUICK if args.quick else FULL, []
    for case in selected(args):
        for seed in args.seeds:
            print(f"[{time.strftime('%H:%M:%S')}] {case.label} seed {seed} ...", flush=True)
            try:
                row = run_case(case, seed, settings)
            except Exception as err:  # noqa: BLE001 - a fit that raises is a row
                traceback.print_exc()
                row = error_row(case, seed, err)
            print(f"    {row['verdict']} / {'pass' if row['passes'] else 'FAIL'} "
                  f"{row.get('why', '')}", flush=True)
            rows.append(row)
            if args.jsonl:
                args.jsonl.parent.mkdir(parents=True, exist_ok=True)
                with args.jsonl.open("a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.from_jsonl:
        rows = [json.loads(line) for p in args.from_jsonl
                for line in p.read_text().splitlines() if line.strip()]
        latest = {(r["family"], r["case"], r["guide"], r["seed"]): r for r in rows}
        rows = list(latest.values())  # a later file's row replaces an earlier one
    else:
        rows = fit_rows(args)
    for path in args.from_accuracy or []:
        rows += accuracy_rows(path)
    info = machine_info()
    command = command_line("benchmarks.calibration", argv)
    payload = {"machine": info, "command": command, "criterion": CRITERION,
               "settings": QUICK if args.quick else FULL, "confusion": confusion(rows),
               "headline": headline(rows), "rows": rows}
    write_report(args.out, markdown(rows, command, info), payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
