"""Every ``MAILTRACK_*`` key of one app, read and validated once, at ``init_app``.

:meth:`Settings.from_config` is the only reader of the extension's keys in ``app.config``
(after the defaults of :mod:`.config` are applied); every layer reads the resolved values
from ``get_state().settings``. A bad value is a :class:`~.errors.ConfigurationError` that
names the key and says what is expected, raised by ``init_app`` rather than at the first
click or send.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

from . import config as cfg
from .bots import BotPolicy
from .errors import ConfigurationError
from .services.esp.config import EspSettings
from .services.esp.config import from_config as esp_from_config
from .services.mime import check_default_sender
from .services.inbox_url import InboxSettings, parse_inbox_url
from .services.smtp import SMTPSettings, parse_smtp_url


class RateLimit(NamedTuple):
    """One entry of ``MAILTRACK_DOMAIN_RATE_LIMITS``: at most ``count`` messages per window
    of ``seconds``."""

    count: int
    seconds: int


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one app (see :mod:`crm_mailtrack.config` for each key)."""

    #: ``""`` or a path such as ``/mailtrack`` (no trailing slash).
    url_prefix: str
    base_url: str | None
    #: The signing key (``MAILTRACK_SECRET_KEY``, else ``SECRET_KEY``).
    secret_key: str | bytes
    #: Older signing keys, oldest first (``MAILTRACK_SECRET_KEY_FALLBACKS``, else
    #: ``SECRET_KEY_FALLBACKS``).
    secret_key_fallbacks: tuple[str | bytes, ...]
    link_max_age: int | None
    api_tokens: frozenset[str]
    track_opens: bool
    track_clicks: bool
    utm_defaults: Mapping[str, str]
    anonymize_ip: bool
    smtp_url: str
    smtp: SMTPSettings
    default_sender: str | None
    sending_timeout: dt.timedelta
    journal_path: str
    database_uri: str | None
    #: ``MAILTRACK_JOURNAL_URL`` (a Redis URL) or ``None``: the file journal alone.
    journal_url: str | None
    #: ``MAILTRACK_REPORTS_DATABASE_URI`` or ``None``: reports read the primary.
    reports_database_uri: str | None
    bot_policy: BotPolicy
    max_body_bytes: int
    max_message_body_bytes: int
    max_details_bytes: int
    #: ``MAILTRACK_WEBHOOKS``, ``MAILTRACK_ESP``, ``MAILTRACK_WEBHOOK_MAX_BODY_BYTES``.
    webhooks: EspSettings
    #: ``MAILTRACK_SOFT_BOUNCE_LIMIT`` (0: off).
    soft_bounce_limit: int
    #: ``MAILTRACK_BOUNCE_ADDRESS`` as ``(local part, domain)``, or ``None``.
    bounce_address: tuple[str, str] | None
    inbound_max_bytes: int
    #: ``MAILTRACK_INBOX_URL`` taken apart (its repr hides the password); ``None``: not set.
    inbox: InboxSettings | None = None
    #: Tries of a transiently failing campaign or scheduled message (``1``: no retry).
    send_max_attempts: int = 5
    #: Wait before the first retry; doubled for each further one.
    send_retry_backoff: dt.timedelta = dt.timedelta(seconds=60)
    #: Lower-cased recipient domain (or ``"*"``) -> its :class:`RateLimit`.
    domain_rate_limits: Mapping[str, RateLimit] = dataclasses.field(default_factory=dict)
    #: Outbound webhooks: the receiver's time to answer, the waits before each retry, and
    #: the failed attempts in a row that disable an endpoint.
    webhook_timeout: float = 10.0
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_disable_after: int = 20
    #: ``MAILTRACK_OUTBOUND_WEBHOOK_ALLOW_PRIVATE``: internal destinations allowed.
    webhook_allow_private: bool = False

    def retry_delay(self, attempts: int) -> dt.timedelta:
        """The wait after the ``attempts``-th try failed transiently (exponential, capped)."""
        seconds = self.send_retry_backoff.total_seconds() * 2 ** max(0, attempts - 1)
        return dt.timedelta(seconds=min(seconds, cfg.MAX_RETRY_BACKOFF_SECONDS))

    def rate_limit_for(self, domain: str) -> RateLimit | None:
        """The limit that applies to a recipient domain (its own entry, else ``"*"``)."""
        return self.domain_rate_limits.get(domain.lower()) or self.domain_rate_limits.get("*")

    @classmethod
    def from_config(cls, conf: Mapping[str, Any], *, instance_path: str) -> Settings:
        """Read and check every key of ``conf`` (defaults applied); ``instance_path`` places
        the default journal."""
        _check_types(conf)

        secret = conf[cfg.SECRET_KEY] or conf.get("SECRET_KEY")
        if not secret or len(secret) < cfg.MIN_SECRET_KEY_LENGTH:
            raise ConfigurationError(
                f"{cfg.SECRET_KEY} (or SECRET_KEY) must be set to a random string of at least "
                f"{cfg.MIN_SECRET_KEY_LENGTH} characters: it signs every tracking link."
            )
        fallbacks = conf[cfg.SECRET_KEY_FALLBACKS]
        if fallbacks is None:
            fallbacks = conf.get("SECRET_KEY_FALLBACKS") or []
        if isinstance(fallbacks, (str, bytes)):
            fallbacks = [fallbacks]

        max_age = conf[cfg.LINK_MAX_AGE]
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                    or max_age <= 0):
            raise ConfigurationError(f"{cfg.LINK_MAX_AGE} must be a positive number of seconds or None.")

        prefix = "/" + (conf[cfg.URL_PREFIX] or "").strip("/")
        tokens = conf[cfg.API_TOKENS] or []
        if isinstance(tokens, str):
            tokens = [tokens]

        smtp = parse_smtp_url(conf[cfg.SMTP_URL])  # a bad URL fails here, naming the key, not at send time
        check_default_sender(conf[cfg.DEFAULT_SENDER])
        if not 0 < smtp.timeout < float("inf"):
            raise ConfigurationError(f"{cfg.SMTP_URL}: timeout must be a positive number of seconds, "
                                     f"not {smtp.timeout!r}.")
        sending_timeout = conf[cfg.SENDING_TIMEOUT_SECONDS]
        if (isinstance(sending_timeout, bool) or not isinstance(sending_timeout, (int, float))
                or not smtp.timeout < sending_timeout <= cfg.MAX_SENDING_TIMEOUT_SECONDS):
            # shorter than one SMTP wait, a send that is merely slow would be declared interrupted
            raise ConfigurationError(
                f"{cfg.SENDING_TIMEOUT_SECONDS} must be a number of seconds greater than the SMTP "
                f"timeout ({smtp.timeout:g}) and at most {cfg.MAX_SENDING_TIMEOUT_SECONDS}, "
                f"not {sending_timeout!r}."
            )

        def byte_limit(key: str) -> int:
            value = conf[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"{key} must be a positive whole number of bytes, not {value!r}.")
            return value

        limits = [byte_limit(key) for key in (cfg.MAX_BODY_BYTES, cfg.MAX_MESSAGE_BODY_BYTES,
                                              cfg.MAX_DETAILS_BYTES, cfg.INBOUND_MAX_BYTES)]
        soft_limit = conf[cfg.SOFT_BOUNCE_LIMIT]
        if isinstance(soft_limit, bool) or not isinstance(soft_limit, int) or soft_limit < 0:
            raise ConfigurationError(f"{cfg.SOFT_BOUNCE_LIMIT} must be a whole number of soft bounces "
                                     f"(0 turns the rule off), not {soft_limit!r}.")
        return cls(
            url_prefix="" if prefix == "/" else prefix,
            base_url=conf[cfg.BASE_URL],
            secret_key=secret,
            secret_key_fallbacks=tuple(fallbacks),
            link_max_age=max_age,
            api_tokens=frozenset(str(t) for t in tokens),
            track_opens=conf[cfg.TRACK_OPENS],
            track_clicks=conf[cfg.TRACK_CLICKS],
            utm_defaults={str(k): str(v) for k, v in (conf[cfg.UTM_DEFAULTS] or {}).items()},
            anonymize_ip=conf[cfg.ANONYMIZE_IP],
            smtp_url=conf[cfg.SMTP_URL],
            smtp=smtp,
            default_sender=conf[cfg.DEFAULT_SENDER],
            sending_timeout=dt.timedelta(seconds=float(sending_timeout)),
            journal_path=os.fspath(conf[cfg.JOURNAL_PATH]
                                   or os.path.join(instance_path, "mailtrack-journal.jsonl")),
            database_uri=conf[cfg.DATABASE_URI],
            journal_url=conf[cfg.JOURNAL_URL],
            reports_database_uri=conf[cfg.REPORTS_DATABASE_URI],
            bot_policy=BotPolicy.from_config(conf),
            max_body_bytes=limits[0],
            max_message_body_bytes=limits[1],
            max_details_bytes=limits[2],
            inbox=None if conf[cfg.INBOX_URL] is None else parse_inbox_url(conf[cfg.INBOX_URL]),
            webhooks=esp_from_config(conf),
            soft_bounce_limit=soft_limit,
            bounce_address=_bounce_address(conf[cfg.BOUNCE_ADDRESS]),
            inbound_max_bytes=limits[3],
            send_max_attempts=_max_attempts(conf[cfg.SEND_MAX_ATTEMPTS]),
            send_retry_backoff=_backoff(conf[cfg.SEND_RETRY_BACKOFF_SECONDS]),
            domain_rate_limits=_rate_limits(conf[cfg.DOMAIN_RATE_LIMITS]),
            **_webhook_settings(conf),
        )


