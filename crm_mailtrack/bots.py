"""Is a tracking hit a person's or a machine's? The whole verdict, in one module.

Every open and click gets ``is_machine`` and a ``machine_reason`` (see
``docs/metrics-bots.md``); every reason string is defined here. The verdict is decided
from, in this order:

1. the request itself (:func:`request_reason`): its method and prefetch/preview headers;
2. its user agent (:func:`classify_user_agent`) and its network (:meth:`BotPolicy.network_reason`);
3. the message's recent history (:func:`history_verdict`): a honeypot hit, a burst of
   clicks, the time since sending. These need the message's rows, so this module gives
   them as a SQL expression that the tracking insert evaluates (no extra round trip), and
   decides which earlier clicks a click re-marks after the fact (:func:`reclassification`).

User agents are judged by maintained libraries, not by a list kept here: ``crawlerdetect``
(the JayBizzle Crawler-Detect patterns: crawlers, HTTP libraries, headless browsers, link
previewers, some scanners) and ``ua-parser`` (uap-core: image proxies, "Spider" devices,
mail clients). What is ours is only what no library knows about email: which matches are
mail security scanners, that a mail client loading the pixel is the reader, Gmail's
prefetch signature, Apple's bare ``Mozilla/5.0`` and the default scanner/Apple networks.
Verdicts are cached per user-agent string and per network.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from crawlerdetect import CrawlerDetect

from . import config as cfg
from .devices import MAIL_CLIENTS, parse
from .errors import ConfigurationError
from .models import UTCDateTime, events, messages

if TYPE_CHECKING:
    from .requestinfo import RequestFacts

# -- reasons (stored in mailtrack_events.machine_reason; defined in docs/metrics-bots.md) --
HEAD_REQUEST = "head-request"
PREFETCH = "prefetch"
NO_USER_AGENT = "no-user-agent"
IMAGE_PROXY = "image-proxy"
APPLE_MPP = "apple-mpp"
SCANNER_UA = "scanner-ua"
SCANNER_NETWORK = "scanner-network"
KNOWN_BOT_UA = "known-bot-ua"
TOO_FAST = "too-fast-after-send"
BURST = "burst"
HONEYPOT = "honeypot"
#: The ESP that reported the open or click flagged it as a machine's (SendGrid
#: ``sg_machine_open``, Mailgun ``client-info.bot`` naming no proxy we know).
ESP_FLAG = "esp-flag"

REASONS: tuple[str, ...] = (
    HEAD_REQUEST, PREFETCH, NO_USER_AGENT, IMAGE_PROXY, APPLE_MPP, SCANNER_UA, SCANNER_NETWORK,
    KNOWN_BOT_UA, TOO_FAST, BURST, HONEYPOT, ESP_FLAG,
)

#: Bot names an ESP reports (Mailgun's ``client-info.bot``) that are a proxy we know.
_ESP_BOT_NAMES = {"apple": APPLE_MPP, "gmail": IMAGE_PROXY, "google": IMAGE_PROXY, "yahoo": IMAGE_PROXY}


def esp_reason(bot_name: str | None) -> str:
    """The machine reason of an open or click an ESP flagged: ``apple-mpp`` /
    ``image-proxy`` when it names a proxy we know, else ``esp-flag``."""
    return _ESP_BOT_NAMES.get((bot_name or "").strip().lower(), ESP_FLAG)

#: Headers with which browsers and mail clients announce a prefetch / preview fetch, and
#: the value that marks one (what :func:`request_reason` calls ``prefetch``).
ANNOUNCING_HEADERS: dict[str, str] = {
    "Purpose": "prefetch", "Sec-Purpose": "prefetch", "X-Moz": "prefetch", "X-Purpose": "preview",
}

#: Microsoft Exchange Online Protection, whose Defender Safe Links fetches every link of a
#: message on delivery (Microsoft 365 endpoint list, "Exchange Online" IPs; 40.94.0.0/16 is
#: where Safe Links detonation traffic is reported from).
DEFAULT_SCANNER_NETWORKS: tuple[str, ...] = (
    "40.92.0.0/15", "40.94.0.0/16", "40.107.0.0/16", "52.100.0.0/15", "52.102.0.0/16",
    "52.103.0.0/17", "104.47.0.0/17", "2a01:111:f400::/48", "2a01:111:f403::/48",
)
#: Apple's own network (AS714). Mail Privacy Protection loads every image through Apple's
#: proxies, which send the bare user agent ``Mozilla/5.0``; opens from 17/8 are counted as
#: MPP as well. (Apple publishes no list of MPP proxy addresses.)
DEFAULT_APPLE_PROXY_NETWORKS: tuple[str, ...] = ("17.0.0.0/8",)

#: Apple Mail Privacy Protection's proxies send exactly this and nothing more.
_BARE_UA = "Mozilla/5.0"
#: Gmail's delivery-time prefetcher: an old Edge string with "Mozilla/5.0" appended again.
_GMAIL_PREFETCH = re.compile(r"Edge/12\.246 Mozilla/5\.0$")
#: ua-parser families that are image proxies of webmail providers.
_IMAGE_PROXY_CLIENTS = frozenset({"GmailImageProxy", "YahooMailProxy"})
#: crawlerdetect matches naming an image proxy.
_IMAGE_PROXY_MATCH = re.compile(r"image ?proxy|mail ?proxy", re.IGNORECASE)
#: crawlerdetect matches naming a mail/link security scanner or a link previewer.
_SCANNER_MATCH = re.compile(
    r"barracuda|mimecast|proofpoint|safe ?links|spamexperts|safeweb|palo alto|scan|preview"
    r"|security|sentinel|symantec|trend ?micro|sophos|forcepoint|fortinet|ironport|zscaler",
    re.IGNORECASE,
)


@lru_cache(maxsize=4096)
def _crawler_match(user_agent: str) -> str | None:
    detector = CrawlerDetect()  # not thread-safe across calls: one per (cached) check
    return detector.get_matches() if detector.is_crawler(user_agent) else None


@lru_cache(maxsize=8192)
def classify_user_agent(user_agent: str | None, event_type: str) -> str | None:
    """The machine reason shown by the user agent of an ``open`` or ``click``, else ``None``.

    Cached per (string, type): a hit costs a dict lookup after the first.
    """
    ua = (user_agent or "").strip()
    if not ua:
        return NO_USER_AGENT
    if ua == _BARE_UA:
        return APPLE_MPP if event_type == "open" else NO_USER_AGENT
    parsed = parse(ua)
    if parsed.client in _IMAGE_PROXY_CLIENTS or _GMAIL_PREFETCH.search(ua):
        return IMAGE_PROXY
    if parsed.client in MAIL_CLIENTS and event_type == "click":
        return KNOWN_BOT_UA  # links open in a browser; the mail program's own fetch is a preview
    match = _crawler_match(ua)
    if match is not None:
        if parsed.client in MAIL_CLIENTS and event_type == "open":
            return None  # a mail program loading the pixel is the reader reading
        if _IMAGE_PROXY_MATCH.search(match):
            return IMAGE_PROXY
        if _SCANNER_MATCH.search(match):
            return SCANNER_UA
        return KNOWN_BOT_UA
    if parsed.type == "bot":
        return KNOWN_BOT_UA
    return None


Networks = tuple["ipaddress.IPv4Network | ipaddress.IPv6Network", ...]


def parse_networks(values: Iterable[str], key: str) -> Networks:
    """CIDR strings to networks; a bad one is a :class:`ConfigurationError` naming ``key``."""
    if isinstance(values, str):
        values = [values]
    nets = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"{key}: {value!r} is not a network (CIDR): {exc}") from None
    return tuple(nets)


def _in_networks(ip: str, networks: Networks) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


_NETWORK_CACHE_SIZE = 8192


@dataclass(frozen=True)
class BotPolicy:
    """The resolved ``MAILTRACK_BOT_*`` / honeypot / network settings of one app."""

    after_send_seconds: float
    burst_seconds: float
    honeypot: bool
    honeypot_window_seconds: float
    scanner_networks: Networks
    apple_proxy_networks: Networks
    _network_verdicts: dict[tuple[str, bool], str | None] = field(
        default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def history(self) -> bool:
        """Whether clicks need the history probes (burst or honeypot rule on)."""
        return self.burst_seconds > 0 or self.honeypot

    @cached_property
    def windows(self) -> tuple[dt.timedelta | None, dt.timedelta | None, dt.timedelta | None]:
        """The after-send, burst and honeypot windows as timedeltas (``None``: rule off),
        built once instead of on every hit."""
        def window(seconds: float, on: bool = True) -> dt.timedelta | None:
            return dt.timedelta(seconds=seconds) if on and seconds > 0 else None

        return (window(self.after_send_seconds), window(self.burst_seconds),
                window(self.honeypot_window_seconds, self.honeypot))

    def network_reason(self, ip: str, event_type: str) -> str | None:
        """``scanner-network`` / ``apple-mpp`` (opens) for an address, cached per address."""
        key = (ip, event_type == "open")
        try:
            return self._network_verdicts[key]
        except KeyError:
            pass
        reason = None
        if self.scanner_networks and _in_networks(ip, self.scanner_networks):
            reason = SCANNER_NETWORK
        elif key[1] and self.apple_proxy_networks and _in_networks(ip, self.apple_proxy_networks):
            reason = APPLE_MPP
        if len(self._network_verdicts) >= _NETWORK_CACHE_SIZE:
            self._network_verdicts.clear()
        self._network_verdicts[key] = reason
        return reason

    @classmethod
    def from_config(cls, conf: Any) -> BotPolicy:
        """The policy of an app's config; built once, by ``Settings`` at ``init_app``."""
        def seconds(key: str) -> float:
            value = conf.get(key, cfg.DEFAULTS[key])
            value = 0 if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigurationError(f"{key} must be a number of seconds >= 0, not {value!r}.")
            return float(value)

        scanners = conf.get(cfg.SCANNER_NETWORKS)
        apple = conf.get(cfg.APPLE_PROXY_NETWORKS)
        return cls(
            after_send_seconds=seconds(cfg.BOT_AFTER_SEND_SECONDS),
            burst_seconds=seconds(cfg.BOT_BURST_SECONDS),
            honeypot=bool(conf.get(cfg.HONEYPOT, cfg.DEFAULTS[cfg.HONEYPOT])),
            honeypot_window_seconds=seconds(cfg.HONEYPOT_WINDOW_SECONDS),
            scanner_networks=parse_networks(
                DEFAULT_SCANNER_NETWORKS if scanners is None else scanners, cfg.SCANNER_NETWORKS),
            apple_proxy_networks=parse_networks(
                DEFAULT_APPLE_PROXY_NETWORKS if apple is None else apple, cfg.APPLE_PROXY_NETWORKS),
        )


