"""Running the platform's roles: ``gateway``, ``api``, or both in one process (``hoodrun up``).

One process, one lifespan: every resource is opened in an ``AsyncExitStack`` and closed in
reverse on SIGINT/SIGTERM, after the gateway has finished the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import uvicorn

from hoodrun.api.app import create_api_app
from hoodrun.config import (
    ChainConfig,
    Config,
    ConfigError,
    PlanConfig,
    UpstreamConfig,
    parse_listen,
)
from hoodrun.configdiff import reloadable
from hoodrun.devnet import Anvil, ensure_anvil
from hoodrun.explorer.ingest import open_log_ingestor
from hoodrun.gateway.runtime import GatewayRuntime, open_key_events
from hoodrun.identity import IdentityService
from hoodrun.jobs import JobQueue, Schedule, Worker
from hoodrun.keys.service import KeyService
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.metering.entitlements import OrgEntitlements
from hoodrun.metering.meters import MeterService
from hoodrun.metering.store import ContractBook, CreditBook
from hoodrun.notify import jobs as notify_jobs
from hoodrun.notify.mail import Mailer
from hoodrun.ops.alerts import AlertBook
from hoodrun.ops.fleet import FleetReporter, gateway_status
from hoodrun.store import Store, upgrade
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.service import Telemetry, compute_units, open_telemetry
from hoodrun.telemetry.store import StoreError, open_analytics
from hoodrun.web.context import WebContext
from hoodrun.webhooks import WebhookBook
from hoodrun.webhooks import handlers as webhook_handlers

if TYPE_CHECKING:
    from hoodrun.billing.invoices import InvoiceBook
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["DEVNET_CHAINS", "Running", "run_platform", "run_worker", "start_devnet"]

log = logging.getLogger("hoodrun")

# (chain name, chain id) of the devnet: two anvils are two different chains, never replicas.
DEVNET_CHAINS = (("eth", 1), ("base", 8453))


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our lifespan: signals are ours, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Running:
    """What ``run_platform`` started: its URLs (empty for a role not run) and the demo key."""

    gateway_url: str
    api_url: str
    chains: list[str]
    gateway_port: int = 0
    key: str | None = None
    key_id: str | None = None


def start_devnet(config: Config, stack: contextlib.ExitStack) -> Config:
    """Start one anvil per devnet chain and point the config's chains at them."""
    binary = ensure_anvil(Path(config.data_dir))
    chains = []
    for name, chain_id in DEVNET_CHAINS:
        node = Anvil(binary, chain_id=chain_id).start()
        stack.callback(node.stop)
        chains.append(
            ChainConfig(
                name=name,
                chain_id=chain_id,
                upstreams=(UpstreamConfig(name=f"{name}-anvil", url=node.url),),
            )
        )
    return config.model_copy(update={"chains": tuple(chains)})


