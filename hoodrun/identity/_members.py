"""People and their roles: accounts, org memberships (the last-admin rule), operators."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from hoodrun.identity import _queries as q
from hoodrun.identity import messages
from hoodrun.identity._core import RESET, Core, check_email, check_role, client_ip, public_fields
from hoodrun.identity.errors import AlreadyMember, LastAdmin, OrgNotFound
from hoodrun.identity.records import Membership, User
from hoodrun.identity.tokens import new_token
from hoodrun.store import write_audit
from hoodrun.store.tables import memberships, users

__all__ = ["Members"]


class Members(Core):
    """Users, org memberships and roles, platform roles."""

    async def user(self, user_id: str) -> User:
        async with self._store.connect() as conn:
            return User.of(await q.user_row(conn, user_id))

    async def user_by_email(self, email: str) -> User | None:
        async with self._store.connect() as conn:
            row = await q.user_by_email(conn, email.strip().lower())
        return None if row is None else User.of(row)

    async def users(self) -> list[User]:
        """Every account, the oldest first."""
        stmt = select(users).order_by(users.c.created_at, users.c.id)
        async with self._store.connect() as conn:
            return [User.of(row) for row in (await conn.execute(stmt)).mappings()]

    async def memberships(self, user_id: str) -> list[Membership]:
        """The user's orgs and roles, in the order joined."""
        async with self._store.connect() as conn:
            return [Membership.of(r) for r in await q.membership_rows(conn, user_id=user_id)]

    async def members(self, org_id: str) -> list[Membership]:
        """The org's members, the earliest first. ``OrgNotFound``."""
        async with self._store.connect() as conn:
            if not await q.org_exists(conn, org_id):
                raise OrgNotFound(f"no org has the id {org_id!r}")
            return [Membership.of(r) for r in await q.membership_rows(conn, org_id=org_id)]

    async def add_member(
        self, org_id: str, email: str, role: str, *, actor: str, ip: str | None = None
    ) -> Membership:
        """Give the account with ``email`` ``role`` in the org. Without such an account one is
        made and invited by mail to choose its password. ``AlreadyMember`` (409)."""
        check_role(role)
        email = check_email(email)
        token: str | None = None
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                org_name = await q.lock_org(conn, org_id)
                row = await q.user_by_email(conn, email)
                if row is None:
                    user_id = await self._insert_user(
                        conn, email, "", None, now=now, verified=False
                    )
                    await write_audit(
                        conn, at=now, actor=actor, action="user.invite", target_type="user",
                        target_id=user_id, details={"email": email, "org_id": org_id},
                        after=public_fields(await q.user_row(conn, user_id)),
                    )  # fmt: skip
                    token = new_token()
                    await self._issue(conn, token, user_id, RESET, now, self._auth.verify_ttl)
                else:
                    user_id = row["id"]
                    if await self._role_in(conn, org_id, user_id) is not None:
                        raise AlreadyMember(f"{email} is already a member of {org_name}")
                await self._insert_member(conn, org_id, user_id, role, now=now, actor=actor)
                member = await self._member(conn, org_id, user_id)
        if token is not None:
            mail = messages.invitation(self._public_url, token, self._auth.verify_ttl, org_name)
            await self._mail(email, mail, what=f"invitation of {user_id}")
        return member

    invite = add_member

    async def remove_member(
        self, org_id: str, user_id: str, *, actor: str, ip: str | None = None
    ) -> None:
        """Take the user out of the org. ``MemberNotFound``; ``LastAdmin`` (409)."""
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                await q.lock_org(conn, org_id)
                member = await self._member(conn, org_id, user_id)
                if member.role == "admin" and await q.admin_count(conn, org_id) <= 1:
                    raise LastAdmin()
                await conn.execute(
                    delete(memberships)
                    .where(memberships.c.org_id == org_id)
                    .where(memberships.c.user_id == user_id)
                )
                await write_audit(
                    conn, at=now, actor=actor, action="member.remove", target_type="org",
                    target_id=org_id, details={"user_id": user_id, "email": member.email},
                    before={"role": member.role},
                )  # fmt: skip

    async def set_role(
        self, org_id: str, user_id: str, role: str, *, actor: str, ip: str | None = None
    ) -> Membership:
        """Change the user's role in the org. ``MemberNotFound``; ``LastAdmin`` (409)."""
        check_role(role)
        with client_ip(ip):
            async with self._store.transaction() as conn:
                now = self.now()
                await q.lock_org(conn, org_id)
                member = await self._member(conn, org_id, user_id)
                if member.role == role:
                    return member
                if member.role == "admin" and await q.admin_count(conn, org_id) <= 1:
                    raise LastAdmin()
                await conn.execute(
                    update(memberships)
                    .where(memberships.c.org_id == org_id)
                    .where(memberships.c.user_id == user_id)
                    .values(role=role)
                )
                await write_audit(
                    conn, at=now, actor=actor, action="member.role", target_type="org",
                    target_id=org_id, details={"user_id": user_id, "email": member.email},
                    before={"role": member.role}, after={"role": role},
                )  # fmt: skip
                return await self._member(conn, org_id, user_id)

    async def set_platform_role(
        self, user_id: str, role: str | None, *, actor: str, ip: str | None = None
    ) -> User:
        """Make the user an operator with ``role`` over every org, or (``None``) a customer."""
        check_role(role, optional=True)
        with client_ip(ip):
            async with self._store.transaction() as conn:
                row = await q.user_row(conn, user_id, lock=True)
                if row["platform_role"] == role:
                    return User.of(row)
                now = self.now()
                await conn.execute(
                    update(users)
                    .where(users.c.id == user_id)
                    .values(platform_role=role, updated_at=now)
                )
                await write_audit(
                    conn, at=now, actor=actor, action="user.platform_role", target_type="user",
                    target_id=user_id, details={"email": row["email"]},
                    before={"platform_role": row["platform_role"]}, after={"platform_role": role},
                )  # fmt: skip
                return User.of(await q.user_row(conn, user_id))