def request_reason(facts: RequestFacts) -> str | None:
    """``head-request`` / ``prefetch`` when the request itself shows a machine, else ``None``."""
    if facts.method == "HEAD":
        return HEAD_REQUEST
    for name, value in facts.announced:
        token = ANNOUNCING_HEADERS.get(name)
        if token is not None and token in value.lower():
            return PREFETCH
    return None


def classify(rules: BotPolicy, event_type: str, facts: RequestFacts) -> str | None:
    """The machine reason one request shows by itself (method/headers, user agent,
    network), or ``None``. The history reasons are added by the insert
    (:func:`history_verdict`)."""
    reason = request_reason(facts)
    if reason is not None:
        return reason
    reason = classify_user_agent(facts.user_agent, event_type)
    if reason is not None or not facts.ip:
        return reason
    return rules.network_reason(facts.ip, event_type)


# -- the message's history, decided by the tracking insert ----------------------------------

#: The bind parameters :func:`history_verdict` compares with (see :func:`history_bounds`).
HISTORY_BOUNDS = ("fast_after", "burst_after", "burst_before", "honeypot_after", "honeypot_before")


def _literal(reason: str) -> sa.ColumnElement[Any]:
    """A reason as an SQL string literal: part of the statement's text, not a parameter,
    and what the partial index ``ix_mailtrack_events_honeypot`` matches."""
    return sa.literal_column(f"'{reason}'", sa.String())