_BOUNCE_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


def _bounce_address(value: Any) -> tuple[str, str] | None:
    """``MAILTRACK_BOUNCE_ADDRESS`` as (local part, domain): a bare ASCII address whose local
    part is a dot-atom without ``+`` (the VERP separator) of at most
    ``MAX_BOUNCE_LOCAL_PART`` characters."""
    if value is None:
        return None
    local, _, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    if not (_BOUNCE_LOCAL.fullmatch(local) and "+" not in local and len(local) <= cfg.MAX_BOUNCE_LOCAL_PART
            and _DOMAIN.fullmatch(domain)):
        raise ConfigurationError(
            f"{cfg.BOUNCE_ADDRESS} must be a bare address such as 'bounces@crm.example.com' whose local part "
            f"has at most {cfg.MAX_BOUNCE_LOCAL_PART} characters and no '+' (the VERP tag follows a '+'), "
            f"not {value!r}.")
    return local, domain.lower()


def _webhook_settings(conf: Mapping[str, Any]) -> dict[str, Any]:
    timeout = conf[cfg.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise ConfigurationError(f"{cfg.OUTBOUND_WEBHOOK_TIMEOUT_SECONDS} must be a number of seconds "
                                 f"above 0 and at most 300, not {timeout!r}.")
    schedule = conf[cfg.OUTBOUND_WEBHOOK_RETRY_SCHEDULE]
    if not isinstance(schedule, (list, tuple)) or len(schedule) > 50 or not all(
            not isinstance(w, bool) and isinstance(w, (int, float)) and 0 <= w <= 7 * 86400 for w in schedule):
        raise ConfigurationError(f"{cfg.OUTBOUND_WEBHOOK_RETRY_SCHEDULE} must be a list of at most 50 waits in "
                                 f"seconds (each 0 to 7 days), not {schedule!r}.")
    disable = conf[cfg.OUTBOUND_WEBHOOK_DISABLE_AFTER]
    if isinstance(disable, bool) or not isinstance(disable, int) or disable < 1:
        raise ConfigurationError(f"{cfg.OUTBOUND_WEBHOOK_DISABLE_AFTER} must be a whole number of failed "
                                 f"attempts (1 or more), not {disable!r}.")
    allow_private = conf[cfg.OUTBOUND_WEBHOOK_ALLOW_PRIVATE]
    if not isinstance(allow_private, bool):
        raise ConfigurationError(f"{cfg.OUTBOUND_WEBHOOK_ALLOW_PRIVATE} must be True or False, not {allow_private!r}.")
    return {"webhook_timeout": float(timeout), "webhook_retry_schedule": tuple(float(w) for w in schedule),
            "webhook_disable_after": disable, "webhook_allow_private": allow_private}


def _max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ConfigurationError(f"{cfg.SEND_MAX_ATTEMPTS} must be a whole number from 1 (no retry) to 100, "
                                 f"not {value!r}.")
    return value


def _backoff(value: Any) -> dt.timedelta:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 <= value <= cfg.MAX_RETRY_BACKOFF_SECONDS):
        raise ConfigurationError(f"{cfg.SEND_RETRY_BACKOFF_SECONDS} must be a number of seconds from 0 to "
                                 f"{cfg.MAX_RETRY_BACKOFF_SECONDS}, not {value!r}.")
    return dt.timedelta(seconds=float(value))


