"""The monitoring in deploy/: Prometheus rules and their promtool unit tests, the example
Prometheus and Alertmanager configurations, and the Grafana dashboards. Checked with the real
tools (promtool, amtool, prometheus), against the metrics a running gateway exports, and end to
end: a real Prometheus scrapes a gateway whose upstream is down and raises the alert, and a real
Alertmanager delivers it to HoodRun's webhook, whose alert list then shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

import hoodrun.billing.reconcile
import hoodrun.jobs.metrics
from hoodrun.config import Config
from hoodrun.devnet import Anvil, free_port
from tests._platform import PlatformThread
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = PROMETHEUS_DIR / "README.md"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

# Series from other exporters, as deploy/prometheus/README.md ("Where the series come from")
# lists them: node-exporter, cAdvisor, kube-state-metrics, geth's own metrics, and Prometheus.
EXTERNAL_PREFIXES = ("node_", "container_", "kube_")
EXTERNAL_NAMES = frozenset(
    {
        "up",  # Prometheus, per scrape target
        "ALERTS",  # Prometheus, per pending or firing alert
        "p2p_peers",  # geth's /debug/metrics/prometheus
        "chain_head_block",
        "chain_head_header",
        "txpool_pending",
        "txpool_queued",
    }
)
SEVERITIES = {"critical", "warning"}

Rule = dict[str, Any]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: these tests run Prometheus' own tools. Install them with "
            "`apt-get install -y prometheus prometheus-alertmanager` (Debian: promtool, "
            "prometheus, amtool) and run the tests again."
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


def _groups() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, group) for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
    ]


def _alerts() -> list[Rule]:
    return [rule for _, group in _groups() for rule in group["rules"] if "alert" in rule]


def _recorded() -> set[str]:
    return {rule["record"] for _, group in _groups() for rule in group["rules"] if "record" in rule}


# --- PromQL: the metric names an expression reads ---------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{?\w+\}?")  # Grafana's $chain, ${chain}, $__rate_interval
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_MODIFIER = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")  # not a call: f(
_KEYWORDS = {"and", "or", "unless", "bool", "group_left", "group_right", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression reads."""
    if match := _LABEL_VALUES.match(expr):  # Grafana's variable query: its selector only
        expr = match.group(1)
    for pattern in (_STRING, _VARIABLE, _MATCHERS, _RANGE, _MODIFIER, _OFFSET):
        expr = pattern.sub(" ", expr)
    return {name for name in _NAME.findall(expr) if name.lower() not in _KEYWORDS}


def test_metric_names_parses_promql() -> None:
    expr = (
        'sum by (chain) (rate(hoodrun_http_requests_total{status=~"5..", chain="$chain"}[5m] '
        "offset 1h)) / on (chain) group_left () chain:hoodrun_requests:rate5m > bool 1e3 "
        "and histogram_quantile(0.95, sum without (instance) (rate(x_bucket[$__rate_interval])))"
    )
    assert metric_names(expr) == {
        "hoodrun_http_requests_total",
        "chain:hoodrun_requests:rate5m",
        "x_bucket",
    }
    assert metric_names('label_values(hoodrun_upstream_healthy{chain=~"$chain"}, upstream)') == {
        "hoodrun_upstream_healthy"
    }
    assert metric_names("absent(up{job='geth'}) or vector(0)") == {"up"}


