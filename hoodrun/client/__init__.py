"""HoodRun's Python client: application logs and usage events, sent in the background.

Logs, with a project's API key (``POST /logs/v1``)::

    import logging
    from hoodrun.client import HoodRunLogHandler

    handler = HoodRunLogHandler("https://api.example.com", api_key="hr_...", service="shop")
    logging.getLogger().addHandler(handler)
    logging.getLogger("shop").error("order %s failed", 12, extra={"order": 12})

Usage events for the meters, with the admin token (``POST /api/v1/events``)::

    from hoodrun.client import UsageRecorder

    usage = UsageRecorder("https://api.example.com", token="...", source="llm-proxy")
    usage.record("org_acme", "llm.tokens", {"tokens": 120, "model": "small"})

Both buffer what they are given and send it in batches from a thread of their own, so the
application never waits for the network: a batch is retried (the same ids, so it is stored once)
after the server's ``Retry-After`` on 429 and 503 and with exponential backoff on network errors
and 5xx; one the server refuses (422, 401) is dropped and reported once on stderr. ``flush()``
waits for what was given so far; ``close()`` sends what waits for up to ``close_timeout``
seconds, and runs by itself when the process exits normally. ``sent``, ``retried``, ``dropped``
and ``pending`` count what happened. See ``hoodrun.client.logs`` and ``hoodrun.client.usage``.
"""

from __future__ import annotations

from hoodrun.client._batcher import ClientClosed, ClientError
from hoodrun.client.logs import HoodRunLogHandler
from hoodrun.client.usage import UsageRecorder

__all__ = ["ClientClosed", "ClientError", "HoodRunLogHandler", "UsageRecorder"]
