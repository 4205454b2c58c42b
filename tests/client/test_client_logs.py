"""``HoodRunLogHandler`` against a running api role (real sockets, real chDB): 100k lines from two
processes all stored, a full queue's 503s backed off with nothing lost, and the lines of a process
that exits without closing sent by the exit. Then the odd answers in process
(``httpx.MockTransport``): refusals dropped and reported once without the key, bodies split on
413, retries with the same ids, a close that gives up, a full buffer, httpx's own logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import orjson
import pytest

from hoodrun.client import HoodRunLogHandler

from .conftest import CountingTransport, run_api
from .sender import FINGERPRINTED, LEVELS

SENDER = Path(__file__).with_name("sender.py")
ROOT = Path(__file__).parents[2]


def _sender(url: str, key: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(SENDER), url, key, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "hoodrun.client" not in err, err  # nothing dropped or refused
    return out


@pytest.fixture
def logger() -> Iterator[Callable[[HoodRunLogHandler], logging.Logger]]:
    """``logger(handler)``: a logger of its own, of every level, with only ``handler``, closed
    after."""
    made: list[tuple[logging.Logger, HoodRunLogHandler]] = []

    def make(handler: HoodRunLogHandler) -> logging.Logger:
        log = logging.getLogger(f"client-test.{len(made)}.{id(handler)}")
        log.setLevel(1)
        log.propagate = False
        log.addHandler(handler)
        made.append((log, handler))
        return log

    yield make
    for log, handler in made:
        log.removeHandler(handler)
        handler.close()


# --- against the platform -------------------------------------------------------------------------


def test_100k_lines_from_two_processes_are_all_stored(tmp_path: Path, chdb_path: Path) -> None:
    with run_api(tmp_path, chdb_path) as api:
        senders = [_sender(api.url, api.key, "--count", "50000", "--tag", t) for t in "ab"]
        counters = [json.loads(_finish(process)) for process in senders]
        assert [(c["sent"], c["dropped"]) for c in counters] == [(50_000, 0)] * 2
        levels = api.query("SELECT level, count() AS n FROM {db}.logs FINAL GROUP BY level")
        prints = api.query(
            "SELECT fingerprint, count() AS n, any(level) AS level FROM {db}.logs FINAL "
            "WHERE fingerprint != '' GROUP BY fingerprint"
        )
        ids = api.query("SELECT uniqExact(id) AS n, count() AS rows FROM {db}.logs")
    assert {row["level"]: int(row["n"]) for row in levels} == {
        level: per_100 * 1000 for level, per_100 in LEVELS.items()
    }
    # Five errors whose numbers vary: one fingerprint each, the same in both processes.
    assert sorted(int(row["n"]) for row in prints) == sorted(
        per_100 * 1000 for per_100 in FINGERPRINTED.values()
    )
    assert int(ids[0]["n"]) == int(ids[0]["rows"]) == 100_000  # each stored once


def test_a_full_queue_answers_503_and_nothing_is_lost(
    tmp_path: Path, chdb_path: Path, logger: Callable[[HoodRunLogHandler], logging.Logger]
) -> None:
    # One batch may wait to be written: six handlers sending at once are refused (503) in turn.
    logs = {"queue_depth": 200, "per_minute": 100_000, "per_hour": 1_000_000}
    with run_api(tmp_path, chdb_path, logs=logs) as api:
        transports = [CountingTransport() for _ in range(6)]
        handlers = [
            HoodRunLogHandler(api.url, api.key, batch_size=200, transport=transport)
            for transport in transports
        ]
        loggers = [logger(handler) for handler in handlers]
        for i in range(2000):
            for number, log in enumerate(loggers):
                log.info("handler %d line %d", number, i)
        for handler in handlers:
            handler.flush(timeout=60)
        stored = api.query("SELECT count() AS rows, uniqExact(message) AS n FROM {db}.logs FINAL")
    refused = sum(transport.statuses.get(503, 0) for transport in transports)
    assert refused > 0
    assert sum(handler.retried for handler in handlers) >= refused
    assert [(h.sent, h.dropped, h.pending) for h in handlers] == [(2000, 0, 0)] * 6
    assert int(stored[0]["rows"]) == int(stored[0]["n"]) == 12_000  # each line once


def test_a_process_that_exits_without_closing_sends_its_lines(
    tmp_path: Path, chdb_path: Path
) -> None:
    with run_api(tmp_path, chdb_path) as api:
        # Two full batches go at once; the last 500 lines wait for a flush due in a minute.
        args = ("--count", "2500", "--batch-size", "1000", "--flush-interval", "60", "--no-close")
        _finish(_sender(api.url, api.key, *args))
        rows = api.query("SELECT count() AS n FROM {db}.logs FINAL")
    assert int(rows[0]["n"]) == 2500


# --- odd answers, in process --------------------------------------------------------------------


class Recorded:
    """A MockTransport's requests (decoded bodies) and the answers it gives in turn."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.bodies: list[list[dict[str, Any]]] = []
        self.headers: list[httpx.Headers] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        if "msgpack" in request.headers["content-type"]:
            self.bodies.append(msgpack.unpackb(content))
        else:
            self.bodies.append(orjson.loads(content))
        self.headers.append(request.headers)
        answer = self.answers.pop(0) if self.answers else accepted
        return answer(request)


def accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json={"accepted": 0})


def _answer(status: int, body: dict[str, Any], **headers: str) -> Callable[..., httpx.Response]:
    return lambda request: httpx.Response(status, json=body, headers=headers)


KEY = "hr_test_0123456789abcdef"


