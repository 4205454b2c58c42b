"""The one configuration model: a YAML file plus ``HOODRUN_*`` environment overrides.

Loaded once at the edge (``load_config``); everything below receives a validated ``Config``.
Errors name the key and, where the YAML has one, the file line::

    hoodrun.yaml:14: chains.0.upstreams.1.url: Input should be a valid URL

Environment overrides use ``__`` between levels (``HOODRUN_LISTEN=0.0.0.0:8000``,
``HOODRUN_LIMITS__KEY_CACHE_TTL=45``); values are parsed as YAML scalars. Secrets never live in the
YAML: ``HOODRUN_ADMIN_TOKEN`` (or ``admin_token_file``) and passwords inside
``HOODRUN_DATABASE_URL`` come from the environment or a file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hoodrun.billing.config import BillingConfig
from hoodrun.explorer.config import LogsConfig
from hoodrun.identity.config import AuthConfig
from hoodrun.metering.config import BUILTIN_METERS, MeterConfig, PriceConfig, TaxRule
from hoodrun.notify.config import NotificationsConfig, SmtpConfig
from hoodrun.web.config import WebConfig

__all__ = [
    "DEFAULT_PLANS",
    "ChainConfig",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "HealthConfig",
    "MethodRules",
    "PlanConfig",
    "PublicAccess",
    "RateConfig",
    "UpstreamConfig",
    "load_config",
    "parse_listen",
]

# Paths the gateway listener owns; a chain may not be named like one of them.
RESERVED_CHAIN_NAMES = frozenset({"health", "metrics", "v1", "admin", "api", "ws"})
_CHAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(Exception):
    """The configuration is invalid; the message names the key (and file line) to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateConfig(_Model):
    """Steady rate and burst (token bucket / GCRA), plus optional longer windows."""

    rps: float = Field(gt=0, description="Steady requests per second.")
    burst: int | None = Field(
        default=None, ge=1, description="Bucket size; defaults to max(1, 2 x rps)."
    )
    per_minute: int | None = Field(default=None, ge=1, description="Extra cap per rolling minute.")
    per_hour: int | None = Field(default=None, ge=1, description="Extra cap per rolling hour.")

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rps * 2))


