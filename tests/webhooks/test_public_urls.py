"""A customer's webhook must name a public address (``check_public_url``): the worker POSTs from
inside the platform's network. Operators may name any. Deliveries never follow a redirect."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.identity import IdentityService
from hoodrun.jobs import JobQueue, Worker
from hoodrun.keys.service import KeyService
from hoodrun.store import Store
from hoodrun.webhooks import InvalidEndpoint, WebhookBook, address, check_public_url, handlers
from tests._stores import FakeClock
from tests.webhooks.receiver import serve_receiver

TOKEN = "public-urls-admin-token"
PASSWORD = "correct horse battery staple"
CONFIG = Config.model_validate(
    {
        "auth": {
            "jwt_secret": "public-urls-test-secret-of-32-bytes!",
            "argon2_time_cost": 1,
            "argon2_memory_kib": 8192,
            "argon2_parallelism": 1,
        },
    }
)


def resolver(*addresses: str) -> address.Resolver:
    async def resolve(host: str) -> Iterable[str]:
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return addresses

    return resolve


# --- the check ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:6379/", "a loopback"),
        ("http://127.8.9.10/", "a loopback"),
        ("http://[::1]:8001/admin", "a loopback"),
        ("http://10.0.0.5/", "a private"),
        ("http://172.16.3.4/", "a private"),
        ("https://192.168.1.1/hook", "a private"),
        ("http://[fc00::1]/", "a private"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local"),  # a cloud's metadata
        ("http://[fe80::1]/", "a link-local"),
        ("http://[fe80::1%25eth0]/", "a link-local"),
        ("http://224.0.0.1/", "a multicast"),
        ("http://[ff02::1]/", "a multicast"),
        ("http://240.0.0.1/", "a reserved"),
        ("http://0.0.0.0:8001/", "an unspecified"),
        ("http://[::]/", "an unspecified"),
        ("http://100.100.100.200/", "a non-public"),  # shared space: another cloud's metadata
        # IPv6 addresses carrying an IPv4 one are judged by it as well.
        ("http://[::ffff:127.0.0.1]/", "a loopback"),
        ("http://[::ffff:10.1.2.3]/", "a private"),
        ("http://[2002:a00:1::]/", "a private"),  # 6to4 of 10.0.0.1
        ("http://[64:ff9b::7f00:1]/", "a loopback"),  # NAT64 of 127.0.0.1
        # Numbers the resolver reads as IPv4 (inet_aton): resolved, then judged.
        ("http://2130706433/", "a loopback"),
        ("http://127.1/", "a loopback"),
        ("http://0x7f.1/", "a loopback"),
    ],
)
async def test_addresses_that_are_not_public_are_refused(url: str, kind: str) -> None:
    with pytest.raises(InvalidEndpoint) as refused:
        await check_public_url(url)
    message = str(refused.value)
    assert f"{kind} address" in message and "public addresses only" in message, message
    assert url in message


async def test_names_are_resolved_and_every_address_judged() -> None:
    # localhost, from /etc/hosts: no DNS needed.
    with pytest.raises(InvalidEndpoint, match=r"localhost \(127\.0\.0\.1\) is a loopback"):
        await check_public_url("http://localhost:8001/")
    await check_public_url("https://hooks.example/in", resolve=resolver("93.184.215.14"))
    await check_public_url("https://hooks.example/in", resolve=resolver("2606:4700::6810:84e5"))
    # One internal address among public ones is enough to refuse (the client may pick it).
    with pytest.raises(InvalidEndpoint, match=r"hooks\.example \(10\.0\.0\.7\) is a private"):
        await check_public_url(
            "https://hooks.example/in", resolve=resolver("93.184.215.14", "10.0.0.7")
        )
    with pytest.raises(InvalidEndpoint, match=r"'nowhere\.example' does not resolve"):
        await check_public_url("https://nowhere.example/", resolve=resolver())


async def test_a_name_that_does_not_resolve_in_time_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(address, "RESOLVE_TIMEOUT", 0.01)
    never = asyncio.Event()

    async def hangs(host: str) -> Iterable[str]:
        await never.wait()
        return []

    with pytest.raises(InvalidEndpoint, match="does not resolve"):
        await check_public_url("https://slow.example/", resolve=hangs)


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/hook", "http://[2001:4860:4860::8888]:8080/x", "https://1.1.1.1"]
)
async def test_public_addresses_pass(url: str) -> None:
    await check_public_url(url)


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/", "https:///path", "https://" + "a" * 2050])
async def test_what_the_book_refuses_is_refused_first(url: str) -> None:
    with pytest.raises(InvalidEndpoint, match="an http"):
        await check_public_url(url)


# --- who is checked -----------------------------------------------------------------------------


@dataclass
class Api:
    http: httpx.AsyncClient
    org: str
    tokens: dict[str, str]

    async def create(self, caller: str, url: str) -> httpx.Response:
        secret = TOKEN if caller == "token" else self.tokens[caller]
        return await self.http.post(
            f"/admin/v1/orgs/{self.org}/webhooks",
            json={"url": url, "events": ["key.created"]},
            headers={"Authorization": f"Bearer {secret}"},
        )


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    keys = KeyService(store, CONFIG)
    identity = IdentityService(store, CONFIG, None)
    app = create_api_app(CONFIG, keys, token=TOKEN, webhooks=WebhookBook(store), identity=identity)
    org = (await keys.create(org="acme", project="web", actor="test")).record.org_id
    tokens = {}
    for caller, platform_role, role in (
        ("member-admin", None, "admin"),
        ("member-ops", None, "ops"),
        ("operator", "ops", None),
    ):
        email = f"{caller}@example.com"
        await identity.create_user(
            email, password=PASSWORD, platform_role=platform_role, actor="test"
        )
        if role is not None:
            await identity.add_member(org, email, role, actor="test")
        tokens[caller] = (await identity.login(email, PASSWORD)).access_token
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield Api(http, org, tokens)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8001/admin/v1/keys",
        "http://[::ffff:10.0.0.1]/",
    ],
)
async def test_a_member_may_not_aim_a_webhook_inside(api: Api, url: str) -> None:
    for caller in ("member-admin", "member-ops"):
        refused = await api.create(caller, url)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_webhook" and "public addresses only" in error["message"]
    # Operators run that network: the admin token and a platform role may.
    for caller in ("token", "operator"):
        made = await api.create(caller, url)
        assert made.status_code == 201, made.text


async def test_a_member_may_aim_a_webhook_at_a_public_address(api: Api) -> None:
    made = await api.create("member-ops", "https://93.184.215.14/hook")
    assert made.status_code == 201, made.text
    listed = await api.http.get(
        f"/admin/v1/orgs/{api.org}/webhooks", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert [e["url"] for e in listed.json()["webhooks"]] == ["https://93.184.215.14/hook"]


# --- deliveries ---------------------------------------------------------------------------------


async def test_a_delivery_never_follows_a_redirect(store: Store, clock: FakeClock) -> None:
    book = WebhookBook(store, clock=clock)
    keys = KeyService(store, CONFIG, clock=clock, webhooks=book)
    org = (await keys.create(org="acme", actor="test")).record.org_id
    queue = JobQueue(store, clock=clock, backoff_base=1.0, backoff_cap=1.0)
    with serve_receiver() as inside, serve_receiver(302, headers={"Location": inside.url}) as hop:
        endpoint = await book.create_endpoint(org, hop.url, ["key.created"])
        await keys.create(org="acme", actor="test")
        # Even a client that would follow them (the worker's does not either).
        async with httpx.AsyncClient(follow_redirects=True) as client:
            await Worker(queue, handlers(book, client), clock=clock).burst()
        clock.advance(timedelta(seconds=2))
        assert [r.answered for r in hop.received] == [302]
        assert inside.received == []
    [delivery] = await book.deliveries(endpoint.id)
    assert (delivery.status, delivery.last_status_code, delivery.last_error) == (
        "pending",
        302,
        "HTTP 302",
    )
