"""Fixtures of the upstream tests; the helpers live in ``support``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .support import Handler, MakeServer, TinyServer


@pytest.fixture
async def tiny_server() -> AsyncIterator[MakeServer]:
    """``await tiny_server(handler)`` starts a server that is closed after the test."""
    servers: list[TinyServer] = []

    async def make(handler: Handler) -> TinyServer:
        server = await TinyServer(handler).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()
