"""Kill rates per module from a ``mutmut run`` (``make mutate`` runs both).

Reads mutmut's result files (``mutants/<module path>.meta``: each mutant's test exit code)
and prints one JSON object: per module the number of mutants killed, survived, timed out
and not checked, and the kill rate; ``--survivors`` lists the surviving mutants' names
(``mutmut show <name>`` prints the change). Focus groups name the functions of a module
where a silent bug costs most (the tenancy and auth part of ``api/core.py``).

    .venv/bin/python tools/mutation_report.py [--survivors] [--table]

The exit codes are mutmut's (its ``stats.status_by_exit_code``): 1 and 3 killed, 0
survived, 36/24/-24/152/255 timeout, 33/5 no tests, ``None`` not checked.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MUTANTS = Path("mutants")
KILLED = {1, 3, 37}
SURVIVED = {0}
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {33, 5}

#: Subsets reported beside their module: (module file, label) -> function names.
FOCUS = {
    ("crm_mailtrack/api/core.py", "tenancy and auth"): {
        "_guard", "_bearer_token", "_bearer_matches", "_check_csrf", "current_tenant",
    },
}


def function_of(mutant: str) -> str:
    """``crm_mailtrack.journal.x_claim__mutmut_3`` -> ``claim``; methods keep their name."""
    name = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in name:  # mutmut's class separator: xǁClassǁmethod
        return name.rsplit("ǁ", 1)[1]
    return name[2:] if name.startswith("x_") else name


def tally(codes: dict[str, Any]) -> dict[str, Any]:
    counts = {"killed": 0, "survived": 0, "timeout": 0, "no_tests": 0, "not_checked": 0, "other": 0}
    for code in codes.values():
        if code in KILLED:
            counts["killed"] += 1
        elif code in SURVIVED:
            counts["survived"] += 1
        elif code in TIMEOUT:
            counts["timeout"] += 1
        elif code in NO_TESTS:
            counts["no_tests"] += 1
        elif code is None:
            counts["not_checked"] += 1
        else:
            counts["other"] += 1
    checked = counts["killed"] + counts["survived"] + counts["timeout"] + counts["no_tests"]
    # a timeout is a detected change (the tests did not pass); "no tests" is a survivor
    counts["total"] = len(codes)
    counts["kill_rate"] = round((counts["killed"] + counts["timeout"]) / checked, 3) if checked else None
    return counts


def report(show_survivors: bool) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = str(meta.relative_to(MUTANTS))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        entry = tally(codes)
        if show_survivors:
            entry["survivors"] = sorted(k for k, c in codes.items() if c in SURVIVED or c in NO_TESTS)
        for (path, label), functions in FOCUS.items():
            if path == module:
                part = {k: c for k, c in codes.items() if function_of(k) in functions}
                entry[label] = tally(part)
                if show_survivors:
                    entry[label]["survivors"] = sorted(k for k, c in part.items() if c in SURVIVED or c in NO_TESTS)
        modules[module] = entry
    return modules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--table", action="store_true", help="a plain table instead of JSON")
    args = parser.parse_args()
    if not MUTANTS.is_dir():
        print("no mutants/ directory: run `make mutate` (or `mutmut run`) first", file=sys.stderr)
        return 1
    modules = report(args.survivors)
    if args.table:
        print(f"{'module':48} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'rate':>6}")
        for module, e in modules.items():
            rows = [(module, e)] + [(f"  {k}", v) for k, v in e.items() if isinstance(v, dict)]
            for name, r in rows:
                rate = "-" if r["kill_rate"] is None else f"{r['kill_rate']:.1%}"
                print(f"{name:48} {r['total']:>7} {r['killed']:>6} {r['survived'] + r['no_tests']:>8} "
                      f"{r['timeout']:>7} {rate:>6}")
    else:
        print(json.dumps(modules, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
