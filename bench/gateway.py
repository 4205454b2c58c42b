"""Gateway throughput and latency against same-run references: anvil direct and nginx.

    .venv/bin/python bench/gateway.py [--duration 8] [--redis] [--method eth_chainId]
        [--no-telemetry]

Starts one anvil, a plain nginx reverse proxy to it (Debian ``nginx``), and ``hoodrun gateway`` on
its full path (valid key, limits, routing, metrics, telemetry), with the response cache and the
coalescing of identical reads off (every request reaches the node, as through nginx; the cache
has its own bench, ``bench/cache.py``), then loads each with ``wrk`` (Debian ``wrk``)
at concurrency 1 and 32 (one wrk thread, which leaves the proxy the most CPU on 2 cores). Prints
requests/s and p50/p99 per case, then the ratios the goal is stated in:

    gateway c32 throughput >= 0.5 x nginx's (not done below 0.3 x)
    gateway c1 added p50 over direct <= 0.15 ms (not done above 0.3 ms)

nginx runs before and after the gateway; its mean is the reference. Figures on a shared 2-core
machine vary by 10% from run to run: compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hoodrun.devnet import Anvil, ensure_anvil, free_port  # noqa: E402

HOODRUN = (
    str(ROOT / ".venv" / "bin" / "hoodrun") if (ROOT / ".venv/bin/hoodrun").exists() else "hoodrun"
)


@dataclass
class Result:
    name: str
    conns: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def line(self) -> str:
        return (
            f"{self.name:<10} c{self.conns:<3} {self.rps:>10,.0f} req/s   "
            f"p50 {self.p50_ms:7.3f} ms   p99 {self.p99_ms:7.3f} ms   non-2xx/errors {self.errors}"
        )


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, conns: int, seconds: float, script: Path, name: str) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{round(seconds)}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    p50 = _ms(*re.match(r"([\d.]+)(\w+)", lat["50"]).groups())  # type: ignore[union-attr]
    p99 = _ms(*re.match(r"([\d.]+)(\w+)", lat["99"]).groups())  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return Result(name, conns, rps, p50, p99, errors)


def _wait_http(url: str, body: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(  # noqa: S310 (127.0.0.1)
                url, data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=1) as resp:  # noqa: S310 (127.0.0.1)
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def start_nginx(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream a {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://a/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"])
    return proc, port


def post_script(tmp: Path, body: str) -> Path:
    """A wrk script that POSTs ``body`` as JSON."""
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def stop(procs: list[subprocess.Popen[bytes]], anvil: Anvil) -> None:
    """SIGTERM the gateways (killed if they take over 20 s), then stop anvil."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    anvil.stop()


