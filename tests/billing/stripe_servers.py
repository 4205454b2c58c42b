"""Stripe servers for the billing tests: localstripe (the real SDK against a stateful fake, where it
covers the flow) and ``fake_stripe`` (the documented API, where localstripe does not).

A test module loads the fixtures with ``pytest_plugins = ["tests.billing.stripe_servers"]``
(importing them by name would trip ruff's F811 on every test that takes one).

localstripe binds every interface and saves its state to the fixed ``/tmp/localstripe.pickle``
after each write (and loads it at start), so parallel test processes would share and clobber
one another's data. ``_LOCALSTRIPE`` starts it on 127.0.0.1 with saving and loading switched off.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.billing.fake_stripe import API_KEY, FakeStripe, running_fake_stripe

_LOCALSTRIPE = """
import sys
from aiohttp import web
import localstripe.resources
localstripe.resources.Store.dump_to_disk = lambda self: None
localstripe.resources.Store.try_load_from_disk = lambda self: None
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


_AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_localstripe() -> tuple[subprocess.Popen[bytes], str]:
    """localstripe on a free port, once it answers; another port if that one was taken."""
    for _ in range(3):
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-c", _LOCALSTRIPE, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                response = httpx.get(f"{url}/v1/customers", headers=_AUTH, timeout=1)
                if response.status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for the server to listen, not waiting for time to pass
        if process.poll() is None:
            process.kill()
        process.wait()
    raise RuntimeError("localstripe did not start")


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """A localstripe of this test process (xdist worker), its state in memory only."""
    process, url = _start_localstripe()
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    with running_fake_stripe() as fake:
        yield fake


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> FakeStripe:
    """The shared fake Stripe, emptied for this test (objects, keys, failures, requests)."""
    fake_stripe_server.reset()
    return fake_stripe_server
