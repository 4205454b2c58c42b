"""Mail out over SMTP (``smtp:`` in the config), one connection per message.

::

    mailer = Mailer(config.smtp)
    if mailer.enabled:
        await mailer.send("ada@example.com", "Verify your address", text, html)

TLS from the start with ``smtp.tls`` (port 465); otherwise STARTTLS whenever the server offers it
(``smtp.starttls``, the default), then LOGIN/PLAIN with ``smtp.username`` and ``smtp.password``
when a username is set. A refusal (the server's answer, an unreachable server, a timeout) raises
``MailError`` naming the server and its answer, never the password.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import aiosmtplib

from hoodrun.notify.config import SmtpConfig

__all__ = ["MailError", "Mailer"]


class MailError(Exception):
    """The mail could not be sent."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class Mailer:
    def __init__(self, config: SmtpConfig) -> None:
        self._config = config

    @property
    def enabled(self) -> bool:
        """False without ``smtp.host``: nothing can be sent."""
        return bool(self._config.host)

    @property
    def server(self) -> str:
        """``host:port`` of the SMTP server (for messages)."""
        return f"{self._config.host}:{self._config.port}"

    def message(self, to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
        """The message ``send`` sends: text, with ``html`` as its alternative."""
        message = EmailMessage()
        try:
            message["From"] = self._config.sender
            message["To"] = to
            message["Subject"] = subject
        except ValueError as exc:  # a CR or LF in a header: never let it through
            raise MailError(f"mail to {to!r} not sent: {exc}") from exc
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=_domain(self._config.sender))
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Send one message to ``to``; ``MailError`` when it is refused or cannot be sent."""
        config = self._config
        if not config.host:
            raise MailError("mail not sent: smtp.host unset")
        message = self.message(to, subject, text, html)
        try:
            await aiosmtplib.send(
                message,
                hostname=config.host,
                port=config.port,
                username=config.username,
                password=config.password if config.username else None,
                use_tls=config.tls,
                # None: STARTTLS if the server offers it; False: never.
                start_tls=False if config.tls or not config.starttls else None,
                timeout=config.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            answers = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise MailError(f"mail to {to} refused by {self.server}: {answers}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise MailError(
                f"mail to {to} refused by {self.server}: {exc.code} {exc.message}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise MailError(f"mail to {to} not sent via {self.server}: {reason}") from exc


def _domain(sender: str) -> str | None:
    address = parseaddr(sender)[1]
    try:
        return Address(addr_spec=address).domain or None
    except (ValueError, IndexError):
        return None
