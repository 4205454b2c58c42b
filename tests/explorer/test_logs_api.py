"""``POST /logs/v1`` in process (ASGI) with real keys (SQLite) and real chDB: the body forms and
content types, refusals with their codes (and ``Retry-After``), all-or-nothing batches,
de-duplication, projects kept apart by their keys, and no key in any log or error. Then once
through the whole platform (``run_platform``'s api role)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import pytest

from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.explorer.config import LogPlanLimits
from hoodrun.telemetry.store import ChdbStore
from tests._platform import PlatformThread
from tests._stores import FakeClock

from .conftest import (
    NOW,
    TOKEN,
    GatedStore,
    LogsApi,
    MakeApi,
    logs_config,
    physical_rows,
    reached,
    stored,
)

NOW_US = int(NOW.timestamp()) * 1_000_000


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture
async def api(logs_api: MakeApi) -> LogsApi:
    return await logs_api(Config())


# --- accepted -----------------------------------------------------------------------------------


async def test_lines_are_stored_when_it_answers(api: LogsApi) -> None:
    key = await api.key("shop")
    record = await api.keys.get(api.created[key])
    lines = [
        {"message": "started", "service": "web", "id": "l1", "attributes": {"port": 8080}},
        {
            "message": "order 12 failed",
            "level": "ERR",
            "ts": NOW_US // 1000 - 5,
            "id": "l2",
            "stack": "Traceback (most recent call last):\nValueError: 12",
            "trace_id": "t1",
            "span_id": "s1",
        },
    ]
    response = await api.post(key, lines)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2}
    rows = await stored(api.store)
    assert [(r["id"], r["level"], r["service"]) for r in rows] == [
        ("l2", "error", ""), ("l1", "info", "web"),
    ]  # fmt: skip
    assert {(r["project_id"], r["org_id"], r["key_id"]) for r in rows} == {
        (record.project_id, record.org_id, record.id)
    }
    assert int(rows[0]["ts_us"]) == NOW_US - 5000 and int(rows[1]["ts_us"]) == NOW_US
    assert rows[1]["attributes"] == {"port": "8080"}
    assert (rows[0]["trace_id"], rows[0]["span_id"]) == ("t1", "s1")
    assert len(rows[0]["fingerprint"]) == 16 and rows[1]["fingerprint"] == ""


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/msgpack", "application/x-msgpack; charset=binary"],
)
async def test_one_line_an_array_or_an_object_of_logs(api: LogsApi, content_type: str) -> None:
    key = await api.key()
    one = await api.post(key, {"message": "one"}, content_type)
    many = await api.post(key, [{"message": "two"}, {"message": "three"}], content_type)
    wrapped = await api.post(key, {"logs": [{"message": "four"}]}, content_type)
    empty = await api.post(key, [], content_type)
    assert [r.json() for r in (one, many, wrapped, empty)] == [
        {"accepted": 1}, {"accepted": 2}, {"accepted": 1}, {"accepted": 0},
    ]  # fmt: skip
    assert all(r.status_code == 202 for r in (one, many, wrapped, empty))
    assert sorted(r["message"] for r in await stored(api.store)) == ["four", "one", "three", "two"]


async def test_msgpack_times_and_numbers(api: LogsApi) -> None:
    key = await api.key()
    lines = [
        {"message": "a", "ts": NOW - timedelta(seconds=1), "level": 40},
        {"message": "b", "timestamp": NOW.timestamp() - 2, "level": 3},
    ]
    response = await api.post(key, msgpack.packb(lines, datetime=True), "application/msgpack")
    assert response.status_code == 202, response.text
    rows = await stored(api.store)
    assert [(r["message"], int(r["ts_us"]), r["level"]) for r in rows] == [
        ("b", NOW_US - 2_000_000, "error"), ("a", NOW_US - 1_000_000, "error"),
    ]  # fmt: skip


async def test_a_batch_sent_twice_is_stored_once(api: LogsApi) -> None:
    key = await api.key()
    lines = [
        {"message": f"m{i}", "id": f"id-{i}", "ts": (NOW - timedelta(seconds=i)).isoformat()}
        for i in range(5)
    ]
    for _ in range(2):  # a retry after a lost answer
        assert (await api.post(key, lines)).json() == {"accepted": 5}
    assert sorted(r["id"] for r in await stored(api.store)) == [f"id-{i}" for i in range(5)]
    assert await physical_rows(api.store) == 10  # until the merge: reads use FINAL
    await api.store.execute("OPTIMIZE TABLE {db}.logs FINAL")
    assert await physical_rows(api.store) == 5


# --- refused ------------------------------------------------------------------------------------


async def test_an_invalid_line_refuses_the_batch_and_names_each_problem(api: LogsApi) -> None:
    key = await api.key()
    lines = [
        {"message": "fine"},
        {"message": "fine"},
        {"message": "fine"},
        {"message": "bad level", "level": "loud"},
        {"level": "info", "attributes": {"user": {"id": 1}}, "project": "prj_other"},
    ]
    response = await api.post(key, lines)
    error = error_of(response, 422, "invalid_logs")
    assert error["message"].startswith("nothing was stored: [3].level: 'loud' is not a level")
    assert [(e["index"], e["field"]) for e in error["errors"]] == [
        (3, "level"), (4, "project"), (4, "message"), (4, "attributes.user"),
    ]  # fmt: skip
    assert "trace, debug, info, warn, error, fatal" in error["errors"][0]["message"]
    assert await stored(api.store) == []  # nothing of it, not even the fine lines


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "detail"),
    [
        (b'{"message": ', "application/json", 400, "malformed_body", "not JSON: unexpected end"),
        (b"\xc1", "application/msgpack", 400, "malformed_body", "not MessagePack"),
        (b'{"message": "m"}', "text/plain", 415, "unsupported_content_type", "not text/plain"),
        (b'{"message": "m"}', "", 415, "unsupported_content_type", "application/json"),
        (b'"just text"', "application/json", 422, "invalid_logs", "send a log line"),
    ],
)
async def test_bodies_that_cannot_be_read(
    api: LogsApi, body: bytes, content_type: str, status: int, code: str, detail: str
) -> None:
    key = await api.key()
    error = error_of(await api.post(key, body, content_type), status, code)
    assert detail in error["message"]


async def test_too_large_bodies_and_batches_are_413(logs_api: MakeApi) -> None:
    api = await logs_api(logs_config(max_body_bytes=2048, max_batch=3))
    key = await api.key()
    big = [{"message": "x" * 3000}]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the body is read first
        yield b'[{"message": "'
        yield b"x" * 3000
        yield b'"}]'

    declared = await api.post(key, big)
    streamed = await api.client.post(
        "/logs/v1",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    for response in (declared, streamed):
        assert "send smaller batches" in error_of(response, 413, "body_too_large")["message"]
    many = await api.post(key, [{"message": "m"}] * 4)
    assert "at most 3 per request" in error_of(many, 413, "too_many_lines")["message"]
    assert await stored(api.store) == []


async def test_the_queue_depth_refuses_with_retry_after_and_stores_nothing_of_it(
    logs_api: MakeApi, logs_store: ChdbStore
) -> None:
    gated = GatedStore(logs_store)
    api = await logs_api(logs_config(queue_depth=5), store=gated)
    key, other_project = await api.key("shop"), await api.key("blog")
    gated.gate.clear()  # the store is slow: the first write waits
    first = asyncio.ensure_future(api.post(key, [{"message": f"a{i}"} for i in range(3)]))
    await reached(gated.waiting)
    full = await api.post(key, [{"message": f"b{i}"} for i in range(3)])  # 3 + 3 > 5
    error = error_of(full, 503, "queue_full")
    assert "3 lines of this project wait to be written" in error["message"]
    assert int(full.headers["retry-after"]) >= 1
    # Another project has a queue of its own.
    other = asyncio.ensure_future(api.post(other_project, [{"message": "c"}]))
    gated.gate.set()
    assert (await first).status_code == 202 and (await other).status_code == 202
    assert sorted(r["message"] for r in await stored(api.store)) == ["a0", "a1", "a2", "c"]
    assert (await api.post(key, [{"message": "d"}] * 5)).status_code == 202  # drained


async def test_a_store_that_stays_down_is_503_with_retry_after(
    logs_api: MakeApi, logs_store: ChdbStore
) -> None:
    gated = GatedStore(logs_store)
    gated.down = True
    api = await logs_api(logs_config(flush_interval=0.01), store=gated, write_timeout=0.05)
    key = await api.key()
    response = await api.post(key, [{"message": "m"}])
    error = error_of(response, 503, "store_unavailable")
    assert "nothing of this request was stored" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    gated.down = False
    assert await stored(api.store) == []


async def test_the_rate_limits_are_per_project_with_retry_after(logs_api: MakeApi) -> None:
    api = await logs_api(logs_config(per_minute=2))
    key, same_project, other = await api.key("shop"), await api.key("shop"), await api.key("blog")
    assert (await api.post(key, {"message": "1"})).status_code == 202
    assert (await api.post(same_project, {"message": "2"})).status_code == 202
    limited = await api.post(key, {"message": "3"})
    error = error_of(limited, 429, "rate_limited")
    assert "more than 2 requests per minute" in error["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 30
    assert (await api.post(other, {"message": "4"})).status_code == 202
    assert sorted(r["message"] for r in await stored(api.store)) == ["1", "2", "4"]


async def test_the_daily_quota_is_per_plan_and_says_when_it_resets(
    logs_api: MakeApi, clock: FakeClock
) -> None:
    config = logs_config(daily_lines=3, plans={"pro": LogPlanLimits(daily_lines=10)})
    api = await logs_api(config)
    free, pro = await api.key("shop"), await api.key("blog", plan="pro")
    assert (await api.post(free, [{"message": "m"}] * 2)).status_code == 202
    over = await api.post(free, [{"message": "m"}] * 2)
    error = error_of(over, 429, "quota_exceeded")
    assert error["message"].startswith("2 of 3 lines sent today (UTC)")
    assert over.headers["retry-after"] == str(12 * 3600)  # NOW is noon: until midnight UTC
    assert (await api.post(free, [{"message": "m"}])).status_code == 202  # the last one fits
    assert (await api.post(pro, [{"message": "m"}] * 10)).status_code == 202
    clock.advance(timedelta(hours=12))
    assert (await api.post(free, [{"message": "m"}] * 3)).status_code == 202


async def test_the_retention_of_the_plan_sets_expires(logs_api: MakeApi) -> None:
    api = await logs_api(logs_config(plans={"pro": LogPlanLimits(retention_days=30)}))
    free, pro = await api.key("shop"), await api.key("blog", plan="pro")
    old = {"message": "m", "ts": (NOW - timedelta(days=10)).isoformat()}
    error = error_of(await api.post(free, [old]), 422, "invalid_logs")
    assert "older than the retention (7 days)" in error["errors"][0]["message"]
    assert (await api.post(pro, [old])).status_code == 202
    (row,) = await stored(api.store)
    assert int(row["expires_s"]) == NOW_US // 1_000_000 + 30 * 86_400


# --- keys ---------------------------------------------------------------------------------------


async def test_a_key_writes_only_to_its_own_project(api: LogsApi) -> None:
    shop, blog = await api.key("shop"), await api.key("blog", org="other")
    shop_id = (await api.keys.get(api.created[shop])).project_id
    blog_id = (await api.keys.get(api.created[blog])).project_id
    assert (await api.post(shop, {"message": "from shop"})).status_code == 202
    assert (await api.post(blog, {"message": "from blog"})).status_code == 202
    # Naming the other project refuses, in the query string or in the body.
    elsewhere = await api.post(shop, {"message": "x"}, params={"project": blog_id})
    assert error_of(elsewhere, 403, "forbidden")
    in_body = await api.post(shop, {"message": "x", "project": blog_id})
    assert error_of(in_body, 422, "invalid_logs")["errors"][0]["field"] == "project"
    assert [r["message"] for r in await stored(api.store, shop_id)] == ["from shop"]
    assert [r["message"] for r in await stored(api.store, blog_id)] == ["from blog"]


async def test_no_key_a_wrong_key_a_revoked_key_or_the_admin_token(api: LogsApi) -> None:
    key = await api.key()
    assert (await api.post(key, {"message": "ok"})).status_code == 202  # cached now
    missing = await api.post(None, {"message": "m"})
    assert error_of(missing, 401, "unauthorized")
    wrong = await api.post("hr_" + "1" * 27, {"message": "m"})
    assert "not valid" in error_of(wrong, 401, "invalid_key")["message"]
    await api.keys.revoke(api.created[key], actor="test")
    revoked = await api.post(key, {"message": "m"})
    assert "key_revoked" in error_of(revoked, 401, "invalid_key")["message"]
    admin = await api.client.post(
        "/logs/v1",
        json={"message": "m"},
        params={"project": "prj_x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert "project's API key" in error_of(admin, 403, "key_required")["message"]
    x_api_key = await api.client.post(
        "/logs/v1", json={"message": "m"}, headers={"X-Api-Key": await api.key()}
    )
    assert x_api_key.status_code == 202
    assert [r["message"] for r in await stored(api.store)] == ["ok", "m"]


async def test_the_key_never_appears_in_logs_or_errors(
    logs_api: MakeApi, logs_store: ChdbStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gated = GatedStore(logs_store)
    api = await logs_api(logs_config(per_minute=5, flush_interval=0.01), store=gated)
    key = await api.key()
    gated.down = True  # a write fails and is logged, then succeeds
    answers = [asyncio.ensure_future(api.post(key, [{"message": "m", "level": "loud"}]))]
    answers.append(asyncio.ensure_future(api.post(key, {"message": "m"})))
    await reached(gated.failed)
    gated.down = False
    answers += [
        asyncio.ensure_future(api.post(key, b"{", "application/json")),
        asyncio.ensure_future(api.post(key, b"x", "text/plain")),
        # Another key: its last letter changed (to one it is not already).
        asyncio.ensure_future(
            api.post(key[:-1] + ("z" if key[-1] != "z" else "y"), {"message": "m"})
        ),
        asyncio.ensure_future(api.post(key, {"message": key})),  # its own key as a message
    ]
    responses = await asyncio.gather(*answers)
    responses.append(await api.post(key, {"message": "over the rate limit"}))
    assert [r.status_code for r in responses] == [422, 202, 400, 415, 401, 202, 429]
    assert "logs: writing 1 lines failed" in caplog.text
    for response in responses:
        assert key not in response.text
        assert key not in str(response.headers)
    assert key not in caplog.text


# --- the platform -------------------------------------------------------------------------------


def test_the_api_role_takes_logs(tmp_path: Path, chdb_path: Path) -> None:
    database = f"t_{uuid.uuid4().hex[:12]}"
    config = Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{free_port()}",
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": TOKEN,
            "analytics_path": str(chdb_path),  # this process's one chDB directory
            "analytics_database": database,
        }
    )
    with PlatformThread(config, gateway=False, demo=True) as running:
        assert running.key is not None
        headers = {"Authorization": f"Bearer {running.key}"}
        with httpx.Client(base_url=running.api_url, headers=headers) as client:
            accepted = client.post("/logs/v1", json=[{"message": "hello"}, {"message": "again"}])
            revoked = client.post(
                f"/admin/v1/keys/{running.key_id}/revoke",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            after = client.post("/logs/v1", json={"message": "after"})
    assert accepted.status_code == 202 and accepted.json() == {"accepted": 2}
    assert revoked.status_code == 200
    assert after.status_code == 401  # the revocation reached the api's key cache at once

    async def check() -> list[dict[str, Any]]:
        store = ChdbStore(chdb_path, database)
        try:
            return await stored(store)
        finally:
            await store.drop()
            await store.aclose()

    rows = asyncio.run(check())
    assert sorted(r["message"] for r in rows) == ["again", "hello"]