# --- rules and their promtool tests -----------------------------------------------------------


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    result = _run(_tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    result = _run(_tool("promtool"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    assert RULE_FILES and RULE_TESTS
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        suite = yaml.safe_load(path.read_text())
        for rule_file in suite["rule_files"]:
            assert (path.parent / rule_file).resolve() in {p.resolve() for p in RULE_FILES}
        for case in suite["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - firing == set(), "alerts no promtool test expects firing"
    assert names - quiet == set(), "alerts no promtool test expects quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown document."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_alerts_have_severity_annotations_and_a_runbook_section() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in _alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), name
        page, _, anchor = annotations["runbook"].partition("#")
        assert ROOT / page == RUNBOOK, name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no section {anchor}"


def test_rules_read_only_recordings_made_earlier_in_their_group() -> None:
    """Groups run independently (in promtool, in random order): an alert reading another group's
    recording would see it one evaluation late, and the unit tests would flake."""
    recorded = _recorded()
    for _, group in _groups():
        seen: set[str] = set()
        for rule in group["rules"]:
            used = metric_names(rule["expr"]) & recorded
            assert used <= seen, f"{rule.get('alert') or rule['record']} reads {used - seen}"
            if "record" in rule:
                seen.add(rule["record"])


def test_prometheus_example_config() -> None:
    path = PROMETHEUS_DIR / "prometheus.yml"
    result = _run(_tool("promtool"), "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"hoodrun-gateway", "hoodrun-api", "geth", "node-exporter"} <= jobs.keys()
    assert jobs["geth"]["metrics_path"] == "/debug/metrics/prometheus"
    assert all(t.endswith(":6060") for c in jobs["geth"]["static_configs"] for t in c["targets"])
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_alertmanager_example_config() -> None:
    result = _run(_tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text())
    hooks = [hook for r in config["receivers"] for hook in r.get("webhook_configs", [])]
    assert hooks and all(h["url"].endswith("/api/v1/alerts/alertmanager") for h in hooks)
    for hook in hooks:
        authorization = hook["http_config"]["authorization"]
        assert authorization["type"] == "Bearer" and authorization["credentials_file"]
        assert hook["send_resolved"] is True


# --- dashboards -------------------------------------------------------------------------------


def _dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("HoodRun / ")
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel["type"] in ("timeseries", "stat", "table"), panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert _LABEL_VALUES.match(variable["query"]), name


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(DASHBOARDS) >= 4 and len(uids) == len(set(uids))


# --- every expression against a running gateway's /metrics -------------------------------------


@pytest.fixture(scope="module")
def gateway(
    eth_anvil: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadedGateway]:
    """A gateway for chain eth with two upstreams: eth-0 (anvil) and eth-1, a port where nothing
    listens."""
    database = tmp_path_factory.mktemp("prometheus-gw") / "hoodrun.db"
    nowhere = cast(Anvil, SimpleNamespace(url=f"http://127.0.0.1:{free_port()}/"))
    config = make_config(f"sqlite:///{database}", {"eth": (1, [eth_anvil, nowhere])})
    gw = ThreadedGateway(config).start()
    try:
        yield gw
    finally:
        gw.stop()


def _exported_names(text: str) -> set[str]:
    """Series names a /metrics page exports, also for families without a sample yet."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            elif kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_every_expression_reads_exported_metrics(gateway: ThreadedGateway) -> None:
    key = gateway.key().key
    with httpx.Client(timeout=10) as client:
        # An answered call, a cacheable one, a batch and a refusal, so labelled series exist.
        for payload in (
            rpc("eth_blockNumber"),
            rpc("eth_chainId"),
            [rpc("eth_chainId", id=1), rpc("eth_blockNumber", id=2)],
        ):
            assert client.post(gateway.endpoint(key), content=orjson.dumps(payload)).is_success
        refused = client.post(gateway.endpoint("hr_notarealkey1234567890"), json=rpc("eth_chainId"))
        assert refused.status_code == 401
        text = client.get(f"{gateway.url}/metrics").text
    # The worker serves the default registry (billing.jobs.metrics_listen), where the job queue
    # and billing register their metrics on import.
    assert hoodrun.jobs.metrics.OUTCOMES and hoodrun.billing.reconcile.MATCH_RATIO
    worker = _exported_names(generate_latest(REGISTRY).decode())
    known = _exported_names(text) | worker | _recorded() | EXTERNAL_NAMES
    assert 'hoodrun_refusals_total{chain="eth",reason="key_invalid"}' in text

    used: dict[str, set[str]] = {}
    for path, group in _groups():
        for rule in group["rules"]:
            where = f"{path.name}: {rule.get('alert') or rule['record']}"
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(where)
    for path in DASHBOARDS:
        for title, expr in _dashboard_exprs(json.loads(path.read_text())):
            for name in metric_names(expr):
                used.setdefault(name, set()).add(f"{path.name}: {title}")
    unknown = {
        name: sorted(where)
        for name, where in used.items()
        if name not in known and not name.startswith(EXTERNAL_PREFIXES)
    }
    assert unknown == {}, "metrics neither HoodRun nor a listed exporter exports"


# --- a real Prometheus --------------------------------------------------------------------------


def _short_for(rules: dict[str, Any]) -> dict[str, Any]:
    """The rules with every `for:` cut to 1 s; expressions unchanged."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return rules


class ApiRole:
    """HoodRun's api role (``run_platform(gateway=False)``) on a thread, on a free port."""

    TOKEN = "alerts-test-token"

    def __init__(self, config: Config) -> None:
        self.port = free_port()
        self._platform = PlatformThread(
            config.model_copy(
                update={"api_listen": f"127.0.0.1:{self.port}", "admin_token": self.TOKEN}
            ),
            gateway=False,
        )

    def __enter__(self) -> ApiRole:
        self._platform.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._platform.__exit__(*exc)


def _alertmanager_config(workdir: Path, api: ApiRole) -> Path:
    """The example config, pointed at this test's api role, with its waits cut to a second."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (workdir / "token").write_text(api.TOKEN)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            path = urlsplit(hook["url"]).path
            hook["url"] = f"http://127.0.0.1:{api.port}{path}"
            hook["http_config"]["authorization"]["credentials_file"] = str(workdir / "token")
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        route.update({"group_wait": "1s", "group_interval": "1s"})
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_real_prometheus_alerts_on_a_down_upstream_and_hoodrun_lists_it(
    gateway: ThreadedGateway,
) -> None:
    """Prometheus (the real rules, only `for:` shortened) scrapes the gateway, raises the alert
    for its down upstream and sends it to Alertmanager (the example config), which delivers it
    to HoodRun's webhook: the api's alert list shows it."""
    prometheus, alertmanager = _tool("prometheus"), _tool("prometheus-alertmanager")
    workdir = Path(tempfile.mkdtemp(prefix="hoodrun-prometheus-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        rule_files = []
        for path in RULE_FILES:
            original = yaml.safe_load(path.read_text())
            shortened = _short_for(yaml.safe_load(path.read_text()))
            exprs = [[r["expr"] for r in g["rules"]] for g in original["groups"]]
            assert exprs == [[r["expr"] for r in g["rules"]] for g in shortened["groups"]]
            (workdir / path.name).write_text(yaml.safe_dump(shortened, sort_keys=False))
            rule_files.append(path.name)
        with ApiRole(gateway.config) as api:
            am_port, port = free_port(), free_port()
            processes.append(
                _start(
                    [
                        alertmanager,
                        f"--config.file={_alertmanager_config(workdir, api)}",
                        f"--storage.path={workdir / 'am'}",
                        f"--web.listen-address=127.0.0.1:{am_port}",
                        "--cluster.listen-address=",
                    ],
                    workdir / "alertmanager.log",
                )
            )
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rule_files,
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "hoodrun-gateway",
                        "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}],
                    }
                ],
            }
            (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
            process = _start(
                [
                    prometheus,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                workdir / "prometheus.log",
            )
            processes.append(process)
            alerts = _wait_for_alert(process, port, "HoodRunNodeDown", upstream="eth-1")
            down = [a for a in alerts if a["labels"]["alertname"] == "HoodRunNodeDown"]
            assert down, (workdir / "prometheus.log").read_text()[-3000:]
            assert [(a["labels"]["chain"], a["labels"]["upstream"]) for a in down] == [
                ("eth", "eth-1")
            ]
            assert down[0]["state"] in ("pending", "firing")
            assert down[0]["labels"]["severity"] == "critical"
            assert down[0]["annotations"]["summary"] == "Node eth-1 of chain eth is down"

            listed = _wait_for_hoodrun_alert(api, "HoodRunNodeDown")
            assert listed, (workdir / "alertmanager.log").read_text()[-3000:]
            assert listed["status"] == "firing" and listed["severity"] == "critical"
            assert listed["labels"]["chain"] == "eth" and listed["labels"]["upstream"] == "eth-1"
            assert listed["annotations"]["summary"] == "Node eth-1 of chain eth is down"
    finally:
        for process in processes:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_hoodrun_alert(api: ApiRole, name: str) -> dict[str, Any] | None:
    """The alert named ``name`` in HoodRun's list of firing alerts, polled for up to 60 s."""
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {api.TOKEN}"}
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            answer = client.get(f"http://127.0.0.1:{api.port}/api/v1/alerts", headers=headers)
            assert answer.status_code == 200, answer.text
            for alert in answer.json()["alerts"]:
                if alert["name"] == name:
                    found: dict[str, Any] = alert
                    return found
            time.sleep(0.25)
    return None


def _wait_for_alert(
    process: subprocess.Popen[bytes], port: int, name: str, **labels: str
) -> list[dict[str, Any]]:
    """Prometheus' alerts once one named ``name`` with ``labels`` is pending or firing (or the
    last list seen, after 60 s)."""
    deadline = time.monotonic() + 60
    alerts: list[dict[str, Any]] = []
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                alerts = client.get(f"http://127.0.0.1:{port}/api/v1/alerts").json()["data"][
                    "alerts"
                ]
            except (httpx.HTTPError, ValueError, KeyError):
                alerts = []  # not listening yet
            if any(
                a["labels"]["alertname"] == name
                and labels.items() <= a["labels"].items()
                and a["state"] in ("pending", "firing")
                for a in alerts
            ):
                return alerts
            time.sleep(0.25)
    return alerts
