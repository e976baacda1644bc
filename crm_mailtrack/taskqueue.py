"""Sending through Celery (the ``celery`` extra): one task per message, run by the host's
workers in the Flask app's context.

``mailtrack.init_celery(celery_app)`` (inside the app factory, so that workers importing
the factory get it too) registers the task :data:`SEND_TASK` on the host's Celery app and
makes :meth:`MailTrack.send_campaign`, :meth:`MailTrack.send_later` and the API's send routes
enqueue instead of sending in the caller's process (:func:`~.services.dispatch.hand_over`:
when the broker cannot be reached the messages are due for ``send-due`` instead).
The task is idempotent through the message's claim (a redelivered task sends nothing the
second time), ``acks_late`` (a worker killed mid-task has it redelivered; the claim keeps
that from sending twice, and a message left ``SENDING`` is failed by ``send-due``'s
timeout, never re-sent), and it retries on Celery's own schedule when
:func:`~.services.dispatch.deliver` puts its message back to ``SCHEDULED`` (a transient
SMTP failure's backoff, or a later rate-limit slot). The database row stays the truth: with
no worker running, ``send-due`` sends the same rows when they are due.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from .errors import ConfigurationError, DatabaseUnavailable, QueueUnavailable
from .models import utcnow
from .services import dispatch, webhooks
from .services.smtp import Mailer
from .state import MailTrackState, get_state

#: The name the send task is registered under on the host's Celery app.
SEND_TASK = "crm_mailtrack.send_message"
#: The outbound webhooks' delivery run, for Celery beat (as ``flask mailtrack deliver-webhooks``).
WEBHOOK_TASK = "crm_mailtrack.deliver_webhooks"
#: A fan-out task: publishes the send tasks of one chunk of messages, in a worker.
FANOUT_TASK = "crm_mailtrack.enqueue_messages"
#: Messages per fan-out task (``init_celery(..., fanout_chunk=)``). The caller publishes one
#: task per chunk, so a 100,000-message campaign is 200 publishes in the request, not 100,000
#: (measured on the 2-core machine: 110-500 publishes a second, minutes for 100,000: past any
#: request's timeout).
FANOUT_CHUNK = 500


def require_celery() -> Any:
    """The ``celery`` module, or a :class:`ConfigurationError` naming the extra."""
    try:
        import celery
    except ImportError as exc:
        raise ConfigurationError(
            "Sending through a task queue needs Celery: install the 'celery' extra "
            "(pip install 'crm_mailtrack[celery]')."
        ) from exc
    return celery


@dataclass(eq=False)
class CeleryQueue:
    """The host's Celery app and the send task registered on it for one Flask app."""

    celery_app: Any
    task: Any
    #: The fan-out task (:data:`FANOUT_TASK`) and the messages each one takes.
    fanout: Any
    fanout_chunk: int = FANOUT_CHUNK
    #: One SMTP connection per worker thread, reused from task to task.
    mailers: threading.local = field(default_factory=threading.local)

    def mailer(self, state: MailTrackState) -> Mailer:
        mailer = getattr(self.mailers, "mailer", None)
        if mailer is None or mailer.settings != state.settings.smtp:
            mailer = self.mailers.mailer = Mailer(state.settings.smtp)
        return mailer

    def enqueue(self, message_ids: list[str]) -> int:
        """Hand ``message_ids`` to the workers; return how many. Up to ``fanout_chunk`` of
        them: one send task each, published here. More: one fan-out task per chunk, which a
        worker turns into the chunk's send tasks, so the caller (a request, a cron job)
        publishes ``len / fanout_chunk`` tasks. A fan-out task run twice publishes its send
        tasks twice: harmless, each message's claim sends it once.

        :class:`~.errors.QueueUnavailable` when the broker cannot be reached (after Celery's
        publish retries, ``task_publish_retry_policy``); some tasks may have been published
        before, which the claims make harmless if the caller hands the messages on again."""
        if len(message_ids) <= self.fanout_chunk:
            return self.publish(self.task, [(message_id,) for message_id in message_ids])
        step = self.fanout_chunk
        self.publish(self.fanout, [(list(message_ids[i:i + step]),) for i in range(0, len(message_ids), step)])
        return len(message_ids)

    def publish(self, task: Any, calls: list[tuple[Any, ...]]) -> int:
        """Publish ``task`` once per argument tuple, on one broker connection."""
        from kombu.exceptions import OperationalError

        try:
            with self.celery_app.producer_or_acquire() as producer:
                for args in calls:
                    task.apply_async(args=args, producer=producer)
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"The task queue's broker did not take the tasks: {exc}") from exc
        return len(calls)


def init_celery(app: Flask, celery_app: Any, *, fanout_chunk: int = FANOUT_CHUNK) -> CeleryQueue:
    """Register :data:`SEND_TASK` (and :data:`FANOUT_TASK`, :data:`WEBHOOK_TASK`) on
    ``celery_app`` for ``app`` (see the module docstring)."""
    require_celery()
    if isinstance(fanout_chunk, bool) or not isinstance(fanout_chunk, int) or fanout_chunk < 1:
        raise ConfigurationError(f"init_celery(fanout_chunk=) must be a positive integer, not {fanout_chunk!r}")
    state = get_state(app)
    if state.queue is not None:
        raise RuntimeError("crm_mailtrack: init_celery was already called for this app.")

    # A database that cannot serve (down, restarting) raises DatabaseUnavailable before or
    # after the claim: retried with Celery's backoff; a claimed message is then skipped, and
    # left SENDING it is failed by send-due's timeout, never sent twice.
    @celery_app.task(name=SEND_TASK, bind=True, shared=False, acks_late=True, max_retries=None,
                     ignore_result=True, autoretry_for=(DatabaseUnavailable,), retry_backoff=True,
                     retry_backoff_max=600)
    def send_message(self: Any, message_id: str) -> str:
        with app.app_context():
            st = get_state(app)
            outcome = dispatch.deliver(st, message_id, queue.mailer(st))
        if outcome.retry_at is not None:
            countdown = max(0.0, (outcome.retry_at - utcnow()).total_seconds())
            raise self.retry(countdown=countdown)
        return outcome.status

    @celery_app.task(name=WEBHOOK_TASK, shared=False, ignore_result=True)
    def deliver_webhooks() -> dict[str, int]:
        with app.app_context():
            return webhooks.run(get_state(app))

    # A broker that fails while a worker publishes: retried on Celery's schedule (publishing
    # again is harmless, the claims send each message once).
    @celery_app.task(name=FANOUT_TASK, bind=True, shared=False, acks_late=True, ignore_result=True,
                     max_retries=None, retry_backoff=True, retry_backoff_max=600,
                     autoretry_for=(QueueUnavailable,))
    def enqueue_messages(self: Any, message_ids: list[str]) -> int:
        return queue.publish(send_message, [(message_id,) for message_id in message_ids])

    queue = CeleryQueue(celery_app, send_message, enqueue_messages, fanout_chunk)
    state.queue = queue

    from celery.signals import worker_process_init

    @worker_process_init.connect(weak=False)
    def _fresh_pool(**_: Any) -> None:
        # A prefork child inherits the parent's pooled connections: sharing a socket between
        # processes mixes their results. Forget them (SQLAlchemy's documented way for forks).
        with app.app_context():
            get_state(app).engine.dispose(close=False)

    return queue


__all__ = ["SEND_TASK", "WEBHOOK_TASK", "FANOUT_TASK", "FANOUT_CHUNK", "CeleryQueue", "init_celery", "require_celery"]
