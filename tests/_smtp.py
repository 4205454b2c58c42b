"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 (a free port), in its own thread,
keeping every message it accepts.

Suites use the ``smtp_sink`` fixture (``from tests._smtp import smtp_sink`` in their conftest)::

    config = config.model_copy(update={"smtp": smtp_sink.config()})
    ...
    message = await smtp_sink.wait_for("ada@example.com")      # an EmailMessage
    assert "verify" in message["Subject"].lower()

``refuse`` names recipients answered 550; ``credentials`` (user, password) is what an AUTH must
give (a client that does not AUTH is still accepted).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from hoodrun.notify.config import SmtpConfig

__all__ = ["SmtpSink", "smtp_sink"]


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    credentials: tuple[str, str] | None = None
    logins: list[str] = field(default_factory=list)
    """The user names that logged in."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def config(self, **overrides: Any) -> SmtpConfig:
        """An ``smtp:`` section sending here (plain SMTP: the sink offers no TLS)."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "sender": "HoodRun <no-reply@hoodrun.test>",
            "timeout": 5.0,
        }
        return SmtpConfig(**(values | overrides))

    def to(self, address: str) -> list[EmailMessage]:
        """The messages received for ``address``, the oldest first."""
        wanted = address.lower()
        with self.lock:
            return [m for m in self.messages if wanted in _recipients(m)]

    async def wait_for(
        self, address: str, *, count: int = 1, timeout: float = 10.0
    ) -> EmailMessage:
        """The ``count``-th message for ``address`` once it has arrived (fails after
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.to(address)
            if len(received) >= count:
                return received[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no message #{count} for {address} within {timeout} s "
                    f"(got {len(received)}; all: {[m['To'] for m in self.messages]})"
                )
            await asyncio.sleep(0.02)


def _recipients(message: EmailMessage) -> set[str]:
    return {address.addr_spec.lower() for address in message["To"].addresses}


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.lower() in self.sink.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.sink.lock:
            self.sink.messages.append(parsed)
        return "250 Message accepted for delivery"


def _authenticator(sink: SmtpSink) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword) or sink.credentials is None:
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        if (user, password) != sink.credentials:
            return AuthResult(success=False, handled=False)
        with sink.lock:
            sink.logins.append(user)
        return AuthResult(success=True)

    return check


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    for attempt in range(5):
        sink.port = _free_port()
        controller = Controller(
            _Handler(sink),
            hostname=sink.host,
            port=sink.port,
            authenticator=_authenticator(sink),
            auth_require_tls=False,
            auth_required=False,
        )
        try:
            controller.start()
            break
        except OSError:  # the port was taken between the probe and the bind
            if attempt == 4:
                raise
    try:
        yield sink
    finally:
        controller.stop()
