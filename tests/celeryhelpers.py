"""Shared helpers of the Celery tests (test_queue.py, test_queue_api.py): the brokers of this
machine, a host's Celery app on a queue of the test's own, and a real worker in a thread.

A module takes the fixtures with ``from celeryhelpers import broker_url, celery_app  # noqa: F401``.
Importing this module skips the importing module when the ``celery`` extra is missing.
"""
from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

celery = pytest.importorskip("celery", reason="the 'celery' extra is not installed")
from celery.contrib.testing.worker import start_worker  # noqa: E402
from kombu import Exchange, Queue  # noqa: E402

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/0", 6379),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", 5672),
}


def reachable_broker(name: str) -> str:
    """The URL of broker ``name``; skips the test, with the reason, when it is unreachable."""
    url, port = BROKERS[name]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"{name} broker at 127.0.0.1:{port} is unreachable: {exc}")
    return url


@pytest.fixture(params=list(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    return reachable_broker(request.param)


def host_celery(broker_url: str) -> Any:
    """A Celery app of the host's own, on a queue of its own (other runs may share the broker)."""
    name = f"mailtrack-test-{uuid.uuid4().hex[:12]}"
    capp = celery.Celery("host", broker=broker_url, set_as_current=False)
    capp.conf.update(
        task_default_queue=name,
        task_queues=[Queue(name, Exchange(name), routing_key=name, durable=False, auto_delete=True)],
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        # no AMQP heartbeats: with them the test worker's stop on RabbitMQ waits ~10 s for the
        # consumer's next heartbeat tick (1 s without); a test's worker lives seconds anyway
        broker_heartbeat=0,
    )
    return capp


@contextlib.contextmanager
def closing_celery(broker_url: str) -> Iterator[Any]:
    """:func:`host_celery`, its queue purged and the app closed at the end."""
    capp = host_celery(broker_url)
    try:
        yield capp
    finally:
        with contextlib.suppress(Exception):
            capp.control.purge()
        capp.close()


@pytest.fixture
def celery_app(broker_url: str) -> Iterator[Any]:
    """The host's Celery app on ``broker_url``, its queue deleted when the worker leaves."""
    with closing_celery(broker_url) as capp:
        yield capp


@contextlib.contextmanager
def worker(celery_app: Any, *, threads: int = 2) -> Iterator[Any]:
    """A real worker consuming the test's queue, ``threads`` tasks at a time."""
    with start_worker(celery_app, pool="threads", concurrency=threads, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=30) as w:
        yield w
