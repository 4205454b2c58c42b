"""``UsageRecorder`` against a running api role: events recorded while the platform is not up yet
arrive once it is (network errors retried), a batch sent again after its answer was lost counts
once, and a process that exits without closing sends its events. Then the events' shape and the
refusals in process (``httpx.MockTransport``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.client import ClientClosed, UsageRecorder
from hoodrun.devnet import free_port

from .conftest import TOKEN, Api, run_api

METERS = [
    {"slug": "tokens", "event_type": "llm.tokens", "aggregation": "SUM", "value_property": "$.tokens"}
]  # fmt: skip
ROOT = Path(__file__).parents[2]


def _tokens(api: Api, subject: str, expected: float, deadline: float = 20.0) -> float:
    """The ``tokens`` meter of ``subject`` once it reaches ``expected`` (or at the deadline)."""
    value = 0.0
    until = time.monotonic() + deadline
    with httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < until:
            answer = client.get("/api/v1/meters/tokens/query", params={"subject": subject})
            assert answer.status_code == 200, answer.text
            value = sum(row["value"] for row in answer.json()["data"])
            if value >= expected:
                break
            time.sleep(0.2)
    return value


def _stored(api: Api) -> int:
    return int(api.query("SELECT count() AS n FROM {db}.events FINAL")[0]["n"])


def test_events_recorded_before_the_platform_is_up_arrive_once(
    tmp_path: Path, chdb_path: Path
) -> None:
    port = free_port()  # nothing listens there until the platform starts
    recorder = UsageRecorder(f"http://127.0.0.1:{port}", TOKEN, source="billing", batch_size=100)
    try:
        for n in range(300):
            recorder.record("org_acme", "llm.tokens", {"tokens": n % 7})
        with run_api(tmp_path, chdb_path, port=port, meters=METERS) as api:
            assert recorder.flush(timeout=45)
            value = _tokens(api, "org_acme", 897)  # sum of n % 7 over 300 events
            assert (value, _stored(api)) == (897, 300)
    finally:
        recorder.close()
    assert recorder.retried > 0
    assert (recorder.sent, recorder.dropped) == (300, 0)


class LosesAnAnswer(httpx.HTTPTransport):
    """httpx's transport, whose first answer is lost after the server took the request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = super().handle_request(request)
        if self.requests == 1:
            assert response.status_code == 204
            response.read()
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_a_batch_sent_again_after_a_lost_answer_counts_once(
    tmp_path: Path, chdb_path: Path
) -> None:
    transport = LosesAnAnswer()
    with run_api(tmp_path, chdb_path, meters=METERS) as api:
        with UsageRecorder(api.url, TOKEN, source="proxy", transport=transport) as recorder:
            for tokens in (100, 250, 50):
                recorder.record("org_acme", "llm.tokens", {"tokens": tokens})
            assert recorder.flush(timeout=30)
        # 204 means stored: a second copy would be counted already.
        assert (_tokens(api, "org_acme", 400), _stored(api)) == (400, 3)
    assert transport.requests == 2
    assert (recorder.sent, recorder.retried, recorder.dropped) == (3, 1, 0)


def test_a_process_that_exits_without_closing_sends_its_events(
    tmp_path: Path, chdb_path: Path
) -> None:
    script = (
        "import sys\n"
        "from hoodrun.client import UsageRecorder\n"
        "recorder = UsageRecorder(sys.argv[1], sys.argv[2], flush_interval=60)\n"
        "for n in range(25):\n"
        "    recorder.record('org_exit', 'llm.tokens', {'tokens': 2})\n"
    )
    with run_api(tmp_path, chdb_path, meters=METERS) as api:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script, api.url, TOKEN],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and not done.stderr, done.stderr
        assert _tokens(api, "org_exit", 50) == 50


# --- in process ---------------------------------------------------------------------------------


def test_an_event_is_a_cloudevent() -> None:
    bodies: list[Any] = []

    def take(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/cloudevents-batch+json"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        bodies.append(orjson.loads(request.read()))
        return httpx.Response(204)

    at = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    with UsageRecorder("http://api/", TOKEN, "jobs", transport=httpx.MockTransport(take)) as rec:
        given = rec.record("org_a", "job.run", {"seconds": 1.5}, id="run-1", time=at)
        made = rec.record("org_a", "job.run")
    assert (given, len(made)) == ("run-1", 32)
    first, second = bodies[0]
    assert first == {
        "specversion": "1.0", "id": "run-1", "source": "jobs", "type": "job.run",
        "subject": "org_a", "time": "2026-11-29T10:00:00+00:00", "data": {"seconds": 1.5},
    }  # fmt: skip
    assert "data" not in second and datetime.fromisoformat(second["time"]).tzinfo is not None
    with pytest.raises(ClientClosed):
        rec.record("org_a", "job.run")


def test_invalid_events_are_refused_when_recorded() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    with UsageRecorder("http://api", TOKEN, transport=transport) as rec:
        with pytest.raises(ValueError, match="subject"):
            rec.record("", "job.run")
        with pytest.raises(ValueError, match="time"):
            rec.record("org", "job.run", time=datetime(2026, 1, 1))  # noqa: DTZ001
        with pytest.raises(TypeError):
            rec.record("org", "job.run", {"when": object()})
        assert rec.pending == 0


def test_a_refused_batch_is_dropped_and_reported_once(capfd: pytest.CaptureFixture[str]) -> None:
    problem = {"type": "about:blank", "title": "Bad Request", "status": 400,
               "detail": "[0].subject: required"}  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=problem))
    with UsageRecorder("http://api", TOKEN, batch_size=1, transport=transport) as recorder:
        recorder.record("org", "job.run")
        recorder.record("org", "job.run")
        assert recorder.flush()
    assert (recorder.sent, recorder.dropped) == (0, 2)
    err = capfd.readouterr().err
    assert err.count("[0].subject: required") == 1 and TOKEN not in err