def _stop_on_signals(stop: asyncio.Event | None) -> asyncio.Event:
    """``stop``, set on SIGINT/SIGTERM (where this thread may handle signals)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    return stop


async def run_platform(
    config: Config,
    *,
    gateway: bool = True,
    api: bool = True,
    demo: bool = False,
    ready: Callable[[Running], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    reload: Callable[[], Config] | None = None,
    worker: bool = False,
) -> None:
    """Run the chosen roles until SIGINT/SIGTERM (or ``stop`` is set).

    ``worker`` runs the job queue here too (webhook deliveries, notifications, billing jobs and
    their schedules, as ``hoodrun worker`` does), on this process's analytics store: one process
    for everything, as ``hoodrun up`` does.

    ``reload`` reads the config again (from its file): on SIGHUP the gateway adopts its chains,
    upstreams, plans, health checks and public access while serving; a config that does not
    load is refused with its errors in the log, and the running one stays."""
    stop = _stop_on_signals(stop)
    if config.database_url.startswith("sqlite"):
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    await upgrade(config.database_url)
    async with AsyncExitStack() as stack:
        reloader = _Reloader(reload, stack) if reload is not None else None
        store = await stack.enter_async_context(Store(config.database_url))
        await store.sync_plans(config.plans)
        events = await open_key_events(config, stack)
        keys = KeyService(store, config, events)
        contracts = ContractBook(store, config)  # its config follows a reload, as keys' does
        gateway_url = api_url = ""
        gateway_port = 0
        telemetry: Telemetry | None = None
        runtime: GatewayRuntime | None = None
        if gateway:
            # With both roles here this process also owns the analytics store's writes (and,
            # with NATS, consumes the stream): the api's reports read the same store.
            telemetry = await open_telemetry(config, stack, produce=True, consume=api)
            runtime = await stack.enter_async_context(
                GatewayRuntime(
                    config,
                    store=store,
                    events=events,
                    reuse_port=reuse_port,
                    telemetry=telemetry,
                )
            )
            serving = runtime  # read at each report: a reload may replace its gateway
            await stack.enter_async_context(
                FleetReporter(store, "gateway", lambda: gateway_status(serving.gateway))
            )
            host, _ = parse_listen(config.listen)
            gateway_port = runtime.port
            gateway_url = f"http://{host}:{gateway_port}"
        if api:
            host, port = parse_listen(config.api_listen)
            reports = await _open_reports(config, telemetry, stack)
            # Customer routes (logs) check API keys as the gateway does, revocations purged.
            verifier = KeyVerifier(
                keys.lookup,
                ttl=config.gateway.key_cache_ttl,
                negative_ttl=config.gateway.key_negative_ttl,
                degrade_ttl=config.gateway.key_degrade_ttl,
            )
            events.subscribe(verifier.purge)
            logs = None
            if config.logs.enabled and reports is not None:
                logs = await open_log_ingestor(config, reports.store, stack)
            identity = IdentityService(
                store,
                config,
                Mailer(config.smtp),
                public_url=config.web.public_url or f"http://{host}:{port}",
            )
            oidc = None
            if config.auth.oidc.enabled:
                from hoodrun.identity.oidc import OidcClient

                oidc = await stack.enter_async_context(OidcClient(config.auth.oidc))
            alerts = AlertBook(store)
            invoices, queue = _billing_api(config, store)
            accounts = (contracts, CreditBook(store))
            entitlements = OrgEntitlements(
                lambda name: _plan_named(keys.config, name),  # as the gateway's Policy
                keys.org_plan,
                counters=runtime.usage if runtime is not None else None,
                analytics=reports.store if reports is not None and runtime is None else None,
                units=compute_units(config),
            )
            webhooks = WebhookBook(store)
            web = WebContext(
                config=config,
                store=store,
                identity=identity,
                keys=keys,
                reports=lambda: reports,
                contracts=contracts,
                credits=accounts[1],
                invoices=invoices,
                jobs=queue,
                webhooks=webhooks,
                alerts=alerts,
                entitlements=entitlements,
            )
            app = create_api_app(
                config,
                keys,
                token=config.resolved_admin_token(),
                reports=lambda: reports,
                alerts=alerts,
                meters=(
                    MeterService(
                        reports.store,
                        config.meters,
                        retention_days=config.telemetry.retention.events_days,
                    )
                    if reports is not None
                    else None
                ),
                accounts=accounts,
                billing=(invoices, queue),
                entitlements=entitlements,
                logs=logs,
                logs_store=lambda: reports.store if reports is not None else None,
                verifier=verifier,
                webhooks=webhooks,
                identity=identity,
                web=web,
                jobs=queue,
                oidc=oidc,
            )
            server = _Uvicorn(
                uvicorn.Config(
                    app,
                    host=host,
                    port=port,
                    log_level=config.log_level,
                    lifespan="off",
                    log_config=None,  # our handlers and format (hoodrun.logs)
                    access_log=False,
                    # The client's address (login throttle, audit log) from X-Forwarded-For only
                    # when a trusted proxy sends it, as the gateway does.
                    proxy_headers=bool(config.gateway.trusted_proxies),
                    forwarded_allow_ips=list(config.gateway.trusted_proxies) or None,
                )
            )
            task = asyncio.get_running_loop().create_task(server.serve())

            async def stop_api() -> None:
                server.should_exit = True
                await task

            stack.push_async_callback(stop_api)
            while not server.started and not task.done():
                await asyncio.sleep(0.02)
            if task.done():
                task.result()  # raises the bind error
            api_url = f"http://{host}:{port}"
            listening = api_url
            await stack.enter_async_context(
                FleetReporter(store, "api", lambda: {"api_url": listening})
            )
        if worker:
            analytics = telemetry.store if telemetry is not None else None
            if analytics is None and api and reports is not None:
                analytics = reports.store
            jobs = await _open_worker(config, store, analytics, stack)
            running = asyncio.get_running_loop().create_task(jobs.run(stop))
            # Unwound before the store closes: the stop event is set by then, and the worker
            # finishes the jobs in hand.
            stack.push_async_callback(asyncio.wait_for, running, 60)
        if reloader is not None:
            reloader.ready(runtime, keys, contracts)
        info = Running(gateway_url, api_url, [c.name for c in config.chains], gateway_port)
        if demo:
            plan = "pro" if config.plan("pro") else config.default_plan
            created = await keys.create(
                org="demo", project="demo", plan=plan, name="demo", actor="up"
            )
            info.key, info.key_id = created.key, created.id
        _settle_gc()
        if ready is not None:
            ready(info)
        await stop.wait()
        log.info("stopping: finishing requests in flight")


def _settle_gc() -> None:
    """Once started: what start-up allocated (modules, config, tables) is frozen out of the
    collector's sight, and the youngest generation is collected every 50,000 allocations
    rather than 700. Requests allocate many short-lived objects freed by reference counting; the
    default threshold ran a collection every few requests, each walking the young objects.
    Measured on log ingestion (bench/logs_ingest.py): 42-55k lines/s before, 58-65k after, and
    the decode-and-check step 6.0 µs a line before, 3.2 µs with the collector out of the way."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _serve_metrics(listen: str, stack: AsyncExitStack) -> None:
    """The worker's /metrics (jobs, billing, process), on a thread of prometheus_client's."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    server, thread = start_http_server(port, addr=host)
    log.info("worker metrics on http://%s:%d/metrics", host, server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    stack.callback(stop)


def _billing_api(config: Config, store: Store) -> tuple[InvoiceBook, JobQueue]:
    """What the admin API's billing routes need: the invoices and the job queue."""
    from hoodrun.billing.invoices import InvoiceBook
    from hoodrun.billing.ledger import Ledger

    return InvoiceBook(store, config, ledger=Ledger(store)), JobQueue(store)


