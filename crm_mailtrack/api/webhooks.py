"""Outbound webhooks: the tenant's endpoints (subscribe, list, show, enable, delete) and each
endpoint's delivery log. Delivery itself runs in ``flask mailtrack deliver-webhooks`` or the
Celery task, never in a request (services/webhooks.py)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from ..errors import NotFound
from ..models import EVENT_TYPES
from ..services import webhooks as service
from ..state import get_state
from .core import current_tenant, iso
from .fields import Text, Timestamp, http_url
from .routing import Routes
from .schemas import BodySchema, QuerySchema

routes = Routes()
_TAGS = ["webhooks"]
WEBHOOK = {"webhook_id": "The webhook's id, as created."}
_MAX_ID = 32


class WebhookBodySchema(BodySchema):
    url = Text(required=True, max_length=2048, pattern=http_url,
               metadata={"description": "Where events are POSTed (http or https)."})
    event_types = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)), data_key="eventTypes",
                              load_default=list, validate=validate.Length(max=len(EVENT_TYPES)),
                              metadata={"description": "Event types to send; empty or absent: all."})
    description = Text(max_length=255, allow_none=True, load_default=None)


class DeliveriesQuerySchema(QuerySchema):
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 500))
    status = fields.String(load_default=None, validate=validate.OneOf(("pending", "delivered", "failed")))


class WebhookSchema(ma.Schema):
    id = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String(), data_key="eventTypes")
    description = fields.String(allow_none=True)
    enabled = fields.Boolean()
    disabled_reason = fields.String(data_key="disabledReason", allow_none=True, metadata={
        "description": "Why the endpoint was disabled (failed attempts in a row); null while enabled."})
    failure_streak = fields.Integer(data_key="failureStreak", metadata={
        "description": "Failed attempts in a row; MAILTRACK_OUTBOUND_WEBHOOK_DISABLE_AFTER disables it."})
    created_at = Timestamp(data_key="createdAt")


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={
        "description": "The signing secret (whsec_...), shown only here: verify webhook-signature with it."})


class WebhookRotatedSchema(WebhookCreatedSchema):
    secret = fields.String(metadata={
        "description": "The new signing secret (whsec_...), shown only here. Until previousSecretValidUntil "
                       "deliveries carry two v1 signatures in webhook-signature, one with each key."})
    previous_secret_valid_until = fields.Function(
        lambda e: iso(e.secret_rotated_at + service.SECRET_OVERLAP),
        data_key="previousSecretValidUntil",
        metadata={"type": "string", "format": "date-time",
                  "description": "Until when deliveries are signed with the previous secret too (24 hours)."})


class WebhookListSchema(ma.Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema))


class DeliverySchema(ma.Schema):
    id = fields.Integer()
    event_id = fields.Function(lambda d: service.event_msg_id(d.event_id), data_key="eventId",
                               metadata={"description": "The webhook-id header sent (stable across retries)."})
    event_type = fields.String(data_key="eventType")
    status = fields.String(metadata={"description": "pending, delivered or failed (retries exhausted)."})
    attempts = fields.Integer()
    next_attempt_at = Timestamp(data_key="nextAttemptAt", allow_none=True)
    last_attempt_at = Timestamp(data_key="lastAttemptAt", allow_none=True)
    last_status = fields.Integer(data_key="lastStatus", allow_none=True,
                                 metadata={"description": "The receiver's last HTTP status, if any."})
    last_error = fields.String(data_key="lastError", allow_none=True)
    created_at = Timestamp(data_key="createdAt")


class DeliveryListSchema(ma.Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema))


def _endpoint(webhook_id: str) -> Any:
    if len(webhook_id) > _MAX_ID:
        raise NotFound("No such webhook.")
    return service.get_endpoint(get_state(), current_tenant(), webhook_id)


@routes.route("/webhooks", summary="The tenant's webhooks", tags=_TAGS, response=WebhookListSchema,
              errors=(401, 406))
def list_webhooks() -> dict[str, Any]:
    """Every endpoint of the tenant, oldest first (without secrets)."""
    return {"webhooks": service.list_endpoints(get_state(), current_tenant())}


@routes.route("/webhooks", methods=["POST"], summary="Subscribe a URL to events", tags=_TAGS,
              body=WebhookBodySchema, response=WebhookCreatedSchema, status=201, errors=(400, 401, 406, 422))
def create_webhook(body: dict[str, Any]) -> Any:
    """Events recorded from now on are POSTed to ``url``, signed per Standard Webhooks with the
    ``secret`` returned here (and only here)."""
    return service.create_endpoint(get_state(), current_tenant(), body["url"], body["event_types"],
                                   body.get("description"))


@routes.route("/webhooks/<webhook_id>", summary="One webhook", tags=_TAGS, response=WebhookSchema,
              path_params=WEBHOOK, errors=(401, 404, 406))
def show_webhook(webhook_id: str) -> Any:
    return _endpoint(webhook_id)


@routes.route("/webhooks/<webhook_id>", methods=["DELETE"], summary="Delete a webhook and its log", tags=_TAGS,
              status=204, path_params=WEBHOOK, errors=(401, 404, 406))
def delete_webhook(webhook_id: str) -> None:
    _endpoint(webhook_id)
    service.delete_endpoint(get_state(), current_tenant(), webhook_id)


@routes.route("/webhooks/<webhook_id>/enable", methods=["POST"], summary="Enable a disabled webhook", tags=_TAGS,
              response=WebhookSchema, path_params=WEBHOOK, errors=(401, 404, 406))
def enable_webhook(webhook_id: str) -> Any:
    """Its failure streak starts over; deliveries that waited go out at the next run."""
    _endpoint(webhook_id)
    return service.enable_endpoint(get_state(), current_tenant(), webhook_id)


@routes.route("/webhooks/<webhook_id>/rotate-secret", methods=["POST"], summary="Give a webhook a new secret",
              tags=_TAGS, response=WebhookRotatedSchema, path_params=WEBHOOK, errors=(401, 404, 406))
def rotate_webhook_secret(webhook_id: str) -> Any:
    """The new ``secret`` is returned here, once. For 24 hours deliveries are signed with the
    new and the previous secret (two ``v1,`` signatures in ``webhook-signature``, as Standard
    Webhooks allows), so the receiver can switch keys without losing events; then with the
    new one only. Rotating again within that time drops the oldest key."""
    _endpoint(webhook_id)
    return service.rotate_secret(get_state(), current_tenant(), webhook_id)


@routes.route("/webhooks/<webhook_id>/deliveries", summary="A webhook's delivery log", tags=_TAGS,
              query=DeliveriesQuerySchema, response=DeliveryListSchema, path_params=WEBHOOK,
              errors=(401, 404, 406, 422))
def webhook_deliveries(webhook_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """Newest first: each event's delivery, its attempts and the last answer."""
    _endpoint(webhook_id)
    return {"deliveries": service.list_deliveries(get_state(), current_tenant(), webhook_id,
                                                  limit=query["limit"], status=query["status"])}
