"""What a request may do: its plan, its methods, its rate-limit buckets, and the verdict.

Plans come from the config; a key's limits are its plan's plus the key's own overrides. Bucket
lists are built once per key and chain and reused until the key's record changes.
"""

from __future__ import annotations

import math

from hoodrun.config import Config, PlanConfig, RateConfig
from hoodrun.gateway.chain import ChainState
from hoodrun.gateway.errors import RateLimited
from hoodrun.keys.record import KeyRecord
from hoodrun.limits import Bucket, Decision

__all__ = ["Policy"]

_SCOPE_WORDS = {"c": "this chain's global", "ip": "this address's", "kc": "this key's per-chain"}


class Policy:
    def __init__(self, config: Config) -> None:
        self._plans = {p.name: p for p in config.plans}
        self._default_plan = self._plans.get(config.default_plan) or PlanConfig(
            name=config.default_plan, rate=RateConfig(rps=10, burst=20)
        )
        self.public_plan = self._plans.get(config.public.plan) if config.public.enabled else None
        self._bucket_cache: dict[tuple[str, str], tuple[KeyRecord, tuple[Bucket, ...]]] = {}

    def plan_of(self, record: KeyRecord) -> PlanConfig:
        return self._plans.get(record.plan) or self._default_plan

    @staticmethod
    def permits(record: KeyRecord | None, plan: PlanConfig, method: str) -> bool:
        if not plan.methods.permits(method):
            return False
        if record is None:
            return True
        if method in record.methods_deny:
            return False
        return record.methods_allow is None or method in record.methods_allow

    def buckets(
        self, record: KeyRecord | None, plan: PlanConfig, chain: ChainState, ip: str
    ) -> tuple[Bucket, ...]:
        if record is None:
            keyless = [Bucket(f"ip:{ip}", plan.rate.rps, plan.rate.capacity)]
            if chain.global_bucket is not None:
                keyless.append(chain.global_bucket)
            return tuple(keyless)
        cache_key = (record.id, chain.name)
        cached = self._bucket_cache.get(cache_key)
        if cached is not None and cached[0] is record:
            return cached[1]
        rate = plan.rate
        if record.rps is not None:
            rate = RateConfig(rps=record.rps, burst=record.burst or max(1, int(record.rps * 2)))
        built = [Bucket(f"k:{record.id}", rate.rps, rate.capacity)]
        if plan.chain_rate is not None:
            built.append(
                Bucket(
                    f"kc:{record.id}:{chain.name}", plan.chain_rate.rps, plan.chain_rate.capacity
                )
            )
        if rate.per_minute is not None:
            built.append(Bucket.per_window(f"km:{record.id}", rate.per_minute, 60.0))
        if rate.per_hour is not None:
            built.append(Bucket.per_window(f"kh:{record.id}", rate.per_hour, 3600.0))
        if chain.global_bucket is not None:
            built.append(chain.global_bucket)
        buckets = tuple(built)
        if len(self._bucket_cache) > 100_000:
            self._bucket_cache.clear()
        self._bucket_cache[cache_key] = (record, buckets)
        return buckets

    @staticmethod
    def admit(decision: Decision, headers: list[tuple[str, str]]) -> tuple[str, RateLimited] | None:
        """Add the rate-limit headers; for a refusal return (the refusing scope, the error)."""
        headers += (
            ("x-ratelimit-limit", str(decision.limit)),
            ("x-ratelimit-remaining", str(decision.remaining)),
            ("x-ratelimit-reset", str(math.ceil(decision.reset_after))),
        )
        if decision.allowed:
            return None
        scope = (decision.bucket or "k").split(":", 1)[0]
        retry_after = (
            max(1, math.ceil(decision.retry_after)) if math.isfinite(decision.retry_after) else 3600
        )
        what = _SCOPE_WORDS.get(scope, "this key's")
        error = RateLimited(
            f"Rate limit exceeded: {what} limit allows {decision.limit} calls in a burst; "
            f"retry after {retry_after} s",
            headers=[("retry-after", str(retry_after))],
        )
        return scope, error
