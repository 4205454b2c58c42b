"""``run_platform`` on its own event loop in a thread, for tests that need real listeners."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from hoodrun.config import Config
from hoodrun.platform import Running, run_platform


class PlatformThread:
    """``with PlatformThread(config, gateway=False) as running:`` the roles run until the block
    ends (``run_platform``'s keyword arguments pass through); a start-up error is raised."""

    def __init__(self, config: Config, **roles: Any) -> None:
        self.config = config
        self.roles = roles
        self.loop = asyncio.new_event_loop()
        self.running: Running | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        def ready(info: Running) -> None:
            self.running = info
            self._ready.set()

        try:
            self.loop.run_until_complete(
                run_platform(self.config, ready=ready, stop=self._stop, **self.roles)
            )
        except BaseException as exc:  # reported to the test
            self.error = exc
            self._ready.set()

    def __enter__(self) -> Running:
        self._thread.start()
        self._ready.wait(60)
        if self.error is not None:
            raise self.error
        assert self.running is not None
        return self.running

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
