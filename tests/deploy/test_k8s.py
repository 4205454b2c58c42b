"""The Kubernetes manifests in deploy/k8s: every kustomization renders, every document passes the
Kubernetes schemas (strict), and the rendered objects keep the platform's rules: pod security,
probes, budgets, autoscalers, NetworkPolicies, the geth nodes' shape, and a HoodRun config that
loads and points at the nodes the same overlay deploys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate as kv
import pytest
import yaml

from hoodrun.config import Config, load_config, parse_listen

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.33.0"  # the schema version every document is validated against

NETWORKS = {"mainnet": 1, "sepolia": 11_155_111, "hoodi": 560_048}  # overlay -> chain id
NETWORK_FLAGS = {"--mainnet", "--sepolia", "--hoodi", "--holesky", "--goerli"}
ENVIRONMENTS = ("dev", "prod")
BASES = ("base/hoodrun", "base/geth")
OVERLAYS = tuple(f"overlays/{name}" for name in (*NETWORKS, *ENVIRONMENTS))
WITH_HOODRUN = ("base/hoodrun", *(f"overlays/{env}" for env in ENVIRONMENTS))
WITH_GETH = ("base/geth", *(f"overlays/{name}" for name in (*NETWORKS, *ENVIRONMENTS)))
ROLES = ("gateway", "api", "worker")

# Containers that run for good but have no probes, and why; the test below holds them to having
# no ports, so a listener means probes. None today: the worker serves /metrics.
PROBELESS: set[tuple[str, str]] = set()

Doc = dict[str, Any]

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _render(directory: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl not found on PATH: these tests render deploy/k8s with `kubectl kustomize` "
            "(kustomize v5 is built into kubectl >= 1.27). Install kubectl "
            "(https://kubernetes.io/docs/tasks/tools/, e.g. the kubectl package from "
            "pkgs.k8s.io, or the Google Cloud SDK's) and run the tests again."
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    # kustomize warns on stderr about deprecated fields (commonLabels, patchesStrategicMerge, ...).
    assert "warning" not in result.stderr.lower(), f"{directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {directory: _render(directory) for directory in (*BASES, *OVERLAYS)}


# --- helpers -------------------------------------------------------------------------------------


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in _of(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


def _pod(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _ns(doc: Doc) -> str | None:
    namespace: str | None = doc["metadata"].get("namespace")
    return namespace


def _container(workload: Doc, name: str) -> Doc:
    found: list[Doc] = [c for c in _pod(workload)["containers"] if c["name"] == name]
    assert found, f"{workload['metadata']['name']} has no container {name}"
    return found[0]


def _role(docs: list[Doc], role: str) -> Doc:
    return _named(docs, "Deployment", f"hoodrun-{role}")


def _selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against ``labels``."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value``; "" for a bare ``--name``."""
    for i, arg in enumerate(args):
        if arg == name:
            following = args[i + 1] if i + 1 < len(args) else ""
            return "" if following.startswith("-") else following
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _ports(container: Doc) -> dict[str | int, int]:
    """A container's ports by name and by number -> number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def _probe_port(probe: Doc) -> str | int | None:
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            port: str | int = probe[kind]["port"]
            return port
    return None


def _mount_for(pod: Doc, container: Doc, path: Path) -> Doc:
    """The pod volume mounted over ``path`` in ``container`` (the innermost mount)."""
    mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    if not mounts:
        pytest.fail(f"{container['name']}: nothing is mounted over {path}")
    mount = max(mounts, key=lambda m: len(Path(m["mountPath"]).parts))
    for volume in pod.get("volumes", []):
        if volume["name"] == mount["name"]:
            found: Doc = volume
            return found
    pytest.fail(f"{container['name']}: mount {mount['name']} is no volume of the pod")


def _config(docs: list[Doc], tmp_path: Path) -> tuple[Config, str]:
    """The HoodRun config in the rendered ConfigMap, loaded by HoodRun's own loader."""
    maps = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("hoodrun-config")]
    assert len(maps) == 1
    path = tmp_path / "hoodrun.yaml"
    path.write_text(maps[0]["data"]["hoodrun.yaml"])
    name: str = maps[0]["metadata"]["name"]
    return load_config(path, env={}), name