def start_gateway(
    tmp: Path,
    anvil: Anvil,
    redis: bool,
    workers: int,
    telemetry: bool = True,
    cache: bool = False,
    extra: str = "",
    telemetry_options: str = "",
) -> tuple[list[subprocess.Popen[bytes]], int, str]:
    port = free_port()
    tmp = tmp / f"gateway-{port}"
    tmp.mkdir()
    cfg = tmp / "hoodrun.yaml"
    redis_line = (
        "redis_url: redis://127.0.0.1:6379/0\nredis_prefix: hoodrun-bench-" + str(os.getpid())
        if redis
        else ""
    )
    cfg.write_text(f"""
listen: 127.0.0.1:{port}
data_dir: {tmp}/data
database_url: sqlite:///{tmp}/bench.db
log_level: warning
telemetry: {{enabled: {"true" if telemetry else "false"}{telemetry_options}}}
cache: {{enabled: {"true" if cache else "false"}, coalesce: {"true" if cache else "false"}}}
{redis_line}
chains:
  - name: eth
    chain_id: {anvil.chain_id}
    upstreams: [{{name: eth-a, url: "{anvil.url}"}}]
plans:
  - name: bench
    rate: {{rps: 10000000, burst: 10000000}}
default_plan: bench
{extra}
""")
    env = {**os.environ, "HOODRUN_CONFIG": str(cfg)}
    created = subprocess.run(
        [HOODRUN, "keys", "create", "--org", "bench", "--plan", "bench", "--json"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    key = json.loads(created.stdout)["key"]
    procs = []
    for _ in range(workers):
        args = [HOODRUN, "gateway"] + (["--reuse-port"] if workers > 1 else [])
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL))
    return procs, port, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per c32 run")
    parser.add_argument("--redis", action="store_true", help="gateway limits through Redis")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (SO_REUSEPORT)")
    parser.add_argument("--method", default="eth_chainId")
    parser.add_argument(
        "--no-telemetry", action="store_true", help="gateway without the request-record pipeline"
    )
    args = parser.parse_args()
    if args.workers > 1 and not args.no_telemetry:
        raise SystemExit(
            "several gateway processes cannot share the embedded analytics store: add "
            "--no-telemetry (bench/telemetry.py measures the pipeline)"
        )
    if args.workers > 1 and not args.redis:
        raise SystemExit(
            "several gateway processes share limits only through Redis: add --redis "
            "(without it each process would enforce its own copy of every limit)"
        )
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk nginx")

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": args.method, "params": []})
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-") as tmpdir:
        tmp = Path(tmpdir)
        script = post_script(tmp, body)
        anvil = Anvil(ensure_anvil(ROOT), chain_id=1).start()
        nginx, nginx_port = start_nginx(tmp, anvil.port)
        gateways, gw_port, key = start_gateway(
            tmp, anvil, args.redis, args.workers, telemetry=not args.no_telemetry
        )
        try:
            direct_url = anvil.url
            nginx_url = f"http://127.0.0.1:{nginx_port}/"
            gw_url = f"http://127.0.0.1:{gw_port}/eth/v1/{key}"
            for url in (direct_url, nginx_url, gw_url):
                _wait_http(url, body.encode())
            c1_seconds = max(3.0, args.duration / 2)
            # Warm-up, then the measured rounds; nginx before and after the gateway.
            for url in (direct_url, nginx_url, gw_url):
                wrk(url, 32, 2, script, "warm-up")
            results = [
                wrk(direct_url, 1, c1_seconds, script, "direct"),
                wrk(nginx_url, 1, c1_seconds, script, "nginx"),
                wrk(gw_url, 1, c1_seconds, script, "gateway"),
                wrk(direct_url, 32, args.duration, script, "direct"),
                wrk(nginx_url, 32, args.duration, script, "nginx"),
                wrk(gw_url, 32, args.duration, script, "gateway"),
                wrk(nginx_url, 32, args.duration, script, "nginx"),
            ]
        finally:
            for proc in gateways:
                proc.send_signal(signal.SIGTERM)
            nginx.send_signal(signal.SIGQUIT)
            for proc in (*gateways, nginx):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            anvil.stop()

    limits = "redis" if args.redis else "in-process"
    label = f"method {args.method}, gateway {limits} limits, {args.workers} process(es)"
    label += ", telemetry " + ("off" if args.no_telemetry else "on (chDB)")
    print(f"# {label}")
    for result in results:
        print(result.line())
    by = {(r.name, r.conns): r for r in results}
    nginx_c32 = [r.rps for r in results if r.name == "nginx" and r.conns == 32]
    ratio = by[("gateway", 32)].rps / (sum(nginx_c32) / len(nginx_c32))
    added = by[("gateway", 1)].p50_ms - by[("direct", 1)].p50_ms
    print(f"gateway c32 throughput: {ratio:.2f} x nginx   (goal >= 0.50, floor 0.30)")
    print(f"gateway c1 added p50 over direct: {added:+.3f} ms   (goal <= 0.15, ceiling 0.30)")
    print(f"gateway errors: {by[('gateway', 1)].errors + by[('gateway', 32)].errors}")


if __name__ == "__main__":
    main()
