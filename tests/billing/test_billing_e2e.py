"""A month of known usage, closed and invoiced end to end: customers on each plan type in the US,
the EU and Turkey; invoices with the expected totals, taxes and exchange rate, sent to the right
provider once each, with Stripe down for part of the run and a worker SIGKILLed mid-job; then
reconciliation catches a total changed at the provider and corrects it with a credit note, and
the ledger verifies.

The worker is the real ``hoodrun worker`` (subprocesses); the providers are the fakes of Stripe's
and Paraşüt's documented APIs; TCMB is a local server answering bulletins in TCMB's format.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from sqlalchemy import insert, select

from hoodrun.billing.ledger import Ledger
from hoodrun.billing.service import Billing
from hoodrun.config import Config, load_config
from hoodrun.jobs import JobQueue
from hoodrun.metering.money import Money, round_line
from hoodrun.metering.store import ContractBook, CreditBook
from hoodrun.ops.alerts import AlertBook
from hoodrun.store import Store
from hoodrun.store.tables import billing_accounts, invoices, orgs, reconciliations
from hoodrun.telemetry.store import ChdbStore
from tests._stores import FakeClock
from tests.billing.fake_parasut import CLIENT_SECRET, USER_PASSWORD, FakeParasut
from tests.billing.fake_stripe import API_KEY, FakeStripe
from tests.billing.test_close import RETENTION, hourly

pytest_plugins = ["tests.billing.stripe_servers"]

ROOT = Path(__file__).resolve().parents[2]
FX_FIXTURE = Path(__file__).parent / "fixtures" / "fx" / "tcmb" / "27112026.xml"
USD_TRY = D("50.3957")  # ForexBuying of USD in the bulletin served for every business day
OCT = datetime(2026, 10, 1, tzinfo=UTC)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = 120.0

PLANS = [
    {"name": "free", "rate": {"rps": 10}},
    {"name": "basic", "rate": {"rps": 10}, "price": {"type": "FIXED", "fee": "49"}},
    {
        "name": "metered",
        "rate": {"rps": 10},
        "price": {
            "type": "METERED",
            "meter": "requests",
            "tiers": [{"up_to": 1000, "unit_price": "0.01"}, {"unit_price": "0.005"}],
        },
    },
    {
        "name": "hybrid",
        "rate": {"rps": 10},
        "price": {
            "type": "HYBRID",
            "fee": "100",
            "meter": "requests",
            "included": 1000,
            "tiers": [{"unit_price": "0.02"}],
        },
    },
]
TAXES = {
    "TR": {"name": "KDV", "rate": "0.20"},
    "DE": {"name": "VAT", "rate": "0.19", "reverse_charge_b2b": True},
    "FR": {"name": "TVA", "rate": "0.20", "reverse_charge_b2b": True},
}
# (org, plan, country, tax id, business, October's requests)
CUSTOMERS = [
    ("org_us_basic", "basic", "US", None, True, 300),
    ("org_us_metered", "metered", "US", None, True, 1500),
    ("org_us_hybrid", "hybrid", "US", None, True, 3000),
    ("org_de_basic", "basic", "DE", "DE123456789", True, 10),
    ("org_fr_metered", "metered", "FR", None, False, 800),
    ("org_de_hybrid", "hybrid", "DE", "DE987654321", True, 1200),
    ("org_tr_basic", "basic", "TR", "1234567890", True, 50),
    ("org_tr_metered", "metered", "TR", "2345678901", True, 2000),
    ("org_tr_hybrid", "hybrid", "TR", "3456789012", True, 1100),
]
# What each invoice must total before credits (subtotal, tax), in USD, as the price says.
EXPECTED_USD = {
    "org_us_basic": (D("49.00"), D(0)),
    "org_us_metered": (D("12.50"), D(0)),  # 1000 x 0.01 + 500 x 0.005
    "org_us_hybrid": (D("140.00"), D(0)),  # 100 + 2000 x 0.02
    "org_de_basic": (D("49.00"), D(0)),  # business with a VAT id: reverse charge
    "org_fr_metered": (D("8.00"), D("1.60")),  # a consumer: 20% TVA
    "org_de_hybrid": (D("104.00"), D(0)),
    "org_tr_basic": (D("49.00"), None),  # converted to TL, KDV per line
    "org_tr_metered": (D("15.00"), None),
    "org_tr_hybrid": (D("102.00"), None),
}
CREDIT = Money.of("20.00", "USD")  # prepaid credit of org_us_hybrid


class _Tcmb(BaseHTTPRequestHandler):
    """TCMB's archive: the same rates on every business day, dated as asked; 404 at weekends."""

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if name == "today.xml":
            day = datetime.now(UTC).date()
            while day.weekday() >= 5:
                day -= timedelta(days=1)
        else:
            try:
                day = datetime.strptime(name.removesuffix(".xml") + "+0000", "%d%m%Y%z").date()
            except ValueError:
                day = date(1, 1, 1)
        if day.year < 2000 or day.weekday() >= 5:
            self.send_response(404)
            self.end_headers()
            return
        body = (
            FX_FIXTURE.read_bytes()
            .replace(b'Tarih="27.11.2026"', f'Tarih="{day:%d.%m.%Y}"'.encode())
            .replace(b'Date="11/27/2026"', f'Date="{day:%m/%d/%Y}"'.encode())
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tcmb() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tcmb)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/kurlar"
    server.shutdown()
    server.server_close()


