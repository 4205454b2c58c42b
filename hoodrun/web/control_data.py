"""What the control center's pages read: the service catalog, the health of each component,
billing reconciliation's status and the job queue's summary.

Reconciliation (``hoodrun.billing.reconcile``) leaves two traces here: the result of the
worker's last ``reconcile`` job (checked, matched, ratio, unreachable providers, credit notes)
and a ``reconciliations`` row per invoice checked; an invoice whose latest check did not match
is a mismatch until a later check matches.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select

from hoodrun.jobs import DEAD, STATUSES
from hoodrun.metering.money import Money
from hoodrun.ops.fleet import ROLES, Instance
from hoodrun.store.tables import invoices, jobs, reconciliations

if TYPE_CHECKING:
    from hoodrun.jobs import Job, JobQueue
    from hoodrun.store import Store
    from hoodrun.telemetry.reporting import Reports

__all__ = [
    "MATCH_TARGET",
    "Check",
    "Mismatch",
    "Reconciliation",
    "RoleSummary",
    "catalog",
    "health",
    "job_summary",
    "reconciliation",
]

MATCH_TARGET: Final = 0.999  # seed 000 §10: billing reconciliation accuracy
_CHECK_TIMEOUT: Final = 2.0


# --- service catalog ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleSummary:
    role: str
    up: int
    gone: int
    stopped: int
    versions: tuple[str, ...]
    longest_uptime: float | None
    instances: tuple[Instance, ...]


def catalog(instances: Iterable[Instance]) -> list[RoleSummary]:
    """Per role (gateway, api, worker, then any other): how many run, their versions, uptime."""
    by_role: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        by_role[instance.role].append(instance)
    roles = [*ROLES, *sorted(set(by_role) - set(ROLES))]
    out = []
    for role in roles:
        members = by_role.get(role, [])
        up = [i for i in members if i.state == "up"]
        out.append(
            RoleSummary(
                role=role,
                up=len(up),
                gone=sum(1 for i in members if i.state == "gone"),
                stopped=sum(1 for i in members if i.state == "stopped"),
                versions=tuple(sorted({i.version for i in up})),
                longest_uptime=max((i.uptime for i in up), default=None),
                instances=tuple(members),
            )
        )
    return out


# --- health ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One component: ``live`` (it runs) and ``ready`` (it can serve); ``None``: unknown."""

    component: str
    live: bool | None
    ready: bool | None
    detail: str


async def _answers(probe: Any) -> tuple[bool, str]:
    try:
        await asyncio.wait_for(probe, _CHECK_TIMEOUT)
    except TimeoutError:
        return False, f"no answer within {_CHECK_TIMEOUT:g} s"
    except Exception as exc:  # noqa: BLE001 (any failure means not ready; its kind is the news)
        return False, f"{type(exc).__name__}"
    return True, "answers"


async def health(
    store: Store, reports: Reports | None, instances: Iterable[Instance]
) -> list[Check]:
    """This api process, the database, the analytics store, and each instance of the fleet
    (live: it refreshed its row in time; ready: a gateway with every chain served)."""
    checks = [Check("api (this process)", True, True, "serving this page")]
    ok, detail = await _answers(store.ping())
    checks.append(Check("database", ok, ok, detail))
    if reports is None:
        checks.append(Check("analytics store", None, False, "not open (telemetry off or failed)"))
    else:
        ok, detail = await _answers(reports.store.query("SELECT 1 AS ok"))
        checks.append(Check("analytics store", ok, ok, detail))
    for instance in instances:
        if instance.state == "stopped":
            continue
        live = instance.state == "up"
        ready: bool | None = live
        detail = f"seen {instance.age:.0f} s ago (refreshes every {instance.interval:g} s)"
        if not live:
            detail = f"gone: not seen for {instance.age:.0f} s"
        elif instance.role == "gateway":
            dark = _chains_without_upstream(instance)
            ready = not dark
            if dark:
                detail += f"; no upstream serving: {', '.join(dark)}"
        checks.append(Check(f"{instance.role} {instance.id}", live, ready, detail))
    return checks


def _chains_without_upstream(instance: Instance) -> list[str]:
    chains = instance.status.get("chains")
    if not isinstance(chains, dict):
        return []
    dark = []
    for name, chain in chains.items():
        ups = chain.get("upstreams", []) if isinstance(chain, dict) else []
        if not any(isinstance(u, dict) and u.get("healthy") and not u.get("cordoned") for u in ups):
            dark.append(str(name))
    return sorted(dark)


