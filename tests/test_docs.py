"""The docs stay true to the code: every config key is documented."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from hoodrun.billing.config import (
    BillingConfig,
    FxConfig,
    IssuerConfig,
    JobsConfig,
    LedgerConfig,
    ParasutConfig,
    ScheduleConfig,
    StripeConfig,
)
from hoodrun.config import (
    ChainConfig,
    Config,
    GatewayConfig,
    HealthConfig,
    PlanConfig,
    PublicAccess,
    RateConfig,
)
from hoodrun.explorer.config import LogPlanLimits, LogsConfig
from hoodrun.identity.config import AuthConfig, OidcConfig
from hoodrun.notify.config import NotificationsConfig, SmtpConfig
from hoodrun.web.config import WebConfig

DOC = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()


def test_every_config_key_is_documented() -> None:
    models: list[type[BaseModel]] = [
        Config,
        GatewayConfig,
        HealthConfig,
        PublicAccess,
        ChainConfig,
        PlanConfig,
        RateConfig,
        BillingConfig,
        IssuerConfig,
        StripeConfig,
        ParasutConfig,
        FxConfig,
        LedgerConfig,
        ScheduleConfig,
        JobsConfig,
        LogsConfig,
        LogPlanLimits,
        AuthConfig,
        OidcConfig,
        SmtpConfig,
        NotificationsConfig,
        WebConfig,
    ]
    missing = [
        f"{m.__name__}.{name}" for m in models for name in m.model_fields if f"`{name}`" not in DOC
    ]
    assert not missing, f"document these in docs/config.md: {missing}"
