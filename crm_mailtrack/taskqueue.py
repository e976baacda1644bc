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
    #: One SMTP connection per worker thread, reused from task to task.
    mailers: threading.local = field(default_factory=threading.local)

    def mailer(self, state: MailTrackState) -> Mailer:
        mailer = getattr(self.mailers, "mailer", None)
        if mailer is None or mailer.settings != state.settings.smtp:
            mailer = self.mailers.mailer = Mailer(state.settings.smtp)
        return mailer

    def enqueue(self, message_ids: list[str]) -> int:
        """Publish one task per message, on one broker connection; return how many.

        :class:`~.errors.QueueUnavailable` when the broker cannot be reached (after Celery's
        publish retries, ``task_publish_retry_policy``); some tasks may have been published
        before, which the claims make harmless if the caller hands the messages on again."""
        from kombu.exceptions import OperationalError

        try:
            with self.celery_app.producer_or_acquire() as producer:
                for message_id in message_ids:
                    self.task.apply_async(args=(message_id,), producer=producer)
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"The task queue's broker did not take the tasks: {exc}") from exc
        return len(message_ids)


def init_celery(app: Flask, celery_app: Any) -> CeleryQueue:
    """Register :data:`SEND_TASK` on ``celery_app`` for ``app`` (see the module docstring)."""
    require_celery()
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

    queue = CeleryQueue(celery_app, send_message)
    state.queue = queue

    from celery.signals import worker_process_init

    @worker_process_init.connect(weak=False)
    def _fresh_pool(**_: Any) -> None:
        # A prefork child inherits the parent's pooled connections: sharing a socket between
        # processes mixes their results. Forget them (SQLAlchemy's documented way for forks).
        with app.app_context():
            get_state(app).engine.dispose(close=False)

    return queue


__all__ = ["SEND_TASK", "WEBHOOK_TASK", "CeleryQueue", "init_celery", "require_celery"]
