"""Webhooks: an org's endpoints get signed POSTs of the events that concern it.

::

    book = WebhookBook(store)
    endpoint = await book.create_endpoint(org_id, "https://example.com/hook", ["invoice.paid"])
    async with store.transaction() as conn:       # in the change's own transaction
        ...
        await book.emit(conn, "invoice.paid", org_id, {"invoice_id": ...})
    worker = Worker(queue, handlers(book, httpx.AsyncClient()))   # POSTs them, with retries

Receivers check ``HoodRun-Signature`` with ``verify_signature`` (see docs/webhooks.md). The
events members can get by mail are also mailed (``hoodrun.notify``, docs/notifications.md).
A customer's endpoint must name a public address: ``check_public_url``, which the admin API
calls for callers without a platform role and the portal for everyone.
"""

from __future__ import annotations

from hoodrun.webhooks.address import check_public_url
from hoodrun.webhooks.book import DELIVERY_KIND, EVENTS, Delivery, Endpoint, WebhookBook
from hoodrun.webhooks.deliver import body_of, handlers
from hoodrun.webhooks.errors import (
    DeliveryNotFound,
    EndpointNotFound,
    InvalidEndpoint,
    NotReplayable,
    OrgNotFound,
    WebhookError,
)
from hoodrun.webhooks.signing import SIGNATURE_HEADER, InvalidSignature, sign, verify_signature

__all__ = [
    "DELIVERY_KIND",
    "EVENTS",
    "SIGNATURE_HEADER",
    "Delivery",
    "DeliveryNotFound",
    "Endpoint",
    "EndpointNotFound",
    "InvalidEndpoint",
    "InvalidSignature",
    "NotReplayable",
    "OrgNotFound",
    "WebhookBook",
    "WebhookError",
    "body_of",
    "check_public_url",
    "handlers",
    "sign",
    "verify_signature",
]
