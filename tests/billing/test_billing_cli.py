"""``hoodrun billing`` invoices, show, document, refund, account and verify-snapshots, run as real
processes against a SQLite database migrated by ``hoodrun db upgrade``; the invoices are made in
process from closing snapshots."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, update

from hoodrun.billing.close import snapshot_hash
from hoodrun.billing.invoices import Invoice, InvoiceBook
from hoodrun.config import Config, load_config
from hoodrun.jobs import JobQueue
from hoodrun.metering.money import Money
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import billing_accounts, closing_snapshots
from tests.billing.test_invoices import make_org, make_snapshot

HOODRUN = [sys.executable, "-m", "hoodrun"]
ISSUER = "HoodRun Test Issuer Ltd."


def _hoodrun(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOODRUN, "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(config.parent)},
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def _refused(result: subprocess.CompletedProcess[str], message: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    error = result.stderr.strip()
    assert error.startswith("error: ") and "\n" not in error and message in error, error
    assert "Traceback" not in result.stderr
    return error


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated by ``hoodrun db upgrade``, once for the module."""
    path = tmp_path_factory.mktemp("billing-cli") / "template.db"
    config = _write_config(path.parent / "hoodrun.yaml", path)
    _ok(_hoodrun(config, "db", "upgrade"))
    return path


def _write_config(path: Path, database: Path) -> Path:
    settings = {
        "database_url": f"sqlite:///{database}",
        "data_dir": str(path.parent / "data"),
        "billing": {"issuer": {"name": ISSUER, "email": "billing@hoodrun.example"}},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@dataclass
class Setup:
    config_path: Path
    config: Config
    url: str
    database: Path
    org: str
    paid: Invoice
    draft: Invoice

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _hoodrun(self.config_path, "billing", *args)


async def _invoices(url: str, config: Config) -> tuple[str, Invoice, Invoice]:
    """An org with a paid November invoice (54.13 USD) and a draft October one, their snapshots
    hashed as a close hashes them."""
    async with Store(url) as store:
        org = await make_org(store, "Acme Chains")
        book = InvoiceBook(store, config)
        made = []
        for period in ("2026-10", "2026-11"):
            snapshot = await make_snapshot(store, org, period=period)
            await _rehash(store, snapshot)
            made.append(await book.create_from_snapshot(snapshot, provider="stripe"))
        draft, invoice = made
        await book.mark_sent(invoice.id, "in_cli_1", "open", invoice.total)
        paid = await book.mark_paid(invoice.id)
        return org, paid, draft


async def _rehash(store: Store, snapshot_id: str) -> None:
    # make_snapshot leaves a placeholder hash; SQLite has no trigger keeping rows as written.
    async with store.transaction() as conn:
        where = closing_snapshots.c.id == snapshot_id
        row = (await conn.execute(select(closing_snapshots).where(where))).mappings().one()
        await conn.execute(
            update(closing_snapshots).where(where).values(content_hash=snapshot_hash(dict(row)))
        )


@pytest.fixture
def setup(template: Path, tmp_path: Path) -> Setup:
    database = tmp_path / "hoodrun.db"
    shutil.copyfile(template, database)
    config_path = _write_config(tmp_path / "hoodrun.yaml", database)
    config = load_config(config_path, env={})
    url = f"sqlite:///{database}"
    org, paid, draft = asyncio.run(_invoices(url, config))
    return Setup(config_path, config, url, database, org, paid, draft)


def test_invoices_lists_them_as_json_and_as_a_table(setup: Setup) -> None:
    listed = json.loads(_ok(setup.run("invoices", "--json")).stdout)["invoices"]
    assert [(i["number"], i["status"], i["period"]) for i in listed] == [
        ("HR-2026-000002", "paid", "2026-11"),
        ("HR-2026-000001", "draft", "2026-10"),
    ]
    paid = listed[0]
    assert paid["id"] == setup.paid.id and paid["org_id"] == setup.org
    assert paid["total"] == {"amount": "54.13", "currency": "USD"}
    assert (paid["provider"], paid["provider_id"]) == ("stripe", "in_cli_1")

    only = json.loads(_ok(setup.run("invoices", "--status", "paid", "--json")).stdout)
    assert [i["number"] for i in only["invoices"]] == ["HR-2026-000002"]
    october = json.loads(_ok(setup.run("invoices", "--period", "2026-10", "--json")).stdout)
    assert [i["number"] for i in october["invoices"]] == ["HR-2026-000001"]
    one = json.loads(
        _ok(setup.run("invoices", "--limit", "1", "--org", setup.org, "--json")).stdout
    )
    assert len(one["invoices"]) == 1

    table = _ok(setup.run("invoices")).stdout
    for text in ("HR-2026-000002", setup.org, "2026-11", "paid", "54.13 USD", "in_cli_1"):
        assert text in table
    assert "No invoices." in _ok(setup.run("invoices", "--org", "org_nobody")).stderr
    _refused(setup.run("invoices", "--status", "settled"), "unknown status 'settled'")
    _refused(setup.run("invoices", "--period", "2026-13"), "a month written YYYY-MM")


def test_show_by_number_or_id(setup: Setup) -> None:
    shown = json.loads(_ok(setup.run("show", setup.paid.number, "--json")).stdout)
    assert shown["id"] == setup.paid.id and shown["status"] == "paid"
    assert [line["kind"] for line in shown["lines"]] == ["fee", "usage", "discount", "tax"]
    assert shown["lines"][1]["unit_price"] == {"amount": "0.45", "currency": "USD"}
    assert shown["lines"][1]["per"] == "1000000"
    assert shown["subtotal"]["amount"] == "45.11" and shown["tax"]["amount"] == "9.02"
    assert shown["total"] == {"amount": "54.13", "currency": "USD"}
    assert shown["conversion"] is None and shown["paid_at"].endswith("+00:00")
    assert shown["provider_total"] == {"amount": "54.13", "currency": "USD"}
    assert shown["refunds"] == [] and shown["credit_notes"] == []
    by_id = json.loads(_ok(setup.run("show", setup.paid.id, "--json")).stdout)
    assert by_id == shown

    text = _ok(setup.run("show", setup.paid.id)).stdout
    for part in ("HR-2026-000002", "plan fee (pro)", "-5.01 USD", "54.13 USD", "in_cli_1"):
        assert part in text
    _refused(setup.run("show", "HR-2026-999999"), "no invoice numbered 'HR-2026-999999'")


def test_document_as_html_and_pdf(setup: Setup, tmp_path: Path) -> None:
    html = tmp_path / "out" / "invoice.html"
    html.parent.mkdir()
    done = _ok(setup.run("document", setup.paid.number, "--out", str(html)))
    assert "Wrote invoice HR-2026-000002 (HTML)" in done.stderr
    page = html.read_text()
    assert "HR-2026-000002" in page and ISSUER in page and "Acme Chains" in page
    assert "54.13 USD" in page

    pdf = tmp_path / "out" / "invoice.PDF"
    _ok(setup.run("document", setup.paid.id, "--out", str(pdf)))
    assert pdf.read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in pdf.parent.iterdir()) == ["invoice.PDF", "invoice.html"]

    _refused(
        setup.run("document", setup.paid.id, "--out", str(tmp_path / "x.txt")), ".html or .pdf"
    )
    _refused(setup.run("document", "inv_nope", "--out", str(html)), "no invoice")
    missing = tmp_path / "no-such-dir" / "invoice.pdf"
    _refused(setup.run("document", setup.paid.id, "--out", str(missing)), "cannot write")