def _geth_network(statefulset: Doc) -> str:
    args = _container(statefulset, "geth")["args"]
    flags: list[str] = [arg for arg in args if arg in NETWORK_FLAGS]
    assert len(flags) == 1, f"{statefulset['metadata']['name']}: network flags {flags}"
    return flags[0].removeprefix("--")


# --- schemas and kustomize -----------------------------------------------------------------------


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_rendered_documents_pass_the_kubernetes_schemas(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    assert docs
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, KUBERNETES, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("base", BASES)
def test_base_files_pass_the_kubernetes_schemas(base: str) -> None:
    kustomization = yaml.safe_load((K8S / base / "kustomization.yaml").read_text())
    files = [K8S / base / entry for entry in kustomization["resources"]]
    assert files and all(path.is_file() for path in files)
    checked = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kv.validate(doc, KUBERNETES, strict=True)
                checked += 1
    assert checked >= len(files)


def test_kustomizations_use_no_deprecated_fields() -> None:
    deprecated = {"commonLabels", "bases", "patchesStrategicMerge", "patchesJson6902", "vars"}
    found = sorted(K8S.rglob("kustomization.yaml"))
    # Every kustomization is one these tests render: a new overlay belongs in OVERLAYS.
    assert len(found) == len(BASES) + len(OVERLAYS)
    for path in found:
        used = deprecated & set(yaml.safe_load(path.read_text()))
        assert not used, f"{path.relative_to(K8S)}: {sorted(used)}"


# --- pods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_every_pod_runs_restricted(rendered: dict[str, list[Doc]], directory: str) -> None:
    workloads = _workloads(rendered[directory])
    assert workloads
    for workload in workloads:
        name, pod = workload["metadata"]["name"], _pod(workload)
        security = pod.get("securityContext", {})
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser", 1) != 0, name
        containers = pod["containers"] + pod.get("initContainers", [])
        pod_seccomp = security.get("seccompProfile", {}).get("type")
        for container in containers:
            where = f"{name}/{container['name']}"
            context = container.get("securityContext", {})
            seccomp = context.get("seccompProfile", {}).get("type", pod_seccomp)
            assert seccomp == "RuntimeDefault", where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged") is not True, where
            assert "ALL" in context.get("capabilities", {}).get("drop", []), where
            assert not context.get("capabilities", {}).get("add"), where
            assert context.get("readOnlyRootFilesystem") is True, where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_long_running_containers_have_probes_on_their_ports(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    for workload in _workloads(rendered[directory]):
        name = workload["metadata"]["name"]
        for container in _pod(workload)["containers"]:
            where = f"{name}/{container['name']}"
            if (name, container["name"]) in PROBELESS:
                assert not container.get("ports"), f"{where} listens: give it probes"
                continue
            ports = _ports(container)
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                if kind in container:
                    assert _probe_port(container[kind]) in ports, f"{where}: {kind}"
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_hoodrun_probes_use_the_paths_each_role_serves(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    gateway = _container(_role(docs, "gateway"), "gateway")
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    # The api role: live while it answers, ready while its database does.
    api = _container(_role(docs, "api"), "api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    # The worker serves only /metrics (billing.jobs.metrics_listen), once started.
    worker = _container(_role(docs, "worker"), "worker")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[kind]["httpGet"] == {"path": "/metrics", "port": "metrics"}, kind


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_service_accounts_exist_and_mount_no_token(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    accounts = {(_ns(sa), sa["metadata"]["name"]): sa for sa in _of(docs, "ServiceAccount")}
    for workload in _workloads(docs):
        pod = _pod(workload)
        account = accounts.get((_ns(workload), pod.get("serviceAccountName", "default")))
        assert account is not None, workload["metadata"]["name"]
        assert account["automountServiceAccountToken"] is False
        assert pod.get("automountServiceAccountToken") is False
    # Nothing here calls the Kubernetes API, so no role grants anything.
    rbac = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert not [doc for doc in docs if doc["kind"] in rbac]


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_images_are_pinned(rendered: dict[str, list[Doc]], directory: str) -> None:
    for workload in _workloads(rendered[directory]):
        for container in _pod(workload)["containers"]:
            image: str = container["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag and tag != "latest"), image
            if container["command"][0] == "hoodrun":
                assert image.startswith("ghcr.io/hoodrun/hoodrun:"), image


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_scrape_annotations_name_a_metrics_port(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    scraped = set()
    for workload in _workloads(rendered[directory]):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {p for c in _pod(workload)["containers"] for p in _ports(c).values()}
        assert int(annotations["prometheus.io/port"]) in ports
        assert annotations["prometheus.io/path"].startswith("/")
        scraped.add((annotations["prometheus.io/port"], annotations["prometheus.io/path"]))
    if directory in WITH_HOODRUN:
        assert ("8000", "/metrics") in scraped and ("8001", "/metrics") in scraped
        assert ("8002", "/metrics") in scraped
    if directory in WITH_GETH:
        assert ("6060", "/debug/metrics/prometheus") in scraped


# --- budgets, autoscalers, services --------------------------------------------------------------


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_every_workload_has_a_disruption_budget(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    budgets = _of(docs, "PodDisruptionBudget")
    for workload in _workloads(docs):
        mine = [
            pdb
            for pdb in budgets
            if _ns(pdb) == _ns(workload)
            and _selects(pdb["spec"]["selector"], _pod_labels(workload))
        ]
        assert len(mine) == 1, workload["metadata"]["name"]
        spec = mine[0]["spec"]
        assert ("maxUnavailable" in spec) != ("minAvailable" in spec)
        # minAvailable equal to the replicas would block every node drain.
        assert spec.get("maxUnavailable", 1) >= 1


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_gateway_and_api_scale_with_an_autoscaler(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    for role in ("gateway", "api"):
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"hoodrun-{role}"}
        hpas = [
            hpa
            for hpa in _of(docs, "HorizontalPodAutoscaler")
            if hpa["spec"]["scaleTargetRef"] == target
        ]
        assert len(hpas) == 1, role
        spec = hpas[0]["spec"]
        assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
        assert spec["metrics"]
        # An applied replicas field would fight the autoscaler on every deploy.
        assert "replicas" not in _role(docs, role)["spec"], role


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_services_select_pods_and_their_ports(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    for service in _of(docs, "Service"):
        name, spec = service["metadata"]["name"], service["spec"]
        if spec.get("type") == "ExternalName":
            assert "selector" not in spec and spec["externalName"], name
            continue
        pods = [
            w
            for w in _workloads(docs)
            if _ns(w) == _ns(service)
            and _selects({"matchLabels": spec["selector"]}, _pod_labels(w))
        ]
        assert len(pods) == 1, f"Service {name} selects {len(pods)} workloads"
        ports: dict[str | int, int] = {}
        for container in _pod(pods[0])["containers"]:
            ports.update(_ports(container))
        for port in spec["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"{name}: {port}"


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_external_services_are_aliases_for_the_configs_hosts(
    rendered: dict[str, list[Doc]], directory: str, tmp_path: Path
) -> None:
    docs = rendered[directory]
    config, _ = _config(docs, tmp_path)
    urls = [config.database_url, config.redis_url, config.nats_url, config.analytics_url]
    for url in urls:
        assert url is not None
        parts = urlsplit(url)
        service = _named(docs, "Service", str(parts.hostname))
        assert service["spec"]["type"] == "ExternalName"
        assert parts.port in [p["port"] for p in service["spec"]["ports"]], url


# --- network policies ----------------------------------------------------------------------------


def _policies_for(docs: list[Doc], workload: Doc) -> list[Doc]:
    return [
        policy
        for policy in _of(docs, "NetworkPolicy")
        if _ns(policy) == _ns(workload)
        and policy["spec"]["podSelector"]
        and _selects(policy["spec"]["podSelector"], _pod_labels(workload))
    ]


def _ingress_rules(docs: list[Doc], workload: Doc, port: int) -> list[Doc]:
    return [
        rule
        for policy in _policies_for(docs, workload)
        for rule in policy["spec"].get("ingress", [])
        if any(p.get("port") == port for p in rule.get("ports", []))
    ]


def _egress_ports(docs: list[Doc], workload: Doc) -> set[tuple[int, str]]:
    return {
        (port["port"], port.get("protocol", "TCP"))
        for policy in _policies_for(docs, workload)
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


@pytest.mark.parametrize("directory", [*BASES, *OVERLAYS])
def test_every_workload_has_its_own_network_policy(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    for workload in _workloads(docs):
        policies = _policies_for(docs, workload)
        assert policies, workload["metadata"]["name"]
        assert all("Ingress" in p["spec"]["policyTypes"] for p in policies)


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_ingress_is_denied_by_default(rendered: dict[str, list[Doc]], directory: str) -> None:
    deny = _named(rendered[directory], "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_hoodrun_roles_reach_only_what_they_use(
    rendered: dict[str, list[Doc]], directory: str, tmp_path: Path
) -> None:
    docs = rendered[directory]
    config, _ = _config(docs, tmp_path)
    gateway, api, worker = (_role(docs, role) for role in ROLES)

    # The gateway from anywhere; the api only from the ingress controller's namespace.
    assert any("from" not in rule for rule in _ingress_rules(docs, gateway, 8000))
    api_rules = _ingress_rules(docs, api, 8001)
    assert api_rules
    for rule in api_rules:
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
    # The worker only from Prometheus, on its metrics port.
    worker_rules = [r for p in _policies_for(docs, worker) for r in p["spec"].get("ingress", [])]
    assert worker_rules
    for rule in worker_rules:
        assert rule.get("from") == [MONITORING], rule
        assert [p["port"] for p in rule["ports"]] == [8002], rule

    def port(url: str | None) -> tuple[int, str]:
        assert url is not None
        return (int(urlsplit(url).port or 0), "TCP")

    dns = {(53, "UDP"), (53, "TCP")}
    upstreams = {port(u.url) for c in config.chains for u in c.upstreams}
    upstreams |= {port(u.ws_url) for c in config.chains for u in c.upstreams}
    database, redis = port(config.database_url), port(config.redis_url)
    nats, analytics = port(config.nats_url), port(config.analytics_url)
    needs = [
        (gateway, dns | upstreams | {database, redis, nats}),
        (api, dns | {database, redis, analytics}),
        # The worker: the job queue in the database, and HTTPS to Stripe, Paraşüt and TCMB.
        (worker, dns | {database, nats, analytics, (443, "TCP")}),
    ]
    for workload, needed in needs:
        policies = _policies_for(docs, workload)
        assert all("Egress" in p["spec"]["policyTypes"] for p in policies)
        allowed = _egress_ports(docs, workload)
        assert needed <= allowed, f"{workload['metadata']['name']}: {needed - allowed}"
    # Only the gateway talks to the nodes.
    assert not upstreams & (_egress_ports(docs, api) | _egress_ports(docs, worker))


@pytest.mark.parametrize("directory", WITH_GETH)
def test_geth_takes_rpc_only_from_the_gateway_and_never_exposes_the_engine_api(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    docs = rendered[directory]
    gateway = {"app.kubernetes.io/name": "hoodrun", "app.kubernetes.io/component": "gateway"}
    others = [
        {"app.kubernetes.io/name": "hoodrun", "app.kubernetes.io/component": role}
        for role in ("api", "worker")
    ]
    for geth in _of(docs, "StatefulSet"):
        for port in (8545, 8546):
            rules = _ingress_rules(docs, geth, port)
            assert rules, port
            for rule in rules:
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, peer  # this namespace only
                    assert _selects(peer["podSelector"], gateway)
                    assert not any(_selects(peer["podSelector"], o) for o in others)
                    assert not _selects(peer["podSelector"], _pod_labels(geth))
        for port in (30303, 9000):
            assert any("from" not in rule for rule in _ingress_rules(docs, geth, port)), port
        for port in (6060, 5054):
            for rule in _ingress_rules(docs, geth, port):
                assert rule["from"] == [MONITORING]
        assert not _ingress_rules(docs, geth, 8551)
        assert all(8551 not in _ports(c) for c in _pod(geth)["containers"])
    for service in _of(docs, "Service"):
        assert 8551 not in [p["port"] for p in service["spec"].get("ports", [])]


# --- geth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", WITH_GETH)
def test_geth_statefulset_runs_a_full_node_pair(
    rendered: dict[str, list[Doc]], directory: str
) -> None:
    statefulsets = _of(rendered[directory], "StatefulSet")
    assert statefulsets
    for sts in statefulsets:
        pod = _pod(sts)
        claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
        geth, lighthouse = _container(sts, "geth"), _container(sts, "lighthouse")
        args = geth["args"]

        ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in geth["ports"]}
        assert {
            (8545, "TCP"),
            (8546, "TCP"),
            (30303, "TCP"),
            (30303, "UDP"),
            (6060, "TCP"),
        } <= ports
        assert _flag(args, "--http.port") == "8545" and _flag(args, "--http") == ""
        assert _flag(args, "--ws.port") == "8546" and _flag(args, "--ws") == ""
        assert _flag(args, "--metrics") == ""
        assert _flag(args, "--metrics.addr") == "0.0.0.0"
        assert _flag(args, "--metrics.port") == "6060"
        assert _flag(args, "--authrpc.port") == "8551"
        assert _flag(args, "--authrpc.addr") in ("127.0.0.1", "localhost")
        # The nodes' data lives on claims of their own, not on the pod.
        datadir = Path(str(_flag(args, "--datadir")))
        assert any(
            m["name"] in claims and datadir.is_relative_to(m["mountPath"])
            for m in geth["volumeMounts"]
        )

        assert lighthouse["command"][:2] == ["lighthouse", "bn"]
        cl_args = lighthouse["args"]
        assert _flag(cl_args, "--execution-endpoint") in (
            "http://localhost:8551",
            "http://127.0.0.1:8551",
        )
        assert _flag(cl_args, "--checkpoint-sync-url")
        cl_datadir = Path(str(_flag(cl_args, "--datadir")))
        assert any(
            m["name"] in claims and cl_datadir.is_relative_to(m["mountPath"])
            for m in lighthouse["volumeMounts"]
        )
        assert cl_datadir != datadir

        # One engine-API secret, the same Secret volume in both containers.
        el_secret = _mount_for(pod, geth, Path(str(_flag(args, "--authrpc.jwtsecret"))))
        cl_secret = _mount_for(pod, lighthouse, Path(str(_flag(cl_args, "--execution-jwt"))))
        assert el_secret == cl_secret and "secret" in el_secret


@pytest.mark.parametrize("network", list(NETWORKS))
def test_network_overlays_set_the_network_on_both_clients(
    rendered: dict[str, list[Doc]], network: str
) -> None:
    (sts,) = _of(rendered[f"overlays/{network}"], "StatefulSet")
    assert sts["metadata"]["name"] == f"geth-{network}"
    assert _geth_network(sts) == network
    cl_args = _container(sts, "lighthouse")["args"]
    assert [a for a in cl_args if a.startswith("--network")] == [f"--network={network}"]


def test_no_overlay_mentions_a_retired_network(rendered: dict[str, list[Doc]]) -> None:
    for directory, docs in rendered.items():
        text = yaml.safe_dump_all(docs).lower()
        for retired in ("holesky", "goerli", "ropsten", "rinkeby"):
            assert retired not in text, directory


# --- the HoodRun config --------------------------------------------------------------------------


@pytest.mark.parametrize("directory", WITH_HOODRUN)
def test_config_map_loads_and_matches_the_pods(
    rendered: dict[str, list[Doc]], directory: str, tmp_path: Path
) -> None:
    docs = rendered[directory]
    config, config_map = _config(docs, tmp_path)
    assert config.chains
    listen = {"gateway": parse_listen(config.listen)[1], "api": parse_listen(config.api_listen)[1]}
    for role in ROLES:
        workload = _role(docs, role)
        pod = _pod(workload)
        container = _container(workload, role)
        # Service links would be HOODRUN_* variables, read as unknown config keys.
        assert pod["enableServiceLinks"] is False, role
        args = container["args"]
        assert args[-1] == role and container["command"] == ["hoodrun"]
        mounted = _mount_for(pod, container, Path(str(_flag(args, "--config"))))
        assert mounted["configMap"]["name"] == config_map
        state = _mount_for(pod, container, config.data_dir)
        assert "emptyDir" in state or "persistentVolumeClaim" in state, role
        for env in container.get("env", []):
            _assert_config_key(env["name"])
        if role in listen:
            assert _ports(container)["http"] == listen[role]
            service = _named(docs, "Service", f"hoodrun-{role}")
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # The worker's metrics listener, with the literal overrides of its environment applied.
    worker = _container(_role(docs, "worker"), "worker")
    literal = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    worker_config = load_config(tmp_path / "hoodrun.yaml", env=literal)
    assert worker_config.billing.jobs.metrics_listen is not None
    assert _ports(worker)["metrics"] == parse_listen(worker_config.billing.jobs.metrics_listen)[1]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"] if "valueFrom" in e}
    assert secrets["HOODRUN_DATABASE_URL"]["name"] == "hoodrun-secrets"
    for name in (
        "HOODRUN_BILLING__STRIPE__API_KEY",
        "HOODRUN_BILLING__PARASUT__CLIENT_SECRET",
        "HOODRUN_BILLING__PARASUT__PASSWORD",
    ):
        assert secrets[name]["optional"] is True, name
    api = _role(docs, "api")
    assert config.admin_token_file is not None
    token = _mount_for(_pod(api), _container(api, "api"), config.admin_token_file)
    assert token["secret"]["secretName"] == "hoodrun-secrets"


def _assert_config_key(name: str) -> None:
    """``HOODRUN_A__B`` names a field of the config model, as the loader reads it."""
    assert name.startswith("HOODRUN_"), name
    model: Any = Config
    for part in name.removeprefix("HOODRUN_").lower().split("__"):
        assert part in model.model_fields, name
        model = model.model_fields[part].annotation


@pytest.mark.parametrize("directory", WITH_HOODRUN[1:])
def test_upstreams_are_the_geth_pods_this_overlay_deploys(
    rendered: dict[str, list[Doc]], directory: str, tmp_path: Path
) -> None:
    docs = rendered[directory]
    config, _ = _config(docs, tmp_path)
    pods: dict[str, Doc] = {}  # pod name -> its StatefulSet
    for sts in _of(docs, "StatefulSet"):
        for ordinal in range(sts["spec"].get("replicas", 1)):
            pods[f"{sts['metadata']['name']}-{ordinal}"] = sts
    used = set()
    for chain in config.chains:
        for upstream in chain.upstreams:
            for url, port in ((upstream.url, 8545), (upstream.ws_url, 8546)):
                assert url is not None
                parts = urlsplit(url)
                pod, _, service = str(parts.hostname).partition(".")
                owner = pods.get(pod)
                assert owner is not None, f"{url}: no such geth pod"
                assert service == owner["spec"]["serviceName"], url
                headless = _named(docs, "Service", service)["spec"]
                assert headless["clusterIP"] == "None"
                assert port == parts.port and port in [p["port"] for p in headless["ports"]]
                assert NETWORKS[_geth_network(owner)] == chain.chain_id, url
                used.add(pod)
    assert used == set(pods), f"nodes no chain uses: {set(pods) - used}"


# --- environments --------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environments_live_in_a_restricted_namespace(
    rendered: dict[str, list[Doc]], env: str
) -> None:
    docs = rendered[f"overlays/{env}"]
    (namespace,) = _of(docs, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert _ns(doc) == namespace["metadata"]["name"], doc["metadata"]["name"]


def test_dev_and_prod_differ_where_they_should(rendered: dict[str, list[Doc]]) -> None:
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]
    namespaces = {_of(docs, "Namespace")[0]["metadata"]["name"] for docs in (dev, prod)}
    assert len(namespaces) == 2
    for role in ("gateway", "api"):
        small = _named(dev, "HorizontalPodAutoscaler", f"hoodrun-{role}")["spec"]
        large = _named(prod, "HorizontalPodAutoscaler", f"hoodrun-{role}")["spec"]
        assert small["minReplicas"] < large["minReplicas"], role
        assert small["maxReplicas"] < large["maxReplicas"], role
    assert _role(dev, "worker")["spec"]["replicas"] < _role(prod, "worker")["spec"]["replicas"]
    dev_gateway = _container(_role(dev, "gateway"), "gateway")["resources"]
    prod_gateway = _container(_role(prod, "gateway"), "gateway")["resources"]
    assert dev_gateway != prod_gateway
    for name in ("postgres", "redis", "clickhouse", "nats"):
        hosts = {_named(d, "Service", name)["spec"]["externalName"] for d in (dev, prod)}
        assert len(hosts) == 2, name
    dev_networks = {_geth_network(sts) for sts in _of(dev, "StatefulSet")}
    prod_networks = {_geth_network(sts) for sts in _of(prod, "StatefulSet")}
    assert "mainnet" in prod_networks and "mainnet" not in dev_networks
    assert _named(prod, "StatefulSet", "geth-mainnet")["spec"]["replicas"] >= 2
    assert _named(prod, "Service", "hoodrun-gateway")["spec"]["type"] == "LoadBalancer"
