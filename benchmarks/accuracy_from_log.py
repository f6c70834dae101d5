"""Rebuild ``benchmarks.accuracy`` rows from its printed progress lines, for a run that was
killed (or crashed) before it wrote its JSON. Fields the progress line does not print are NaN.

    python -m benchmarks.accuracy_from_log OUT.json RUN1.log [RUN2.log ...]
"""

from __future__ import annotations

import json
import re
import sys

HEAD = re.compile(r"^\[\d\d:\d\d:\d\d\] (\S+) / (.+) \.\.\.$")
LINE = re.compile(r"^    (FAIL|pass) k-hat (\S+), mean err (\S+), sd ratio (\S+), (\d+) s ?(.*)$")
#: the posteriors' dimensions (the progress lines do not print them)
DIMS = {"eight_schools-eight_schools_noncentered": 10, "eight_schools-eight_schools_centered": 10,
        "arK-arK": 7, "arma-arma11": 4, "garch-garch11": 4, "gp_pois_regr-gp_pois_regr": 13,
        "kidiq-kidscore_momiq": 3, "mesquite-logmesquite_logvolume": 3, "nes2000-nes": 10,
        "low_dim_gauss_mix-low_dim_gauss_mix": 5, "sblrc-blr": 6, "diamonds-diamonds": 26,
        "earnings-logearn_interaction_z": 5, "kilpisjarvi_mod-kilpisjarvi": 3,
        "hmm_example-hmm_example": 4}


def rows_from_log(path: str) -> list[dict]:
    """The rows of one progress log: a result line after its header, or an error."""
    nan = float("nan")
    rows = []
    cur = None
    for text in open(path):
        text = text.rstrip("\n")
        m = HEAD.match(text)
        if m:
            cur = m.groups()
            continue
        m = LINE.match(text)
        if m and cur:
            status, k, me, sr, secs, why = m.groups()
            wm = re.search(r"mean off by [\d.]+ sd \(([^)]+)\)", why)
            ws = re.search(r"sd ratio [\d.]+ \(([^)]+)\)", why)
            rows.append({"posterior": cur[0], "guide": cur[1], "khat": float(k),
                         "worst_std_mean_error": float(me), "worst_sd_ratio": float(sr),
                         "seconds": float(secs), "passes": status == "pass", "why": why,
                         "worst_mean_param": wm.group(1) if wm else "?",
                         "worst_sd_param": ws.group(1) if ws else "?",
                         "min_coverage90": nan, "energy_distance": nan, "final_elbo": nan,
                         "vectorised_particles": True, "dim": None, "from_log": True})
            cur = None
        elif cur and re.match(r"^[\w.]*(Error|Exception)\b.*: ", text) and not text.startswith(" "):
            rows.append({"posterior": cur[0], "guide": cur[1], "passes": False, "dim": None,
                         "error": text[:140], "from_log": True})
            cur = None
    for r in rows:
        r["dim"] = DIMS[r["posterior"]]
    return rows


def main(argv: list[str] | None = None) -> int:
    out, *logs = sys.argv[1:] if argv is None else argv
    rows = [row for path in logs for row in rows_from_log(path)]
    with open(out, "w") as fh:
        json.dump({"machine": "see accuracy.md", "steps": 2000, "lr": 0.005, "lr_decay": 0.1,
                   "results": rows}, fh, indent=1)
    print(len(rows), "rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
