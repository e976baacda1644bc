#!/usr/bin/env python3
"""Project tasks for crm_mailtrack, runnable with nothing but ``python3`` (stdlib only).

    python3 tasks.py demo [--host HOST] [--port PORT]   run the example CRM on SQLite
    python3 tasks.py test [pytest args...]             run the whole test suite

Both commands first make sure ``.venv`` (in the project root, created with the interpreter
running this script) holds the project installed in editable mode with the extras they need.
The install is skipped when ``.venv/.tasks-stamp`` says the same ``setup.cfg`` and
``pyproject.toml`` were already installed with those extras, so a second run starts at once.
A half-made environment (no interpreter, no pip) is thrown away and made again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".tasks-stamp"
MIN_PYTHON = (3, 10)

#: Extras each command needs (names from setup.cfg's [options.extras_require]).
DEMO_EXTRAS = ("example", "postgresql")
TEST_EXTRAS = ("dev", "example", "postgresql")

#: pytest's "no tests were collected" exit code: nothing ran, so it is a failure here.
PYTEST_NO_TESTS = 5


def say(message: str) -> None:
    print(f"[tasks] {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    say(f"error: {message}")
    sys.exit(code)


# -- virtual environment ---------------------------------------------------------------------


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _runs(cmd: Sequence[str | os.PathLike[str]]) -> bool:
    """True when ``cmd`` runs and exits 0 (its output is discarded)."""
    try:
        return subprocess.run(
            [str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, timeout=120,
        ).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def venv_is_healthy() -> bool:
    """The venv's interpreter starts, is recent enough, and has a working pip."""
    python = venv_python()
    if not python.exists():
        return False
    check = f"import sys; sys.exit(0 if sys.version_info[:2] >= {MIN_PYTHON!r} else 1)"
    return _runs([python, "-c", check]) and _runs([python, "-m", "pip", "--version"])


def create_venv() -> None:
    """Create ``.venv`` with the running interpreter, removing a broken one first."""
    if VENV.exists():
        say(f"{VENV} is incomplete or broken: recreating it")
        shutil.rmtree(VENV)
    say(f"creating {VENV} with {sys.executable}")
    result = subprocess.run([sys.executable, "-m", "venv", str(VENV)], stdin=subprocess.DEVNULL)
    if result.returncode == 0 and venv_is_healthy():
        return
    # Debian/Ubuntu ship python3 without ensurepip unless python3-venv is installed: make
    # the venv without pip and bootstrap pip from its wheel on PyPI instead.
    say("'python -m venv' could not install pip (no ensurepip?): bootstrapping pip from PyPI")
    shutil.rmtree(VENV, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)],
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        fail("could not create a virtual environment; on Debian/Ubuntu run "
             "'apt-get install python3-venv' and try again")
    _bootstrap_pip()
    if not venv_is_healthy():
        fail(f"{VENV} has no working pip; on Debian/Ubuntu run 'apt-get install python3-venv', "
             f"remove {VENV} and try again")


def _bootstrap_pip() -> None:
    """Install pip into the venv by running pip from its own wheel (pip supports that)."""
    try:
        index = "https://pypi.org/pypi/pip/json"
        with urllib.request.urlopen(index, timeout=60) as resp:
            release = json.load(resp)
        wheel = next(u for u in release["urls"] if u["filename"].endswith(".whl"))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / wheel["filename"]
            # Mirrors may answer with relative file URLs: resolve them against the index.
            with urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=120) as resp:
                data = resp.read()
            if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
                fail("the pip wheel downloaded from PyPI does not match its published sha256")
            path.write_bytes(data)
            cmd = [str(venv_python()), f"{path}/pip", "install", "--quiet", "--no-index", str(path)]
            if subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode != 0:
                fail("could not install pip into the virtual environment")
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        fail(f"could not fetch pip from PyPI ({exc}); on Debian/Ubuntu run "
             "'apt-get install python3-venv' instead")


def _fingerprint() -> str:
    """Hash of everything that decides what gets installed."""
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        path = ROOT / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"")
    digest.update(str(ROOT).encode())  # an editable install points at this directory
    return digest.hexdigest()