class MethodRules(_Model):
    """Method scopes: ``allow`` (if given) is an allow-list, ``deny`` always wins."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()

    def permits(self, method: str) -> bool:
        if method in self.deny:
            return False
        return self.allow is None or method in self.allow


class PlanConfig(_Model):
    """A plan declared in the config and synced into the database on start."""

    name: str = Field(min_length=1, max_length=64)
    rate: RateConfig
    chain_rate: RateConfig | None = Field(
        default=None, description="Per key x chain limit; defaults to the key's rate."
    )
    methods: MethodRules = MethodRules()
    max_batch: int | None = Field(default=None, ge=1, description="Overrides gateway.max_batch.")
    max_logs_range: int | None = Field(
        default=None, ge=1, description="Overrides gateway.max_logs_range."
    )
    archive: bool = Field(default=True, description="May read state older than a full node's.")
    trace: bool = Field(default=True, description="May call trace_* and debug_* methods.")
    max_logs_results: int | None = Field(
        default=None, ge=1, description="Overrides gateway.max_logs_results."
    )
    websocket: bool = Field(default=True, description="May open WebSockets (eth_subscribe).")
    quotas: dict[str, int] = Field(
        default_factory=dict,
        description="Monthly limits per meter (requests, compute_units); refused beyond (429).",
    )
    price: PriceConfig | None = Field(default=None, description="What the plan costs a period.")
    spending_cap: Decimal | None = Field(
        default=None, gt=0, description="A period's amount beyond which calls are refused."
    )
    description: str = ""


CAPABILITIES = ("archive", "trace", "ws")


class UpstreamConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    url: str
    weight: float = Field(default=1.0, gt=0)
    tags: tuple[str, ...] = Field(
        default=(), description="What the node can do beyond a full node: archive, trace, ws."
    )
    tier: Literal["own", "fallback"] = Field(
        default="own", description="fallback: paid, used only when own nodes cannot serve."
    )
    max_inflight: int | None = Field(
        default=None, ge=1, description="Calls in flight beyond which the node counts as full."
    )
    ws_url: str | None = Field(
        default=None, description="The node's WebSocket endpoint; default: url with ws://."
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tag in value:
            if tag not in CAPABILITIES:
                raise ValueError(f"unknown tag {tag!r}: use {', '.join(CAPABILITIES)}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8545/")
        if value.startswith("https://"):
            raise ValueError("https upstreams are not supported yet; use a local http endpoint")
        return value


class HealthConfig(_Model):
    """Background upstream checks and the circuit breaker."""

    interval: float = Field(default=2.0, gt=0, description="Seconds between health checks.")
    timeout: float = Field(default=2.0, gt=0, description="Timeout of one health check.")
    max_lag: int = Field(default=8, ge=0, description="Blocks behind the best head allowed.")
    min_peers: int = Field(default=0, ge=0, description="Minimum net_peerCount.")
    breaker_failures: int = Field(default=5, ge=1, description="Failures in a row that open.")
    breaker_cooldown: float = Field(default=30.0, gt=0, description="Seconds OPEN before a probe.")


class HedgeConfig(_Model):
    """Ask a second upstream when the first is slow; the first good answer wins."""

    delay: float | None = Field(default=None, gt=0, description="Seconds to wait, fixed.")
    percentile: float | None = Field(
        default=None, gt=0, lt=100, description="Or the chain's upstream latency percentile."
    )
    methods: tuple[str, ...] | None = Field(
        default=None, description="Methods hedged; default every read without side effects."
    )

    @model_validator(mode="after")
    def _one_delay(self) -> HedgeConfig:
        if (self.delay is None) == (self.percentile is None):
            raise ValueError("give hedge.delay (seconds) or hedge.percentile (e.g. 95), not both")
        return self


class ChainConfig(_Model):
    name: str
    chain_id: int = Field(ge=1)
    upstreams: tuple[UpstreamConfig, ...] = Field(min_length=1)
    health: HealthConfig | None = None
    rate: RateConfig | None = Field(default=None, description="Global limit for the whole chain.")
    hedge: HedgeConfig | None = None
    history: int = Field(
        default=128,
        ge=0,
        description="Blocks of state a full node keeps; older state reads need an archive node.",
    )
    logs_chunk: int | None = Field(
        default=None,
        ge=1,
        description="Largest eth_getLogs range the nodes take: longer ones are split and merged.",
    )
    finality_depth: int | None = Field(
        default=None,
        ge=0,
        description="Blocks behind the head taken as final when nodes have no finalized tag.",
    )

    @field_validator("name")
    @classmethod
    def _chain_name(cls, value: str) -> str:
        if not _CHAIN_NAME.match(value):
            raise ValueError("use lowercase letters, digits and '-', e.g. eth or base-sepolia")
        if value in RESERVED_CHAIN_NAMES:
            raise ValueError(f"{value!r} is reserved for the gateway's own paths")
        return value

    @model_validator(mode="after")
    def _unique_upstreams(self) -> ChainConfig:
        names = [u.name for u in self.upstreams]
        if len(names) != len(set(names)):
            raise ValueError(f"upstream names must be unique within chain {self.name!r}")
        return self


class PublicAccess(_Model):
    """Optional keyless endpoint ``/{chain}/v1`` limited per client IP."""

    enabled: bool = False
    plan: str = "free"


class GatewayConfig(_Model):
    """Hot-path limits and behaviour."""

    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_batch: int = Field(default=1000, ge=1)
    request_timeout: float = Field(default=10.0, gt=0, description="Whole-request deadline (s).")
    upstream_timeout: float = Field(default=5.0, gt=0, description="One upstream attempt (s).")
    max_retries: int = Field(default=2, ge=0, description="Extra attempts on other upstreams.")
    upstream_connections: int = Field(default=64, ge=1, description="Keep-alive pool per node.")
    key_cache_ttl: float = Field(default=30.0, ge=1, le=60)
    key_negative_ttl: float = Field(default=5.0, ge=0)
    key_degrade_ttl: float = Field(
        default=600.0, ge=0, description="How long cached keys live on while the store is down."
    )
    trusted_proxies: tuple[str, ...] = ()
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()
    cors_max_age: int = Field(default=86400, ge=0)
    max_logs_range: int = Field(default=10_000, ge=1, description="eth_getLogs blocks per call.")
    max_logs_results: int = Field(default=10_000, ge=1, description="eth_getLogs logs per answer.")
    logs_timeout: float = Field(
        default=30.0, gt=0, description="Deadline of an eth_getLogs (slow by nature)."
    )
    cordon_poll: float = Field(
        default=2.0, gt=0, description="Seconds between a gateway's reads of the cordons."
    )

    @field_validator("trusted_proxies", "ip_allow", "ip_deny")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value


class RetentionConfig(_Model):
    """How long the analytics tables keep rows (ClickHouse TTLs)."""

    raw_days: int = Field(default=14, ge=1, description="requests_raw, in days.")
    hourly_days: int = Field(default=90, ge=1, description="usage_hourly, in days.")
    daily_months: int = Field(default=18, ge=1, description="usage_daily, in months.")
    events_days: int = Field(default=400, ge=1, description="Usage events (CloudEvents), days.")


class TelemetryConfig(_Model):
    """The request-record pipeline: queue, batches, spool, rollups."""

    enabled: bool = True
    queue_size: int = Field(default=200_000, ge=1, description="Records held before dropping.")
    batch_size: int = Field(default=50_000, ge=1, description="Rows per write, at most.")
    flush_interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between writes; the most a kill -9 loses."
    )
    spool_dir: Path | None = Field(
        default=None, description="Where batches wait while the store is down (data_dir/spool)."
    )
    client_ip: Literal["truncate", "hash", "full"] = "truncate"
    rollup_interval: float = Field(default=30.0, gt=0, description="Seconds between rollups.")
    retention: RetentionConfig = RetentionConfig()
    stream: str = Field(
        default="HOODRUN_RECORDS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="NATS stream."
    )
    ack_wait: float = Field(
        default=30.0, gt=0, description="Seconds before a batch a worker took is redelivered."
    )


class WebSocketConfig(_Model):
    """JSON-RPC over WebSocket at GET /{chain}/v1/{KEY}, with subscriptions."""

    enabled: bool = True
    max_connections_per_key: int = Field(default=100, ge=1)
    max_subscriptions: int = Field(default=100, ge=1, description="Per connection.")
    idle_timeout: float = Field(default=300.0, gt=0, description="Seconds without a message.")
    ping_interval: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)


class CacheConfig(_Model):
    """The response cache (final answers only) and the coalescing of identical reads."""

    enabled: bool = True
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Memory bound.")
    coalesce: bool = Field(default=True, description="Share one call among identical reads.")
    backend: Literal["memory", "redis"] = Field(
        default="memory", description="redis: a shared second level (needs redis_url)."
    )
    redis_ttl: float = Field(default=86400.0, gt=0, description="Seconds an entry stays in Redis.")


class TracingConfig(_Model):
    """OpenTelemetry spans for request -> upstream call, exported over OTLP/HTTP."""

    enabled: bool = False
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = "hoodrun"


class ComputeUnitsConfig(_Model):
    """Changes to the default compute-unit table (hoodrun/telemetry/units.py)."""

    default: int = Field(default=20, ge=0, description="Units of a method in no table.")
    methods: dict[str, int] = {}
    chains: dict[str, dict[str, int]] = {}
    cache_hit_percent: int = Field(
        default=100, ge=0, le=100, description="What a cache hit costs, in % of its units."
    )
    notification_bytes_per_unit: int | None = Field(
        default=25,
        ge=1,
        description="A WebSocket notification costs a unit per this many bytes (rounded up); "
        "none: the table's eth_subscription value.",
    )


# The seed's rate tiers, used when a config declares no plans of its own.
DEFAULT_PLANS = (
    PlanConfig(
        name="free",
        rate=RateConfig(rps=10, burst=20),
        methods=MethodRules(deny=("eth_sendRawTransaction",)),
        description="10 requests/s, burst 20; no transactions",
    ),
    PlanConfig(name="pro", rate=RateConfig(rps=100, burst=200), description="100 requests/s"),
    PlanConfig(
        name="enterprise", rate=RateConfig(rps=1000, burst=2000), description="1000 requests/s"
    ),
)


class Config(_Model):
    listen: str = "127.0.0.1:8000"
    api_listen: str = "127.0.0.1:8001"
    domain: str | None = None
    data_dir: Path = Path("./data")
    database_url: str = "sqlite:///./data/hoodrun.db"
    redis_url: str | None = None
    redis_prefix: str = "hoodrun"
    nats_url: str | None = None
    analytics_url: str | None = None
    analytics_path: Path | None = None
    analytics_database: str = Field(default="hoodrun", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    admin_token: str | None = Field(default=None, repr=False)
    admin_token_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    default_plan: str = "free"
    gateway: GatewayConfig = GatewayConfig()
    health: HealthConfig = HealthConfig()
    public: PublicAccess = PublicAccess()
    telemetry: TelemetryConfig = TelemetryConfig()
    tracing: TracingConfig = TracingConfig()
    cache: CacheConfig = CacheConfig()
    ws: WebSocketConfig = WebSocketConfig()
    compute_units: ComputeUnitsConfig = ComputeUnitsConfig()
    chains: tuple[ChainConfig, ...] = ()
    meters: tuple[MeterConfig, ...] = Field(
        default=(), description="Meters over external usage events (CloudEvents)."
    )
    taxes: dict[str, TaxRule] = Field(
        default_factory=dict, description="Tax per customer country (ISO 3166 alpha-2)."
    )
    billing: BillingConfig = BillingConfig()
    logs: LogsConfig = LogsConfig()
    auth: AuthConfig = AuthConfig()
    smtp: SmtpConfig = SmtpConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    web: WebConfig = WebConfig()
    plans: tuple[PlanConfig, ...] = Field(
        default=DEFAULT_PLANS, description="Plans sold; without any, free/pro/enterprise."
    )

    @field_validator("listen", "api_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+")):
            raise ValueError("use sqlite:///path/to.db or postgresql://user@host:5432/db")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://host:6379/0")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("nats://", "tls://")):
            raise ValueError("use nats://host:4222")
        return value

    @field_validator("analytics_url")
    @classmethod
    def _analytics_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("clickhouse://", "http://", "https://")):
            raise ValueError("use http://user:password@host:8123 (a ClickHouse server)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        chain_names = [c.name for c in self.chains]
        if len(chain_names) != len(set(chain_names)):
            raise ValueError("chain names must be unique")
        plan_names = [p.name for p in self.plans]
        if len(plan_names) != len(set(plan_names)):
            raise ValueError("plan names must be unique")
        if not self.plans:
            raise ValueError(
                "declare at least one plan under 'plans:' (or leave it out for the defaults)"
            )
        if self.default_plan not in plan_names:
            raise ValueError(f"default_plan {self.default_plan!r} is not among plans")
        if self.cache.backend == "redis" and self.redis_url is None:
            raise ValueError("cache.backend redis needs redis_url")
        if self.public.enabled and self.public.plan not in plan_names:
            raise ValueError(f"public.plan {self.public.plan!r} is not among plans")
        meters = {*BUILTIN_METERS, *(m.slug for m in self.meters)}
        if len(self.meters) != len({m.slug for m in self.meters}):
            raise ValueError("meter slugs must be unique")
        for plan in self.plans:
            for meter in (*plan.quotas, *([plan.price.meter] if plan.price else [])):
                if meter not in meters:
                    raise ValueError(
                        f"plan {plan.name!r} names meter {meter!r}: use one of {sorted(meters)}"
                    )
            if plan.spending_cap is not None and (plan.price is None or plan.price.type == "FIXED"):
                raise ValueError(
                    f"plan {plan.name!r}: a spending cap needs a METERED or HYBRID price"
                )
        for country in self.taxes:
            if not re.match(r"^[A-Z]{2}$", country):
                raise ValueError(f"taxes: {country!r} is not an ISO 3166 alpha-2 code like TR")
        return self

    def plan(self, name: str) -> PlanConfig | None:
        for plan in self.plans:
            if plan.name == name:
                return plan
        return None

    def chain(self, name: str) -> ChainConfig | None:
        for chain in self.chains:
            if chain.name == name:
                return chain
        return None

    def health_for(self, chain: ChainConfig) -> HealthConfig:
        return chain.health or self.health

    def resolved_admin_token(self) -> str | None:
        if self.admin_token:
            return self.admin_token
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip() or None
        return None


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8000``) → (host, port)."""
    match = re.match(r"^\[?([^\[\]]*?)\]?:(\d{1,5})$", value)
    if not match or not (0 <= int(match.group(2)) <= 65535):
        raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:8000")
    return match.group(1) or "0.0.0.0", int(match.group(2))  # noqa: S104


