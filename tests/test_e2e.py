"""The commands as a person runs them: ``hoodrun up --devnet``, and two ``hoodrun gateway``
processes sharing Redis with keys managed by ``hoodrun keys``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.devnet import Anvil, free_port
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
HOODRUN = [sys.executable, "-m", "hoodrun"]
BODY = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})


class Output:
    """Collects a process's output on a thread, so a test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.text += line

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text):
                return match
            if self._proc.poll() is not None and not re.search(pattern, self.text):
                time.sleep(0.2)
                if not re.search(pattern, self.text):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s; output so far:\n{self.text}")


def _no_anvil_children(pid: int) -> bool:
    out = subprocess.run(["ps", "-eo", "ppid,comm"], capture_output=True, text=True).stdout
    return not any(line.split()[0] == str(pid) and "anvil" in line for line in out.splitlines()[1:])


def test_up_devnet_prints_a_working_endpoint_and_stops_cleanly(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "HOODRUN_LISTEN": f"127.0.0.1:{port}",
        "HOODRUN_API_LISTEN": f"127.0.0.1:{api_port}",
        "HOODRUN_DATA_DIR": str(tmp_path),
        "HOODRUN_DATABASE_URL": f"sqlite:///{tmp_path}/hoodrun.db",
        "HOODRUN_ADMIN_TOKEN": "test-token",
        "COLUMNS": "300",
    }
    proc = subprocess.Popen(
        [*HOODRUN, "up", "--devnet"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = Output(proc)
        match = output.wait_for(r"curl -s (\S+/eth/v1/(hr_\w+))", 90)
        endpoint, key = match.group(1), match.group(2)
        output.wait_for(r"web3\.py", 5)
        with httpx.Client(timeout=10) as client:
            assert client.post(endpoint, content=BODY).json()["result"] == "0x1"
            base = endpoint.replace("/eth/", "/base/")
            assert client.post(base, content=BODY).json()["result"] == hex(8453)
            # The devnet's accounts can send a transaction and read its receipt on one chain.
            send = {"jsonrpc": "2.0", "id": 2, "method": "eth_sendTransaction", "params": [{
                "from": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                "to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "value": "0x1"}]}  # fmt: skip
            tx = client.post(endpoint, content=orjson.dumps(send)).json()["result"]
            receipt = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "eth_getTransactionReceipt",
                "params": [tx],
            }
            deadline = time.monotonic() + 10  # anvil mines right away, but asynchronously
            while (
                mined := client.post(endpoint, content=orjson.dumps(receipt)).json()["result"]
            ) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mined is not None and mined["status"] == "0x1"
            listed = client.get(
                f"http://127.0.0.1:{api_port}/admin/v1/keys",
                headers={"authorization": "Bearer test-token"},
            )
            assert listed.status_code == 200 and key not in listed.text
            # Every call is in the usage report within a few flush intervals.
            deadline, total = time.monotonic() + 15, 0
            while time.monotonic() < deadline:
                usage = client.get(
                    f"http://127.0.0.1:{api_port}/api/v1/usage",
                    params={"by": "", "from": "1h"},
                    headers={"authorization": "Bearer test-token"},
                )
                assert usage.status_code == 200, usage.text
                total = usage.json()["rows"][0]["requests"]
                if total >= 4:
                    break
                time.sleep(0.2)
            assert total >= 4  # more if the receipt took a few polls
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert _no_anvil_children(proc.pid)
    # The key is printed once, in the banner; no log line of the whole run holds it.
    logs = [line for line in output.text.splitlines() if line.startswith("{")]
    assert any('"level"' in line for line in logs)
    assert not [line for line in logs if key in line or key[3:] in line]
    with pytest.raises(httpx.ConnectError):
        httpx.post(endpoint, content=BODY, timeout=2)


def _cli(args: list[str], env: dict[str, str]) -> Any:
    done = subprocess.run([*HOODRUN, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout) if "--json" in args else done.stdout


def test_two_gateway_processes_share_limits_and_revocations(
    tmp_path: Path, anvil_factory: Any, redis_prefix: str
) -> None:
    node: Anvil = anvil_factory(chain_id=1)
    config = tmp_path / "hoodrun.yaml"
    config.write_text(
        f"data_dir: {tmp_path}/data\n"
        f"database_url: sqlite:///{tmp_path}/hoodrun.db\n"
        f"redis_url: {REDIS_URL}\nredis_prefix: {redis_prefix}\n"
        # Two processes cannot share the embedded analytics store; this test is about limits.
        "telemetry: {enabled: false}\n"
        f"chains:\n  - name: eth\n    chain_id: 1\n    upstreams: [{{name: a, url: '{node.url}'}}]\n"
        "plans:\n  - {name: small, rate: {rps: 1, burst: 40}}\n"
        "default_plan: small\n"
    )
    env = {**os.environ, "HOODRUN_CONFIG": str(config)}
    created = _cli(["keys", "create", "--org", "acme", "--json"], env)
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen([*HOODRUN, "gateway"], env={**env, "HOODRUN_LISTEN": f"127.0.0.1:{p}"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for p in ports
    ]  # fmt: skip
    try:
        for proc in procs:
            Output(proc).wait_for(r"gateway listening", 30)
        urls = [f"http://127.0.0.1:{p}/eth/v1/{created['key']}" for p in ports]
        with httpx.Client(timeout=10) as client:
            statuses = [client.post(urls[i % 2], content=BODY).status_code for i in range(60)]
            allowed = statuses.count(200)
            assert 40 <= allowed <= 44  # burst 40 shared by both processes, plus ~1/s refill
            assert statuses.count(429) == 60 - allowed
            _cli(["keys", "revoke", created["id"]], env)
            revoked_at = time.monotonic()
            while time.monotonic() - revoked_at < 1.0:
                answers = [client.post(u, content=BODY) for u in urls]
                if all(a.status_code == 401 for a in answers):
                    break
                time.sleep(0.02)
            else:
                pytest.fail("a gateway still accepted the key 1 s after `hoodrun keys revoke`")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(20)
    assert all(proc.returncode == 0 for proc in procs)


def test_a_killed_gateway_loses_at_most_the_last_flush_interval(
    tmp_path: Path, anvil_factory: Any
) -> None:
    node: Anvil = anvil_factory(chain_id=1)
    config = tmp_path / "hoodrun.yaml"
    config.write_text(
        f"data_dir: {tmp_path}/data\n"
        f"database_url: sqlite:///{tmp_path}/hoodrun.db\n"
        f"listen: 127.0.0.1:{free_port()}\n"
        "telemetry: {flush_interval: 0.2}\n"
        f"chains:\n  - name: eth\n    chain_id: 1\n    upstreams: [{{name: a, url: '{node.url}'}}]\n"
        "default_plan: pro\n"
    )
    env = {**os.environ, "HOODRUN_CONFIG": str(config)}
    created = _cli(["keys", "create", "--org", "acme", "--json"], env)
    proc = subprocess.Popen(
        [*HOODRUN, "gateway"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        port = int(Output(proc).wait_for(r"gateway listening on port (\d+)", 30).group(1))
        url = f"http://127.0.0.1:{port}/eth/v1/{created['key']}"
        with httpx.Client(timeout=10) as client:
            for _ in range(40):
                assert client.post(url, content=BODY).status_code == 200
        time.sleep(1.0)  # five flush intervals: the bound, not a measurement
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    usage = _cli(["usage", "--json", "--by", "", "--from", "1h"], env)
    assert [row["requests"] for row in usage["rows"]] == [40]
