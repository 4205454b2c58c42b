"""Local anvil nodes: find or install the binary, start, pause, stop.

anvil comes from the npm package ``@foundry-rs/anvil-linux-amd64``; ``ensure_anvil`` installs it
into a directory with npm when it is not there. One ``Anvil`` is one chain (two anvils with the
same chain id are still two different chains).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

__all__ = ["ANVIL_PACKAGE", "Anvil", "AnvilError", "ensure_anvil", "find_anvil", "free_port"]

ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"
_BIN = Path("node_modules") / ANVIL_PACKAGE / "bin" / "anvil"


class AnvilError(Exception):
    """anvil could not be found, installed or started."""


def find_anvil(*roots: Path) -> Path | None:
    """The anvil binary from ``$HOODRUN_ANVIL``, PATH, or ``node_modules`` under the roots."""
    explicit = os.environ.get("HOODRUN_ANVIL")
    if explicit:
        return Path(explicit) if Path(explicit).exists() else None
    for root in (*roots, Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / _BIN
        if candidate.exists():
            return candidate
    found = shutil.which("anvil")
    return Path(found) if found else None


def ensure_anvil(install_dir: Path) -> Path:
    """Find anvil, or ``npm install`` it into ``install_dir``."""
    found = find_anvil(install_dir)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise AnvilError("anvil is not installed and npm is missing: apt-get install -y npm")
    install_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(  # noqa: S603
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(install_dir), ANVIL_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    binary = install_dir / _BIN
    if result.returncode != 0 or not binary.exists():
        raise AnvilError(f"npm install {ANVIL_PACKAGE} failed: {result.stderr.strip()[-500:]}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Anvil:
    """One anvil process on 127.0.0.1. ``start`` blocks until it answers JSON-RPC."""

    binary: Path
    chain_id: int = 31337
    port: int = field(default_factory=free_port)
    block_time: float | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20.0) -> Anvil:
        args = [
            str(self.binary),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--quiet",
            *self.extra_args,
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        self.process = subprocess.Popen(  # noqa: S603
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AnvilError(f"anvil on port {self.port} exited: {err.strip()[-300:]}")
            try:
                if self.rpc("eth_chainId") == hex(self.chain_id):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AnvilError(f"anvil on port {self.port} did not answer within {timeout} s")

    def rpc(self, method: str, params: list[object] | None = None, timeout: float = 2.0) -> object:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(  # noqa: S310 (http on 127.0.0.1)
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            reply = orjson.loads(resp.read())
        if "error" in reply:
            raise AnvilError(f"{method}: {reply['error']}")
        return reply["result"]

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: the node hangs, calls time out. Returns once the process is stopped."""
        self._signal(signal.SIGSTOP)
        if self.process is None:
            return
        stat = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in ("T", "t"):
                return
            time.sleep(0.005)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the node: connections are refused from now on."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self, timeout: float = 20.0) -> Anvil:
        self.stop()
        return self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def __enter__(self) -> Anvil:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
