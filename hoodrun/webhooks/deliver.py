"""The worker's ``webhook-deliver`` handler: POST one delivery, signed, and record the outcome.

A 2xx answer delivers it. 410 Gone disables the endpoint and fails the delivery (no retry).
Any other answer, or no answer (refused, timed out), is retried with the job queue's backoff
(``webhook-deliver``: 8 attempts); the last failed attempt marks the delivery ``failed``, which an
operator can replay (``POST /admin/v1/webhook-deliveries/{id}/replay``). A redirect is an answer
like any other non-2xx one: it is never followed. Every attempt carries the same
``HoodRun-Delivery`` id and body, so a receiver dedupes on it; the signature's timestamp is the
attempt's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from hoodrun import __version__
from hoodrun.jobs import Handler, Job, Permanent, Retry
from hoodrun.webhooks.book import DELIVERED, DELIVERY_KIND, FAILED, PENDING, WebhookBook
from hoodrun.webhooks.errors import DeliveryNotFound
from hoodrun.webhooks.signing import SIGNATURE_HEADER, sign

__all__ = ["REQUEST_TIMEOUT", "body_of", "handlers"]

REQUEST_TIMEOUT = 10.0  # seconds per POST; the job's timeout (30 s) bounds the whole attempt
_GONE = 410


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for a delivery's payload: the same on every attempt."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def handlers(book: WebhookBook, client: httpx.AsyncClient) -> dict[str, Handler]:
    """The ``webhook-deliver`` handler, by kind, POSTing with ``client`` (the caller's, closed by
    it; give it no base URL)."""

    async def deliver(job: Job) -> dict[str, Any]:
        delivery_id = job.payload.get("delivery_id")
        if not isinstance(delivery_id, str):
            raise Permanent(f"webhook-deliver job {job.id}: payload needs 'delivery_id'")
        try:
            delivery, endpoint = await book.target(delivery_id)
        except DeliveryNotFound as exc:
            raise Permanent(str(exc)) from None
        if delivery.status != PENDING:
            return {"delivery": delivery_id, "status": delivery.status}  # a job run twice
        if not endpoint.enabled:
            await book.record(
                delivery_id, status=FAILED, status_code=None, error="endpoint disabled"
            )
            return {"delivery": delivery_id, "status": FAILED}
        body = body_of(delivery.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"HoodRun-Webhooks/{__version__}",
            "HoodRun-Event": delivery.event_type,
            "HoodRun-Delivery": delivery.id,
            SIGNATURE_HEADER: sign(endpoint.secret, body, int(book.clock().timestamp())),
        }
        code: int | None = None
        try:
            # Never a redirect, whatever the client's default: a public endpoint could send the
            # worker on to an internal address (check_public_url judged the URL, not a Location).
            response = await client.post(
                endpoint.url,
                content=body,
                headers=headers,
                timeout=REQUEST_TIMEOUT,
                follow_redirects=False,
            )
            code = response.status_code
            error = None if response.is_success else f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if error is None:
            await book.record(delivery_id, status=DELIVERED, status_code=code, error=None)
            return {"delivery": delivery_id, "status": DELIVERED, "code": code}
        if code == _GONE:
            await book.record(
                delivery_id, status=FAILED, status_code=code, error=error, disable=True
            )
            return {"delivery": delivery_id, "status": FAILED, "code": code}
        last = job.attempts >= job.max_attempts
        await book.record(
            delivery_id, status=FAILED if last else PENDING, status_code=code, error=error
        )
        raise Retry(f"{endpoint.url}: {error}")

    return {DELIVERY_KIND: deliver}