def history_verdict(link_id: sa.ColumnElement[Any], *, clicks: bool) -> sa.ColumnElement[Any]:
    """The reason the message's history gives a new event, as SQL evaluated in the
    ``SELECT ... FROM mailtrack_messages`` of the tracking insert (``NULL``: none).

    For clicks (``clicks``): ``honeypot`` when the message's honeypot link was hit within
    the honeypot window, either side of the event's time (an index seek on
    ``ix_mailtrack_events_honeypot``), else ``burst``
    when the message's latest click within the burst window is on another link or itself
    part of a burst (one backward seek of ``ix_mailtrack_events_message``, however many
    clicks the message has). For clicks and opens: ``too-fast-after-send`` when the
    message was sent within the after-send window. A window whose bound is ``NULL``
    (:func:`history_bounds` of a rule turned off) never fires.
    """
    whens: list[Any] = []
    if clicks:
        hit = events.alias("honeypot_hit")
        honeypot = sa.exists().where(
            hit.c.message_id == messages.c.id,
            hit.c.machine_reason == _literal(HONEYPOT),
            hit.c.link_id.is_(None),
            hit.c.occurred_at >= sa.bindparam("honeypot_after", type_=UTCDateTime()),
            hit.c.occurred_at <= sa.bindparam("honeypot_before", type_=UTCDateTime()),
        )
        prior = events.alias("prior")
        latest = (
            sa.select(sa.case(((prior.c.link_id != link_id) | (prior.c.machine_reason == _literal(BURST)),
                               sa.literal_column("1")), else_=sa.literal_column("0")))
            .where(prior.c.message_id == messages.c.id, prior.c.type == _literal("click"),
                   prior.c.occurred_at >= sa.bindparam("burst_after", type_=UTCDateTime()),
                   prior.c.occurred_at <= sa.bindparam("burst_before", type_=UTCDateTime()))
            .order_by(prior.c.occurred_at.desc())
            .limit(sa.literal_column("1")).offset(sa.literal_column("0"))  # text, not parameters
            .scalar_subquery()
        )
        whens += [(honeypot, _literal(HONEYPOT)), (latest == sa.literal_column("1"), _literal(BURST))]
    whens.append((messages.c.sent_at > sa.bindparam("fast_after", type_=UTCDateTime()), _literal(TOO_FAST)))
    return sa.case(*whens)


