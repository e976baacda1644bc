"""Benchmark 4: CSV export of 1,000,000 rows streamed in constant memory.

``/api/communications/csv-export`` exports messages (one row each), so the data is
``--rows`` messages (plus a few events, for the open/click counts), made by
``gen_events.py``. The export runs in a child process that reads the streamed response
through the Flask test client (``buffered=False``) and counts rows and bytes; its peak
resident memory (``VmHWM``, reset just before the export) is compared with the RSS before it.
Target: growth < 50 MB.

    .venv/bin/python bench/bench_csv.py [--db both] [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, database, emit, kinds, make_app, verdict  # noqa: E402
from bench.gen_events import generate  # noqa: E402

TOKEN = "bench-token"
TARGET_MB = 50


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process from /proc, in MB.

    Not ``ru_maxrss``: Linux carries that high-water mark across ``execve`` from the parent
    (which had a 256 MB SQLite page cache while generating the data), hiding the child's own.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measured is the export's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(url: str) -> dict[str, Any]:
    """In a fresh process: export through the API, streaming, and measure peak memory."""
    app = make_app(url, MAILTRACK_API_TOKENS=[TOKEN])
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/csv, application/json"}
    warm = client.get("/mailtrack/api/communications/page?page=0&size=1", headers=headers)
    reset = _reset_peak()
    before = _status_mb("VmHWM")
    t0 = time.perf_counter()
    resp = client.get("/mailtrack/api/communications/csv-export", headers=headers, buffered=False)
    lines = size = 0
    max_rss = _status_mb("VmRSS")
    for chunk in resp.response:
        data = chunk if isinstance(chunk, bytes) else chunk.encode()
        size += len(data)
        lines += data.count(b"\n")
        if lines % 50_000 == 0:
            max_rss = max(max_rss, _status_mb("VmRSS"))
    resp.close()
    seconds = time.perf_counter() - t0
    after = _status_mb("VmHWM")
    return {"status_code": resp.status_code, "warm_status": warm.status_code, "lines": lines, "bytes": size,
            "seconds": round(seconds, 2), "rows_per_second": round((lines - 1) / seconds) if seconds else None,
            "peak_reset": reset, "peak_rss_before_mb": round(before, 1), "peak_rss_after_mb": round(after, 1),
            "max_sampled_rss_mb": round(max_rss, 1), "growth_mb": round(after - before, 1)}


def run_kind(kind: str, rows: int) -> dict[str, Any]:
    with database(kind, "csv") as url:
        make_app(url)
        gen = generate(url, events=max(1, rows // 10), messages=rows)
        out = subprocess.run([PYTHON, __file__, "--child", url], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        if out.returncode != 0:
            return {"generator": gen, "status": "error", "stderr": out.stderr[-2000:]}
        measured = json.loads(out.stdout)
    ok = measured["status_code"] == 200 and measured["lines"] == rows + 1 and measured["growth_mb"] < TARGET_MB
    return {"generator": gen, **measured, "target": f"{rows} rows + header, peak memory growth < {TARGET_MB} MB",
            "status": verdict(ok)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return {}
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="both", choices=["sqlite", "postgresql", "both"])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "csv_export", "inputs": vars(args)}
    for kind in kinds(args.db):
        result[kind] = run_kind(kind, args.rows)
    result["status"] = "pass" if all(result[k]["status"] == "pass" for k in kinds(args.db)) else "miss"
    emit(result)
    return result


if __name__ == "__main__":
    main()