@pytest.fixture
def parasut() -> Iterator[FakeParasut]:
    # An e-document job runs until the test lets it finish: the worker is killed meanwhile.
    with FakeParasut(job_polls=10**9) as fake:
        yield fake


@pytest.fixture
async def analytics(chdb_path: Path) -> AsyncIterator[ChdbStore]:
    store = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    await store.setup(RETENTION)
    yield store
    await store.drop()
    await store.aclose()


def _config_file(
    tmp_path: Path, database_url: str, stripe: FakeStripe, parasut: FakeParasut, tcmb: str
) -> Path:
    raw = {
        "data_dir": str(tmp_path / "data"),
        "database_url": database_url,
        "log_format": "text",
        "telemetry": {"enabled": False},
        "plans": PLANS,
        "taxes": TAXES,
        "billing": {
            "issuer": {"name": "Node Operator Ltd", "country": "TR"},
            "stripe": {"enabled": True, "api_base": stripe.url, "api_key": API_KEY},
            "parasut": {
                "enabled": True,
                "base_url": parasut.url,
                "company_id": parasut.company_id,
                "client_id": parasut.client_id,
                "client_secret": CLIENT_SECRET,
                "username": next(iter(parasut.users)),
                "password": USER_PASSWORD,
                "poll_interval": 0.05,
                "job_timeout": 600,
            },
            "fx": {"tcmb_url": tcmb},
            "jobs": {"lease": 2, "backoff_base": 0.2, "poll_interval": 0.1},
        },
    }
    path = tmp_path / "hoodrun.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _worker(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hoodrun", "-c", str(config), "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _burst(config: Path) -> str:
    process = _worker(config, "--burst")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    return out


async def _run_job(config: Path, queue: JobQueue, job_id: str) -> None:
    """Burst the worker until the job ran (a scheduled reconciliation of a new hour may hold it
    back for a retry: two never run at once)."""

    async def ran() -> bool:
        _burst(config)
        job = await queue.get(job_id)
        return job is not None and job.status in ("done", "dead")

    await _wait_for(f"job {job_id} run", ran)


async def _invoices(store: Store) -> dict[str, dict[str, object]]:
    async with store.connect() as conn:
        rows = (await conn.execute(select(invoices))).mappings().all()
    return {row["org_id"]: dict(row) for row in rows}


