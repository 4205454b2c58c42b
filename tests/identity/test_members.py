"""Org memberships and roles, operators, the last-admin rule and the ``tier`` claim, on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from hoodrun.config import Config
from hoodrun.identity import (
    AlreadyMember,
    IdentityService,
    InvalidRole,
    LastAdmin,
    MemberNotFound,
    NotAMember,
    OrgNotFound,
    UserNotFound,
    permissions_of,
)
from hoodrun.metering.store import ContractBook
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import orgs, users
from tests._smtp import SmtpSink
from tests._stores import FakeClock
from tests.identity.support import PASSWORD, link_token, verified_user

ADA, BOB = "ada@example.com", "bob@example.com"


async def org_of(identity: IdentityService, user_id: str) -> str:
    (membership,) = await identity.memberships(user_id)
    return membership.org_id


async def test_members_roles_and_the_last_admin_rule(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, clock: FakeClock
) -> None:
    ada = await verified_user(identity, smtp_sink, ADA, org_name="Analytical")
    bob = await verified_user(identity, smtp_sink, BOB, org_name="Babbage")
    org, bobs = await org_of(identity, ada.id), await org_of(identity, bob.id)
    actor = f"user:{ada.id}"
    clock.advance(timedelta(seconds=1))

    member = await identity.add_member(org, "Bob@Example.com", "viewer", actor=actor)
    assert (member.user_id, member.role, member.org_name) == (bob.id, "viewer", "Analytical")
    with pytest.raises(AlreadyMember) as again:
        await identity.add_member(org, BOB, "ops", actor=actor)
    assert again.value.status == 409
    with pytest.raises(InvalidRole, match="viewer, ops, billing, admin"):
        await identity.add_member(org, "carol@example.com", "owner", actor=actor)
    with pytest.raises(OrgNotFound):
        await identity.add_member("org_nope", BOB, "viewer", actor=actor)

    # Bob acts in Analytical as a viewer; his own org stays his first.
    session = await identity.login(BOB, PASSWORD, org_id=org)
    claims = session.claims
    assert claims.org_id == org and claims.roles == ("viewer",)
    assert claims.scopes == tuple(sorted(permissions_of(["viewer"])))
    assert dict(claims.orgs) == {bobs: "admin", org: "viewer"}
    assert (await identity.login(BOB, PASSWORD)).claims.org_id == bobs
    with pytest.raises(NotAMember) as not_member:
        await identity.login(ADA, PASSWORD, org_id=bobs)
    assert not_member.value.status == 403

    # The only admin can be neither removed nor demoted; with a second admin, both can.
    with pytest.raises(LastAdmin) as last:
        await identity.remove_member(org, ada.id, actor=actor)
    assert last.value.status == 409
    with pytest.raises(LastAdmin):
        await identity.set_role(org, ada.id, "billing", actor=actor)
    await identity.set_role(org, bob.id, "admin", actor=actor)
    demoted = await identity.set_role(org, ada.id, "billing", actor=f"user:{bob.id}")
    assert demoted.role == "billing"
    with pytest.raises(LastAdmin):
        await identity.set_role(org, bob.id, "ops", actor=actor)
    await identity.remove_member(org, ada.id, actor=f"user:{bob.id}")
    with pytest.raises(MemberNotFound):
        await identity.remove_member(org, ada.id, actor=actor)
    assert [(m.user_id, m.role) for m in await identity.members(org)] == [(bob.id, "admin")]

    # A session in an org its user left moves to the user's first org at its next refresh.
    session = await identity.login(BOB, PASSWORD, org_id=org)
    await identity.add_member(org, ADA, "admin", actor=f"user:{bob.id}")
    await identity.remove_member(org, bob.id, actor=actor)
    moved = await identity.refresh(session.refresh_token)
    assert (moved.claims.org_id, moved.claims.roles) == (bobs, ("admin",))
    with pytest.raises(NotAMember):
        await identity.refresh(moved.refresh_token, org_id=org)
    switched = await identity.refresh(
        (await identity.login(ADA, PASSWORD, org_id=org)).refresh_token, org_id=org
    )
    assert switched.claims.roles == ("admin",)

    async with store.connect() as conn:
        entries = await read_audit(conn, limit=1000, target_id=org)
    changes = [
        (e.action, e.details.get("user_id"), e.before, e.after)
        for e in reversed(entries)
        if e.action.startswith("member.")
    ]
    assert changes == [
        ("member.add", ada.id, None, {"role": "admin"}),
        ("member.add", bob.id, None, {"role": "viewer"}),
        ("member.role", bob.id, {"role": "viewer"}, {"role": "admin"}),
        ("member.role", ada.id, {"role": "admin"}, {"role": "billing"}),
        ("member.remove", ada.id, {"role": "billing"}, None),
        ("member.add", ada.id, None, {"role": "admin"}),
        ("member.remove", bob.id, {"role": "admin"}, None),
    ]
    removals = [e.actor for e in reversed(entries) if e.action == "member.remove"]
    assert removals == [f"user:{bob.id}", actor]


async def test_an_invited_address_gets_an_account_and_chooses_its_password(
    identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    ada = await verified_user(identity, smtp_sink, ADA, org_name="Analytical")
    org = await org_of(identity, ada.id)
    member = await identity.invite(org, "carol@example.com", "billing", actor=f"user:{ada.id}")
    assert member.role == "billing" and member.email == "carol@example.com"
    mail = await smtp_sink.wait_for("carol@example.com")
    assert mail["Subject"] == "You are invited to Analytical on HoodRun"
    await identity.reset_password(link_token(mail, "reset"), "carol's own passphrase")
    session = await identity.login("carol@example.com", "carol's own passphrase")
    assert session.claims.org_id == org and session.claims.roles == ("billing",)
    assert (await identity.user(member.user_id)).email_verified


async def test_operators_hold_their_role_over_every_org(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store
) -> None:
    ada = await verified_user(identity, smtp_sink, ADA)
    ops = await identity.create_user(
        "ops@hoodrun.test", password="operator passphrase", name="Ops", actor="cli"
    )
    assert ops.email_verified and ops.platform_role is None
    with pytest.raises(NotAMember):
        await identity.login(
            "ops@hoodrun.test", "operator passphrase", org_id=await org_of(identity, ada.id)
        )
    promoted = await identity.set_platform_role(ops.id, "ops", actor="cli")
    assert promoted.platform_role == "ops"
    org = await org_of(identity, ada.id)
    session = await identity.login("ops@hoodrun.test", "operator passphrase", org_id=org)
    claims = session.claims
    assert (claims.org_id, claims.roles, claims.platform_role) == (org, (), "ops")
    assert claims.scopes == tuple(sorted(permissions_of(["ops"])))
    assert (await identity.login("ops@hoodrun.test", "operator passphrase")).claims.org_id is None
    with pytest.raises(OrgNotFound):
        await identity.login("ops@hoodrun.test", "operator passphrase", org_id="org_nope")
    with pytest.raises(InvalidRole):
        await identity.set_platform_role(ops.id, "root", actor="cli")
    with pytest.raises(UserNotFound):
        await identity.set_platform_role("usr_nope", "ops", actor="cli")
    await identity.set_platform_role(ops.id, None, actor="cli")
    async with store.connect() as conn:
        (change, *_) = [
            e for e in await read_audit(conn, target_id=ops.id) if e.action == "user.platform_role"
        ]
    assert change.before == {"platform_role": "ops"} and change.after == {"platform_role": None}
    assert change.actor == "cli"
    assert [u.email for u in await identity.users()].count("ops@hoodrun.test") == 1


async def test_the_tier_claim_is_the_contracts_plan_else_the_orgs(
    identity: IdentityService, smtp_sink: SmtpSink, store: Store, config: Config, clock: FakeClock
) -> None:
    ada = await verified_user(identity, smtp_sink, ADA)
    org = await org_of(identity, ada.id)
    assert (await identity.login(ADA, PASSWORD)).claims.tier is None
    async with store.transaction() as conn:
        await conn.execute(update(orgs).where(orgs.c.id == org).values(plan="pro"))
    session = await identity.login(ADA, PASSWORD)
    assert session.claims.tier == "pro"
    contracts = ContractBook(store, config, clock=clock)
    await contracts.create(org, "enterprise", starts_at=clock.now + timedelta(days=1))
    assert (await identity.refresh(session.refresh_token)).claims.tier == "pro"  # not yet
    clock.advance(timedelta(days=2))
    assert (await identity.login(ADA, PASSWORD)).claims.tier == "enterprise"
    async with store.connect() as conn:
        assert await conn.scalar(select(users.c.platform_role)) is None