def _read_stamp() -> dict[str, object]:
    try:
        return json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def ensure_venv(extras: Sequence[str]) -> Path:
    """A healthy ``.venv`` with the project installed (editable) with ``extras``."""
    if sys.version_info[:2] < MIN_PYTHON:
        fail(f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed, this is {sys.version.split()[0]}")
    if not venv_is_healthy():
        create_venv()
    python = venv_python()
    fingerprint = _fingerprint()
    stamp = _read_stamp()
    installed = set(stamp.get("extras", [])) if stamp.get("fingerprint") == fingerprint else set()
    if stamp.get("fingerprint") == fingerprint and set(extras) <= installed:
        return python
    wanted = sorted(installed | set(extras))
    say(f"installing crm_mailtrack[{','.join(wanted)}] into {VENV} (only when setup.cfg changes)")
    STAMP.unlink(missing_ok=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--editable", f".[{','.join(wanted)}]"]
    started = time.monotonic()
    if subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL).returncode != 0:
        fail("pip install failed (its errors are above); fix them and run the command again")
    say(f"installed in {time.monotonic() - started:.0f}s")
    STAMP.write_text(json.dumps({"fingerprint": fingerprint, "extras": wanted}) + "\n", encoding="utf-8")
    return python


# -- commands ------------------------------------------------------------------------------


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in the project root and return its exit code. Ctrl-C reaches the child
    through the terminal; a SIGTERM sent to this script is passed on, so the child (which
    may hold a port) never outlives it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                return 128 - code if code < 0 else code  # killed by signal N: 128+N, as shells say
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C; wait for it to finish
    finally:
        if proc.poll() is None:
            proc.kill()


def demo(host: str, port: int) -> int:
    """Serve the example CRM (SQLite, demo data created on first run) until Ctrl-C."""
    python = ensure_venv(DEMO_EXTRAS)
    if not (ROOT / "example_app" / "__init__.py").exists():
        fail("example_app/ is missing from this checkout")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EXAMPLE_PORT": str(port)}
    if (ROOT / "example_app" / "__main__.py").exists():
        # Its own entry point also starts the local SMTP server the demo sends into.
        cmd = [str(python), "-m", "example_app", "--host", host, "--port", str(port)]
    else:
        cmd = [str(python), "-m", "flask", "--app", "example_app", "run", "--host", host, "--port", str(port)]
    say(f"starting the example CRM on http://{host}:{port}/  (Ctrl-C stops it)")
    return _run(cmd, env=env)


def _parallel(pytest_args: Sequence[str]) -> list[str]:
    """pytest-xdist's options unless the caller chose: one test process per CPU
    (``MAILTRACK_TEST_PROCESSES`` overrides; ``0`` runs in this one process), whole modules
    per process (``--dist loadfile``: a module's servers, browser and Dovecot start once)."""
    if any(a.startswith(("-n", "--numprocesses", "--dist")) or a in ("no:xdist", "-pno:xdist")
           for a in pytest_args):
        return []
    processes = os.environ.get("MAILTRACK_TEST_PROCESSES", "auto")
    return ["-n", processes, "--dist", "loadfile"]


def test(pytest_args: Sequence[str]) -> int:
    """Run pytest on the whole suite (or on ``pytest_args``); return pytest's exit code."""
    python = ensure_venv(TEST_EXTRAS)
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    if not env.get("MAILTRACK_TEST_POSTGRES_URL"):
        say("MAILTRACK_TEST_POSTGRES_URL is not set: PostgreSQL tests will be skipped "
            "(.ci/run sets it)")
    code = _run([str(python), "-m", "pytest", *_parallel(pytest_args), *pytest_args], env=env)
    if code == PYTEST_NO_TESTS:
        say("pytest collected no tests: nothing was tested, so this run fails")
    return code


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 tasks.py",
        description="crm_mailtrack tasks: each makes its own .venv, then runs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,test}")
    demo_parser = sub.add_parser("demo", help="run the example CRM on SQLite with demo data")
    demo_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo_parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    sub.add_parser("test", help="run the whole test suite; extra arguments go to pytest",
                   add_help=False)
    # Everything after "test" belongs to pytest (including -h, -k, -x ...).
    if argv and argv[0] == "test":
        return test(list(argv[1:]))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.host, args.port)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