async def _setup(store: Store, config: Config, analytics: ChdbStore) -> None:
    contracts = ContractBook(store, config, clock=FakeClock(SINCE))
    async with store.transaction() as conn:
        for org, *_ in CUSTOMERS:
            await conn.execute(insert(orgs).values(id=org, name=org, created_at=SINCE))
    for org, plan, country, tax_id, business, _ in CUSTOMERS:
        await contracts.create(
            org, plan, country=country, tax_id=tax_id, business=business, starts_at=SINCE
        )
    async with store.transaction() as conn:
        for org, *_ in CUSTOMERS:
            if org.startswith("org_tr"):
                await conn.execute(
                    insert(billing_accounts).values(
                        org_id=org,
                        legal_name=f"{org} Bilişim A.Ş.",
                        email=f"{org}@example.com",
                        address="Moda Cad. 1",
                        city="İstanbul",
                        district="Kadıköy",
                        tax_office="Kadıköy",
                        updated_at=SINCE,
                    )
                )
    await CreditBook(store, clock=FakeClock(SINCE)).grant("org_us_hybrid", "prepaid", CREDIT)
    # October's usage, split over two days and two chains; failures and refusals bill nothing.
    rows = []
    for org, _, _, _, _, requests in CUSTOMERS:
        first = requests // 2
        rows.append((OCT + timedelta(days=3, hours=5), org, "eth", "eth_call", "ok", first, 0))
        rows.append(
            (OCT + timedelta(days=20), org, "base", "eth_getLogs", "rpc_error", requests - first, 0)
        )
        rows.append((OCT + timedelta(days=9), org, "eth", "eth_call", "upstream_error", 77, 0))
        rows.append((OCT + timedelta(days=9), org, "eth", "eth_call", "rate_limited", 55, 0))
    await hourly(analytics, rows)


def _try(amount: D) -> D:
    return round_line(amount * USD_TRY, "TRY")


async def _wait_for(what: str, check: object, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()  # type: ignore[operator]
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)  # polling a subprocess and the fakes, not waiting for time to pass


