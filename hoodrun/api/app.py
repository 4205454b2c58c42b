"""The admin API (``/admin/v1``): keys and the audit log, and (with their services) every
other admin and customer API, each route behind the permission it needs (``hoodrun.api.rbac``:
the admin token, or a user's access token and their role).

Errors are JSON ``{"error": {"code": "...", "message": "..."}}``: 400 invalid options, 401 no
or wrong token, 403 a role that does not grant the route, 404 no such key, 409 a revoked key
cannot be rotated, 422 malformed body, 503 the database is unreachable. Every change is in the
audit log with its caller and the client's address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Info,
    ProcessCollector,
    generate_latest,
)
from starlette.exceptions import HTTPException

from hoodrun import __version__
from hoodrun.api.errors import ApiError
from hoodrun.api.models import (
    AuditEntryOut,
    AuditOut,
    CreatedKeyOut,
    CreateKeyRequest,
    ErrorOut,
    KeyListOut,
    KeyOut,
    RotateKeyRequest,
)
from hoodrun.api.rbac import AuditTrail, Auth, actor, within_plan
from hoodrun.config import Config
from hoodrun.keys.durations import parse_duration
from hoodrun.keys.errors import KeysError
from hoodrun.keys.service import KeyService
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.store import StoreUnavailable

if TYPE_CHECKING:
    from hoodrun.billing.invoices import InvoiceBook
    from hoodrun.explorer.ingest import LogIngestor
    from hoodrun.identity import IdentityService
    from hoodrun.identity.oidc import OidcClient
    from hoodrun.jobs import JobQueue
    from hoodrun.metering.entitlements import OrgEntitlements
    from hoodrun.metering.meters import MeterService
    from hoodrun.metering.store import ContractBook, CreditBook
    from hoodrun.ops.alerts import AlertBook
    from hoodrun.telemetry.reporting import Reports
    from hoodrun.telemetry.store import AnalyticsStore
    from hoodrun.web.context import WebContext
    from hoodrun.webhooks import WebhookBook

__all__ = ["ApiError", "create_api_app"]


def _error(status_code: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def create_api_app(
    config: Config,
    keys: KeyService,
    *,
    token: str | None,
    reports: Callable[[], Reports | None] | None = None,
    alerts: AlertBook | None = None,
    meters: MeterService | None = None,
    entitlements: OrgEntitlements | None = None,
    accounts: tuple[ContractBook, CreditBook] | None = None,
    billing: tuple[InvoiceBook, JobQueue | None] | None = None,
    logs: LogIngestor | None = None,
    logs_store: Callable[[], AnalyticsStore | None] | None = None,
    verifier: KeyVerifier | None = None,
    webhooks: WebhookBook | None = None,
    identity: IdentityService | None = None,
    web: WebContext | None = None,
    jobs: JobQueue | None = None,
    oidc: OidcClient | None = None,
) -> FastAPI:
    """The admin API over ``keys``; the caller owns (opens and closes) the store behind it.

    ``alerts`` (the store's alert book) adds Alertmanager's webhook and the alerts list.
    ``reports`` gives the usage reports (``/api/v1/usage``) their analytics store, or ``None``
    while it is unavailable (503). ``meters`` adds OpenMeter's API (``/api/v1/events``,
    ``/api/v1/meters``; its errors are RFC 7807 problems). ``entitlements`` adds the check-access
    API (``/api/v1/entitlements``); ``accounts`` (contracts and credits) their admin routes;
    ``billing`` (invoices and the job queue) the invoice and period-close routes, and Stripe's
    webhook when ``billing.stripe.webhook_secret`` is set. ``logs`` adds ``POST /logs/v1``
    (application logs, with a project's API key checked by ``verifier``; default: one on
    ``keys`` that learns of revocations within ``gateway.key_cache_ttl``); ``logs_store`` (the
    analytics store, or ``None`` while unavailable: 503) the project's log search, stats and
    request explorer (``GET /logs/v1/...``), with the same keys. ``webhooks`` adds the org
    webhook endpoints, their delivery log and replays (``hoodrun.api.webhooks``).

    ``identity`` adds people: the sessions API (``/auth/v1``) and users' access tokens on every
    route, checked against their roles; ``web`` the customer portal (``/portal``) and the
    operators' control center (``/control``), as ``config.web`` enables them. ``jobs`` (default:
    ``billing``'s queue) adds the job queue's routes to the fleet's (``/admin/v1/jobs``); ``oidc``
    the operators' single sign-on on the portal's login (``/portal/sso/...``).

    ``token`` is the admin bearer token (the platform's admin); with neither it nor
    ``identity`` every call is refused (401).
    ``config`` is unused so far: key options are checked by ``keys`` against its own config.
    """
    app = FastAPI(
        title="HoodRun admin API",
        version=__version__,
        docs_url="/admin/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 404, 409, 422, 503)
    }
    errors[403] = {"model": ErrorOut}
    auth = Auth(token, identity)
    admin = APIRouter(prefix="/admin/v1", dependencies=[auth.authenticated()], responses=errors)
    if keys is not None:  # some embedders (tests of one router) serve without keys
        app.add_middleware(AuditTrail, store=keys.store)

    async def key_org(request: Request) -> str | None:
        return (await keys.get(request.path_params["key_id"])).org_id

    async def org_named(request: Request) -> str | None:
        # ``org`` may be a name or an id here, as the key list takes either.
        given = request.query_params.get("org")
        return await keys.org_id(given) if given else None

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status_code, exc.code, exc.message)

    if identity is not None:
        from hoodrun.identity import IdentityError

        @app.exception_handler(IdentityError)
        async def identity_error(_: Request, exc: IdentityError) -> JSONResponse:
            answer = _error(exc.status, exc.code, exc.message)
            if exc.retry_after is not None:
                answer.headers["Retry-After"] = str(exc.retry_after)
            return answer

    @app.exception_handler(KeysError)
    async def keys_error(_: Request, exc: KeysError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(503, "store_unavailable", "the database is unavailable; try again shortly")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.get("/admin/openapi.json", include_in_schema=False)
    async def openapi_alias() -> JSONResponse:
        """The schema where it was first served."""
        return JSONResponse(app.openapi())

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Ready when the database answers."""
        try:
            await keys.store.ping()
        except StoreUnavailable:
            body = {"status": "fail", "checks": {"store": {"ok": False}}}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "checks": {"store": {"ok": True}}})

    metrics = CollectorRegistry()
    ProcessCollector(registry=metrics)
    Info("hoodrun_build", "HoodRun's version", registry=metrics).info({"version": __version__})

    @app.get("/metrics", include_in_schema=False)
    async def render_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    async def body_org(request: Request) -> str | None:
        try:
            body = await request.json()
        except ValueError:
            return None  # refused as malformed by the route itself
        name = body.get("org") if isinstance(body, dict) else None
        return await keys.org_id(name) if isinstance(name, str) else None

    @admin.post(
        "/keys",
        status_code=status.HTTP_201_CREATED,
        dependencies=[auth.require("keys:write", body_org)],
    )
    async def create_key(request: Request, body: CreateKeyRequest) -> CreatedKeyOut:
        org_id = await keys.org_id(body.org)
        org_plan = await keys.org_plan(org_id) if org_id is not None else None
        within_plan(
            await auth.principal(request),
            keys.config.plan(org_plan or keys.config.default_plan),
            own_plan=body.plan,
            rps=body.rps,
            burst=body.burst,
        )
        expires_in = None
        if body.expires_in is not None:
            expires_in = parse_duration(body.expires_in, option="expires_in")
        created = await keys.create(
            org=body.org,
            project=body.project,
            plan=body.plan,
            chains=body.chains,
            origins=body.origins,
            expires_in=expires_in,
            name=body.name,
            methods_allow=body.methods_allow,
            methods_deny=body.methods_deny,
            rps=body.rps,
            burst=body.burst,
            actor=actor(),
        )
        return CreatedKeyOut.of(created.record, keys.now(), key=created.key)

    @admin.get("/keys", dependencies=[auth.require("keys:read", org_named)])
    async def list_keys(org: str | None = None) -> KeyListOut:
        records = await keys.list(org=org)
        now = keys.now()
        return KeyListOut(keys=[KeyOut.of(r, now) for r in records])

    @admin.get("/keys/{key_id}", dependencies=[auth.require("keys:read", key_org)])
    async def get_key(key_id: str) -> KeyOut:
        return KeyOut.of(await keys.get(key_id), keys.now())

    writes_key = [auth.require("keys:write", key_org)]

    @admin.post("/keys/{key_id}/revoke", dependencies=writes_key)
    async def revoke_key(key_id: str) -> KeyOut:
        return KeyOut.of(await keys.revoke(key_id, actor=actor()), keys.now())

    @admin.post("/keys/{key_id}/disable", dependencies=writes_key)
    async def disable_key(key_id: str) -> KeyOut:
        return KeyOut.of(await keys.disable(key_id, actor=actor()), keys.now())

    @admin.post("/keys/{key_id}/enable", dependencies=writes_key)
    async def enable_key(key_id: str) -> KeyOut:
        return KeyOut.of(await keys.enable(key_id, actor=actor()), keys.now())

    @admin.post(
        "/keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED, dependencies=writes_key
    )
    async def rotate_key(key_id: str, body: RotateKeyRequest | None = None) -> CreatedKeyOut:
        seconds = body.grace_seconds if body is not None else None
        grace = parse_duration(seconds, option="grace_seconds") if seconds else None
        created = await keys.rotate(key_id, grace=grace, actor=actor())
        return CreatedKeyOut.of(created.record, keys.now(), key=created.key, rotated_from=key_id)

    @admin.get("/audit", dependencies=[auth.require("audit:read")])
    async def audit(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        target_id: str | None = None,
    ) -> AuditOut:
        entries = await keys.audit(limit=limit, target_id=target_id)
        return AuditOut(entries=[AuditEntryOut.model_validate(e) for e in entries])

    app.include_router(admin)
    if keys is not None:
        from hoodrun.api.orgs import orgs_router
        from hoodrun.keys.orgs import OrgBook

        app.include_router(orgs_router(keys, OrgBook(keys.store), auth, identity))
    if keys is not None:
        from hoodrun.api.fleet import fleet_router

        queue = jobs if jobs is not None else billing[1] if billing is not None else None
        fleet_reports = reports if reports is not None else (lambda: None)
        # ``keys.config`` follows a reload.
        app.include_router(
            fleet_router(lambda: keys.config, keys.store, auth, queue, fleet_reports)
        )
    if identity is not None:
        from hoodrun.api.sessions import sessions_router

        app.include_router(sessions_router(identity))
    if accounts is not None:
        from hoodrun.api.accounts import accounts_router

        app.include_router(accounts_router(*accounts, keys, auth))
    if reports is not None:
        from hoodrun.api.usage import usage_router

        app.include_router(usage_router(reports, auth))
    if billing is not None:
        from hoodrun.api.billing import billing_router, stripe_webhook_router

        app.include_router(billing_router(billing[0], auth, billing[1]))
        secret = config.billing.stripe.webhook_secret
        if config.billing.stripe.enabled and secret:
            app.include_router(stripe_webhook_router(billing[0], secret))
    if webhooks is not None:
        from hoodrun.api.webhooks import webhooks_router

        app.include_router(webhooks_router(webhooks, auth))
    if alerts is not None:
        from hoodrun.api.alerts import alerts_router

        app.include_router(alerts_router(alerts, auth))
    if meters is not None:
        from hoodrun.api.openmeter import openmeter_router

        app.include_router(openmeter_router(meters, auth))
    if entitlements is not None:
        from hoodrun.api.entitlements import entitlements_router

        app.include_router(entitlements_router(entitlements, auth))
    if logs is not None or logs_store is not None:
        from hoodrun.api.projects import project_scope

        if verifier is None:  # not ``or``: an empty cache is falsy (it has a __len__)
            verifier = _key_verifier(config, keys)
        scope = project_scope(verifier, token)
        if logs is not None:
            from hoodrun.api.logs import logs_router

            app.include_router(logs_router(logs, scope))
        if logs_store is not None:
            from hoodrun.api.logs_query import logs_query_router

            app.include_router(logs_query_router(logs_store, scope))
    if web is not None and config.web.portal:
        if oidc is not None and identity is not None:  # operators' single sign-on
            from hoodrun.api.sso import sso_router

            app.include_router(sso_router(identity, oidc))
        from hoodrun.web.portal import portal_router

        app.include_router(portal_router(web))
    if web is not None and config.web.control:
        from hoodrun.web.control import control_router

        app.include_router(control_router(web))
    return app


def _key_verifier(config: Config, keys: KeyService) -> KeyVerifier:
    """A key cache on ``keys`` as the gateway's (without its purge on key events)."""
    return KeyVerifier(
        keys.lookup,
        ttl=config.gateway.key_cache_ttl,
        negative_ttl=config.gateway.key_negative_ttl,
        degrade_ttl=config.gateway.key_degrade_ttl,
    )
