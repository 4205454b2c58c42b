"""The request explorer on chDB: filters, paging, isolation between projects, a request's detail
and de-duplication, over request records built as the telemetry writer builds them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from hoodrun.explorer.query import encode_cursor, iso
from hoodrun.explorer.requests import CAPTURE_OFF, WITHHELD, RequestExplorer
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import ChdbStore
from tests.explorer_query.support import at, insert_records, record

A = "prj_a"
BATCH = {
    "methods": ("eth_call", "eth_getBalance", "eth_chainId"),
    "calls": 3,
    "call_results": ((0, None), (-32602, None), (0, None)),
    "bytes_in": 300,
    "bytes_out": 900,
}


def records() -> list[RequestRecord]:
    return [
        record(at(1, 10), "r1"),
        record(at(1, 10, 1), "r2", "eth_getLogs", error_code=-32000, latency=0.300),
        record(at(1, 10, 2), "r3", "eth_blockNumber", chain="base", key_id="key_a2"),
        record(
            at(1, 10, 3),
            "r4",
            "eth_estimateGas",
            status=429,
            reason="rate_limited",
            error_code=-32005,
        ),
        record(at(1, 10, 4), "r5", "batch", **BATCH),
        # Another project, in another org and in the same org, at the same times.
        record(at(1, 10, 1), "rb", project_id="prj_b", org_id="org_b", key_id="key_b"),
        record(at(1, 10, 2), "rc", project_id="prj_c", key_id="key_c"),
    ]


@pytest.fixture
async def explorer(analytics: ChdbStore) -> RequestExplorer:
    await insert_records(analytics, records())
    return RequestExplorer(analytics)


DAY = {"start": at(1), "end": at(2)}
parse = datetime.fromisoformat


async def calls(explorer: RequestExplorer, project: str = A, **options: Any) -> list[str]:
    found = await explorer.search(project, **{**DAY, **options})
    return [f"{row['request_id']}#{row['call_index']}" for row in found["rows"]]


async def test_search_lists_calls_newest_first(explorer: RequestExplorer) -> None:
    found = await explorer.search(A, **DAY)
    assert [f"{r['request_id']}#{r['call_index']}" for r in found["rows"]] == [
        "r5#2", "r5#1", "r5#0", "r4#0", "r3#0", "r2#0", "r1#0",
    ]  # fmt: skip
    assert found["next_cursor"] is None
    r2 = found["rows"][5]
    assert r2 == {
        "ts": iso(at(1, 10, 1)),
        "request_id": "r2",
        "call_index": 0,
        "batch_size": 1,
        "key_id": "key_a",
        "chain": "eth",
        "method": "eth_getLogs",
        "outcome": "rpc_error",
        "error_code": -32000,
        "status": 200,
        "latency_ms": 300.0,
        "upstream_latency_ms": 1.0,
        "upstream": "eth-a",
        "attempts": 1,
        "cache_hit": False,
        "bytes_in": 60,
        "bytes_out": 40,
        "compute_units": r2["compute_units"],
        "client_ip": r2["client_ip"],
    }
    assert "params" not in r2 and "response" not in r2  # payloads are not captured


async def test_filters(explorer: RequestExplorer) -> None:
    assert await calls(explorer, chain="base") == ["r3#0"]
    assert await calls(explorer, chain="eth,base", method="eth_blockNumber") == ["r3#0"]
    assert await calls(explorer, method="eth_call") == ["r5#0", "r1#0"]
    assert await calls(explorer, outcome="rpc_error") == ["r5#1", "r2#0"]
    assert await calls(explorer, outcome="rate_limited") == ["r4#0"]
    assert await calls(explorer, outcome="ok", method="eth_getBalance") == []
    assert await calls(explorer, error_code=-32000) == ["r2#0"]
    assert await calls(explorer, error_code=-32602) == ["r5#1"]
    assert await calls(explorer, latency_above=100) == ["r2#0"]
    assert await calls(explorer, latency_above=300) == []  # above, not at
    assert await calls(explorer, key="key_a2") == ["r3#0"]
    assert await calls(explorer, start=at(1, 10, 1), end=at(1, 10, 3)) == ["r3#0", "r2#0"]
    with pytest.raises(ValueError, match="latency_above"):
        await calls(explorer, latency_above=-1)


async def test_a_project_sees_only_its_own_calls(explorer: RequestExplorer) -> None:
    assert await calls(explorer, "prj_b") == ["rb#0"]
    assert await calls(explorer, "prj_c") == ["rc#0"]  # same org as prj_a
    assert await calls(explorer, "prj_c", org="org_a") == ["rc#0"]
    assert await calls(explorer, A, org="org_b") == []  # the org narrows, never widens
    assert await calls(explorer, "prj_nobody") == []
    assert await explorer.detail("prj_b", "r5") is None
    assert await explorer.detail(A, "rb") is None
    with pytest.raises(ValueError, match="project id is required"):
        await calls(explorer, "")


async def test_pages_have_no_gaps_or_repeats_even_when_requests_arrive(
    analytics: ChdbStore,
) -> None:
    # Batches of 3 calls, two requests per millisecond: the cursor must tell apart every call.
    batch = {**BATCH, "bytes_in": 1, "bytes_out": 1}
    # (+0.4 ms: float seconds floored to milliseconds stay on the intended millisecond)
    first = [record(at(1, 12, 0, (i // 2 + 0.4) / 1000), f"q{(i * 7) % 60:02d}", "batch", **batch)
             for i in range(60)]  # fmt: skip
    await insert_records(analytics, first)
    explorer = RequestExplorer(analytics)
    seen: list[tuple[datetime, str, int]] = []
    cursor = None
    while True:
        page = await explorer.search(A, **DAY, limit=13, cursor=cursor)
        seen += [(parse(r["ts"]), r["request_id"], r["call_index"]) for r in page["rows"]]
        if len(seen) == 13:  # newer and older requests arrive while the list is read
            await insert_records(analytics, [record(at(1, 13), "new"), record(at(1, 11), "old")])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = sorted(
        [(at(1, 12, 0, i // 2 / 1000), f"q{(i * 7) % 60:02d}", c)
         for i in range(60) for c in range(3)] + [(at(1, 11), "old", 0)],
        reverse=True,
    )  # fmt: skip
    assert seen == expected
    with pytest.raises(ValueError, match="cursor"):
        await explorer.search(A, **DAY, cursor=encode_cursor("logs", 1, "x"))


async def test_a_requests_detail_has_every_call(explorer: RequestExplorer) -> None:
    found = await explorer.detail(A, "r5")
    assert found is not None
    rows = (await explorer.search(A, **DAY, method="eth_call,eth_getBalance,eth_chainId"))["rows"]
    units = sum(r["compute_units"] for r in rows if r["request_id"] == "r5")
    assert {k: v for k, v in found.items() if k != "calls"} == {
        "project": A,
        "request_id": "r5",
        "ts": iso(at(1, 10, 4)),
        "key_id": "key_a",
        "chain": "eth",
        "batch_size": 3,
        "status": 200,
        "latency_ms": 2.0,
        "upstream": "eth-a",
        "upstream_latency_ms": 1.0,
        "attempts": 1,
        "bytes_in": 300,
        "bytes_out": 900,
        "compute_units": units,
        "client_ip": found["client_ip"],
        "payloads_captured": False,
        "payloads_note": CAPTURE_OFF,
    }
    assert [
        (c["call_index"], c["method"], c["outcome"], c["error_code"]) for c in found["calls"]
    ] == [
        (0, "eth_call", "ok", 0),
        (1, "eth_getBalance", "rpc_error", -32602),
        (2, "eth_chainId", "ok", 0),
    ]
    # Without payload capture: no params, no answers.
    assert all(c["params_excerpt"] is c["response_excerpt"] is None for c in found["calls"])
    assert await explorer.detail(A, "r5", org="org_a", start=at(1, 10), end=at(1, 11)) == found
    assert await explorer.detail(A, "r5", start=at(1, 11), end=at(1, 12)) is None
    assert await explorer.detail(A, "nope") is None
    with pytest.raises(ValueError, match="both start and end"):
        await explorer.detail(A, "r5", start=at(1))


async def test_a_batch_written_twice_counts_once(
    analytics: ChdbStore, explorer: RequestExplorer
) -> None:
    await insert_records(analytics, records())  # a replay after a store timeout
    assert await calls(explorer) == ["r5#2", "r5#1", "r5#0", "r4#0", "r3#0", "r2#0", "r1#0"]
    found = await explorer.detail(A, "r5")
    assert found is not None and len(found["calls"]) == 3 and found["bytes_in"] == 300


async def test_a_captured_requests_detail_has_its_payloads(analytics: ChdbStore) -> None:
    params, answer = '[{"to":"0xaa"},"latest"]', '{"jsonrpc":"2.0","id":2,"result":"0x"}'
    await insert_records(
        analytics,
        [
            record(
                at(1, 10),
                "cap",
                "batch",
                **{**BATCH, "excerpts": (("[]", '{"result":"0x1"}'), (params, answer), ("[]", ""))},
            ),
            # The same request id in another project: never mixed in.
            record(at(1, 10), "cap", project_id="prj_b", org_id="org_b", excerpts=(("x", "y"),)),
        ],
    )
    explorer = RequestExplorer(analytics)
    found = await explorer.detail(A, "cap")
    assert found is not None
    assert (found["payloads_captured"], found["payloads_note"]) == (True, None)
    assert [(c["params_excerpt"], c["response_excerpt"]) for c in found["calls"]] == [
        ("[]", '{"result":"0x1"}'),
        (params, answer),
        ("[]", ""),  # captured, and nothing was sent back
    ]
    # Searches do not carry payloads.
    rows = (await explorer.search(A, **DAY))["rows"]
    assert rows and not any("excerpt" in name for row in rows for name in row)
    other = await explorer.detail("prj_b", "cap")
    assert other is not None and [c["params_excerpt"] for c in other["calls"]] == ["x"]


async def test_a_detail_without_payloads_neither_reads_nor_shows_them(
    analytics: ChdbStore,
) -> None:
    excerpts = (("[]", '{"result":"0x1"}'), ('["secret-ish"]', '"0x"'), ("[]", ""))
    await insert_records(
        analytics,
        [
            record(at(1, 10), "cap", "batch", **{**BATCH, "excerpts": excerpts}),
            record(at(1, 10, 1), "plain", key_id="key_web"),
        ],
    )
    explorer = RequestExplorer(analytics)
    withheld = await explorer.detail(A, "cap", payloads=False)
    assert withheld is not None
    assert (withheld["payloads_captured"], withheld["payloads_note"]) == (True, WITHHELD)
    assert all(c["params_excerpt"] is c["response_excerpt"] is None for c in withheld["calls"])
    assert "secret-ish" not in repr(withheld)
    shown = await explorer.detail(A, "cap")
    assert shown is not None
    # Everything else is the same.
    strip = ("payloads_note", "calls")
    assert {k: v for k, v in withheld.items() if k not in strip} == {
        k: v for k, v in shown.items() if k not in strip
    }
    assert [c["method"] for c in withheld["calls"]] == [c["method"] for c in shown["calls"]]
    # Not captured: still the browser's note (nothing would be shown either way).
    plain = await explorer.detail(A, "plain", payloads=False)
    assert plain is not None and (plain["payloads_captured"], plain["payloads_note"]) == (
        False,
        WITHHELD,
    )
    # Narrowed to a key: another key's request is not found.
    assert await explorer.detail(A, "plain", key="key_web") is not None
    assert await explorer.detail(A, "plain", key="key_a") is None
    assert await explorer.detail(A, "cap", key="key_a", payloads=False) == withheld
