"""Sessions: logins (throttled, or by single sign-on), refresh token rotation, logouts, access
tokens."""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import RowMapping, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.identity import _queries as q
from hoodrun.identity._core import (
    MAX_EMAIL,
    MAX_NAME,
    Core,
    check_email,
    check_label,
    check_role,
    client_ip,
    logger,
    public_fields,
)
from hoodrun.identity.errors import (
    AccountDisabled,
    BadCredentials,
    EmailNotVerified,
    EmailTaken,
    IdentityError,
    InvalidToken,
    NotAMember,
    OrgNotFound,
)
from hoodrun.identity.passwords import MAX_PASSWORD_LENGTH
from hoodrun.identity.roles import permissions_of
from hoodrun.identity.tokens import (
    Claims,
    Session,
    decode_access,
    encode_access,
    expiry,
    hash_token,
    new_refresh_token,
    session_of,
)
from hoodrun.store import new_id, write_audit
from hoodrun.store.tables import sessions, users

__all__ = ["Sessions"]


class Sessions(Core):
    """Logins, refreshes and logouts; access tokens decoded and checked."""

    async def login(
        self, email: str, password: str, *, ip: str | None = None, org_id: str | None = None
    ) -> Session:
        """A new session for the right password, throttled (429 ``Throttled``). A wrong email
        and a wrong password are the same ``BadCredentials``, and take as long."""
        email = email.strip().lower()[:MAX_EMAIL]
        postgres = self._store.dialect == "postgresql"
        async with self._store.transaction() as conn:  # counted as a failure until proven right
            attempt = await self._throttle.attempt(conn, email, ip, self.now(), postgres=postgres)
            row = await q.user_by_email(conn, email)
        stored = row["password_hash"] if row is not None else None
        too_long = len(password) > MAX_PASSWORD_LENGTH
        matches, rehash = await self._passwords.verify(stored, password[:MAX_PASSWORD_LENGTH])
        if row is None or not matches or too_long:
            raise BadCredentials()
        if row["disabled"] or (
            self._auth.require_verified_email and row["email_verified_at"] is None
        ):
            async with self._store.transaction() as conn:
                await self._throttle.forgive(conn, email, attempt)
            raise AccountDisabled() if row["disabled"] else EmailNotVerified()
        # Hashes made under older cost parameters are made again now that the password is known.
        new_hash = await self._passwords.hash(password) if rehash else None
        async with self._store.transaction() as conn:
            now = self.now()
            await self._throttle.forgive(conn, email, attempt)
            if new_hash is not None:
                await conn.execute(
                    update(users).where(users.c.id == row["id"]).values(password_hash=new_hash)
                )
            return await self._open_session(conn, row, org_id, ip=ip, now=now)

    async def login_sso(
        self,
        email: str,
        name: str,
        platform_role: str,
        *,
        ip: str | None = None,
        issuer: str | None = None,
    ) -> Session:
        """A session for an operator whom the identity provider ``issuer`` vouched for (single
        sign-on, ``hoodrun.identity.oidc``): the account is made at the first login (verified,
        without a password) and its platform role follows the provider's at each one, audited
        as ``sso``. ``AccountDisabled`` (403), ``InvalidInput``, ``InvalidRole`` (400)."""
        email = check_email(email)
        printable = "".join(ch for ch in name if ch.isprintable())  # whatever the provider sends
        name = check_label("name", printable[:MAX_NAME], MAX_NAME)
        check_role(platform_role)
        details = {"email": email, "via": "sso", **({"issuer": issuer} if issuer else {})}
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                found = await q.user_by_email(conn, email)
                if found is None:
                    try:
                        user_id = await self._insert_user(
                            conn, email, name, None, now=now, verified=True,
                            platform_role=platform_role,
                        )  # fmt: skip
                    except EmailTaken:  # a login of the same person made it a moment ago
                        found = await q.user_by_email(conn, email)
                        if found is None:
                            raise
                    else:
                        await write_audit(
                            conn, at=now, actor="sso", action="user.create", target_type="user",
                            target_id=user_id, details=details,
                            after=public_fields(await q.user_row(conn, user_id)),
                        )  # fmt: skip
                if found is not None:
                    user_id = found["id"]
                    await self._adopt(conn, user_id, platform_role, details, now=now)
                user = await q.user_row(conn, user_id)
                return await self._open_session(conn, user, None, ip=ip, now=now)

    async def _adopt(
        self,
        conn: AsyncConnection,
        user_id: str,
        platform_role: str,
        details: dict[str, str],
        *,
        now: datetime,
    ) -> None:
        """An existing account signing on: the provider's role, and its address verified."""
        row = await q.user_row(conn, user_id, lock=True)
        if row["disabled"]:
            raise AccountDisabled()
        if row["email_verified_at"] is None:
            # Whoever set this account's password never showed they own the address, and the
            # provider says its owner is the one signing on now: the password (and any session
            # it opened) goes, so nobody who signed up first in an operator's name keeps a way in.
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(email_verified_at=now, password_hash=None, updated_at=now)
            )
            ended = await q.revoke_sessions(conn, user_id, now)
            cleared = {**details, "password_cleared": True, "sessions_ended": ended}
            await write_audit(
                conn, at=now, actor="sso", action="user.verify", target_type="user",
                target_id=user_id, details=cleared, before=public_fields(row),
                after=public_fields(await q.user_row(conn, user_id)),
            )  # fmt: skip
        if row["platform_role"] != platform_role:
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(platform_role=platform_role, updated_at=now)
            )
            await write_audit(
                conn, at=now, actor="sso", action="user.platform_role", target_type="user",
                target_id=user_id, details=details,
                before={"platform_role": row["platform_role"]},
                after={"platform_role": platform_role},
            )  # fmt: skip

    async def refresh(
        self, refresh_token: str, *, org_id: str | None = None, ip: str | None = None
    ) -> Session:
        """A new access token and a new refresh token for the session (the old one is spent),
        in ``org_id`` (default: the session's). Presenting a spent refresh token ends the
        session: it was stolen, or the client lost track of it."""
        session_id = session_of(refresh_token)
        if session_id is None:
            raise InvalidToken()
        refused: IdentityError | None = None
        reason = ""
        async with self._store.transaction() as conn:
            now = self.now()
            stmt = select(sessions).where(sessions.c.id == session_id).with_for_update()
            found = (await conn.execute(stmt)).mappings().first()
            if found is None or found["revoked_at"] is not None or found["expires_at"] <= now:
                raise InvalidToken()
            user = await q.user_row(conn, found["user_id"])
            if not secrets.compare_digest(found["refresh_hash"], hash_token(refresh_token)):
                refused = InvalidToken("this refresh token was already used; log in again")
                reason = "refresh token reused"
            elif user["disabled"]:
                refused, reason = AccountDisabled(), "account disabled"
            if refused is not None:  # end the session, and commit that before refusing
                await self._end_session(conn, found, now, reason=reason)
            else:
                wanted = org_id if org_id is not None else found["org_id"]
                orgs_of = await q.org_roles(conn, user["id"])
                if org_id is None and wanted not in orgs_of and not user["platform_role"]:
                    wanted = None  # no longer a member there: back to the first org
                new = new_refresh_token(session_id)
                claims = await self._claims(conn, user, wanted, session_id, now)
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id)
                    .values(
                        refresh_hash=hash_token(new),
                        org_id=claims.org_id,
                        ip=ip if ip is not None else found["ip"],
                    )
                )
                return self._session(claims, new, now)
        raise refused

    async def logout(self, refresh_token: str) -> None:
        """End the refresh token's session (nothing when there is none). Access tokens already
        handed out stay valid until they expire (at most ``auth.access_ttl``)."""
        session_id = session_of(refresh_token)
        if session_id is None:
            return
        async with self._store.transaction() as conn:
            # The token's secret must match: its session id alone (readable in access tokens)
            # ends nothing.
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .where(sessions.c.refresh_hash == hash_token(refresh_token))
                .where(sessions.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )

    def decode(self, access_token: str) -> Claims:
        """The claims of a valid access token (signature and expiry); ``InvalidToken``."""
        return decode_access(access_token, secret=self._secret, now=self.now())

    async def authenticate(self, access_token: str) -> Claims:
        """``decode``, and the token's session is still open and its account enabled; the roles
        are those the user holds now, not when the token was made (a member removed or demoted,
        an operator's role taken, count at once). Two queries: for the API, pages and changes."""
        claims = self.decode(access_token)
        stmt = (
            select(
                sessions.c.revoked_at,
                sessions.c.expires_at,
                users.c.disabled,
                users.c.platform_role,
            )
            .join_from(sessions, users, sessions.c.user_id == users.c.id)
            .where(sessions.c.id == claims.session_id)
            .where(sessions.c.user_id == claims.user_id)
        )
        async with self._store.connect() as conn:
            found = (await conn.execute(stmt)).first()
            if found is None or found.revoked_at is not None or found.expires_at <= self.now():
                raise InvalidToken("the session has ended; log in again")
            if found.disabled:
                raise AccountDisabled()
            orgs = await q.org_roles(conn, claims.user_id)
        platform_role = found.platform_role
        roles = (orgs[claims.org_id],) if claims.org_id in orgs else ()
        granted = permissions_of([*roles, *([platform_role] if platform_role else [])])
        return replace(
            claims,
            orgs=orgs,
            roles=roles,
            platform_role=platform_role,
            scopes=tuple(sorted(granted)),
        )

    async def _open_session(
        self,
        conn: AsyncConnection,
        user: RowMapping,
        org_id: str | None,
        *,
        ip: str | None,
        now: datetime,
    ) -> Session:
        session_id = new_id("ses")
        claims = await self._claims(conn, user, org_id, session_id, now)
        token = new_refresh_token(session_id)
        await conn.execute(
            insert(sessions).values(
                id=session_id,
                user_id=user["id"],
                org_id=claims.org_id,
                refresh_hash=hash_token(token),
                created_at=now,
                expires_at=now + timedelta(seconds=self._auth.refresh_ttl),
                revoked_at=None,
                ip=ip,
            )
        )
        return self._session(claims, token, now)

    async def _end_session(
        self, conn: AsyncConnection, session: RowMapping, now: datetime, *, reason: str
    ) -> None:
        await conn.execute(
            update(sessions).where(sessions.c.id == session["id"]).values(revoked_at=now)
        )
        await write_audit(
            conn, at=now, actor="identity", action="session.end", target_type="user",
            target_id=session["user_id"], details={"session": session["id"], "reason": reason},
        )  # fmt: skip
        logger.warning("session %s of %s ended: %s", session["id"], session["user_id"], reason)

    async def _claims(
        self,
        conn: AsyncConnection,
        user: RowMapping,
        org_id: str | None,
        session_id: str,
        now: datetime,
    ) -> Claims:
        roles_by_org = await q.org_roles(conn, user["id"])
        platform_role = user["platform_role"]
        if org_id is None:
            org_id = next(iter(roles_by_org), None)
        elif org_id not in roles_by_org:
            if platform_role is None:
                raise NotAMember(f"you hold no role in {org_id}")
            if not await q.org_exists(conn, org_id):
                raise OrgNotFound(f"no org has the id {org_id!r}")
        roles = (roles_by_org[org_id],) if org_id in roles_by_org else ()
        granted = permissions_of([*roles, *([platform_role] if platform_role else [])])
        return Claims(
            user_id=user["id"],
            email=user["email"],
            name=user["name"],
            org_id=org_id,
            roles=roles,
            orgs=roles_by_org,
            platform_role=platform_role,
            scopes=tuple(sorted(granted)),
            tier=await q.tier_of(conn, org_id, now),
            session_id=session_id,
            expires_at=expiry(now, self._auth.access_ttl),
        )

    def _session(self, claims: Claims, refresh_token: str, now: datetime) -> Session:
        access = encode_access(claims, issued_at=now, secret=self._secret)
        expires_in = int((claims.expires_at - now).total_seconds())
        return Session(access, refresh_token, expires_in, claims)
