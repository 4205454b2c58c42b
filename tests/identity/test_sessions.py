"""Accounts and sessions on SQLite and PostgreSQL, with mail through a real SMTP server: sign-up,
the verification mail, login, the JWT's claims, refresh rotation and reuse, logout, password
reset, the login throttle."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from sqlalchemy import select

from hoodrun.config import Config
from hoodrun.identity import (
    AccountDisabled,
    BadCredentials,
    EmailNotVerified,
    EmailTaken,
    IdentityService,
    InvalidInput,
    InvalidLink,
    InvalidToken,
    SignupClosed,
    Throttled,
    WeakPassword,
    permissions_of,
    resolve_jwt_secret,
)
from hoodrun.identity.config import AuthConfig
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import audit_log, sessions, users
from tests._smtp import SmtpSink
from tests._stores import FakeClock
from tests.identity.support import (
    PASSWORD,
    PUBLIC_URL,
    SECRET,
    link_token,
    make_identity,
    verified_user,
)

ADA = "ada@example.com"


async def test_sign_up_verify_log_in_refresh_and_log_out(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, clock: FakeClock
) -> None:
    user = await identity.sign_up(" Ada@Example.com ", PASSWORD, name="Ada", org_name="Analytical")
    assert user.email == ADA and user.name == "Ada" and not user.email_verified
    mail = await smtp_sink.wait_for(ADA)
    assert mail["Subject"] == "Verify your HoodRun email address"
    assert mail["From"] == "HoodRun <no-reply@hoodrun.test>"
    token = link_token(mail, "verify")
    html = mail.get_body(("html",))
    assert html is not None and f"{PUBLIC_URL}/portal/verify?token={token}" in html.get_content()

    with pytest.raises(EmailNotVerified) as refused:
        await identity.login(ADA, PASSWORD)
    assert refused.value.status == 403
    assert (await identity.verify_email(token)).email_verified
    with pytest.raises(InvalidLink):  # a link works once
        await identity.verify_email(token)

    session = await identity.login("ADA@example.com", PASSWORD, ip="203.0.113.7")
    (membership,) = await identity.memberships(user.id)
    assert membership.org_name == "Analytical" and membership.role == "admin"
    assert session.expires_in == 3600
    payload = jwt.decode(
        session.access_token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert jwt.get_unverified_header(session.access_token)["alg"] == "HS256"
    assert payload == {
        "sub": user.id,
        "email": ADA,
        "name": "Ada",
        "org": membership.org_id,
        "roles": ["admin"],
        "orgs": {membership.org_id: "admin"},
        "prole": None,
        "scopes": sorted(permissions_of(["admin"])),
        "tier": None,
        "sid": session.claims.session_id,
        "iat": int(clock.now.timestamp()),
        "exp": int(clock.now.timestamp()) + 3600,
        "iss": "hoodrun",
        "typ": "access",
    }
    claims = identity.decode(session.access_token)
    assert claims == session.claims and claims.org_id == membership.org_id
    assert await identity.authenticate(session.access_token) == claims
    async with store.connect() as conn:
        row = (await conn.execute(select(sessions))).mappings().one()
    assert row["ip"] == "203.0.113.7" and session.refresh_token not in json.dumps(
        dict(row), default=str
    )

    # Refresh rotates: a new refresh token, the old one spent.
    clock.advance(timedelta(minutes=10))
    renewed = await identity.refresh(session.refresh_token)
    assert renewed.refresh_token != session.refresh_token
    assert renewed.claims.session_id == session.claims.session_id
    assert identity.decode(renewed.access_token).expires_at == clock.now + timedelta(hours=1)
    # The old one again: taken as stolen, the whole session ends.
    with pytest.raises(InvalidToken, match="already used"):
        await identity.refresh(session.refresh_token)
    with pytest.raises(InvalidToken):
        await identity.refresh(renewed.refresh_token)
    with pytest.raises(InvalidToken):  # decode alone cannot know; authenticate does
        await identity.authenticate(renewed.access_token)
    assert identity.decode(renewed.access_token).user_id == user.id

    # Logout ends the session; access tokens then die by their expiry.
    other = await identity.login(ADA, PASSWORD)
    await identity.logout(other.refresh_token)
    await identity.logout(other.refresh_token)  # idempotent
    with pytest.raises(InvalidToken):
        await identity.refresh(other.refresh_token)
    clock.advance(timedelta(hours=1))
    with pytest.raises(InvalidToken, match="expired"):
        identity.decode(other.access_token)

    entries = await _audit(store)
    assert [e.action for e in reversed(entries)][:4] == [
        "org.create",
        "member.add",
        "user.signup",
        "user.verify",
    ]
    text = json.dumps([e.details for e in entries] + [e.after for e in entries], default=str)
    assert PASSWORD not in text and token not in text and "argon2" not in text


async def test_forged_expired_and_foreign_tokens_are_refused(
    identity: IdentityService, smtp_sink: SmtpSink, clock: FakeClock
) -> None:
    await verified_user(identity, smtp_sink, ADA)
    session = await identity.login(ADA, PASSWORD)
    header, body, signature = session.access_token.split(".")
    for bad in [
        "not-a-jwt",
        f"{header}.{body}.{signature[::-1]}",
        jwt.encode({"sub": "usr_x"}, SECRET, algorithm="HS256"),  # lacks the claims
        jwt.encode({**_payload(identity, session.access_token), "typ": "refresh"}, SECRET),
        jwt.encode(_payload(identity, session.access_token), "another-secret-" + "y" * 32),
        jwt.encode(_payload(identity, session.access_token), None, algorithm="none"),
    ]:
        with pytest.raises(InvalidToken):
            identity.decode(bad)
    for bad_refresh in ["", "nonsense", "ses_unknown.abc", session.refresh_token + "x"]:
        with pytest.raises(InvalidToken):
            await identity.refresh(bad_refresh)
    clock.advance(timedelta(days=31))  # past auth.refresh_ttl: the session itself expired
    with pytest.raises(InvalidToken):
        await identity.refresh(session.refresh_token)


def _payload(identity: IdentityService, token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_password_reset_by_mail_ends_every_session(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, clock: FakeClock
) -> None:
    user = await verified_user(identity, smtp_sink, ADA)
    first = await identity.login(ADA, PASSWORD)
    second = await identity.login(ADA, PASSWORD)
    await identity.request_password_reset("nobody@example.com")  # nothing said, nothing sent
    await identity.request_password_reset(ADA)
    mail = await smtp_sink.wait_for(ADA, count=2)
    assert mail["Subject"] == "Reset your HoodRun password"
    token = link_token(mail, "reset")
    assert smtp_sink.to("nobody@example.com") == []

    with pytest.raises(WeakPassword, match="at least 10"):
        await identity.reset_password(token, "short")
    new_password = "a much better passphrase"
    await identity.reset_password(token, new_password)
    for session in (first, second):
        with pytest.raises(InvalidToken):
            await identity.refresh(session.refresh_token)
    with pytest.raises(BadCredentials):
        await identity.login(ADA, PASSWORD)
    assert (await identity.login(ADA, new_password)).claims.user_id == user.id
    with pytest.raises(InvalidLink):
        await identity.reset_password(token, "yet another passphrase")

    # A second request within a minute sends nothing (no mail bombing); later ones expire.
    clock.advance(timedelta(minutes=2))
    await identity.request_password_reset(ADA)
    await identity.request_password_reset(ADA)
    late = link_token(await smtp_sink.wait_for(ADA, count=3), "reset")
    clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(InvalidLink):
        await identity.reset_password(late, "yet another passphrase")
    assert len(smtp_sink.to(ADA)) == 3
    reset = next(e for e in await _audit(store) if e.action == "user.password_reset")
    assert reset.target_id == user.id and reset.details == {"sessions_ended": 2}


async def test_password_change_keeps_the_current_session_only(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    await verified_user(identity, smtp_sink, ADA)
    mine, other = await identity.login(ADA, PASSWORD), await identity.login(ADA, PASSWORD)
    user_id = mine.claims.user_id
    with pytest.raises(BadCredentials):
        await identity.change_password(user_id, "not the password", "new passphrase 1")
    with pytest.raises(WeakPassword, match="email"):
        await identity.change_password(user_id, PASSWORD, ADA.upper())
    await identity.change_password(
        user_id, PASSWORD, "new passphrase 1", keep_session=mine.claims.session_id
    )
    await identity.refresh(mine.refresh_token)
    with pytest.raises(InvalidToken):
        await identity.refresh(other.refresh_token)
    await identity.login(ADA, "new passphrase 1")


async def test_sign_up_refuses_bad_input_with_clear_messages(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, config: Config, clock: FakeClock
) -> None:
    with pytest.raises(WeakPassword, match="at least 10 characters") as short:
        await identity.sign_up(ADA, "123456789")
    assert short.value.status == 400 and short.value.code == "weak_password"
    with pytest.raises(WeakPassword, match="must not be your email address"):
        await identity.sign_up(ADA, "ADA@example.com")
    with pytest.raises(WeakPassword, match="at most"):
        await identity.sign_up(ADA, "x" * 300)
    for bad in ["ada", "ada@", "@example.com", "ada@example", "a b@example.com"]:
        with pytest.raises(InvalidInput, match="email"):
            await identity.sign_up(bad, PASSWORD)
    await identity.sign_up(ADA, PASSWORD)
    with pytest.raises(EmailTaken) as taken:
        await identity.sign_up("ADA@EXAMPLE.COM", PASSWORD)
    assert taken.value.status == 409
    # Orgs are named after the address unless told; a taken name gets a suffix.
    await identity.sign_up("ada@example.org", PASSWORD)
    names = sorted(
        [m.org_name for u in await identity.users() for m in await identity.memberships(u.id)]
    )
    assert names[0] == "ada" and names[1].startswith("ada-") and len(names) == 2
    closed = make_identity(store, config, clock, signup=False)
    with pytest.raises(SignupClosed):
        await closed.sign_up("bob@example.com", PASSWORD)


async def test_a_wrong_password_never_says_whether_the_email_exists(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    await verified_user(identity, smtp_sink, ADA)
    errors = []
    for email in [ADA, "nobody@example.com", "not an email"]:
        with pytest.raises(BadCredentials) as refused:
            await identity.login(email, "wrong password!")
        errors.append((refused.value.status, refused.value.code, refused.value.message))
    assert errors == [(401, "bad_credentials", "Wrong email or password.")] * 3


async def test_the_throttle_counts_failures_per_email_and_per_address(
    identity: IdentityService, smtp_sink: SmtpSink, clock: FakeClock
) -> None:
    await verified_user(identity, smtp_sink, ADA)
    # A success clears the account's failures.
    for _ in range(4):
        with pytest.raises(BadCredentials):
            await identity.login(ADA, "wrong password!", ip="198.51.100.1")
    await identity.login(ADA, PASSWORD, ip="198.51.100.1")
    for _ in range(5):  # auth.max_failures
        clock.advance(timedelta(seconds=10))
        with pytest.raises(BadCredentials):
            await identity.login(ADA, "wrong password!", ip="198.51.100.2")
    with pytest.raises(Throttled) as throttled:  # even the right password, from anywhere
        await identity.login(ADA, PASSWORD, ip="198.51.100.3")
    assert throttled.value.status == 429 and throttled.value.code == "too_many_attempts"
    # Allowed again once the oldest failure leaves the 900 s window.
    assert throttled.value.retry_after == 900 - 40
    clock.advance(timedelta(seconds=throttled.value.retry_after))
    await identity.login(ADA, PASSWORD, ip="198.51.100.3")

    # One address guessing across accounts: 4 x max_failures, then refused for any account.
    ip = "192.0.2.66"
    for n in range(20):
        with pytest.raises(BadCredentials):
            await identity.login(f"user{n}@example.com", "wrong password!", ip=ip)
    with pytest.raises(Throttled):
        await identity.login(ADA, PASSWORD, ip=ip)
    await identity.login(ADA, PASSWORD, ip="192.0.2.67")


async def test_unverified_or_disabled_accounts_cannot_log_in(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, config: Config, clock: FakeClock
) -> None:
    await identity.sign_up(ADA, PASSWORD)
    with pytest.raises(EmailNotVerified):
        await identity.login(ADA, PASSWORD)
    with pytest.raises(BadCredentials):  # the wrong password still says nothing more
        await identity.login(ADA, "wrong password!")
    relaxed = make_identity(store, config, clock, require_verified_email=False)
    session = await relaxed.login(ADA, PASSWORD)

    user = await identity.set_disabled(session.claims.user_id, True, actor="test")
    assert user.disabled
    with pytest.raises(AccountDisabled) as refused:
        await relaxed.login(ADA, PASSWORD)
    assert refused.value.status == 403
    with pytest.raises(InvalidToken):  # its sessions ended with it
        await relaxed.refresh(session.refresh_token)
    await identity.set_disabled(user.id, False, actor="test")
    await relaxed.login(ADA, PASSWORD)


async def test_resending_the_verification_mail(
    identity: IdentityService, smtp_sink: SmtpSink, clock: FakeClock
) -> None:
    await identity.sign_up(ADA, PASSWORD)
    await identity.resend_verification(ADA)  # within a minute of the first: not sent
    await identity.resend_verification("nobody@example.com")
    clock.advance(timedelta(minutes=5))
    await identity.resend_verification(ADA)
    second = await smtp_sink.wait_for(ADA, count=2)
    first = smtp_sink.to(ADA)[0]
    assert link_token(first, "verify") != link_token(second, "verify")
    await identity.verify_email(link_token(first, "verify"))  # both links work, once
    await identity.resend_verification(ADA)  # verified: nothing more
    clock.advance(timedelta(minutes=5))
    await identity.resend_verification(ADA)
    assert len(smtp_sink.to(ADA)) == 2


async def test_hashes_are_made_again_when_the_cost_changes(
    store: Store, config: Config, clock: FakeClock, smtp_sink: SmtpSink
) -> None:
    cheap = make_identity(store, config, clock)
    await verified_user(cheap, smtp_sink, ADA)
    dearer = make_identity(store, config, clock, argon2_time_cost=2)
    await dearer.login(ADA, PASSWORD)
    async with store.connect() as conn:
        stored = await conn.scalar(select(users.c.password_hash))
    assert stored.startswith("$argon2id$") and ",t=2," in stored
    await cheap.login(ADA, PASSWORD)  # an old parameter set still verifies the new hash


async def test_tokens_and_passwords_never_reach_the_logs(
    store: Store,
    config: Config,
    clock: FakeClock,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    identity = make_identity(store, config, clock)
    await identity.sign_up(ADA, PASSWORD)
    token = link_token(await smtp_sink.wait_for(ADA), "verify")
    await identity.verify_email(token)
    session = await identity.login(ADA, PASSWORD)
    renewed = await identity.refresh(session.refresh_token)
    with pytest.raises(InvalidToken):
        await identity.refresh(session.refresh_token)  # logged: a session ended on reuse
    # Without smtp.host the mail is logged as not sent, without its link.
    unsent = make_identity(
        store,
        config.model_copy(update={"smtp": config.smtp.model_copy(update={"host": None})}),
        clock,
    )
    await unsent.sign_up("bob@example.com", PASSWORD)
    smtp_sink.refuse.add("carol@example.com")  # and a refused mail, likewise
    await identity.sign_up("carol@example.com", PASSWORD)
    # Everything logged but the test SMTP server's own log (the inbox, which holds the links).
    logged = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("mail.")
    )
    assert "mail not sent: smtp.host unset" in logged
    assert "550" in logged and "reused" in logged
    for secret in [PASSWORD, token, session.refresh_token, renewed.access_token, SECRET]:
        assert secret not in logged
    assert "token=" not in logged
    assert repr(session).count("eyJ") == 0 and session.refresh_token not in repr(session)


async def test_the_jwt_secret_comes_from_config_env_file_or_is_made_once(
    base_config: Config, tmp_path: Path
) -> None:
    def with_auth(**auth: object) -> Config:
        return base_config.model_copy(
            update={"auth": AuthConfig(**auth), "data_dir": tmp_path / "data"}  # type: ignore[arg-type]
        )

    assert resolve_jwt_secret(with_auth(jwt_secret=SECRET), env={}) == SECRET
    from_env = "e" * 40
    assert resolve_jwt_secret(with_auth(), env={"HOODRUN_JWT_SECRET": from_env}) == from_env
    with pytest.raises(ValueError, match="HOODRUN_JWT_SECRET"):
        resolve_jwt_secret(with_auth(), env={"HOODRUN_JWT_SECRET": "short"})
    secret_file = tmp_path / "jwt"
    secret_file.write_text("f" * 40 + "\n")
    assert resolve_jwt_secret(with_auth(jwt_secret_file=secret_file), env={}) == "f" * 40
    made = resolve_jwt_secret(with_auth(), env={})
    path = tmp_path / "data" / "jwt.secret"
    assert len(made) >= 32 and path.read_text().strip() == made
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert resolve_jwt_secret(with_auth(), env={}) == made  # the same on every start
    assert sorted(p.name for p in path.parent.iterdir()) == ["jwt.secret"]


async def _audit(store: Store) -> list:  # type: ignore[type-arg]
    async with store.connect() as conn:
        assert await conn.scalar(select(audit_log.c.id).limit(1)) is not None
        return await read_audit(conn, limit=1000)


async def test_concurrent_guesses_cannot_pass_the_throttle_together(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    await verified_user(identity, smtp_sink, ADA)

    async def guess() -> str:
        try:
            await identity.login(ADA, "wrong password!", ip="198.51.100.9")
        except Throttled:
            return "throttled"
        except BadCredentials:
            return "checked"
        return "in"

    results = await asyncio.gather(*(guess() for _ in range(30)))
    # Each guess is counted before its password is checked: only max_failures are checked.
    assert results.count("checked") == 5 and results.count("throttled") == 25


async def test_a_removed_member_loses_their_rights_at_once(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    ada = await verified_user(identity, smtp_sink, ADA, org_name="acme")
    org_id = (await identity.memberships(ada.id))[0].org_id
    bob = await verified_user(identity, smtp_sink, "bob@example.com")
    await identity.add_member(org_id, "bob@example.com", "admin", actor="test")
    token = (await identity.login("bob@example.com", PASSWORD, org_id=org_id)).access_token
    assert (await identity.authenticate(token)).orgs[org_id] == "admin"
    await identity.remove_member(org_id, bob.id, actor="test")
    # The token still says admin; what counts is what Bob holds now.
    assert identity.decode(token).orgs[org_id] == "admin"
    now = await identity.authenticate(token)
    assert org_id not in now.orgs and now.roles == () and "members:write" not in now.scopes


async def test_logging_out_takes_the_refresh_tokens_secret(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    await verified_user(identity, smtp_sink, ADA)
    session = await identity.login(ADA, PASSWORD)
    session_id = session.refresh_token.split(".", 1)[0]
    await identity.logout(f"{session_id}.not-the-secret")  # the id alone ends nothing
    refreshed = await identity.refresh(session.refresh_token)
    await identity.logout(refreshed.refresh_token)
    with pytest.raises(InvalidToken):
        await identity.authenticate(refreshed.access_token)
