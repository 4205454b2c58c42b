"""Cache hits: the gateway answering final reads from its cache, against anvil answering them.

    .venv/bin/python bench/cache.py [--duration 8]

Starts one anvil (one slot per epoch, 10 blocks mined, so blocks up to 8 are final) and
``hoodrun gateway`` with the cache on, then loads, in one run, with ``wrk -t1`` at c1 and c32:
anvil directly, and the gateway (valid key, limits, telemetry) answering the same
``eth_getBlockByNumber("0x1", false)`` from its cache. Prints requests/s and p50/p99 and the
ratio. Every gateway answer after the first is a hit (``X-Cache: HIT``; checked before the load).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway import ROOT, _wait_http, post_script, start_gateway, stop, wrk

from hoodrun.devnet import Anvil, ensure_anvil

BODY = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["0x1", False]}
)


def _post(url: str, body: str) -> tuple[dict[str, object], str | None]:
    req = urllib.request.Request(  # noqa: S310 (127.0.0.1)
        url, data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (127.0.0.1)
        return json.loads(resp.read()), resp.headers.get("x-cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-") as tmpdir:
        tmp = Path(tmpdir)
        script = post_script(tmp, BODY)
        anvil = Anvil(ensure_anvil(ROOT), chain_id=1, extra_args=("--slots-in-an-epoch", "1"))
        anvil.start()
        mine = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": ["0xa"]})
        _post(anvil.url, mine)
        procs, port, key = start_gateway(tmp, anvil, False, 1, telemetry=True, cache=True)
        try:
            url = f"http://127.0.0.1:{port}/eth/v1/{key}"
            _wait_http(url, BODY.encode())
            deadline = time.monotonic() + 20  # the gateway learns the finalized block
            while _post(url, BODY)[1] != "HIT" and time.monotonic() < deadline:
                time.sleep(0.2)
            answer, cache = _post(url, BODY)
            if cache != "HIT" or answer != _post(anvil.url, BODY)[0]:
                raise SystemExit(f"the gateway does not answer from its cache: {cache}")
            for target in (anvil.url, url):
                wrk(target, 32, 2, script, "warm-up")
            c1 = max(3.0, args.duration / 2)
            results = [
                wrk(anvil.url, 1, c1, script, "direct"),
                wrk(url, 1, c1, script, "cache-hit"),
                wrk(anvil.url, 32, args.duration, script, "direct"),
                wrk(url, 32, args.duration, script, "cache-hit"),
            ]
        finally:
            stop(procs, anvil)
    print('# eth_getBlockByNumber("0x1"): anvil vs gateway cache hits (telemetry on)')
    for result in results:
        print(result.line())
    by = {(r.name, r.conns): r for r in results}
    print(
        f"cache hits c32: {by[('cache-hit', 32)].rps / by[('direct', 32)].rps:.2f} x anvil; "
        f"c1 p50 {by[('cache-hit', 1)].p50_ms:.3f} ms vs {by[('direct', 1)].p50_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