def _rate_limits(value: Any) -> dict[str, RateLimit]:
    """``{"gmail.com": "600/m"}`` -> ``{"gmail.com": RateLimit(600, 60)}``."""
    expected = ("a mapping of recipient domains (or '*') to limits such as '600/m', '10/s', '3000/h' "
                "or '50000/d', such as {'gmail.com': '600/m'}")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{cfg.DOMAIN_RATE_LIMITS} must be {expected}, not {value!r}.")
    out: dict[str, RateLimit] = {}
    for domain, spec in value.items():
        count, _, unit = spec.partition("/") if isinstance(spec, str) else ("", "", "")
        if (not isinstance(domain, str) or not domain or any(c.isspace() or c in "@/" for c in domain)
                or not count.isdigit() or int(count) < 1 or unit not in _PERIODS):
            raise ConfigurationError(f"{cfg.DOMAIN_RATE_LIMITS} must be {expected}; "
                                     f"{domain!r}: {spec!r} is not.")
        out[domain.lower()] = RateLimit(int(count), _PERIODS[unit])
    return out


def _check_types(conf: Mapping[str, Any]) -> None:
    """The type and shape of the keys whose value is used as given."""

    def fail(key: str, expected: str) -> NoReturn:
        raise ConfigurationError(f"{key} must be {expected}, not {conf[key]!r}.")

    prefix = conf[cfg.URL_PREFIX]
    if prefix is not None and (not isinstance(prefix, str) or any(c in prefix for c in "?#:\\ \t\r\n")):
        fail(cfg.URL_PREFIX, "a URL path such as '/mailtrack' (no scheme, query or fragment)")

    base = conf[cfg.BASE_URL]
    if base is not None:
        parts = urlsplit(base) if isinstance(base, str) else None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or parts.query or parts.fragment or parts.username or parts.password
                or any(c.isspace() for c in base)):
            fail(cfg.BASE_URL, "the external origin of the app as an absolute http(s) URL, "
                               "such as 'https://crm.example.com' (a path is allowed; no query or fragment)")

    if conf[cfg.SECRET_KEY] is not None and not isinstance(conf[cfg.SECRET_KEY], (str, bytes)):
        fail(cfg.SECRET_KEY, "a string")
    fallbacks = conf[cfg.SECRET_KEY_FALLBACKS]
    if fallbacks is not None and not isinstance(fallbacks, (str, bytes)) and not (
            isinstance(fallbacks, (list, tuple)) and all(isinstance(k, (str, bytes)) and k for k in fallbacks)):
        fail(cfg.SECRET_KEY_FALLBACKS, "a key (string) or a list of keys")

    tokens = conf[cfg.API_TOKENS]
    token_list = [tokens] if isinstance(tokens, str) else tokens
    if token_list is None:
        token_list = []
    if not isinstance(token_list, (list, tuple, set, frozenset)) or not all(
            isinstance(t, str) and t.strip() == t and t for t in token_list):
        fail(cfg.API_TOKENS, "a token (a non-empty string without surrounding spaces) or a list of them")

    for key in (cfg.TRACK_OPENS, cfg.TRACK_CLICKS, cfg.ANONYMIZE_IP, cfg.HONEYPOT):
        if not isinstance(conf[key], bool):
            fail(key, "True or False")

    utm = conf[cfg.UTM_DEFAULTS]
    if utm is not None and not (isinstance(utm, Mapping) and all(
            isinstance(k, str) and k.startswith("utm_") and isinstance(v, str) and v for k, v in utm.items())):
        fail(cfg.UTM_DEFAULTS, "a mapping of 'utm_*' names to non-empty strings, such as {'utm_source': 'crm'}")

    if not isinstance(conf[cfg.SMTP_URL], str):
        fail(cfg.SMTP_URL, "a URL string such as 'smtp://localhost:25'")

    sender = conf[cfg.DEFAULT_SENDER]
    if sender is not None and not isinstance(sender, str):  # its shape: mime.check_default_sender
        fail(cfg.DEFAULT_SENDER, "an address, optionally with a name: 'CRM <crm@example.com>'")

    journal = conf[cfg.JOURNAL_PATH]
    if journal is not None and not isinstance(journal, (str, os.PathLike)):
        fail(cfg.JOURNAL_PATH, "a file path")

    for key in (cfg.DATABASE_URI, cfg.REPORTS_DATABASE_URI):
        uri = conf[key]
        if uri is not None:
            import sqlalchemy as sa

            try:
                sa.engine.make_url(uri)
            except (sa.exc.ArgumentError, TypeError, ValueError):
                fail(key, "an SQLAlchemy database URL such as 'sqlite:////path/to/mailtrack.db'")

    if conf[cfg.JOURNAL_URL] is not None:
        from .journal_redis import parse_journal_url

        parse_journal_url(conf[cfg.JOURNAL_URL])  # names the key on error

    for key in (cfg.SCANNER_NETWORKS, cfg.APPLE_PROXY_NETWORKS):
        nets = conf[key]
        if nets is not None and not isinstance(nets, str) and not (
                isinstance(nets, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in nets)):
            fail(key, "a list of networks in CIDR notation, such as ['192.0.2.0/24']")


__all__ = ["Settings", "RateLimit"]
