"""Fixtures and helpers of the identity tests (their conftest imports the fixtures)."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from hoodrun.config import Config, load_config
from hoodrun.identity import IdentityService, User
from hoodrun.identity.config import AuthConfig
from hoodrun.notify.mail import Mailer
from hoodrun.store import Store
from tests._smtp import SmtpSink
from tests._stores import FakeClock

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://portal.hoodrun.test"
SECRET = "test-jwt-secret-" + "x" * 32
PASSWORD = "correct horse battery"
# argon2id at its cheapest: the tests check behaviour, not cost.
FAST_AUTH = AuthConfig(
    jwt_secret=SECRET, argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1
)


@pytest.fixture(scope="session")
def base_config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


@pytest.fixture
def config(base_config: Config, smtp_sink: SmtpSink, tmp_path: Path) -> Config:
    return base_config.model_copy(
        update={"auth": FAST_AUTH, "smtp": smtp_sink.config(), "data_dir": tmp_path}
    )


def make_identity(
    store: Store, config: Config, clock: FakeClock, **auth: object
) -> IdentityService:
    if auth:
        config = config.model_copy(update={"auth": config.auth.model_copy(update=auth)})
    return IdentityService(
        store, config, Mailer(config.smtp), now=clock, public_url=PUBLIC_URL, env={}
    )


@pytest.fixture
def identity(store: Store, config: Config, clock: FakeClock) -> IdentityService:
    return make_identity(store, config, clock)


def link_token(message: EmailMessage, page: str) -> str:
    """The one-time token of the message's ``/portal/{page}`` link."""
    body = message.get_body(("plain",))
    assert body is not None
    found = re.search(
        rf"{re.escape(PUBLIC_URL)}/portal/{page}\?token=([A-Za-z0-9_\-]+)", body.get_content()
    )
    assert found is not None, body.get_content()
    return found.group(1)


async def verified_user(
    identity: IdentityService, sink: SmtpSink, email: str, *, org_name: str | None = None
) -> User:
    """A signed-up user who followed the verification link (password ``PASSWORD``)."""
    await identity.sign_up(email, PASSWORD, name=email.split("@")[0].title(), org_name=org_name)
    token = link_token(await sink.wait_for(email), "verify")
    return await identity.verify_email(token)
