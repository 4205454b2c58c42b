"""Claimers at once, in one process and across processes: a job is never held twice, and a worker
killed with SIGKILL leaves its job to the next claimer once its lease expires."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hoodrun.jobs import JobQueue
from hoodrun.store import Store
from tests._stores import FakeClock
from tests.jobs._helpers import TEST_POLICIES, make_queue

JOBS = 120


async def test_concurrent_claimers_never_share_a_job(database_url: str, clock: FakeClock) -> None:
    async with Store(database_url) as one, Store(database_url) as two:
        queue = make_queue(one, clock)
        for n in range(JOBS):
            await queue.enqueue("invoice-generate", {"n": n})

        in_flight = overlap = 0

        async def drain(store: Store, worker_id: str) -> list[str]:
            nonlocal in_flight, overlap
            claimer = make_queue(store, clock)
            taken: list[str] = []
            while True:
                in_flight += 1
                overlap = max(overlap, in_flight)
                try:
                    batch = await claimer.claim(worker_id, limit=3)
                finally:
                    in_flight -= 1
                if not batch:
                    return taken
                taken.extend(job.id for job in batch)

        results = await asyncio.gather(
            drain(one, "a"), drain(two, "b"), drain(one, "c"), drain(two, "d")
        )
    assert overlap >= 2  # the claims really ran at the same time
    claimed = [job_id for ids in results for job_id in ids]
    assert len(claimed) == JOBS
    assert len(set(claimed)) == JOBS


_DOOMED = textwrap.dedent(
    """
    import asyncio, sys
    from hoodrun.jobs import JobQueue, JobPolicy
    from hoodrun.store import Store

    async def main(url: str) -> None:
        async with Store(url) as store:
            policies = {"fast": JobPolicy("fast", 50, 3, 0.3)}
            queue = JobQueue(store, lease_margin=0.5, policies=policies)
            [job] = await queue.claim("doomed-worker")
            print(job.id, flush=True)
            await asyncio.sleep(3600)  # "running" the job until killed

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_killed_workers_job_is_claimed_again_after_its_lease(
    database_url: str, tmp_path: Path
) -> None:
    async with Store(database_url) as store:
        queue = JobQueue(store, lease_margin=0.5, policies=TEST_POLICIES)
        job = await queue.enqueue("fast", {"invoice": "inv_1"})
        script = tmp_path / "doomed.py"
        script.write_text(_DOOMED)
        doomed = subprocess.Popen(
            [sys.executable, str(script), database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert doomed.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 60)
            assert line.strip() == job.id, doomed.stderr.read() if doomed.stderr else ""
            held = await queue.get(job.id)
            assert held is not None and held.locked_by == "doomed-worker"
            doomed.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed.wait, 10)
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait(10)
            for stream in (doomed.stdout, doomed.stderr):
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + 30
        while not (taken := await queue.claim("survivor")):
            assert time.monotonic() < deadline, "the killed worker's job was never claimed again"
            await asyncio.sleep(0.05)
        [again] = taken
        assert (again.id, again.attempts, again.locked_by) == (job.id, 2, "survivor")
        assert again.last_error == "lease expired: worker doomed-worker stopped during attempt 1"
        assert (await queue.complete(again, "survivor")).status == "done"
