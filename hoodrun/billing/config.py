"""The billing part of the config (``billing:``): the issuer, invoice numbering, the providers
(Stripe for customers outside Turkey, Paraşüt for Turkey), exchange rates, the ledger's archive
and signing key, and the worker's job queue and schedules.

Secrets (Stripe's key, Paraşüt's client secret and password) never live in the YAML: they come
from the environment (``HOODRUN_BILLING__STRIPE__API_KEY=...``) or from a file (``*_file``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BillingConfig",
    "FxConfig",
    "IssuerConfig",
    "JobsConfig",
    "LedgerConfig",
    "ParasutConfig",
    "ScheduleConfig",
    "StripeConfig",
]

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(value: str | None, path: Path | None, what: str) -> str | None:
    if value is not None:
        return value
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None


class IssuerConfig(_Model):
    """Who issues the invoices, as printed on them."""

    name: str = "HoodRun operator"
    address: str = ""
    tax_id: str = ""
    email: str = ""
    country: str = Field(default="TR", pattern=r"^[A-Z]{2}$")


class StripeConfig(_Model):
    """Stripe, through its official SDK, for customers outside Turkey."""

    enabled: bool = False
    api_key: str | None = Field(default=None, repr=False, description="sk_... (env or file).")
    api_key_file: Path | None = None
    api_base: str = Field(default="https://api.stripe.com", description="Stripe's API address.")
    webhook_secret: str | None = Field(default=None, repr=False)
    collection_method: Literal["charge_automatically", "send_invoice"] = "send_invoice"
    timeout: float = Field(default=20.0, gt=0)

    def key(self) -> str | None:
        return _secret(self.api_key, self.api_key_file, "billing.stripe.api_key_file")


class ParasutConfig(_Model):
    """Paraşüt (API v4) for customers in Turkey: invoices in TL, then e-Fatura or e-Arşiv."""

    enabled: bool = False
    base_url: str = "https://api.parasut.com"
    company_id: str = ""
    client_id: str = ""
    client_secret: str | None = Field(default=None, repr=False)
    client_secret_file: Path | None = None
    username: str = ""
    password: str | None = Field(default=None, repr=False)
    password_file: Path | None = None
    rate_limit: int = Field(default=10, ge=1, description="Requests per rate_window seconds.")
    rate_window: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=20.0, gt=0)
    job_timeout: float = Field(
        default=900.0, gt=0, description="Seconds to poll an e-document's trackable job."
    )
    poll_interval: float = Field(default=2.0, gt=0)
    product_id: str | None = Field(
        default=None, description="The Paraşüt product invoice details refer to (made if unset)."
    )
    internet_sale_url: str = Field(default="", description="e-Arşiv internet_sale.url.")

    def secret(self) -> str | None:
        return _secret(self.client_secret, self.client_secret_file, "billing.parasut")

    def user_password(self) -> str | None:
        return _secret(self.password, self.password_file, "billing.parasut.password_file")


class FxConfig(_Model):
    """Exchange rates for invoices issued in another currency than the price (TL in Turkey)."""

    source: Literal["tcmb", "ecb"] = "tcmb"
    tcmb_url: str = "https://www.tcmb.gov.tr/kurlar"
    ecb_url: str = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-hist-90d.xml"
    max_fallback_days: int = Field(
        default=10, ge=1, description="Days back to look for a published rate (holidays)."
    )
    timeout: float = Field(default=10.0, gt=0)


class LedgerConfig(_Model):
    """The hash-chained ledger's daily signed exports."""

    archive_dir: Path | None = Field(
        default=None, description="Where daily exports go (default: data_dir/ledger)."
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key, PEM (default: data_dir/ledger-signing.pem, made once).",
    )
    s3_url: str | None = Field(
        default=None, description="Optional S3-compatible copy: s3://bucket/prefix."
    )


class ScheduleConfig(_Model):
    """When the worker enqueues its scheduled jobs (UTC)."""

    period_close_day: int = Field(default=1, ge=1, le=28, description="Day of month to close.")
    period_close_hour: int = Field(default=2, ge=0, le=23)
    fx_fetch_hour: int = Field(default=16, ge=0, le=23, description="After TCMB's 15:30 bulletin.")
    reconcile_every: float = Field(default=3600.0, gt=0, description="Seconds.")
    ledger_export_hour: int = Field(default=0, ge=0, le=23)


class JobsConfig(_Model):
    """The worker's durable job queue."""

    concurrency: int = Field(default=4, ge=1, description="Jobs one worker runs at once.")
    poll_interval: float = Field(default=1.0, gt=0, description="Seconds between empty polls.")
    keep_done_days: int = Field(default=30, ge=1)
    lease: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a running job's lease lasts (renewed while it runs): how long the "
        "job of a worker that died waits before another worker takes it.",
    )
    backoff_base: float = Field(
        default=5.0, gt=0, description="Seconds of the first retry's backoff (doubling)."
    )
    metrics_listen: str | None = Field(
        default=None,
        description="host:port where the worker serves /metrics (job and billing metrics).",
    )


class BillingConfig(_Model):
    enabled: bool = Field(default=True, description="Run billing jobs in the worker.")
    issuer: IssuerConfig = IssuerConfig()
    invoice_prefix: str = Field(default="HR", pattern=r"^[A-Z0-9-]{1,12}$")
    days_until_due: int = Field(default=14, ge=0)
    turkey_currency: str = Field(
        default="TRY", description="Invoices of Turkish customers are issued in this currency."
    )
    stripe: StripeConfig = StripeConfig()
    parasut: ParasutConfig = ParasutConfig()
    fx: FxConfig = FxConfig()
    ledger: LedgerConfig = LedgerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    jobs: JobsConfig = JobsConfig()
    reconcile_tolerance: Decimal = Field(
        default=Decimal(0), ge=0, description="Difference (in the invoice currency) tolerated."
    )

    @field_validator("turkey_currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not _CURRENCY.match(value):
            raise ValueError("an ISO 4217 code in capitals, like TRY")
        return value
