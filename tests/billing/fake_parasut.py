"""A fake Paraşüt API v4 on a real socket, for the provider's tests.

It follows the documented API (section 4 of provider-apis.md and Paraşüt's Swagger 2.0 spec):
the OAuth2 token endpoint (password and refresh_token grants, refresh tokens that rotate, access
tokens that expire), JSON:API documents under ``/v4/{company_id}/``, ``{"errors": [...]}`` with
401/404/422, 429 past ``rate_limit`` requests per ``rate_window`` seconds per user, e-documents
issued by trackable jobs, and PDFs that answer 204 until they are ready.

Totals are computed as the provider assumes Paraşüt does: detail net = quantity × unit price
(to the cent), an amount invoice discount spread over the details in proportion to their net
(the last detail takes the rounding), VAT per detail on the discounted net, half up;
``gross_total`` is the sum of nets ("Ara toplam") and ``net_total`` the grand total.

``FakeParasut(...).start()`` serves on 127.0.0.1 (a free port) from its own thread; test hooks
(``down``, ``fail_next``, ``expire_access_tokens``, ``mutate_invoice``, ``finish_jobs``, ...)
change its behaviour, and ``received``/``requests`` record what it saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web

__all__ = ["CLIENT_SECRET", "PDF_BYTES", "USER_PASSWORD", "Clock", "FakeParasut"]

_CENT = Decimal("0.01")
_JSONAPI = "application/vnd.api+json"
_CURRENCIES = ("TRL", "USD", "EUR", "GBP")
_ITEM_TYPES = ("invoice", "export", "estimate", "cancelled", "refund")
_PAYMENT_TYPES = ("KREDIKARTI/BANKAKARTI", "EFT/HAVALE", "KAPIDAODEME", "ODEMEARACISI")
_JOB_TTL = 15 * 60.0
CLIENT_SECRET = "client-secret"
USER_PASSWORD = "user-password"
PDF_BYTES = b"%PDF-1.4\n% fake e-document\n%%EOF\n"


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


@dataclass
class Clock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Refused(Exception):
    def __init__(self, status: int, *details: str, title: str = "Validation failed") -> None:
        self.status, self.details, self.title = status, details, title


@dataclass
class _Job:
    kind: str
    invoice_id: str
    document_id: str
    created: float
    polls_left: int
    errors: list[str] = field(default_factory=list)
    status: str = "pending"


@dataclass
class Request:
    at: float
    method: str
    path: str
    status: int = 0
    body: Any = None
    user: str | None = None


class FakeParasut:
    def __init__(
        self,
        *,
        company_id: str = "4242",
        client_id: str = "hoodrun-client",
        client_secret: str = CLIENT_SECRET,
        username: str = "ops@hoodrun.test",
        password: str = USER_PASSWORD,
        rate_limit: int = 1000,
        rate_window: float = 10.0,
        access_ttl: int = 7200,
        clock: Callable[[], float] = time.monotonic,
        inboxes: dict[str, str] | None = None,
        job_polls: int = 2,
        pdf_polls: int = 1,
        money_as_strings: bool = False,
    ) -> None:
        self.company_id, self.client_id, self.client_secret = company_id, client_id, client_secret
        self.users = {username: password}
        self.rate_limit, self.rate_window, self.access_ttl = rate_limit, rate_window, access_ttl
        self.clock = clock
        self.inboxes: dict[str, str] = dict(inboxes or {})
        """VKN → e_invoice_address of the taxpayers registered for e-Fatura."""
        self.job_polls, self.pdf_polls = job_polls, pdf_polls
        self.money_as_strings = money_as_strings
        # Hooks.
        self.down = False
        self.job_errors: list[str] = []
        """When set, the next e-document job ends in ``error`` with these messages."""
        self._failures: list[tuple[str, str, int, bool]] = []
        # Records.
        self.requests: list[Request] = []
        self.grants: list[tuple[str, int]] = []
        self.issued_refresh_tokens: list[str] = []
        self.file_headers: list[dict[str, str]] = []
        # State.
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}
        self._arrivals: dict[str, deque[float]] = {}
        self._ids = iter(range(100, 10**9))
        self.contacts: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.documents: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, _Job] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._pdf_polls: dict[str, int] = {}
        # Server.
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # Lifecycle.

    def start(self) -> FakeParasut:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("the fake Paraşüt did not start")
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FakeParasut:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_route("*", "/v4/{company}/{path:.*}", self._api)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._ready.set()

    # Hooks and records for tests.

    def fail_next(self, method: str, path: str, status: int = 503, *, after: bool = False) -> None:
        """Answer ``status`` to the next ``method`` on ``path`` (relative to the company), before
        doing anything, or ``after`` doing it (an answer lost on the way back)."""
        self._failures.append((method, path, status, after))

    def expire_access_tokens(self) -> None:
        self._access = {t: (user, 0.0) for t, (user, _) in self._access.items()}

    def revoke_refresh_tokens(self) -> None:
        self._refresh.clear()

    def mutate_invoice(self, invoice_id: str, **attributes: Any) -> None:
        """Change what Paraşüt reports of an invoice, as someone editing it in Paraşüt would."""
        self._overrides.setdefault(invoice_id, {}).update(attributes)

    def finish_jobs(self) -> None:
        """Finish every running e-document job now, as Paraşüt does on its side whether or not
        anyone polls (a worker that died mid-job never polls again)."""
        for job in self.jobs.values():
            job.polls_left = 0
            if job.status in ("pending", "running") and not job.errors:
                self._complete(job)

    def _complete(self, job: _Job) -> None:
        job.status = "done"
        self.documents[job.document_id] = {"uuid": secrets.token_hex(16), "vkn": ""}
        self._pdf_polls[job.document_id] = self.pdf_polls
        self.invoices[job.invoice_id]["document"] = (job.kind, job.document_id)

    def posted(self, path: str) -> list[Any]:
        """Bodies of the POSTs to ``path`` (relative to the company)."""
        return [r.body for r in self.requests if r.method == "POST" and r.path == path]

    def invoice_count(self, series: str, sequence: int, item_type: str = "invoice") -> int:
        return sum(
            1
            for inv in self.invoices.values()
            if inv["attributes"]["invoice_series"] == series
            and inv["attributes"]["invoice_id"] == sequence
            and inv["attributes"]["item_type"] == item_type
        )

    @property
    def throttled(self) -> int:
        return sum(1 for r in self.requests if r.status == 429)

    def max_in_window(self) -> int:
        """The most API requests that arrived within any ``rate_window`` seconds."""
        times = sorted(r.at for r in self.requests)
        most, start = 0, 0
        for end, at in enumerate(times):
            while times[start] <= at - self.rate_window:
                start += 1
            most = max(most, end - start + 1)
        return most

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        return self._invoice_attributes(self.invoices[invoice_id])

    # OAuth2.

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        status, body = self._grant(grant, {k: str(v) for k, v in form.items()})
        self.grants.append((grant, status))
        return web.json_response(body, status=status)

    def _grant(self, grant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"error": "unavailable"}
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return 401, {
                "error": "invalid_client",
                "error_description": "Client authentication failed",
            }
        if grant == "password":
            user = form.get("username", "")
            if self.users.get(user) != form.get("password") or "password" not in form:
                return 400, {"error": "invalid_grant", "error_description": "Wrong credentials"}
            if form.get("redirect_uri") != "urn:ietf:wg:oauth:2.0:oob":
                return 400, {"error": "invalid_grant", "error_description": "Bad redirect_uri"}
        elif grant == "refresh_token":
            # A refresh token works once: the answer carries its successor.
            found = self._refresh.pop(form.get("refresh_token", ""), None)
            if found is None:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "The refresh token is invalid",
                }
            user = found
        else:
            return 400, {"error": "unsupported_grant_type"}
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self._access[access] = (user, self.clock() + self.access_ttl)
        self._refresh[refresh] = user
        self.issued_refresh_tokens.append(refresh)
        return 200, {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
            "created_at": int(time.time()),
        }

    # The API.

    async def _api(self, request: web.Request) -> web.Response:
        path = request.match_info["path"].strip("/")
        raw = await request.read()
        body = json.loads(raw, parse_float=Decimal) if raw else None
        record = Request(self.clock(), request.method, path, body=body)
        self.requests.append(record)
        response = self._answer(request, path, body, record)
        record.status = response.status
        return response

    def _answer(self, request: web.Request, path: str, body: Any, record: Request) -> web.Response:
        if self.down:
            return self._errors(503, "Service unavailable", title="Unavailable")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        user, expires = self._access.get(token, (None, 0.0))
        if user is None or expires <= self.clock():
            return self._errors(401, "The access token is invalid or expired", title="Unauthorized")
        record.user = user
        if request.match_info["company"] != self.company_id:
            return self._errors(403, "No access to this company", title="Forbidden")
        arrivals = self._arrivals.setdefault(user, deque())
        now = self.clock()
        while arrivals and arrivals[0] <= now - self.rate_window:
            arrivals.popleft()
        if len(arrivals) >= self.rate_limit:
            wait = math.ceil(arrivals[0] + self.rate_window - now)
            return self._errors(
                429,
                "Too many requests",
                title="Too Many Requests",
                headers={"Retry-After": str(max(wait, 1))},
            )
        arrivals.append(now)
        failure = next((f for f in self._failures if f[0] == request.method and f[1] == path), None)
        if failure is not None:
            self._failures.remove(failure)
            if not failure[3]:
                return self._errors(failure[2], "Injected failure", title="Injected")
        try:
            status, doc = self._route(request.method, path.split("/"), request.query, body)
        except _Refused as exc:
            return self._errors(exc.status, *exc.details, title=exc.title)
        if failure is not None:
            return self._errors(failure[2], "Injected failure after the work", title="Injected")
        if doc is None:
            return web.Response(status=status)
        return web.Response(status=status, body=self._dumps(doc), content_type=_JSONAPI)

    def _errors(
        self, status: int, *details: str, title: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        errors = [{"title": title, "detail": d} for d in details] or [{"title": title}]
        return web.Response(
            status=status,
            body=json.dumps({"errors": errors}),
            content_type=_JSONAPI,
            headers=headers,
        )

    def _dumps(self, doc: Any) -> str:
        def walk(value: Any) -> Any:
            if isinstance(value, Decimal):
                return f"\x00{value}\x00"
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        text = json.dumps(walk(doc), ensure_ascii=False)
        # Decimals go out as JSON numbers (or strings, as Rails sometimes sends them).
        quote = '"' if self.money_as_strings else ""
        return text.replace('"\\u0000', quote).replace('\\u0000"', quote)

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _route(self, method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
        match method, parts:
            case "POST", ["contacts"]:
                return 201, self._create_contact(body)
            case "GET", ["contacts"]:
                return 200, self._list(self.contacts, query, "contacts")
            case "GET", ["contacts", contact_id]:
                return 200, {"data": self._resource("contacts", contact_id, self.contacts)}
            case "POST", ["products"]:
                return 201, self._create_product(body)
            case "GET", ["products"]:
                return 200, self._list(self.products, query, "products")
            case "POST", ["sales_invoices"]:
                invoice_id = self._create_invoice(body)
                return 201, self._invoice_doc(invoice_id, "details")
            case "GET", ["sales_invoices"]:
                return 200, self._list_invoices(query)
            case "GET", ["sales_invoices", invoice_id]:
                self._need(self.invoices, invoice_id)
                return 200, self._invoice_doc(invoice_id, query.get("include", ""))
            case "POST", ["sales_invoices", invoice_id, "payments"]:
                return 201, self._pay(invoice_id, body)
            case "DELETE", ["sales_invoices", invoice_id, "cancel"]:
                self._need(self.invoices, invoice_id)
                self.invoices[invoice_id]["attributes"]["item_type"] = "cancelled"
                return 200, self._invoice_doc(invoice_id, "")
            case "GET", ["e_invoice_inboxes"]:
                vkn = query.get("filter[vkn]", "")
                found = [vkn] if vkn in self.inboxes else []
                return 200, {"data": [self._inbox(v) for v in found]}
            case "POST", ["e_invoices" | "e_archives" as kind]:
                return 201, self._issue(kind, body)
            case "GET", ["trackable_jobs", job_id]:
                return 200, self._poll(job_id)
            case "GET", ["e_invoices" | "e_archives" as kind, document_id, "pdf"]:
                return self._pdf(kind, document_id)
        raise _Refused(404, f"No route {method} /{'/'.join(parts)}", title="Not found")

    # Resources.

    @staticmethod
    def _need(store: dict[str, Any], resource_id: str) -> dict[str, Any]:
        if resource_id not in store:
            raise _Refused(404, f"Record {resource_id} not found", title="Not found")
        return store[resource_id]  # type: ignore[no-any-return]

    def _resource(self, kind: str, resource_id: str, store: dict[str, Any]) -> dict[str, Any]:
        record = self._need(store, resource_id)
        return {"id": resource_id, "type": kind, "attributes": dict(record["attributes"])}

    def _list(self, store: dict[str, Any], query: Any, kind: str) -> dict[str, Any]:
        filters = {k[7:-1]: v for k, v in query.items() if k.startswith("filter[")}
        data = [
            self._resource(kind, rid, store)
            for rid, record in store.items()
            if all(str(record["attributes"].get(k, "")) == v for k, v in filters.items())
        ]
        return {"data": data, "meta": {"total_count": len(data)}}

    @staticmethod
    def _payload(body: Any, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or data.get("type") != kind:
            raise _Refused(400, f"data.type must be {kind}", title="Bad request")
        if data.get("id"):
            raise _Refused(400, "data.id must be empty when creating", title="Bad request")
        return data.get("attributes") or {}, data.get("relationships") or {}

    def _create_contact(self, body: Any) -> dict[str, Any]:
        attributes, _ = self._payload(body, "contacts")
        missing = [k for k in ("name", "account_type") if not attributes.get(k)]
        if missing:
            raise _Refused(422, *(f"{k} can't be blank" for k in missing))
        if attributes["account_type"] not in ("customer", "supplier"):
            raise _Refused(422, "account_type is not included in the list")
        contact_id = self._new_id()
        self.contacts[contact_id] = {"attributes": dict(attributes)}
        return {"data": self._resource("contacts", contact_id, self.contacts)}

    def _create_product(self, body: Any) -> dict[str, Any]:
        attributes, _ = self._payload(body, "products")
        if not attributes.get("name"):
            raise _Refused(422, "name can't be blank")
        product_id = self._new_id()
        self.products[product_id] = {"attributes": dict(attributes)}
        return {"data": self._resource("products", product_id, self.products)}

    def _create_invoice(self, body: Any) -> str:
        attributes, relationships = self._payload(body, "sales_invoices")
        problems = [
            f"{k} can't be blank" for k in ("item_type", "issue_date") if not attributes.get(k)
        ]
        if attributes.get("item_type") and attributes["item_type"] not in _ITEM_TYPES:
            problems.append("item_type is not included in the list")
        currency = attributes.get("currency", "TRL")
        if currency not in _CURRENCIES:
            problems.append(f"currency {currency} is not included in the list (TRL, USD, EUR, GBP)")
        if "invoice_id" in attributes and not isinstance(attributes["invoice_id"], int):
            problems.append("invoice_id must be an integer")
        if attributes.get("invoice_discount_type") not in (None, "amount", "percentage"):
            problems.append("invoice_discount_type is not included in the list")
        contact = ((relationships.get("contact") or {}).get("data") or {}).get("id")
        if contact not in self.contacts:
            problems.append("contact must exist")
        details = []
        for n, item in enumerate((relationships.get("details") or {}).get("data") or []):
            detail = dict(item.get("attributes") or {})
            for key in ("quantity", "unit_price", "vat_rate"):
                if not isinstance(detail.get(key), int | Decimal):
                    problems.append(f"details[{n}].{key} can't be blank")
            if isinstance(detail.get("unit_price"), int | Decimal) and detail["unit_price"] < 0:
                problems.append(f"details[{n}].unit_price must be greater than or equal to 0")
            product = (
                ((item.get("relationships") or {}).get("product") or {}).get("data") or {}
            ).get("id")
            if product not in self.products:
                problems.append(f"details[{n}].product must exist")
            details.append(detail)
        if not details:
            problems.append("details can't be blank")
        if problems:
            raise _Refused(422, *problems)
        invoice_id = self._new_id()
        self.invoices[invoice_id] = {
            "attributes": {"currency": currency, **attributes},
            "contact": contact,
            "details": [(self._new_id(), d) for d in details],
            "payments": [],
            "document": None,
        }
        self._invoice_attributes(self.invoices[invoice_id])  # refuses a discount above the net
        return invoice_id

    def _invoice_attributes(self, invoice: dict[str, Any]) -> dict[str, Any]:
        attributes = dict(invoice["attributes"])
        nets = [
            _cents(Decimal(d["quantity"]) * Decimal(d["unit_price"])) for _, d in invoice["details"]
        ]
        base = sum(nets, Decimal(0))
        value = Decimal(attributes.get("invoice_discount") or 0)
        kind = attributes.get("invoice_discount_type")
        discount = (
            _cents(base * value / 100) if kind == "percentage" else value if kind else Decimal(0)
        )
        if discount < 0 or discount > base:
            raise _Refused(422, "invoice_discount must be between 0 and the invoice's total")
        shares = [_cents(discount * n / base) if base else Decimal(0) for n in nets[:-1]]
        shares.append(discount - sum(shares, Decimal(0)))
        vat = sum(
            (
                _cents((n - s) * Decimal(d["vat_rate"]) / 100)
                for n, s, (_, d) in zip(nets, shares, invoice["details"], strict=True)
            ),
            Decimal(0),
        )
        total = base - discount + vat
        paid = sum((Decimal(p["amount"]) for p in invoice["payments"]), Decimal(0))
        rate = Decimal(attributes.get("exchange_rate") or 1)
        attributes |= {
            "gross_total": base,
            "total_discount": discount,
            "total_invoice_discount": discount,
            "before_taxes_total": base - discount,
            "total_vat": vat,
            "net_total": total,
            "remaining": total - paid,
            "remaining_in_trl": _cents((total - paid) * rate),
            "payment_status": "paid" if paid >= total else "partially_paid" if paid else "unpaid",
            "archived": False,
            "invoice_no": f"{attributes.get('invoice_series', '')}{attributes.get('invoice_id', '')}",
        }
        for key, override in self._overrides.get(self._id_of(invoice), {}).items():
            attributes[key] = override
        return attributes

    def _id_of(self, invoice: dict[str, Any]) -> str:
        return next(k for k, v in self.invoices.items() if v is invoice)

    def _invoice_doc(self, invoice_id: str, include: str) -> dict[str, Any]:
        invoice = self.invoices[invoice_id]
        document = invoice["document"]
        resource = {
            "id": invoice_id,
            "type": "sales_invoices",
            "attributes": self._invoice_attributes(invoice),
            "relationships": {
                "contact": {"data": {"type": "contacts", "id": invoice["contact"]}},
                "details": {
                    "data": [
                        {"type": "sales_invoice_details", "id": i} for i, _ in invoice["details"]
                    ]
                },
                "active_e_document": {
                    "data": {"type": document[0], "id": document[1]} if document else None
                },
            },
        }
        included: list[dict[str, Any]] = []
        wanted = {part.strip() for part in include.split(",") if part.strip()}
        if "details" in wanted:
            included += [
                {"id": i, "type": "sales_invoice_details", "attributes": d}
                for i, d in invoice["details"]
            ]
        if "contact" in wanted:
            included.append(self._resource("contacts", invoice["contact"], self.contacts))
        if "active_e_document" in wanted and document:
            included.append(
                {"id": document[1], "type": document[0], "attributes": self.documents[document[1]]}
            )
        return {"data": resource, "included": included}

    def _list_invoices(self, query: Any) -> dict[str, Any]:
        filters = {k[7:-1]: v for k, v in query.items() if k.startswith("filter[")}
        kinds = filters.pop("item_type", "invoice,refund,estimate").split(",")
        docs = []
        for invoice_id, invoice in self.invoices.items():
            attributes = self._invoice_attributes(invoice)
            if attributes["item_type"] not in [k.strip() for k in kinds]:
                continue
            if all(str(attributes.get(k, "")) == v for k, v in filters.items()):
                docs.append(self._invoice_doc(invoice_id, query.get("include", "")))
        return {
            "data": [d["data"] for d in docs],
            "included": [i for d in docs for i in d["included"]],
        }

    def _pay(self, invoice_id: str, body: Any) -> dict[str, Any]:
        invoice = self._need(self.invoices, invoice_id)
        attributes, _ = self._payload(body, "payments")
        missing = [k for k in ("account_id", "date", "amount") if attributes.get(k) in (None, "")]
        if missing:
            raise _Refused(422, *(f"{k} can't be blank" for k in missing))
        payment_id = self._new_id()
        invoice["payments"].append(dict(attributes))
        return {"data": {"id": payment_id, "type": "payments", "attributes": attributes}}

    # e-documents.

    def _inbox(self, vkn: str) -> dict[str, Any]:
        return {
            "id": f"inbox-{vkn}",
            "type": "e_invoice_inboxes",
            "attributes": {
                "vkn": vkn,
                "e_invoice_address": self.inboxes[vkn],
                "name": "Alıcı A.Ş.",
                "inbox_type": "PK",
                "registered_at": "2020-01-01T00:00:00Z",
            },
        }

    def _issue(self, kind: str, body: Any) -> dict[str, Any]:
        attributes, relationships = self._payload(body, kind)
        relation = "invoice" if kind == "e_invoices" else "sales_invoice"
        target = ((relationships.get(relation) or {}).get("data") or {}).get("id")
        if target not in self.invoices:
            raise _Refused(422, f"relationships.{relation} must point at a sales invoice")
        invoice = self.invoices[target]
        if invoice["document"] is not None or any(
            j.invoice_id == target and j.status in ("pending", "running")
            for j in self.jobs.values()
        ):
            raise _Refused(422, "This invoice is already formalised or being formalised")
        vkn = str(invoice["attributes"].get("tax_number") or "")
        if kind == "e_invoices":
            if attributes.get("scenario") not in ("basic", "commercial"):
                raise _Refused(422, "scenario is not included in the list")
            if vkn not in self.inboxes or attributes.get("to") != self.inboxes[vkn]:
                raise _Refused(422, "to must be the recipient's e-invoice address")
        else:
            if vkn in self.inboxes:
                raise _Refused(422, "The recipient uses e-Fatura: issue an e-invoice")
            sale = attributes.get("internet_sale")
            if sale is not None and (
                not sale.get("url") or sale.get("payment_type") not in _PAYMENT_TYPES
            ):
                raise _Refused(422, "internet_sale needs url and a valid payment_type")
        job_id = secrets.token_hex(8)
        errors, self.job_errors = self.job_errors, []
        self.jobs[job_id] = _Job(kind, target, self._new_id(), self.clock(), self.job_polls, errors)
        return {
            "data": {
                "id": job_id,
                "type": "trackable_jobs",
                "attributes": {"status": "pending", "errors": []},
            }
        }

    def _poll(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or self.clock() - job.created > _JOB_TTL:
            raise _Refused(404, "Job not found", title="Not found")
        if job.status in ("pending", "running"):
            if job.polls_left > 0:
                job.polls_left -= 1
                job.status = "running"
            elif job.errors:
                job.status = "error"
            else:
                self._complete(job)
        errors = job.errors if job.status == "error" else []
        return {
            "data": {
                "id": job_id,
                "type": "trackable_jobs",
                "attributes": {"status": job.status, "errors": errors},
            }
        }

    def _pdf(self, kind: str, document_id: str) -> tuple[int, Any]:
        if document_id not in self.documents or not any(
            inv["document"] == (kind, document_id) for inv in self.invoices.values()
        ):
            raise _Refused(404, "e-document not found", title="Not found")
        if self._pdf_polls[document_id] > 0:
            self._pdf_polls[document_id] -= 1
            return 204, None
        return 200, {
            "data": {
                "id": document_id,
                "type": "e_document_pdfs",
                "attributes": {
                    "url": f"{self.url}/files/{document_id}.pdf",
                    "expires_at": "2026-12-01T00:00:00Z",
                },
            }
        }

    async def _file(self, request: web.Request) -> web.Response:
        self.file_headers.append(dict(request.headers))
        return web.Response(body=PDF_BYTES, content_type="application/pdf")
