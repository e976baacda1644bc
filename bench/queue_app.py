"""The host app the benchmark's Celery workers import (``celery -A bench.queue_app worker``):
a Flask app with the extension on ``BENCH_DB_URL`` and the SMTP sink ``BENCH_SMTP_URL``,
sending through a Celery app on ``BENCH_BROKER``'s queue ``BENCH_QUEUE``, with the rate
limits of ``BENCH_RATE_LIMITS`` (JSON)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(db_url: str, smtp_url: str, broker: str, queue: str, limits: dict[str, str]) -> tuple[Any, Any]:
    from celery import Celery

    from bench._common import make_app

    app = make_app(db_url, MAILTRACK_SMTP_URL=smtp_url, MAILTRACK_DEFAULT_SENDER="bench@example.com",
                   MAILTRACK_DOMAIN_RATE_LIMITS=limits)
    capp = Celery("bench", broker=broker, set_as_current=False)
    capp.conf.update(task_default_queue=queue, worker_prefetch_multiplier=16,
                     broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    app.config["BENCH_MAILTRACK"].init_celery(capp, app)
    return app, capp


if os.environ.get("BENCH_DB_URL"):
    flask_app, celery = build(os.environ["BENCH_DB_URL"], os.environ["BENCH_SMTP_URL"], os.environ["BENCH_BROKER"],
                              os.environ["BENCH_QUEUE"], json.loads(os.environ.get("BENCH_RATE_LIMITS", "{}")))
