"""crm_mailtrack: email engagement tracking for Flask CRMs."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import inbound_models, signals, webhook_models  # *_models: their tables join ``metadata``
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidDestination,
    MailTrackError,
    NotFound,
    ValidationError,
)
from .extension import MailTrack
from .inbound_models import InboundMessage
from .models import (
    CampaignLink,
    ContactEvent,
    DNCReason,
    DoNotContact,
    EventType,
    Link,
    Message,
    MessageStatus,
    UtmTag,
    metadata,
)

try:
    __version__ = version("crm_mailtrack")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "MailTrack", "DNCReason", "EventType", "MessageStatus", "Message", "ContactEvent",
    "DoNotContact", "UtmTag", "InboundMessage", "Link", "CampaignLink", "metadata", "signals",
    "MailTrackError", "ConfigurationError", "InvalidDestination", "DatabaseUnavailable",
    "NotFound", "ValidationError", "__version__",
]
