"""The webhooks' errors::

WebhookError
├── InvalidEndpoint     (a URL or event list the book refuses)
├── OrgNotFound
├── EndpointNotFound
├── DeliveryNotFound
└── NotReplayable       (only a failed delivery is sent again)
"""

from __future__ import annotations

__all__ = [
    "DeliveryNotFound",
    "EndpointNotFound",
    "InvalidEndpoint",
    "NotReplayable",
    "OrgNotFound",
    "WebhookError",
]


class WebhookError(Exception):
    """A webhook operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidEndpoint(WebhookError, ValueError):
    """The endpoint's URL or events are not valid."""


class OrgNotFound(WebhookError):
    """No such org."""


class EndpointNotFound(WebhookError):
    """No such webhook endpoint."""


class DeliveryNotFound(WebhookError):
    """No such webhook delivery."""


class NotReplayable(WebhookError):
    """Only a failed delivery can be sent again."""
