"""The mailer against a real SMTP server (aiosmtpd): messages, logins, refusals."""

from __future__ import annotations

import pytest

from hoodrun.notify.config import SmtpConfig
from hoodrun.notify.mail import Mailer, MailError
from tests._smtp import SmtpSink


async def test_a_message_arrives_with_its_text_and_html(smtp_sink: SmtpSink) -> None:
    mailer = Mailer(smtp_sink.config())
    assert mailer.enabled
    await mailer.send("Ada@Example.com", "Hello", "plain words\n", "<p>rich words</p>")
    message = await smtp_sink.wait_for("ada@example.com")
    assert message["Subject"] == "Hello" and message["From"] == "HoodRun <no-reply@hoodrun.test>"
    assert message["Message-ID"].endswith("@hoodrun.test>") and message["Date"]
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "plain words"
    assert html is not None and "<p>rich words</p>" in html.get_content()


async def test_it_logs_in_when_told_and_names_the_servers_refusals(smtp_sink: SmtpSink) -> None:
    smtp_sink.credentials = ("mailer", "s3cret-pass")
    await Mailer(smtp_sink.config(username="mailer", password="s3cret-pass")).send(
        "ada@example.com", "s", "t"
    )
    assert smtp_sink.logins == ["mailer"]
    with pytest.raises(MailError, match="535") as refused:
        await Mailer(smtp_sink.config(username="mailer", password="wrong-pass")).send(
            "ada@example.com", "s", "t"
        )
    assert "wrong-pass" not in str(refused.value)
    smtp_sink.refuse.add("bob@example.com")
    with pytest.raises(MailError, match=r"bob@example.com refused by 127.0.0.1:\d+: 550"):
        await Mailer(smtp_sink.config()).send("bob@example.com", "s", "t")
    with pytest.raises(MailError, match="not sent"):
        await Mailer(smtp_sink.config(port=1, timeout=2.0)).send("ada@example.com", "s", "t")
    with pytest.raises(MailError):  # no header injection
        await Mailer(smtp_sink.config()).send("ada@example.com", "hi\r\nBcc: eve@example.com", "t")
    assert len(smtp_sink.to("ada@example.com")) == 1


async def test_without_a_host_nothing_is_sent() -> None:
    mailer = Mailer(SmtpConfig())
    assert not mailer.enabled
    with pytest.raises(MailError, match=r"smtp\.host unset"):
        await mailer.send("ada@example.com", "s", "t")
