"""``hoodrun jobs`` through typer's runner on SQLite and PostgreSQL, and ``hoodrun worker`` as a
real process with telemetry disabled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from hoodrun.cli import app
from hoodrun.jobs import JobQueue
from hoodrun.store import Store, read_audit

ROOT = Path(__file__).resolve().parents[2]
HOODRUN = [sys.executable, "-m", "hoodrun"]

Hoodrun = Callable[..., Result]


def _write_config(path: Path, **settings: object) -> Path:
    example = yaml.safe_load((ROOT / "hoodrun.example.yaml").read_text())
    example.update(settings)
    path.write_text(yaml.safe_dump(example))
    return path


@pytest.fixture
def hoodrun(tmp_path: Path, database_url: str) -> Hoodrun:
    config = _write_config(tmp_path / "hoodrun.yaml", database_url=database_url)

    def run(*args: str) -> Result:
        env = {"COLUMNS": "200", "HOODRUN_CONFIG": None}
        return CliRunner().invoke(app, ["-c", str(config), *args], env=env)

    return run


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def _kill_first_job(database_url: str) -> str:
    """Claim the oldest due job and fail it for good; its id."""

    async def go() -> str:
        async with Store(database_url) as store:
            queue = JobQueue(store)
            [job] = await queue.claim("test")
            await queue.fail(job, "test", "bad tax id", permanent=True)
            return job.id

    return asyncio.run(go())


def _audit_actions(database_url: str, job_id: str) -> list[str]:
    async def go() -> list[str]:
        async with Store(database_url) as store, store.connect() as conn:
            return [entry.action for entry in await read_audit(conn, target_id=job_id)]

    return asyncio.run(go())


def test_enqueue_list_show_cancel_retry(hoodrun: Hoodrun, database_url: str) -> None:
    payload = '{"invoice_id": "inv_1"}'
    made = _ok(hoodrun("jobs", "enqueue", "invoice-generate", "--payload", payload, "--key", "k1"))
    job_id = made.stdout.strip()
    assert job_id.startswith("job_") and "Enqueued invoice-generate job" in made.stderr
    again = _ok(hoodrun("jobs", "enqueue", "invoice-generate", "--key", "k1"))
    assert again.stdout.strip() == job_id and "exists already" in again.stderr

    listed = json.loads(_ok(hoodrun("jobs", "list", "--json")).stdout)["jobs"]
    assert [(j["id"], j["status"], j["payload"]) for j in listed] == [
        (job_id, "queued", {"invoice_id": "inv_1"})
    ]
    table = _ok(hoodrun("jobs", "list", "--status", "queued")).stdout
    assert job_id in table and "invoice-generate" in table and "0/3" in table
    assert "No jobs" in _ok(hoodrun("jobs", "list", "--status", "dead")).stderr
    shown = json.loads(_ok(hoodrun("jobs", "show", job_id)).stdout)
    assert shown["idempotency_key"] == "k1" and shown["run_at"].endswith("+00:00")

    assert "now cancelled" in _ok(hoodrun("jobs", "cancel", job_id)).stderr
    refused = hoodrun("jobs", "cancel", job_id)
    assert refused.exit_code == 1 and "is cancelled" in refused.stderr
    assert "now queued" in _ok(hoodrun("jobs", "retry", job_id)).stderr
    assert _audit_actions(database_url, job_id) == ["job.retry", "job.cancel", "job.enqueue"]


def test_retry_every_dead_job_and_stats(hoodrun: Hoodrun, database_url: str) -> None:
    for kind in ("payment-process", "fx-fetch"):
        _ok(hoodrun("jobs", "enqueue", kind))
    dead = _kill_first_job(database_url)  # payment-process: the higher priority
    stats = json.loads(_ok(hoodrun("jobs", "stats", "--json")).stdout)
    assert stats["payment-process"]["dead"] == 1 and stats["fx-fetch"]["queued"] == 1
    assert "payment-process" in _ok(hoodrun("jobs", "stats")).stdout
    assert "Retrying 1 dead job." in _ok(hoodrun("jobs", "retry", "--dead")).stderr
    assert json.loads(_ok(hoodrun("jobs", "show", dead)).stdout)["status"] == "queued"
    assert "Deleted 0 jobs finished before" in _ok(hoodrun("jobs", "prune", "--days", "1")).stderr


def test_mistakes_exit_1_with_one_line(hoodrun: Hoodrun) -> None:
    cases = [
        (("jobs", "enqueue", "nope"), "unknown job kind 'nope'"),
        (("jobs", "enqueue", "fx-fetch", "--payload", "[1]"), "must be a JSON object"),
        (("jobs", "enqueue", "fx-fetch", "--payload", "{"), "--payload is not JSON"),
        (("jobs", "show", "job_missing"), "no job job_missing"),
        (("jobs", "retry", "job_missing"), "no job job_missing"),
        (("jobs", "retry"), "name one job to retry, or use --dead"),
        (("jobs", "list", "--status", "weird"), "unknown status 'weird'"),
    ]
    for args, message in cases:
        result = hoodrun(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def _worker_config(tmp_path: Path, **settings: object) -> dict[str, str]:
    config = _write_config(
        tmp_path / "worker.yaml",
        data_dir=str(tmp_path / "data"),
        database_url=f"sqlite:///{tmp_path}/data/hoodrun.db",
        telemetry={"enabled": False},
        log_level="warning",
        **settings,
    )
    return {**os.environ, "HOODRUN_CONFIG": str(config)}


def test_the_worker_runs_jobs_alone_when_telemetry_is_disabled(tmp_path: Path) -> None:
    env = _worker_config(tmp_path)
    burst = subprocess.run(
        [*HOODRUN, "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60
    )
    assert burst.returncode == 0, burst.stderr
    assert (tmp_path / "data" / "hoodrun.db").exists()  # migrated: the job queue is there
    worker = subprocess.Popen(
        [*HOODRUN, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        pool = ThreadPoolExecutor(1)  # a deadline on the first line, however the worker hangs
        try:
            first = pool.submit(worker.stdout.readline).result(timeout=60)
        finally:
            pool.shutdown(wait=False)  # a hung read ends when the worker is killed below
        assert first.strip() == "worker running", worker.stderr.read() if worker.stderr else ""
        worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while worker.poll() is None:
            assert time.monotonic() < deadline, "the worker did not stop on SIGTERM"
            time.sleep(0.02)
        assert worker.returncode == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        for stream in (worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()


def test_the_worker_refuses_to_run_with_nothing_to_do(tmp_path: Path) -> None:
    env = _worker_config(tmp_path, billing={"enabled": False})
    result = subprocess.run(
        [*HOODRUN, "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "nothing to do" in result.stderr