# --- billing reconciliation --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mismatch:
    invoice_id: str
    number: str
    org_id: str
    expected: Money
    reported: Money | None
    detail: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Reconciliation:
    last_run_at: datetime | None
    checked: int | None
    matched: int | None
    ratio: float | None
    unreachable: tuple[str, ...]
    credit_notes: tuple[str, ...]
    last_failure: str | None
    """The last reconcile job that failed after the last success (its error), if any."""
    mismatches: tuple[Mismatch, ...] = field(default=())
    invoices_checked: int = 0

    @property
    def ok(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= MATCH_TARGET and not self.mismatches


async def reconciliation(store: Store, *, limit: int = 2000) -> Reconciliation:
    """The last run's result and the invoices whose latest check did not match."""
    async with store.connect() as conn:
        last = (
            (
                await conn.execute(
                    select(jobs.c.result, jobs.c.finished_at)
                    .where(jobs.c.kind == "reconcile", jobs.c.status == "done")
                    .order_by(jobs.c.finished_at.desc())
                    .limit(1)
                )
            )
            .mappings()
            .first()
        )
        failed_stmt = (
            select(jobs.c.last_error, jobs.c.updated_at)
            .where(jobs.c.kind == "reconcile", jobs.c.status == DEAD)
            .order_by(jobs.c.updated_at.desc())
            .limit(1)
        )
        failed = (await conn.execute(failed_stmt)).mappings().first()
        rows = (
            (
                await conn.execute(
                    select(
                        reconciliations.c.invoice_id,
                        reconciliations.c.at,
                        reconciliations.c.expected,
                        reconciliations.c.reported,
                        reconciliations.c.matched,
                        reconciliations.c.detail,
                        invoices.c.number,
                        invoices.c.org_id,
                        invoices.c.currency,
                    )
                    .join_from(reconciliations, invoices)
                    .order_by(reconciliations.c.at.desc(), reconciliations.c.id.desc())
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
    latest: dict[str, Any] = {}
    for row in rows:  # newest first: the first row of an invoice is its latest check
        latest.setdefault(row["invoice_id"], row)
    mismatches = tuple(
        Mismatch(
            invoice_id=row["invoice_id"],
            number=row["number"],
            org_id=row["org_id"],
            expected=Money(Decimal(row["expected"]), row["currency"]),
            reported=(
                Money(Decimal(row["reported"]), row["currency"])
                if row["reported"] is not None
                else None
            ),
            detail=row["detail"],
            at=row["at"],
        )
        for row in latest.values()
        if not row["matched"]
    )
    result: dict[str, Any] = dict(last["result"] or {}) if last is not None else {}
    finished = last["finished_at"] if last is not None else None
    failure = None
    if failed is not None and (finished is None or failed["updated_at"] > finished):
        failure = (failed["last_error"] or "failed").splitlines()[0][:300]
    return Reconciliation(
        last_run_at=finished,
        checked=_int(result.get("checked")),
        matched=_int(result.get("matched")),
        ratio=float(result["ratio"]) if isinstance(result.get("ratio"), int | float) else None,
        unreachable=tuple(str(u) for u in result.get("unreachable") or ()),
        credit_notes=tuple(str(n) for n in result.get("credit_notes") or ()),
        last_failure=failure,
        mismatches=mismatches,
        invoices_checked=len(latest),
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- the job queue -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobSummary:
    statuses: tuple[str, ...]
    kinds: dict[str, dict[str, int]]
    dead: tuple[Job, ...]
    totals: dict[str, int]


async def job_summary(queue: JobQueue, *, dead_limit: int = 50) -> JobSummary:
    """Counts per kind and status, and the dead jobs (newest first)."""
    counts = await queue.counts()
    kinds = {
        kind: {status: counts.get((kind, status), 0) for status in STATUSES}
        for kind in sorted({kind for kind, _ in counts})
    }
    totals = {status: sum(per[status] for per in kinds.values()) for status in STATUSES}
    dead = await queue.list(status=DEAD, limit=dead_limit)
    return JobSummary(statuses=STATUSES, kinds=kinds, dead=tuple(dead), totals=totals)