def test_a_line_holds_the_record(logger: Callable[..., logging.Logger]) -> None:
    server = Recorded()
    handler = HoodRunLogHandler("http://logs", KEY, service="shop", transport=server.transport)
    log = logger(handler)
    log.warning("order %s is late", 12, extra={"order": 12, "vip": True, "tags": ["x"]})
    try:
        raise KeyError("sku")
    except KeyError:
        log.error("lookup failed", exc_info=True, extra={"trace_id": "t1", "span_id": "s1"})
    log.log(5, "very fine", stack_info=True)
    handler.flush()
    (late, failed, fine) = server.bodies[0]
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    assert server.headers[0]["content-type"] == "application/msgpack"
    assert late["message"] == "order 12 is late" and late["level"] == "warn"
    assert late["service"] == "shop" and len(late["id"]) == 32
    assert late["attributes"] == {
        "logger": log.name, "module": "test_client_logs", "line": late["attributes"]["line"],
        "order": 12, "vip": True,
    }  # fmt: skip
    assert failed["level"] == "error" and failed["stack"].startswith("Traceback")
    assert failed["stack"].endswith("KeyError: 'sku'")
    assert (failed["trace_id"], failed["span_id"]) == ("t1", "s1")
    assert fine["level"] == "trace" and "Stack (most recent call last)" in fine["stack"]
    assert isinstance(late["timestamp"], float)


def test_a_retry_sends_the_same_ids(logger: Callable[..., logging.Logger]) -> None:
    server = Recorded(
        _answer(503, {"error": {"code": "queue_full", "message": "wait"}}, **{"Retry-After": "0"}),
        lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")),
        _answer(502, {}),
    )
    handler = HoodRunLogHandler("http://logs", KEY, format="json", transport=server.transport)
    handler._batcher.max_backoff = 0.01  # no need to wait here
    log = logger(handler)
    for i in range(3):
        log.info("line %d", i)
    handler.flush()
    assert len(server.bodies) == 4 and all(body == server.bodies[0] for body in server.bodies)
    assert (handler.sent, handler.retried, handler.dropped) == (3, 3, 0)


def test_a_refused_batch_is_dropped_and_reported_once_without_the_key(
    logger: Callable[..., logging.Logger], capfd: pytest.CaptureFixture[str]
) -> None:
    invalid = _answer(422, {"error": {"code": "invalid_logs", "message": f"[0].level: bad {KEY}"}})
    server = Recorded(invalid, invalid)
    handler = HoodRunLogHandler("http://logs", KEY, batch_size=2, transport=server.transport)
    log = logger(handler)
    for i in range(6):
        log.info("line %d", i)
    handler.flush()
    assert (handler.sent, handler.retried, handler.dropped) == (2, 0, 4)
    err = capfd.readouterr().err
    assert err.count("refused") == 1 and "[0].level: bad ***" in err and KEY not in err
    assert KEY not in repr(handler)


def test_a_body_too_large_is_split(logger: Callable[..., logging.Logger]) -> None:
    server = Recorded(_answer(413, {"error": {"code": "body_too_large", "message": "smaller"}}))
    handler = HoodRunLogHandler("http://logs", KEY, batch_size=10, transport=server.transport)
    log = logger(handler)
    for i in range(10):
        log.info("line %d", i)
    handler.flush()
    assert [len(body) for body in server.bodies] == [10, 5, 5]
    assert (handler.sent, handler.dropped) == (10, 0)


def test_a_close_gives_up_at_its_deadline(
    logger: Callable[..., logging.Logger], capfd: pytest.CaptureFixture[str]
) -> None:
    down = _answer(
        503, {"error": {"code": "unavailable", "message": "down"}}, **{"Retry-After": "5"}
    )
    server = Recorded(*[down] * 10)
    handler = HoodRunLogHandler(
        "http://logs", KEY, batch_size=2, close_timeout=0.2, transport=server.transport
    )
    log = logger(handler)
    for i in range(5):
        log.info("line %d", i)
    handler.close()
    assert (handler.sent, handler.dropped, handler.pending) == (0, 5, 0)
    log.info("after the close")
    assert handler.dropped == 6
    assert "dropped" in capfd.readouterr().err


def test_a_full_buffer_blocks_then_drops(logger: Callable[..., logging.Logger]) -> None:
    gate = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        gate.wait(10)
        return accepted(request)

    server = Recorded(slow)
    handler = HoodRunLogHandler(
        "http://logs", KEY, batch_size=2, max_buffer=2, block_timeout=0.05,
        transport=server.transport,
    )  # fmt: skip
    log = logger(handler)
    for i in range(2):
        log.info("sent %d", i)  # taken by the sender, which waits for its answer
    for _ in range(1000):  # until the sender holds them (at most 10 s)
        if handler.pending == 2 and not handler._batcher._buffer:
            break
        threading.Event().wait(0.01)
    for i in range(5):
        log.info("buffered %d", i)  # two fit; the third waits, then the rest drop at once
    gate.set()
    handler.flush()
    assert (handler.sent, handler.dropped) == (4, 3)


def test_httpx_logs_of_the_sender_are_left_out(logger: Callable[..., logging.Logger]) -> None:
    server = Recorded()
    handler = HoodRunLogHandler("http://logs", KEY, transport=server.transport)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        logging.getLogger("client-test.app").info("one")
        handler.flush()
        logging.getLogger("client-test.app").info("two")
        handler.flush()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    messages = [line["message"] for body in server.bodies for line in body]
    assert messages == ["one", "two"]