def _plan_named(config: Config, name: str | None) -> PlanConfig:
    """The plan called ``name``; the default plan for none (or one no longer in the config)."""
    found = config.plan(name) if name is not None else None
    default = config.plan(config.default_plan)
    return found or default or config.plans[0]


class _Reloader:
    """SIGHUP: read the config again and hand it to the gateway, and the plans to the admin API
    (one reload at a time; the api role alone takes the plans).

    The handler is installed before any listener opens, so a SIGHUP sent as soon as the
    platform answers is never the default action (which ends the process); one that arrives
    while the platform is still starting is applied once the gateway runs."""

    def __init__(self, read: Callable[[], Config], stack: AsyncExitStack) -> None:
        self._read = read
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._target: tuple[GatewayRuntime | None, KeyService, ContractBook] | None = None
        self._pending = False
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self._signal)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run it there)
            return
        stack.callback(self._loop.remove_signal_handler, signal.SIGHUP)

    def ready(
        self, runtime: GatewayRuntime | None, keys: KeyService, contracts: ContractBook
    ) -> None:
        self._target = (runtime, keys, contracts)
        if self._pending:
            self._pending = False
            self._signal()

    def _signal(self) -> None:
        if self._target is None:
            self._pending = True  # applied by ready()
            return
        task = self._loop.create_task(self._reload(*self._target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(
        self, runtime: GatewayRuntime | None, keys: KeyService, contracts: ContractBook
    ) -> None:
        async with self._lock:
            try:
                config = self._read()
                if runtime is not None:
                    restart = await runtime.reload(config)
                    merged = runtime.config
                else:  # the api role alone: its plans (the database mirrors them)
                    merged, restart = reloadable(keys.config, config)
                    await keys.store.sync_plans(merged.plans)
            except ConfigError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                return
            except Exception:
                log.exception("reload failed")
                return
            # The admin API's keys and contracts check plans against the reloaded config.
            keys.config = contracts.config = merged
            chains = ", ".join(chain.name for chain in merged.chains)
            log.info("config reloaded: chains %s; %d plans", chains, len(merged.plans))
            for change in restart:
                log.warning("config change needs a restart (not applied): %s", change)


async def _open_reports(
    config: Config, telemetry: Telemetry | None, stack: AsyncExitStack
) -> Reports | None:
    """The usage reports of the api role: on this process's analytics store when it has one,
    else on a store of their own (a ClickHouse server; an embedded chDB directory only if no
    other process holds it: queries then answer 503 with the reason)."""
    if not config.telemetry.enabled:
        return None
    store = telemetry.store if telemetry is not None else None
    if store is None:
        store = open_analytics(config)
        stack.push_async_callback(store.aclose)
        try:  # the tables, should this api run before any gateway made them (idempotent)
            await store.setup(config.telemetry.retention)
        except StoreError as exc:
            log.warning("analytics store: tables not checked: %s", exc)
    retention = config.telemetry.retention
    return Reports(store, raw_days=retention.raw_days, hourly_days=retention.hourly_days)


async def _open_worker(
    config: Config, store: Store, analytics: AnalyticsStore | None, stack: AsyncExitStack
) -> Worker:
    """The job queue's worker with every handler this config calls for (webhook deliveries,
    notifications; with ``billing.enabled`` the billing jobs and their schedules), reporting to
    the fleet; what it opens closes with ``stack``."""
    settings = config.billing.jobs
    queue = JobQueue(store, backoff_base=settings.backoff_base, lease_margin=settings.lease)
    # Webhook deliveries are jobs too: this worker POSTs them (no redirects followed).
    client = await stack.enter_async_context(httpx.AsyncClient(follow_redirects=False))
    handlers = webhook_handlers(WebhookBook(store), client) | notify_jobs.handlers(
        config, store, analytics=analytics
    )
    schedules: list[Schedule] = [*notify_jobs.schedules(config)]
    if config.billing.enabled:
        # Imported here: billing brings the providers' SDKs, which only the worker needs.
        from hoodrun.billing import jobs as billing_jobs

        billing = billing_jobs.open_billing(config, store, queue, analytics=analytics)
        stack.push_async_callback(billing.aclose)
        handlers |= billing_jobs.handlers(billing)
        schedules.extend(billing_jobs.schedules(config))
    await stack.enter_async_context(
        FleetReporter(store, "worker", lambda: {"concurrency": settings.concurrency})
    )
    return Worker(
        queue,
        handlers,
        schedules=schedules,
        concurrency=settings.concurrency,
        poll_interval=settings.poll_interval,
        keep_done=timedelta(days=settings.keep_done_days),
    )


async def run_worker(
    config: Config,
    *,
    burst: bool = False,
    ready: Callable[[Telemetry | None], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """The worker role: run the job queue (webhook deliveries, notifications and, with
    ``billing.enabled``, the billing jobs and their schedules) and, with telemetry enabled,
    consume the record stream (with ``nats_url``) into the analytics store and keep its rollups.
    ``ready`` gets the telemetry (``None`` when disabled). ``burst``: drain what is waiting
    (records, rollups, due jobs) and return."""
    stop = _stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        telemetry: Telemetry | None = None
        if config.telemetry.enabled:
            telemetry = await open_telemetry(config, stack, produce=False, consume=True)
        await upgrade(config.database_url)  # creates the SQLite file's directory too
        store = await stack.enter_async_context(Store(config.database_url))
        analytics = telemetry.store if telemetry is not None else None
        worker = await _open_worker(config, store, analytics, stack)
        if config.billing.jobs.metrics_listen is not None and not burst:
            _serve_metrics(config.billing.jobs.metrics_listen, stack)
        if ready is not None:
            ready(telemetry)
        if burst:
            if telemetry is not None:
                if telemetry.rollups is not None:
                    await telemetry.rollups.catch_up()
                await telemetry.flush()
            result = await worker.burst()
            log.info(
                "worker burst: %d jobs done, %d to retry, %d dead",
                result.done, result.failed, result.dead,
            )  # fmt: skip
            return
        await worker.run(stop)  # returns once stopped and the jobs in hand are finished
        log.info("worker stopping: finishing the batch in hand")
