"""crm_mailtrack: email engagement tracking for Flask CRMs."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import signals, webhook_models  # webhook_models: its tables join ``metadata``
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidDestination,
    MailTrackError,
    NotFound,
    ValidationError,
)
from .extension import MailTrack
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
    "DoNotContact", "UtmTag", "Link", "CampaignLink", "metadata", "signals",
    "MailTrackError", "ConfigurationError", "InvalidDestination", "DatabaseUnavailable",
    "NotFound", "ValidationError", "__version__",
]
