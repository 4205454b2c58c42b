"""A ``hoodrun worker`` killed with SIGKILL in the middle of the stream loses nothing and doubles
nothing: the next worker gets the unacknowledged batches again and the store keeps each row once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from hoodrun.telemetry.nats import NatsTarget, connect_jetstream
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.units import ComputeUnits

HOODRUN = [sys.executable, "-m", "hoodrun"]
NATS_URL = "nats://127.0.0.1:4222"
BATCHES, ROWS = 40, 2_500


def _batch(number: int) -> object:
    now = time.time()
    return RowBuilder(ComputeUnits()).table(
        [
            RequestRecord(
                ts=now, chain="eth", method="eth_call", methods=("eth_call",), calls=1,
                status=200, reason=None, key_id="key_w", org_id="org_w", project_id="prj_w",
                client_ip="10.0.0.1", latency=0.001, upstream="a", upstream_latency=0.001,
                attempts=1, bytes_in=10, bytes_out=10, request_id=f"w{number:04d}{i:06d}",
            )
            for i in range(ROWS)
        ]
    )  # fmt: skip


async def _publish(stream: str) -> None:
    target = NatsTarget(NATS_URL, stream)
    try:
        for number in range(BATCHES):
            await target.write(_batch(number))
    finally:
        await target.aclose()


async def _consumer_state(stream: str) -> tuple[int, int]:
    """(messages delivered to the worker at least once, messages still in the stream)."""
    nc, js = await connect_jetstream(NATS_URL)
    try:
        stream_info = await js.stream_info(stream)
        try:
            consumer = await js.consumer_info(stream, "hoodrun-writer")
            delivered = consumer.delivered.stream_seq or 0
        except Exception:  # the consumer is not created yet
            delivered = 0
        return delivered, stream_info.state.messages
    finally:
        await nc.close()


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


async def _delete(stream: str) -> None:
    nc, js = await connect_jetstream(NATS_URL)
    try:
        await js.delete_stream(stream)
    finally:
        await nc.close()


def test_a_killed_worker_loses_and_doubles_nothing(tmp_path: Path) -> None:
    stream = f"HOODRUN_KILL_{uuid.uuid4().hex[:10].upper()}"
    config = tmp_path / "hoodrun.yaml"
    config.write_text(
        f"data_dir: {tmp_path}/data\n"
        f"database_url: sqlite:///{tmp_path}/hoodrun.db\n"
        f"nats_url: {NATS_URL}\n"
        f"telemetry: {{stream: {stream}, ack_wait: 2}}\n"
        "log_level: warning\n"
    )
    env = {**os.environ, "HOODRUN_CONFIG": str(config)}
    try:
        asyncio.run(_publish(stream))
        worker = subprocess.Popen(
            [*HOODRUN, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                delivered, left = asyncio.run(_consumer_state(stream))
                if delivered > 0:
                    break
                time.sleep(0.02)
            assert left > 0, "the worker finished before it could be killed mid-stream"
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert asyncio.run(_consumer_state(stream))[1] > 0
        burst = subprocess.run(
            [*HOODRUN, "worker", "--burst"], env=env, capture_output=True, text=True, timeout=120
        )
        assert burst.returncode == 0, burst.stderr
        assert asyncio.run(_consumer_state(stream))[1] == 0  # every batch acknowledged
        usage = subprocess.run(
            [*HOODRUN, "usage", "--json", "--by", "", "--from", "1h", "--source", "raw"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert usage.returncode == 0, usage.stderr
        totals = json.loads(usage.stdout)["rows"]
        assert [row["requests"] for row in totals] == [BATCHES * ROWS]
        hour = int(time.time()) // 3600 * 3600
        start, end = (_iso(hour - 3600), _iso(hour + 3600))
        hourly = subprocess.run(
            [*HOODRUN, "usage", "--json", "--by", "", "--source", "rollup", "--from", start,
             "--to", end],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert hourly.returncode == 0, hourly.stderr
        assert sum(row["requests"] for row in json.loads(hourly.stdout)["rows"]) == BATCHES * ROWS
    finally:
        asyncio.run(_delete(stream))
