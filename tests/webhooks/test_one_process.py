"""The embedded default runs everything in one process (``hoodrun up``): its worker delivers an
org's webhooks, signed, while the api serves; the process stops cleanly with jobs in hand."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx

from hoodrun.config import Config
from hoodrun.devnet import free_port
from tests._platform import PlatformThread
from tests.webhooks.receiver import serve_receiver

TOKEN = "one-process-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_one_process_platform_delivers_webhooks(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{free_port()}",
            "data_dir": str(tmp_path),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": TOKEN,
            "telemetry": {"enabled": False},
            # No provider and no exchange-rate source to reach from here.
            "billing": {"enabled": False, "jobs": {"poll_interval": 0.2}},
        }
    )
    with (
        serve_receiver(503) as receiver,
        PlatformThread(config, gateway=False, demo=False, worker=True) as running,
        httpx.Client(base_url=running.api_url, headers=AUTH) as api,
    ):
        made = api.post("/admin/v1/orgs", json={"name": "acme"})
        assert made.status_code == 201, made.text
        org = made.json()["id"]
        hook = api.post(
            f"/admin/v1/orgs/{org}/webhooks", json={"url": receiver.url, "events": ["key.created"]}
        )
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        key = api.post("/admin/v1/keys", json={"org": "acme", "name": "k"})
        assert key.status_code == 201, key.text
        deadline = time.monotonic() + 60  # the first answer is 503: delivered on a retry
        while not receiver.delivered() and time.monotonic() < deadline:
            time.sleep(0.2)
        delivered = receiver.delivered()
        assert len(delivered) == 1, receiver.received
        body = delivered[0].body
        event = json.loads(body)
        assert event["type"] == "key.created" and event["data"]["key_id"] == key.json()["id"]
        stamp, _, signature = delivered[0].headers["HoodRun-Signature"].partition(",v1=")
        expected = hmac.new(
            secret.encode(), stamp.removeprefix("t=").encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(signature, expected)
        attempts = api.get(f"/admin/v1/webhooks/{hook.json()['id']}/deliveries").json()
        assert attempts["deliveries"][0]["status"] == "delivered"
        assert attempts["deliveries"][0]["attempts"] == 2
        fleet = api.get("/admin/v1/fleet").json()
        assert {"api", "worker"} <= {i["role"] for i in fleet["instances"]}