def test_refund_enqueues_its_job_and_too_much_is_refused(setup: Setup) -> None:
    done = _ok(setup.run("refund", setup.paid.number, "--amount", "12.34", "--reason", "outage"))
    job_id = done.stdout.strip()
    assert job_id.startswith("job_") and "Recorded refund rf_" in done.stderr

    async def check() -> None:
        async with Store(setup.url) as store:
            [refund] = await InvoiceBook(store, setup.config).refunds(setup.paid.id)
            assert refund.amount == Money.of("12.34", "USD") and refund.reason == "outage"
            job = await JobQueue(store).get(job_id)
            assert job is not None and job.kind == "refund-process"
            assert job.payload == {"refund_id": refund.id}
            assert job.idempotency_key == f"refund-process:{refund.id}"
            async with store.connect() as conn:
                audit = await read_audit(conn, target_id=setup.paid.id)
            assert audit[0].action == "refund.create" and audit[0].actor.startswith("cli")

    asyncio.run(check())
    listed = json.loads(_ok(_hoodrun(setup.config_path, "jobs", "list", "--json")).stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id]

    # 12.34 refunded already: 41.80 more would exceed the 54.13 total.
    error = _refused(
        setup.run("refund", setup.paid.id, "--amount", "41.80", "--reason", "outage"),
        "refund refused: refunds of invoice HR-2026-000002 would come to 54.14 USD",
    )
    assert "more than its total of 54.13 USD" in error
    _refused(
        setup.run("refund", setup.draft.number, "--amount", "1", "--reason", "x"),
        "refund refused: invoice HR-2026-000001 is draft: a refund needs it paid",
    )
    _refused(
        setup.run("refund", setup.paid.id, "--amount", "ten", "--reason", "x"),
        "refund refused: amount 'ten' is not a number",
    )
    _refused(setup.run("refund", "HR-2026-000404", "--amount", "1", "--reason", "x"), "no invoice")
    shown = json.loads(_ok(setup.run("show", setup.paid.id, "--json")).stdout)
    assert [r["amount"]["amount"] for r in shown["refunds"]] == ["12.34"]