async def test_a_month_is_invoiced_once_each_despite_outages_and_a_killed_worker(
    database_url: str,
    tmp_path: Path,
    analytics: ChdbStore,
    fake_stripe: FakeStripe,
    parasut: FakeParasut,
    tcmb: str,
) -> None:
    config_path = _config_file(tmp_path, database_url, fake_stripe, parasut, tcmb)
    config = load_config(config_path)
    async with Store(database_url) as store:
        await _setup(store, config, analytics)
        # The close runs where the analytics store is (here); the worker sends the invoices.
        queue = JobQueue(store)
        billing = Billing(
            config,
            store,
            queue,
            analytics=analytics,
            clock=FakeClock(datetime(2026, 11, 2, 3, tzinfo=UTC)),
        )
        summary = await billing.close_period("2026-10")
        await billing.aclose()
        assert summary["closed"] == len(CUSTOMERS) and summary["invoices_enqueued"] == 9

        # Both providers down: every invoice is made, none is sent, each waits as pending.
        fake_stripe.down()
        parasut.down = True
        _burst(config_path)
        waiting = await _invoices(store)
        assert len(waiting) == 9
        assert {i["status"] for i in waiting.values()} == {"pending"}
        assert all("unreachable" in str(i["last_error"]) for i in waiting.values())
        assert fake_stripe.invoices == {} and parasut.invoices == {}

        # Paraşüt back, its e-documents taking their time; Stripe still down. The worker is
        # killed while an e-document is being issued.
        parasut.down = False
        worker = _worker(config_path)
        try:

            async def issuing() -> bool:
                return bool(parasut.jobs)

            await _wait_for("a Paraşüt e-document job", issuing)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        before = await _invoices(store)
        assert all(before[org]["status"] == "pending" for org, *_ in CUSTOMERS if org[4:6] != "tr")

        # Both providers back; Paraşüt finishes the job the dead worker started. Jobs whose
        # attempts ran out during the outage are retried from the command line.
        fake_stripe.up()
        parasut.finish_jobs()
        parasut.job_polls = 1

        async def all_sent() -> bool:
            retry = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hoodrun",
                    "-c",
                    str(config_path),
                    "jobs",
                    "retry",
                    "--dead",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert retry.returncode == 0, retry.stderr
            _burst(config_path)
            listed = await _invoices(store)
            return all(i["status"] in ("open", "paid") for i in listed.values())

        await _wait_for("every invoice sent", all_sent)

        listed = await _invoices(store)
        for org, _plan, country, _tax_id, _business, _ in CUSTOMERS:
            invoice = listed[org]
            subtotal, tax = EXPECTED_USD[org]
            if country == "TR":
                assert invoice["provider"] == "parasut"
                assert invoice["currency"] == "TRY"
                assert invoice["original_currency"] == "USD"
                assert invoice["fx_rate"] == USD_TRY and invoice["fx_source"] == "tcmb"
                assert invoice["original_total"] == subtotal * D("1.2")
                converted = invoice["subtotal"]
                assert abs(converted - _try(subtotal)) <= D("0.02")  # lines rounded one by one
                assert invoice["tax"] == round_line(converted * D("0.20"), "TRY") or abs(
                    invoice["tax"] - converted * D("0.20")
                ) <= D("0.05")
                assert invoice["total"] == invoice["subtotal"] + invoice["tax"]
                series, sequence = str(invoice["number"]).rsplit("-", 1)
                assert parasut.invoice_count(series, int(sequence)) == 1
                remote = parasut.invoice(str(invoice["provider_id"]))
                assert D(str(remote["net_total"])) == invoice["total"]
            else:
                assert invoice["provider"] == "stripe"
                assert invoice["currency"] == "USD"
                assert (invoice["subtotal"], invoice["tax"]) == (subtotal, tax)
                credits = CREDIT.amount if org == "org_us_hybrid" else D(0)
                assert invoice["credits"] == credits
                assert invoice["total"] == subtotal + tax - credits
                made = fake_stripe.invoices_for(str(invoice["number"]))
                assert len(made) == 1, f"{invoice['number']} made {len(made)} times at Stripe"
                assert made[0]["amount_due"] == int((subtotal + tax - credits) * 100)
            assert invoice["provider_total"] == invoice["total"]

        # Payments: Stripe's customers have no card on file (send_invoice): still open.
        # Reconciliation: all match; then someone adds 5.00 USD at Stripe behind our back.
        hybrid = listed["org_us_hybrid"]
        fake_stripe.adjust(str(hybrid["provider_id"]), 500, "Manual adjustment")
        reconcile = await queue.enqueue("reconcile", {"run": "after-adjust"})
        await _run_job(config_path, queue, reconcile.id)
        done = await queue.get(reconcile.id)
        assert done is not None and done.status == "done", done
        assert done.result is not None and done.result["checked"] == 9
        assert [m["invoice"] for m in done.result["mismatched"]] == [hybrid["number"]]
        assert len(done.result["credit_notes"]) == 1
        firing = [a for a in await AlertBook(store).active() if a.name == "HoodRunBillingMismatch"]
        assert [a.labels["invoice"] for a in firing] == [hybrid["number"]]

        again = await queue.enqueue("reconcile", {"run": "after-credit-note"})
        await _run_job(config_path, queue, again.id)
        second = await queue.get(again.id)
        assert second is not None and second.result is not None
        assert second.result["matched"] == 9, second.result
        assert second.result["mismatched"] == []
        assert not [
            a for a in await AlertBook(store).active() if a.name == "HoodRunBillingMismatch"
        ]
        async with store.connect() as conn:
            checks = (await conn.execute(select(reconciliations))).mappings().all()
        assert sum(1 for c in checks if not c["matched"]) == 1

        # The ledger holds every issue, the credit spend and the credit note, and verifies.
        ledger = Ledger(store)
        entries = await ledger.entries()
        kinds = [e.kind for e in entries]
        assert kinds.count("invoice.issued") == 9
        assert kinds.count("credit_note.issued") == 1
        assert kinds.count("credits.granted") == 1 and kinds.count("credits.consumed") == 1
        assert (await ledger.verify()).ok