# --- loading -------------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1
    mapping["__lines__"] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(data: Any, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    if isinstance(data, dict):
        own = data.pop("__lines__", {})
        for key, line in own.items():
            lines[(*path, key)] = line
        return {k: _strip_lines(v, (*path, k), lines) for k, v in data.items()}
    if isinstance(data, list):
        return [_strip_lines(v, (*path, i), lines) for i, v in enumerate(data)]
    return data


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith("HOODRUN_") or name == "HOODRUN_CONFIG":
            continue
        parts = name[len("HOODRUN_") :].lower().split("__")
        target = data
        for part in parts[:-1]:
            nested = target.get(part)
            if not isinstance(nested, dict):
                nested = {}
                target[part] = nested
            target = nested
        target[parts[-1]] = yaml.safe_load(raw) if raw != "" else None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read the YAML file (if any), apply ``HOODRUN_*`` env and explicit overrides, validate."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    lines: dict[tuple[Any, ...], int] = {}
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
        try:
            loaded = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        data = _strip_lines(loaded, (), lines)
    _apply_env(data, env)
    if overrides:
        data.update(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = None
            for cut in range(len(loc), 0, -1):
                line = lines.get(loc[:cut])
                if line is not None:
                    break
            where = f"{source}:{line}" if line is not None else source
            key = ".".join(str(p) for p in loc) or "(top level)"
            messages.append(f"{where}: {key}: {err['msg']}")
        raise ConfigError("invalid configuration\n  " + "\n  ".join(messages)) from None
