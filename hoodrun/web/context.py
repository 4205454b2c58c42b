"""What the pages read and change: the services of the api role, handed over once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hoodrun.billing.invoices import InvoiceBook
    from hoodrun.config import Config
    from hoodrun.identity import IdentityService
    from hoodrun.jobs import JobQueue
    from hoodrun.keys.service import KeyService
    from hoodrun.metering.entitlements import OrgEntitlements
    from hoodrun.metering.store import ContractBook, CreditBook
    from hoodrun.ops.alerts import AlertBook
    from hoodrun.store import Store
    from hoodrun.telemetry.reporting import Reports
    from hoodrun.webhooks import WebhookBook

__all__ = ["WebContext"]


@dataclass(slots=True)
class WebContext:
    """The api role's services; ``None`` where this deployment runs without one."""

    config: Config
    store: Store
    identity: IdentityService
    keys: KeyService
    reports: Callable[[], Reports | None]
    contracts: ContractBook | None = None
    credits: CreditBook | None = None
    invoices: InvoiceBook | None = None
    jobs: JobQueue | None = None
    webhooks: WebhookBook | None = None
    alerts: AlertBook | None = None
    entitlements: OrgEntitlements | None = None
