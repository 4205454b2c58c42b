"""The identity service's shared parts: its state, input checks, mailed tokens, mail."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.config import Config
from hoodrun.identity import _queries as q
from hoodrun.identity import messages
from hoodrun.identity.errors import (
    EmailTaken,
    InvalidInput,
    InvalidLink,
    InvalidRole,
    MemberNotFound,
    OrgNameTaken,
)
from hoodrun.identity.passwords import Passwords
from hoodrun.identity.records import Membership, User
from hoodrun.identity.roles import ROLES
from hoodrun.identity.throttle import LoginThrottle
from hoodrun.identity.tokens import hash_token, resolve_jwt_secret
from hoodrun.notify.mail import Mailer, MailError
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.audit import AuditOrigin, audit_origin
from hoodrun.store.tables import email_tokens, memberships, orgs, users

__all__ = [
    "MAIL_INTERVAL",
    "MAX_EMAIL",
    "MAX_NAME",
    "MAX_ORG",
    "RESET",
    "VERIFY",
    "Core",
    "check_email",
    "check_label",
    "check_role",
    "client_ip",
    "public_fields",
    "user_actor",
]

logger = logging.getLogger(__name__)

VERIFY, RESET = "verify", "reset"
# A second verification or reset mail for one account within this is not sent (mail bombing).
MAIL_INTERVAL = timedelta(seconds=60)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
MAX_EMAIL, MAX_NAME, MAX_ORG = 320, 128, 64


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_email(value: str) -> str:
    email = value.strip().lower()
    if len(email) > MAX_EMAIL or not _EMAIL.match(email):
        raise InvalidInput(f"email: {value[:80]!r} is not an email address")
    return email


def check_label(field: str, value: str, limit: int) -> str:
    text = value.strip()
    if len(text) > limit or not text.isprintable():
        raise InvalidInput(f"{field}: up to {limit} printable characters")
    return text


def check_role(role: str | None, *, optional: bool = False) -> str | None:
    if role is None and optional:
        return None
    if role not in ROLES:
        raise InvalidRole(f"role {role!r}: use one of {', '.join(ROLES)}")
    return role


def user_actor(user_id: str) -> str:
    return f"user:{user_id}"  # as hoodrun.api.rbac names a user calling the API


@contextmanager
def client_ip(ip: str | None) -> Iterator[None]:
    """Audit rows written inside carry ``ip``, unless the request being served (the API's
    audit trail) already says where it comes from."""
    if ip is None or audit_origin.get() is not None:
        yield
        return
    token = audit_origin.set(AuditOrigin(ip=ip))
    try:
        yield
    finally:
        audit_origin.reset(token)


class Core:
    """The state every part of the service shares, and what they all need of it."""

    def __init__(
        self,
        store: Store,
        config: Config,
        mailer: Mailer | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        public_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._auth = config.auth
        self._mailer = mailer
        self._clock = now or _utc_now
        self._public_url = public_url or config.web.public_url or f"http://{config.api_listen}"
        self._secret = resolve_jwt_secret(config, env)
        self._passwords = Passwords(config.auth)
        self._throttle = LoginThrottle(config.auth)

    @property
    def config(self) -> Config:
        return self._config

    def now(self) -> datetime:
        return self._clock()

    async def _insert_user(
        self,
        conn: AsyncConnection,
        email: str,
        name: str,
        password_hash: str | None,
        *,
        now: datetime,
        verified: bool,
        platform_role: str | None = None,
    ) -> str:
        user_id = new_id("usr")
        values = {
            "id": user_id,
            "email": email,
            "name": name,
            "password_hash": password_hash,
            "email_verified_at": now if verified else None,
            "platform_role": platform_role,
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        stmt = self._store.insert(users).values(values)
        inserted = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[users.c.email]))
        if inserted.rowcount != 1:
            raise EmailTaken()
        return user_id

    async def _create_org(
        self, conn: AsyncConnection, wanted: str | None, email: str, *, now: datetime, actor: str
    ) -> str:
        """A new org named ``wanted`` (``OrgNameTaken``), else after the address's local part
        (with a random suffix while that is taken)."""
        base = re.sub(r"[^a-z0-9-]+", "-", email.split("@", 1)[0]).strip("-")[:40] or "org"
        candidates = [wanted] if wanted is not None else [base]
        if wanted is None:
            candidates += [f"{base}-{secrets.token_hex(3)}" for _ in range(5)]
        for name in candidates:
            org_id = new_id("org")
            stmt = self._store.insert(orgs).values(id=org_id, name=name, plan=None, created_at=now)
            inserted = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[orgs.c.name]))
            if inserted.rowcount == 1:
                await write_audit(
                    conn, at=now, actor=actor, action="org.create", target_type="org",
                    target_id=org_id, details={"name": name}, after={"name": name},
                )  # fmt: skip
                return org_id
        raise OrgNameTaken(f"an org named {candidates[0]!r} exists; choose another name")

    async def _insert_member(
        self, conn: AsyncConnection, org_id: str, user_id: str, role: str, *, now: datetime,
        actor: str,
    ) -> None:  # fmt: skip
        await conn.execute(
            insert(memberships).values(user_id=user_id, org_id=org_id, role=role, created_at=now)
        )
        await write_audit(
            conn, at=now, actor=actor, action="member.add", target_type="org",
            target_id=org_id, details={"user_id": user_id}, after={"role": role},
        )  # fmt: skip

    async def _role_in(self, conn: AsyncConnection, org_id: str, user_id: str) -> str | None:
        role = await conn.scalar(
            select(memberships.c.role)
            .where(memberships.c.org_id == org_id)
            .where(memberships.c.user_id == user_id)
        )
        return None if role is None else str(role)

    async def _member(self, conn: AsyncConnection, org_id: str, user_id: str) -> Membership:
        rows = await q.membership_rows(conn, user_id=user_id, org_id=org_id)
        if not rows:
            raise MemberNotFound(f"user {user_id} is not a member of {org_id}")
        return Membership.of(rows[0])

    async def _issue(
        self, conn: AsyncConnection, token: str, user_id: str, purpose: str, now: datetime, ttl: int
    ) -> bool:
        """Store a mailed token's hash; False (nothing stored) within ``MAIL_INTERVAL`` of the
        account's last one for ``purpose``."""
        last = await conn.scalar(
            select(email_tokens.c.created_at)
            .where(email_tokens.c.user_id == user_id)
            .where(email_tokens.c.purpose == purpose)
            .order_by(email_tokens.c.created_at.desc())
            .limit(1)
        )
        if last is not None and now - last < MAIL_INTERVAL:
            return False
        # Spent and expired tokens of the account serve no purpose any more.
        await conn.execute(
            delete(email_tokens)
            .where(email_tokens.c.user_id == user_id)
            .where(email_tokens.c.expires_at <= now)
        )
        await conn.execute(
            insert(email_tokens).values(
                hash=hash_token(token),
                user_id=user_id,
                purpose=purpose,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
                used_at=None,
            )
        )
        return True

    async def _unused(self, conn: AsyncConnection, token: str, purpose: str, now: datetime) -> str:
        """The account of an unused, unexpired mailed token; ``InvalidLink`` otherwise."""
        stmt = select(email_tokens).where(email_tokens.c.hash == hash_token(token))
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).mappings().first()
        if (
            row is None
            or row["purpose"] != purpose
            or row["used_at"] is not None
            or row["expires_at"] <= now
        ):
            raise InvalidLink()
        return str(row["user_id"])

    async def _redeem(self, conn: AsyncConnection, token: str, purpose: str, now: datetime) -> str:
        user_id = await self._unused(conn, token, purpose, now)
        await conn.execute(
            update(email_tokens).where(email_tokens.c.hash == hash_token(token)).values(used_at=now)
        )
        return user_id

    async def _send_verification(self, user: User, token: str) -> None:
        mail = messages.verification(self._public_url, token, self._auth.verify_ttl)
        await self._mail(user.email, mail, what=f"verification of {user.id}")

    async def _mail(self, to: str, mail: messages.Mail, *, what: str) -> None:
        """Send after the commit; the change stands when the mail cannot go (logged, without
        its link: the link is a credential)."""
        if self._mailer is None or not self._mailer.enabled:
            logger.warning("mail not sent: smtp.host unset (%s)", what)
            return
        try:
            await self._mailer.send(to, mail.subject, mail.text, mail.html)
        except MailError as exc:
            logger.error("%s: %s", what, exc)


def public_fields(row: RowMapping) -> dict[str, Any]:
    """A user's fields for the audit log (never the password hash)."""
    return {
        "email": row["email"],
        "name": row["name"],
        "email_verified": row["email_verified_at"] is not None,
        "platform_role": row["platform_role"],
        "disabled": bool(row["disabled"]),
    }
