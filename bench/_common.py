"""Shared harness of the benchmark scripts: databases, the gunicorn server, load generation.

Every benchmark compares the product against a baseline measured in the same run (the
machines are shared and noisy), so figures are reported as ratios, with the raw numbers
beside them. Each script prints one JSON object; ``run_all.py`` collects them.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / ".data"
PYTHON = sys.executable
SECRET = "bench-secret-key-0123456789abcdef"
#: Sent with every benchmark request: hits without a user agent count as machine hits.
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- CPU accounting (Linux /proc; the database server must be on this machine) ----------------


def proc_stat(pid: int | str) -> tuple[int, int] | None:
    """(process group, utime + stime in clock ticks) of one process (``None``: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), int(fields[11]) + int(fields[12])


def group_cpu(group: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of one process group
    (a gunicorn master and its workers, a Celery worker and its prefork children)."""
    stats = (proc_stat(pid) for pid in os.listdir("/proc") if pid.isdigit())
    total = sum(ticks for stat in stats if stat is not None for pgrp, ticks in [stat] if pgrp == group)
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal;
    not idle or I/O wait) since boot: the difference over a phase is everything that phase
    cost, database server and broker included, when nothing else runs."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- output ----------------------------------------------------------------------------------


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    print(json.dumps(result, indent=2, default=str))


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def verdict(ok: bool | None) -> str:
    return "not-yet-available" if ok is None else ("pass" if ok else "miss")


def time_calls(fn: Callable[[], Any], repeat: int = 7, number: int = 1) -> dict[str, float]:
    """Median and best seconds per call of ``fn`` over ``repeat`` batches of ``number``."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return {"median_s": statistics.median(samples), "best_s": min(samples)}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 7, number: int = 1) -> dict[str, dict[str, float]]:
    """Time several functions round-robin so that load changes hit all of them alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - t0) / number)
    return {k: {"median_s": statistics.median(v), "best_s": min(v)} for k, v in samples.items()}


# -- databases -------------------------------------------------------------------------------


def postgres_url() -> str | None:
    """The PostgreSQL server to use, or ``None`` when it is not reachable."""
    url = os.environ.get("MAILTRACK_BENCH_POSTGRES_URL") or os.environ.get(
        "MAILTRACK_TEST_POSTGRES_URL", DEFAULT_PG
    )
    if url in ("", "0", "none"):
        return None
    try:
        import psycopg

        with psycopg.connect(libpq_url(url), connect_timeout=3):
            pass
    except Exception:  # noqa: BLE001 - no server: PostgreSQL figures are skipped
        return None
    return url


def libpq_url(url: str) -> str:
    """SQLAlchemy URL -> libpq URI (drop the ``+psycopg`` driver part)."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def sqlite_path(url: str) -> str:
    return url.split("sqlite:///", 1)[1]


def kinds(requested: str) -> list[str]:
    """``sqlite``, ``postgresql`` or ``both`` -> the list to run (PostgreSQL only if up)."""
    out = ["sqlite"] if requested in ("sqlite", "both") else []
    if requested in ("postgresql", "both"):
        if postgres_url():
            out.append("postgresql")
        elif requested == "postgresql":
            raise SystemExit("PostgreSQL is not reachable")
    return out


@contextlib.contextmanager
def database(kind: str, name: str = "bench") -> Iterator[str]:
    """A fresh, empty database for one benchmark; removed afterwards.

    SQLite: a file under ``bench/.data``. PostgreSQL: a private schema in the server's
    database (selected with ``search_path`` in the URL), dropped with CASCADE.
    """
    tag = f"{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    if kind == "sqlite":
        DATA.mkdir(parents=True, exist_ok=True)
        path = DATA / f"{tag}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{path}{suffix}")
        return
    import psycopg

    base = postgres_url()
    if base is None:
        raise RuntimeError("PostgreSQL is not reachable")
    schema = f"bench_{tag}"
    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(libpq_url(base), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def raw_connect(url: str) -> Any:
    """A raw DB-API connection (sqlite3 or psycopg) with the same settings the product uses."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(sqlite_path(url), timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the product's own engine does
        conn.execute("PRAGMA busy_timeout=5000")
        return conn
    import psycopg

    return psycopg.connect(libpq_url(url))


def make_app(url: str, **config: Any) -> Any:
    """A host app with the extension on its own engine at ``url`` (tables created)."""
    from flask import Flask

    from crm_mailtrack import MailTrack

    app = Flask("bench_host", instance_path=str(DATA / "instance"))
    app.config.update(
        SECRET_KEY=SECRET,
        MAILTRACK_DATABASE_URI=url,
        MAILTRACK_BASE_URL="http://127.0.0.1",
        MAILTRACK_URL_PREFIX="/mailtrack",
        MAILTRACK_JOURNAL_PATH=str(DATA / f"journal-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"),
        **config,
    )
    mailtrack = MailTrack(app)
    with app.app_context():
        mailtrack.create_all()
    app.config["BENCH_MAILTRACK"] = mailtrack
    return app


def explain(conn: Any, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[str]:
    """EXPLAIN (PostgreSQL) / EXPLAIN QUERY PLAN (SQLite) of ``sql`` as text lines."""
    if conn.__class__.__module__.startswith("sqlite3"):
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return [f"{r[0]}|{r[1]}| {r[3]}" for r in rows]
    with conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS OFF, COSTS OFF) " + sql, params)
        return [r[0] for r in cur.fetchall()]


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn serving ``bench/server_app.py`` on loopback (2 workers by default)."""

    def __init__(self, url: str, *, workers: int = 2, threads: int = 1, extra_env: dict[str, str] | None = None):
        self.url = url
        self.port = free_port()
        self.workers = workers
        self.threads = threads
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)
        self.journal = str(DATA / f"journal-server-{self.port}.jsonl")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        env = dict(os.environ)
        env.update(
            BENCH_DATABASE_URL=self.url,
            BENCH_JOURNAL_PATH=self.journal,
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            **self.extra_env,
        )
        cmd = [
            PYTHON, "-m", "gunicorn", "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}",
            "--backlog", "2048", "--log-level", "warning", "--timeout", "120",
        ]
        if self.threads > 1:
            cmd += ["--worker-class", "gthread", "--threads", str(self.threads)]
        cmd.append("bench.server_app:create_app()")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + Path(self.log.name).read_text()[-3000:])
            try:
                if http_get(self.base + "/healthz", timeout=2) == 200:
                    break
            except OSError:
                time.sleep(0.2)
        # each worker imports the app on its own: warm both up
        for _ in range(8):
            http_get(self.base + "/healthz")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.log.name)

    def journal_lines(self) -> int:
        total = 0
        for path in DATA.glob(Path(self.journal).name + "*"):
            total += sum(1 for _ in open(path, "rb"))
        return total

    def cleanup_journal(self) -> None:
        for path in DATA.glob(Path(self.journal).name + "*"):
            os.remove(path)


