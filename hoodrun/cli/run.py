"""``hoodrun up``, ``hoodrun gateway`` and ``hoodrun api``: run the platform's roles."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Literal

import typer

from hoodrun.config import Config, ConfigError
from hoodrun.devnet import AnvilError
from hoodrun.upstreams import ChainIdMismatch

__all__ = ["register"]


def _setup_logging(level: str, fmt: Literal["json", "text"] = "json") -> None:
    from hoodrun.logs import setup_logging

    setup_logging(level, fmt)


def _run(coro_factory: object) -> None:
    import uvloop

    uvloop.run(coro_factory)  # type: ignore[arg-type]


def _print_demo(info: object) -> None:
    from hoodrun.cli import stdout
    from hoodrun.platform import Running

    if not isinstance(info, Running) or info.key is None:
        return
    chain = info.chains[0] if info.chains else "eth"
    endpoint = f"{info.gateway_url}/{chain}/v1/{info.key}"
    stdout.print("\n[bold green]HoodRun is up[/] (Ctrl-C stops everything it started)\n")
    stdout.print(f"  gateway   {info.gateway_url}   chains: {', '.join(info.chains)}")
    stdout.print(f"  admin API {info.api_url}   (OpenAPI: /openapi.json)", soft_wrap=True)
    stdout.print(f"  portal    {info.api_url}/portal/signup", soft_wrap=True)
    stdout.print(f"  control   {info.api_url}/control   (operators: hoodrun users)", soft_wrap=True)
    stdout.print(f"  demo key  {info.key}", soft_wrap=True)
    stdout.print(f"            id {info.key_id}; the key is shown once\n", soft_wrap=True)
    stdout.print(f"  endpoint  {endpoint}")
    ws_endpoint = endpoint.replace("http://", "ws://", 1)
    stdout.print(f"  websocket {ws_endpoint}\n", soft_wrap=True)
    stdout.print("[bold]curl[/]")
    stdout.print(
        f"  curl -s {endpoint} -H 'content-type: application/json' "
        """-d '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'\n""",
        soft_wrap=True,
    )
    stdout.print("[bold]web3.py[/] (pip install web3)")
    stdout.print(
        '  python3 -c "from web3 import Web3; '
        f"w3 = Web3(Web3.HTTPProvider('{endpoint}')); "
        "print(w3.eth.chain_id, w3.eth.block_number, "
        "w3.eth.get_balance('0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266'))\"\n",
        soft_wrap=True,
    )
    stdout.print("[bold]web3.py over WebSocket[/] (new heads as they are mined)")
    stdout.print(
        '  python3 -c "import asyncio; from web3 import AsyncWeb3, WebSocketProvider\n'
        "async def main():\n"
        f"    async with AsyncWeb3(WebSocketProvider('{ws_endpoint}')) as w3:\n"
        "        await w3.eth.subscribe('newHeads')\n"
        "        async for message in w3.socket.process_subscriptions():\n"
        "            print(message['result']['number'])\n"
        'asyncio.run(main())"\n',
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Adds the ``up``, ``gateway`` and ``api`` commands."""

    @app.command()
    def up(
        ctx: typer.Context,
        devnet: Annotated[
            bool, typer.Option("--devnet", help="Start local anvil chains eth (1) and base (8453).")
        ] = False,
        demo: Annotated[bool, typer.Option(help="Create a demo org and key and print it.")] = True,
        worker: Annotated[
            bool,
            typer.Option(help="Run the job queue here too (webhooks, notices, billing)."),
        ] = True,
    ) -> None:
        """Run the whole platform in one process (gateway, admin API, portal and the job queue's
        worker) on the config's backends.

        SIGHUP reloads chains, upstreams and plans from the config file (with --devnet, the
        devnet's chains stay)."""
        from hoodrun.cli import config_of, fail, state_of
        from hoodrun.platform import run_platform, start_devnet

        config = config_of(ctx)
        _setup_logging(config.log_level, config.log_format)
        read = state_of(ctx).read
        with contextlib.ExitStack() as stack:
            if devnet:
                try:
                    config = start_devnet(config, stack)
                except AnvilError as exc:
                    fail(f"cannot start the devnet: {exc}")
                chains = config.chains

                def read() -> Config:
                    return state_of(ctx).read().model_copy(update={"chains": chains})

            if not config.chains:
                fail("no chains configured: add chains to the config, or use --devnet")
            try:
                _run(run_platform(config, demo=demo, ready=_print_demo, reload=read, worker=worker))
            except (ConfigError, ChainIdMismatch, OSError, ValueError) as exc:
                fail(str(exc))

    @app.command()
    def gateway(
        ctx: typer.Context,
        reuse_port: Annotated[
            bool, typer.Option(help="SO_REUSEPORT, to run several gateway processes on one port.")
        ] = False,
    ) -> None:
        """Run the gateway role only (the hot path: /{chain}/v1/{KEY}, /health/*, /metrics).

        SIGHUP reloads chains, upstreams and plans from the config file without dropping
        requests."""
        from hoodrun.cli import config_of, fail, state_of
        from hoodrun.platform import Running, run_platform

        config = config_of(ctx)
        _setup_logging(config.log_level, config.log_format)
        if not config.chains:
            fail("no chains configured: add at least one chain with upstreams to the config")
        if reuse_port and config.redis_url is None:
            fail(
                "--reuse-port runs several gateway processes, which share rate limits and key "
                "revocations only through Redis: set redis_url"
            )
        if (
            reuse_port
            and config.telemetry.enabled
            and config.nats_url is None
            and config.analytics_url is None
        ):
            fail(
                "--reuse-port runs several gateway processes, but the embedded analytics store "
                "(chDB) allows one process: set nats_url (and run `hoodrun worker`) or "
                "analytics_url"
            )

        def listening(running: Running) -> None:
            logging.getLogger("hoodrun").info(
                "gateway listening on %s (port %d)", config.listen, running.gateway_port
            )
            print(f"gateway listening on port {running.gateway_port}", flush=True)

        try:
            _run(
                run_platform(
                    config,
                    api=False,
                    ready=listening,
                    reuse_port=reuse_port,
                    reload=state_of(ctx).read,
                )
            )
        except (ConfigError, ChainIdMismatch, OSError, ValueError) as exc:
            fail(str(exc))

    @app.command()
    def worker(
        ctx: typer.Context,
        burst: Annotated[
            bool,
            typer.Option(
                "--burst", help="Drain what is waiting (records, rollups, due jobs), then exit."
            ),
        ] = False,
    ) -> None:
        """Run the worker role: the job queue's billing jobs and schedules; with telemetry,
        request records from NATS into the analytics store, and rollups."""
        from hoodrun.cli import config_of, fail
        from hoodrun.platform import run_worker
        from hoodrun.store import StoreError as BusinessStoreError
        from hoodrun.telemetry.store import StoreError

        config = config_of(ctx)
        _setup_logging(config.log_level, config.log_format)
        if not config.telemetry.enabled and not config.billing.enabled:
            fail(
                "nothing to do: telemetry and billing are both disabled in the config "
                "(telemetry.enabled, billing.enabled)"
            )

        def started(_: object) -> None:
            if not burst:
                print("worker running", flush=True)

        try:
            _run(run_worker(config, burst=burst, ready=started))
        except (ConfigError, OSError, StoreError, BusinessStoreError) as exc:
            fail(str(exc))

    @app.command()
    def api(ctx: typer.Context) -> None:
        """Run the api role only (admin API). SIGHUP reloads the plans from the config file."""
        from hoodrun.cli import config_of, fail, state_of
        from hoodrun.platform import run_platform

        config = config_of(ctx)
        _setup_logging(config.log_level, config.log_format)
        try:
            _run(run_platform(config, gateway=False, reload=state_of(ctx).read))
        except (ConfigError, ChainIdMismatch, OSError, ValueError) as exc:
            fail(str(exc))
