"""Accounts: sign-up, verification, passwords (changed, or reset by a mailed link)."""

from __future__ import annotations

from sqlalchemy import update

from hoodrun.identity import _queries as q
from hoodrun.identity import messages
from hoodrun.identity._core import (
    MAX_NAME,
    MAX_ORG,
    RESET,
    VERIFY,
    Core,
    check_email,
    check_label,
    check_role,
    client_ip,
    public_fields,
    user_actor,
)
from hoodrun.identity.errors import BadCredentials, InvalidInput, SignupClosed
from hoodrun.identity.passwords import MAX_PASSWORD_LENGTH
from hoodrun.identity.records import User
from hoodrun.identity.tokens import new_token
from hoodrun.store import write_audit
from hoodrun.store.tables import email_tokens, users

__all__ = ["Accounts"]


class Accounts(Core):
    """Sign-up, verification, passwords; accounts made or disabled by operators."""

    async def sign_up(
        self,
        email: str,
        password: str,
        *,
        name: str = "",
        org_name: str | None = None,
        ip: str | None = None,
    ) -> User:
        """A new account, admin of a new org (``org_name``, else one named after the address);
        mails a verification link. ``EmailTaken``, ``OrgNameTaken``, ``WeakPassword`` (400)."""
        if not self._auth.signup:
            raise SignupClosed()
        email = check_email(email)
        name = check_label("name", name, MAX_NAME)
        wanted = check_label("org_name", org_name, MAX_ORG) if org_name is not None else None
        if wanted == "":
            raise InvalidInput("org_name: give a name, or leave it out")
        if wanted is not None and wanted.casefold().startswith("org_"):
            raise InvalidInput("org_name: 'org_' begins org ids; choose a name without it")
        self._passwords.check(password, email=email)
        password_hash = await self._passwords.hash(password)
        token = new_token()
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                user_id = await self._insert_user(
                    conn, email, name, password_hash, now=now, verified=False
                )
                actor = user_actor(user_id)
                org_id = await self._create_org(conn, wanted, email, now=now, actor=actor)
                await self._insert_member(conn, org_id, user_id, "admin", now=now, actor=actor)
                await write_audit(
                    conn, at=now, actor=actor, action="user.signup", target_type="user",
                    target_id=user_id, details={"email": email, "org_id": org_id},
                    after=public_fields(await q.user_row(conn, user_id)),
                )  # fmt: skip
                await self._issue(conn, token, user_id, VERIFY, now, self._auth.verify_ttl)
                user = User.of(await q.user_row(conn, user_id))
        await self._send_verification(user, token)
        return user

    async def verify_email(self, token: str) -> User:
        """Mark the address of the link's account verified. ``InvalidLink`` (400)."""
        async with self._store.transaction() as conn:
            now = self.now()
            user_id = await self._redeem(conn, token, VERIFY, now)
            row = await q.user_row(conn, user_id, lock=True)
            if row["email_verified_at"] is None:
                await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(email_verified_at=now, updated_at=now)
                )
                await write_audit(
                    conn, at=now, actor=user_actor(user_id), action="user.verify",
                    target_type="user", target_id=user_id, details={"email": row["email"]},
                    before=public_fields(row), after=public_fields(await q.user_row(conn, user_id)),
                )  # fmt: skip
            return User.of(await q.user_row(conn, user_id))

    async def confirm_email(self, user_id: str, *, actor: str) -> User:
        """Count the address verified on an operator's word (no link). ``UserNotFound``."""
        async with self._store.transaction() as conn:
            now = self.now()
            row = await q.user_row(conn, user_id, lock=True)
            if row["email_verified_at"] is None:
                await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(email_verified_at=now, updated_at=now)
                )
                await write_audit(
                    conn, at=now, actor=actor, action="user.verify", target_type="user",
                    target_id=user_id, details={"email": row["email"], "by": "operator"},
                    before=public_fields(row), after=public_fields(await q.user_row(conn, user_id)),
                )  # fmt: skip
            return User.of(await q.user_row(conn, user_id))

    async def resend_verification(self, email: str) -> None:
        """Mail a new verification link if the address has an unverified account (silently
        nothing otherwise, and nothing within a minute of the last one)."""
        try:
            email = check_email(email)
        except InvalidInput:
            return
        token = new_token()
        async with self._store.transaction() as conn:
            row = await q.user_by_email(conn, email)
            if row is None or row["email_verified_at"] is not None or row["disabled"]:
                return
            now = self.now()
            if not await self._issue(conn, token, row["id"], VERIFY, now, self._auth.verify_ttl):
                return
        await self._send_verification(User.of(row), token)

    async def create_user(
        self,
        email: str,
        *,
        password: str | None = None,
        name: str = "",
        platform_role: str | None = None,
        verified: bool = True,
        actor: str,
        ip: str | None = None,
    ) -> User:
        """An account made by an operator or the CLI (no org of its own; an operator with a
        ``platform_role``). Without ``password`` it logs in after a password reset."""
        email = check_email(email)
        name = check_label("name", name, MAX_NAME)
        check_role(platform_role, optional=True)
        password_hash = None
        if password is not None:
            self._passwords.check(password, email=email)
            password_hash = await self._passwords.hash(password)
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                user_id = await self._insert_user(
                    conn, email, name, password_hash, now=now, verified=verified,
                    platform_role=platform_role,
                )  # fmt: skip
                row = await q.user_row(conn, user_id)
                await write_audit(
                    conn, at=now, actor=actor, action="user.create", target_type="user",
                    target_id=user_id, details={"email": email}, after=public_fields(row),
                )  # fmt: skip
                return User.of(row)

    async def set_disabled(
        self, user_id: str, disabled: bool, *, actor: str, ip: str | None = None
    ) -> User:
        """Disable an account (its sessions end; it cannot log in) or enable it again."""
        with client_ip(ip):
            async with self._store.transaction() as conn:
                row = await q.user_row(conn, user_id, lock=True)
                if bool(row["disabled"]) == disabled:
                    return User.of(row)
                now = self.now()
                await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(disabled=disabled, updated_at=now)
                )
                ended = await q.revoke_sessions(conn, user_id, now) if disabled else 0
                await write_audit(
                    conn, at=now, actor=actor,
                    action="user.disable" if disabled else "user.enable", target_type="user",
                    target_id=user_id, details={"sessions_ended": ended}, before=public_fields(row),
                    after=public_fields(await q.user_row(conn, user_id)),
                )  # fmt: skip
                return User.of(await q.user_row(conn, user_id))

    async def change_password(
        self,
        user_id: str,
        current: str,
        new: str,
        *,
        keep_session: str | None = None,
        ip: str | None = None,
    ) -> None:
        """Change a password knowing the current one (a wrong one counts as a failed login);
        every session but ``keep_session`` ends."""
        async with self._store.connect() as conn:
            row = await q.user_row(conn, user_id)
            await self._throttle.check(conn, row["email"], ip, self.now())
        matches, _ = await self._passwords.verify(
            row["password_hash"], current[:MAX_PASSWORD_LENGTH]
        )
        if not matches:
            async with self._store.transaction() as conn:
                await self._throttle.fail(conn, row["email"], ip, self.now())
            raise BadCredentials("the current password is wrong")
        self._passwords.check(new, email=row["email"])
        password_hash = await self._passwords.hash(new)
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(password_hash=password_hash, updated_at=now)
                )
                ended = await q.revoke_sessions(conn, user_id, now, keep=keep_session)
                await write_audit(
                    conn, at=now, actor=user_actor(user_id), action="user.password_change",
                    target_type="user", target_id=user_id, details={"sessions_ended": ended},
                )  # fmt: skip

    async def request_password_reset(self, email: str, *, ip: str | None = None) -> None:
        """Mail a reset link if an enabled account has this address. The caller learns nothing
        either way: the API answers 202 whatever happens here."""
        try:
            email = check_email(email)
        except InvalidInput:
            return
        token = new_token()
        async with self._store.transaction() as conn:
            row = await q.user_by_email(conn, email)
            if row is None or row["disabled"]:
                return
            now = self.now()
            if not await self._issue(conn, token, row["id"], RESET, now, self._auth.reset_ttl):
                return
        mail = messages.password_reset(self._public_url, token, self._auth.reset_ttl)
        await self._mail(row["email"], mail, what=f"password reset for {row['id']}")

    async def reset_password(self, token: str, password: str) -> None:
        """Set the password of the link's account; every session of the account ends, and
        its address counts as verified (the mail reached it). ``InvalidLink``, ``WeakPassword``."""
        async with self._store.connect() as conn:
            user_id = await self._unused(conn, token, RESET, self.now())
            email = (await q.user_row(conn, user_id))["email"]
        self._passwords.check(password, email=email)
        password_hash = await self._passwords.hash(password)
        async with self._store.transaction() as conn:
            now = self.now()
            user_id = await self._redeem(conn, token, RESET, now)
            row = await q.user_row(conn, user_id, lock=True)
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(
                    password_hash=password_hash,
                    email_verified_at=row["email_verified_at"] or now,
                    updated_at=now,
                )
            )
            # Any other reset link of the account is spent too.
            await conn.execute(
                update(email_tokens)
                .where(email_tokens.c.user_id == user_id)
                .where(email_tokens.c.purpose == RESET)
                .where(email_tokens.c.used_at.is_(None))
                .values(used_at=now)
            )
            ended = await q.revoke_sessions(conn, user_id, now)
            await self._throttle.clear(conn, email)
            await write_audit(
                conn, at=now, actor=user_actor(user_id), action="user.password_reset",
                target_type="user", target_id=user_id, details={"sessions_ended": ended},
                before=public_fields(row), after=public_fields(await q.user_row(conn, user_id)),
            )  # fmt: skip