def http_get(url: str, timeout: float = 10) -> int:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- load generation ---------------------------------------------------------------------------

WRK_LUA = BENCH / "wrk_paths.lua"


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def load(base: str, paths: Sequence[str], *, duration: float, connections: int = 4) -> dict[str, Any]:
    """Drive ``GET base+path`` (rotating over ``paths``) for ``duration`` seconds.

    wrk when installed (1 thread: the CPU belongs to the server), else a Python generator.
    Returns requests/s, latency percentiles (ms) and error counts.
    """
    if have_wrk():
        return _wrk(base, paths, duration=duration, connections=connections)
    return _pyload(base, paths, duration=duration, connections=connections)


def _wrk(base: str, paths: Sequence[str], *, duration: float, connections: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", prefix="bench-paths-", suffix=".txt", delete=False) as f:
        f.write("\n".join(paths) + "\n")
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
             "-s", str(WRK_LUA), base, "--", f.name],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.remove(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "tool": "wrk",
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "non_2xx_3xx": raw["errors_status"],
    }


def _pyload(base: str, paths: Sequence[str], *, duration: float, connections: int) -> dict[str, Any]:
    """Fallback load generator: ``connections`` threads, each a fresh HTTP/1.0 request loop."""
    from urllib.parse import urlsplit

    host = urlsplit(base)
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + duration
    lock = threading.Lock()

    def worker(offset: int) -> None:
        i = offset
        local: list[float] = []
        while time.monotonic() < stop:
            path = paths[i % len(paths)]
            i += 1
            t0 = time.perf_counter()
            try:
                with socket.create_connection((host.hostname, host.port), timeout=10) as s:
                    s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\nUser-Agent: {USER_AGENT}\r\n\r\n".encode())
                    head = s.recv(16)
                    while s.recv(65536):
                        pass
                if not head[9:10] in (b"2", b"3"):
                    errors[0] += 1
            except OSError:
                errors[0] += 1
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    latencies.sort()
    pct = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)  # noqa: E731
    return {
        "tool": "python-threads",
        "requests": len(latencies),
        "seconds": round(seconds, 3),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "errors": errors[0],
        "non_2xx_3xx": None,
    }


async def _one_get(host: str, port: int, path: str, timeout: float) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: {USER_AGENT}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        return int(line.split()[1])
    finally:
        writer.close()


def burst(base: str, path: str, n: int, timeout: float = 60) -> dict[str, Any]:
    """``n`` GETs of ``path`` opened all at once (asyncio); status counts and wall time."""
    from urllib.parse import urlsplit

    parts = urlsplit(base)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(_one_get(parts.hostname, parts.port, path, timeout) for _ in range(n)), return_exceptions=True
        )

    t0 = time.perf_counter()
    results = asyncio.run(main())
    seconds = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r) if isinstance(r, int) else type(r).__name__
        statuses[key] = statuses.get(key, 0) + 1
    return {"requests": n, "seconds": round(seconds, 3), "statuses": statuses}