def history_bounds(rules: BotPolicy, at: dt.datetime) -> dict[str, dt.datetime | None]:
    """The values of :data:`HISTORY_BOUNDS` for an event at ``at`` (``None``: rule off).
    The burst and honeypot windows reach either side of ``at``, as the after-the-fact marking
    (:func:`reclassification`) does: a click replayed from the journal hours after it happened
    is judged by the history around its own time, not by clicks and hits that came later."""
    fast, burst, honeypot = rules.windows
    return {
        "fast_after": at - fast if fast is not None else None,
        "burst_after": at - burst if burst is not None else None,
        "burst_before": at + burst if burst is not None else None,
        "honeypot_after": at - honeypot if honeypot is not None else None,
        "honeypot_before": at + honeypot if honeypot is not None else None,
    }


def reclassification(rules: BotPolicy, event_type: str, link_id: str | None,
                     stored_reason: str | None) -> tuple[str, float] | None:
    """When a stored event reveals a machine after the fact: the reason to give the
    message's human clicks around it and the window (seconds either side), else ``None``.
    A honeypot hit (a click without a link) marks them ``honeypot``; a click the insert
    judged ``burst`` marks them ``burst``."""
    if event_type != "click":
        return None
    if stored_reason == HONEYPOT and link_id is None:
        return HONEYPOT, rules.honeypot_window_seconds
    if stored_reason == BURST:
        return BURST, rules.burst_seconds
    return None


__all__ = [
    "REASONS", "BotPolicy", "classify", "classify_user_agent", "request_reason",
    "history_verdict", "history_bounds", "reclassification", "ANNOUNCING_HEADERS",
    "DEFAULT_SCANNER_NETWORKS", "DEFAULT_APPLE_PROXY_NETWORKS",
]