def test_account_upsert_with_audit(setup: Setup) -> None:
    made = setup.run(
        "account", setup.org, "--email", "ap@acme.example", "--city", "İzmir", "--json"
    )
    body = json.loads(_ok(made).stdout)
    assert body["account"]["legal_name"] == "Acme Chains"  # the org's name until set
    assert body["account"]["email"] == "ap@acme.example" and body["account"]["city"] == "İzmir"
    assert "Created the billing account" in made.stderr

    changed = setup.run(
        "account", setup.org,
        "--legal-name", "Acme Zincir A.Ş.", "--address", "Kordon 1", "--district", "Konak",
        "--tax-office", "Konak", "--email", "ap@acme.example",
    )  # fmt: skip
    assert "Updated the billing account" in _ok(changed).stderr
    assert "Acme Zincir A.Ş." in changed.stdout
    again = _ok(setup.run("account", setup.org, "--district", "Konak"))
    assert "unchanged" in again.stderr

    async def check() -> None:
        async with Store(setup.url) as store:
            async with store.connect() as conn:
                row = (await conn.execute(select(billing_accounts))).mappings().one()
                audit = await read_audit(conn, target_id=setup.org)
            account = await InvoiceBook(store, setup.config).account(setup.org)
        assert row["org_id"] == setup.org and account is not None
        assert (account.legal_name, account.email, account.address) == (
            "Acme Zincir A.Ş.",
            "ap@acme.example",
            "Kordon 1",
        )
        assert (account.city, account.district, account.tax_office) == ("İzmir", "Konak", "Konak")
        assert [e.action for e in audit] == ["billing_account.update", "billing_account.create"]
        changes = audit[0].details["changes"]
        assert set(changes) == {"legal_name", "address", "district", "tax_office"}
        assert changes["legal_name"] == {"from": "Acme Chains", "to": "Acme Zincir A.Ş."}

    asyncio.run(check())
    # The invoice document is addressed to the account now.
    page = setup.config_path.parent / "invoice.html"
    _ok(setup.run("document", setup.paid.number, "--out", str(page)))
    assert "Acme Zincir A.Ş." in page.read_text() and "Kordon 1" in page.read_text()

    _refused(setup.run("account", "org_nobody", "--city", "X"), "no org 'org_nobody'")
    _refused(setup.run("account", setup.org), "nothing to set")
    _refused(setup.run("account", setup.org, "--email", "not-an-email"), "not an email address")
    _refused(setup.run("account", setup.org, "--city", "x" * 65), "at most 64 characters")


def test_verify_snapshots_finds_a_row_changed_behind_its_back(setup: Setup) -> None:
    assert "2 closing snapshot(s) match" in _ok(setup.run("verify-snapshots")).stdout
    checked = json.loads(_ok(setup.run("verify-snapshots", "--period", "2026-11", "--json")).stdout)
    assert checked == {"checked": 1, "ok": True, "bad": []}

    # Changed behind the store's back, as someone with the database file could.
    with closing(sqlite3.connect(setup.database)) as conn, conn:
        conn.execute("UPDATE closing_snapshots SET total = '1.00' WHERE period = '2026-11'")
        [bad_id] = conn.execute(
            "SELECT id FROM closing_snapshots WHERE period = '2026-11'"
        ).fetchone()
    result = setup.run("verify-snapshots")
    assert result.returncode == 1 and result.stdout == ""
    named, error = result.stderr.strip().splitlines()
    assert named == (
        f"bad snapshot: {bad_id} (org {setup.org}, 2026-11) does not match its content_hash"
    )
    assert error == "error: 1 of 2 closing snapshots fail verification"
    as_json = setup.run("verify-snapshots", "--json")
    assert as_json.returncode == 1
    assert [b["id"] for b in json.loads(as_json.stdout)["bad"]] == [bad_id]
    assert (
        "0 closing snapshot(s) of 2026-09"
        in _ok(setup.run("verify-snapshots", "--period", "2026-09")).stdout
    )


def test_an_unmigrated_database_is_one_line(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "hoodrun.yaml", tmp_path / "empty.db")
    result = _hoodrun(config, "billing", "invoices")
    _refused(result, "hoodrun db upgrade")
