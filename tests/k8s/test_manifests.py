"""The Kubernetes manifests, rendered by kustomize, hold the properties the platform needs.

Every overlay under k8s/overlays is built once (``kubectl kustomize``, or the
kustomize that scripts/k8s_check.sh installs when kubectl is missing) and the
rendered objects are checked: security context and resources on every container,
native gRPC probes, the NLU's start-up budget, graceful shutdown longer than the
dialogue lease, the dialogue service's two halves (intake and workers), autoscaling
and disruption budgets in prod, selectors that pick their own pods, network
policies evaluated path by path, the gateway's settings behind the ingress, and no
Secret from the repository. The Dockerfiles get a few static checks.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh import Env
from services.gateway.admin import AdminSettings
from services.gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVICES = ("gateway", "dialogue", "nlu", "chatlog")
# The dialogue service runs as two Deployments of one image: `dialogue` (intake,
# the API behind the Service of that name) and `dialogue-worker` (the turns).
DIALOGUE_ROLES = {"dialogue": "intake", "dialogue-worker": "worker"}
DEPLOYMENTS = (*SERVICES, "dialogue-worker")
COMPONENTS = {**{name: name for name in SERVICES}, "dialogue-worker": "dialogue"}
GRPC_PORTS = {"dialogue": 50051, "nlu": 50052, "chatlog": 50053}
METRICS_PORTS = {
    "dialogue": 9051,
    "dialogue-worker": 9051,
    "nlu": 9052,
    "chatlog": 9053,
    "gateway": 8080,
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
Obj = dict[str, Any]


def _kustomize_command() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    cache_root = os.environ.get("CHATBOT_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbot"
    )
    for candidate in sorted(Path(cache_root).glob("tools-kustomize-*/kustomize")):
        return [str(candidate), "build"]
    pytest.fail("no kubectl and no kustomize: run scripts/k8s_check.sh once to install one")


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        [*_kustomize_command(), str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(objs: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def main_container(objs: tuple[Obj, ...], name: str) -> Obj:
    deployment = of_kind(objs, "Deployment")[name]
    container: Obj = next(c for c in pod_spec(deployment)["containers"] if c["name"] == name)
    return container


def config(objs: tuple[Obj, ...], prefix: str) -> dict[str, str]:
    """The data of the generated ConfigMap ``prefix-<hash>``."""
    (cm,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]+", o["metadata"]["name"])
    ]
    data: dict[str, str] = cm["data"]
    return data


def container_env(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """Literal settings a container gets: its ConfigMaps, then its own ``env`` values."""
    env: dict[str, str] = {}
    configmaps = of_kind(objs, "ConfigMap")
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions``)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        present = key in labels
        match expression["operator"]:
            case "In":
                ok = present and labels[key] in values
            case "NotIn":
                ok = not present or labels[key] not in values
            case "Exists":
                ok = present
            case "DoesNotExist":
                ok = not present
            case other:
                raise AssertionError(f"unknown selector operator {other}")
        if not ok:
            return False
    return True


def template_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def namespace_of(objs: tuple[Obj, ...]) -> str:
    (namespace,) = of_kind(objs, "Namespace")
    return namespace


# ---- network policies, evaluated -------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (its labels; ``namespace`` empty for the
    overlay's own) or an address outside the cluster (``ip``)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""
    ip: str = ""


DNS = Peer({"k8s-app": "kube-dns"}, namespace="kube-system")
INGRESS_CONTROLLER = Peer({"app.kubernetes.io/name": "ingress-nginx"}, namespace="ingress-nginx")
PROMETHEUS = Peer({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
GRAPH_API = Peer(ip="157.240.22.35")  # graph.facebook.com
PRIVATE_HOST = Peer(ip="10.1.2.3")


def _peer_matches(entry: Obj, peer: Peer, home: str) -> bool:
    if "ipBlock" in entry:
        if not peer.ip:
            return False
        address = ipaddress.ip_address(peer.ip)
        block = entry["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if peer.ip:
        return False
    namespace = peer.namespace or home
    if "namespaceSelector" in entry:
        if not selects(entry["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != home:
        return False
    return selects(entry.get("podSelector", {}), peer.labels)


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(
        p.get("protocol", "TCP") == protocol and p.get("port", port) == port for p in ports
    )


def _admits(
    objs: tuple[Obj, ...], pod: Peer, other: Peer, port: int, protocol: str, direction: str
) -> bool:
    """Whether the policies selecting ``pod`` let it talk with ``other`` that way."""
    home = namespace_of(objs)
    if pod.ip or (pod.namespace and pod.namespace != home):
        return True  # not ours: no policy of this overlay applies
    kind, peers = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    applicable = [
        p["spec"]
        for p in of_kind(objs, "NetworkPolicy").values()
        if kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not applicable:
        return True
    return any(
        (not rule.get(peers) or any(_peer_matches(e, other, home) for e in rule[peers]))
        and _port_matches(rule, port, protocol)
        for spec in applicable
        for rule in spec.get(direction, [])
    )


def connects(
    objs: tuple[Obj, ...], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """The source's egress and the target's ingress both admit the connection."""
    return _admits(objs, source, target, port, protocol, "egress") and _admits(
        objs, target, source, port, protocol, "ingress"
    )


def pod(objs: tuple[Obj, ...], name: str) -> Peer:
    workloads = {o["metadata"]["name"]: o for o in objs if o["kind"] in WORKLOADS}
    return Peer(template_labels(workloads[name]))


def redis(objs: tuple[Obj, ...]) -> Peer:
    """The in-namespace Redis, or an address of the external one (prod)."""
    if "redis" in of_kind(objs, "StatefulSet"):
        return pod(objs, "redis")
    (rule,) = of_kind(objs, "NetworkPolicy")["allow-external-redis"]["spec"]["egress"]
    network = ipaddress.ip_network(rule["to"][0]["ipBlock"]["cidr"])
    return Peer(ip=str(next(network.hosts())))


def test_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


# ---- every overlay ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_rendered(overlay: str) -> None:
    assert not [o["metadata"]["name"] for o in render(overlay) if o["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_bounded(overlay: str) -> None:
    workloads = [o for o in render(overlay) if o["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        pod = pod_spec(workload)
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, where
        assert pod.get("serviceAccountName"), where
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in containers(workload):
            at = f"{where} container {c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), at
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["capabilities"]["drop"] == ["ALL"], at
            assert "add" not in sc["capabilities"], at
            assert sc.get("privileged", False) is False, at
            assert (sc.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True, at
            assert sc.get("runAsUser", pod_security.get("runAsUser", 0)) >= 10000, at
            seccomp = sc.get("seccompProfile") or pod_security.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, at
            if c in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert mounts.get("/tmp") in tmp_volumes, f"{at}: /tmp is not an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_accounts_do_not_mount_tokens(overlay: str) -> None:
    objs = render(overlay)
    accounts = of_kind(objs, "ServiceAccount")
    for workload in (o for o in objs if o["kind"] in WORKLOADS):
        account = accounts[pod_spec(workload)["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_recommended_labels(overlay: str) -> None:
    objs = render(overlay)
    for o in objs:
        labels = o["metadata"].get("labels", {})
        if o["kind"] == "Namespace":
            continue
        where = f"{overlay}: {o['kind']}/{o['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "chatbot", where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
        assert labels.get("app.kubernetes.io/instance"), where
    for name in DEPLOYMENTS:
        deployment = of_kind(objs, "Deployment")[name]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": name}
        template = deployment["spec"]["template"]["metadata"]["labels"]
        assert template["app.kubernetes.io/name"] == name
        assert template["app.kubernetes.io/component"] == COMPONENTS[name]
        assert template["app.kubernetes.io/part-of"] == "chatbot"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", sorted(GRPC_PORTS))
def test_grpc_services_are_headless_with_native_grpc_probes(overlay: str, name: str) -> None:
    objs = render(overlay)
    port = GRPC_PORTS[name]
    service = of_kind(objs, "Service")[name]
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": port, "metrics": METRICS_PORTS[name]}
    container = main_container(objs, name)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
    assert container["readinessProbe"]["grpc"]["port"] == port
    live = container["livenessProbe"]
    assert live.get("grpc", {}).get("port") == port or live["tcpSocket"]["port"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_and_service(overlay: str) -> None:
    objs = render(overlay)
    container = main_container(objs, "gateway")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = of_kind(objs, "Service")["gateway"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nlu_start_up_covers_the_model_load(overlay: str) -> None:
    probe = main_container(render(overlay), "nlu")["startupProbe"]
    assert probe["grpc"]["port"] == GRPC_PORTS["nlu"]
    # Loading TensorFlow and the model takes 30-60 s: allow at least three times that.
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 180


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_the_metrics_ports(overlay: str) -> None:
    objs = render(overlay)
    for name, port in METRICS_PORTS.items():
        annotations = of_kind(objs, "Deployment")[name]["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_outlasts_the_dialogue_lease(overlay: str) -> None:
    objs = render(overlay)
    for name in DEPLOYMENTS:
        deployment = of_kind(objs, "Deployment")[name]
        container = main_container(objs, name)
        pre_stop = 0
        if name in SERVICES:  # behind a Service: clients need a moment to let go
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            pre_stop = int(command[1])
        env = container_env(objs, container)
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", "10"))
        budget = pod_spec(deployment)["terminationGracePeriodSeconds"]
        leases = name in DIALOGUE_ROLES and env["DIALOGUE_ROLE"] in ("worker", "all")
        extra = int(env["DIALOGUE_LEASE_MS"]) / 1000 if leases else 0
        assert budget > pre_stop + grace + extra, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_clients_reach_headless_services_through_dns(overlay: str) -> None:
    objs = render(overlay)
    services = of_kind(objs, "Service")
    common = config(objs, "chatbot-common")
    for name, port in GRPC_PORTS.items():
        address = common[f"{name.upper()}_ADDRESS"]
        assert address == f"dns:///{name}:{port}"
        assert services[name]["spec"]["clusterIP"] == "None"
    for name in DEPLOYMENTS:
        env = container_env(objs, main_container(objs, name))
        host = env.get("GATEWAY_HOST") if name == "gateway" else env.get("GRPC_HOST")
        assert host == "0.0.0.0", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_config_exists(overlay: str) -> None:
    objs = render(overlay)
    configmaps = of_kind(objs, "ConfigMap")
    for workload in (o for o in objs if o["kind"] in WORKLOADS):
        for c in containers(workload):
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_secret_is_documented(overlay: str) -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    names: set[str] = set()
    for workload in (o for o in render(overlay) if o["kind"] in WORKLOADS):
        pod = pod_spec(workload)
        for c in containers(workload):
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
                    assert f"{ref['key']}=" in readme, ref
                if item["name"].endswith("_FILE"):
                    key = Path(item["value"]).name
                    mounted = any(
                        item["value"].startswith(m["mountPath"] + "/") for m in c["volumeMounts"]
                    )
                    assert mounted, item
                    assert f"{key}=" in readme, key
        for volume in pod.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    names.add(source["secret"]["name"])
    assert names
    for name in names:
        assert f"kubectl -n $NS create secret generic {name}" in readme, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay: str) -> None:
    policies = of_kind(render(overlay), "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    dns = policies["allow-dns"]["spec"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53}
    gateway = policies["gateway"]["spec"]
    assert [p["port"] for p in gateway["ingress"][0]["ports"]] == [8080]
    egress_ports = {p["port"] for rule in gateway["egress"] for p in rule["ports"]}
    assert egress_ports == {50051, 50052, 50053, 6379}
    chatlog = policies["chatlog"]["spec"]
    assert {p["port"] for r in chatlog["egress"] for p in r["ports"]} == {9042}
    assert policies["nlu"]["spec"]["egress"] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_exposes_only_the_webhook_and_admin_with_tls(overlay: str) -> None:
    ingress = of_kind(render(overlay), "Ingress")["gateway"]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert tls["secretName"] and tls["hosts"] == [rule["host"]]
    # The console's pages and the JSON API they call (live transcripts, agent
    # replies, the training export); the JSON channel under /api/v1 stays inside.
    paths = {p["path"]: p["pathType"] for p in rule["http"]["paths"]}
    assert paths == {"/webhooks/messenger": "Exact", "/admin": "Prefix", "/api/admin": "Prefix"}
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {"gateway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_trusts_the_ingress_and_sends_secure_cookies_and_hsts(overlay: str) -> None:
    objs = render(overlay)
    env = Env(container_env(objs, main_container(objs, "gateway")))
    settings = GatewaySettings.from_env(env)
    # Forwarded headers are believed from the pod network (where the ingress
    # controller runs), never from anyone on the internet.
    assert settings.forwarded_allow_ips and "*" not in settings.forwarded_allow_ips
    for peers in settings.forwarded_allow_ips:
        assert not ipaddress.ip_network(peers).is_global, peers
    assert settings.hsts_seconds >= 365 * 24 * 3600
    # Secure and __Host- cookies although the pod itself is reached over http.
    assert AdminSettings.from_env(env).cookie_secure == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pod_security(overlay: str) -> None:
    objs = render(overlay)
    (namespace,) = of_kind(objs, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == namespace["metadata"]["name"], o["kind"]


# ---- the dialogue service: intake and workers --------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dialogue_runs_as_intake_and_workers_of_one_image(overlay: str) -> None:
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    # The role is each Deployment's own, never the shared ConfigMap's.
    assert "DIALOGUE_ROLE" not in config(objs, "dialogue-config")
    images = set()
    envs = {}
    for name, role in DIALOGUE_ROLES.items():
        container = main_container(objs, name)
        envs[name] = container_env(objs, container)
        assert envs[name]["DIALOGUE_ROLE"] == role, name
        images.add(container["image"])
        assert pod_spec(deployments[name])["serviceAccountName"] == name
    assert len(images) == 1, images
    # Only the workers send, so only they hold the page token; only intake
    # answers the API whose page tokens are signed.
    assert "MESSENGER_PAGE_ACCESS_TOKEN_FILE" in envs["dialogue-worker"]
    assert "MESSENGER_PAGE_ACCESS_TOKEN_FILE" not in envs["dialogue"]
    assert "DIALOGUE_PAGE_TOKEN_SECRET_FILE" in envs["dialogue"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dialogue_workers_have_native_grpc_probes_and_metrics(overlay: str) -> None:
    objs = render(overlay)
    container = main_container(objs, "dialogue-worker")
    env = container_env(objs, container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(env["DIALOGUE_PORT"]), "metrics": int(env["METRICS_PORT"])}
    # Health and reflection only on the worker's gRPC port: enough for the probes.
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    live = container["livenessProbe"]
    assert live.get("grpc", {}).get("port") == ports["grpc"] or live["tcpSocket"]["port"] == "grpc"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dialogue_service_selects_intake_pods_only(overlay: str) -> None:
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    intake = template_labels(deployments["dialogue"])
    worker = template_labels(deployments["dialogue-worker"])
    services = of_kind(objs, "Service")
    selector = {"matchLabels": services["dialogue"]["spec"]["selector"]}
    assert selects(selector, intake) and not selects(selector, worker)
    # The gateway's target; workers serve no DialogueService, so no Service
    # sends anything to them.
    assert config(objs, "chatbot-common")["DIALOGUE_ADDRESS"] == "dns:///dialogue:50051"
    for service in services.values():
        if service["spec"].get("selector"):
            assert not selects({"matchLabels": service["spec"]["selector"]}, worker)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_selector_picks_its_own_pods(overlay: str) -> None:
    objs = render(overlay)
    workloads = {o["metadata"]["name"]: o for o in objs if o["kind"] in WORKLOADS}

    def picked(selector: Obj) -> set[str]:
        return {name for name, w in workloads.items() if selects(selector, template_labels(w))}

    deployments = of_kind(objs, "Deployment")
    for name, deployment in deployments.items():
        assert picked(deployment["spec"]["selector"]) == {name}, name
        for spread in pod_spec(deployment).get("topologySpreadConstraints", []):
            assert picked(spread["labelSelector"]) == {name}, name
    for name, service in of_kind(objs, "Service").items():
        assert picked({"matchLabels": service["spec"]["selector"]}) == {name}, name
    for name, budget in of_kind(objs, "PodDisruptionBudget").items():
        assert name in deployments
        assert picked(budget["spec"]["selector"]) == {name}, name
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in of_kind(objs, kind).items():
            target = scaler["spec"]["scaleTargetRef"]
            assert target.get("kind", "Deployment") == "Deployment", name
            assert target["name"] == name and name in deployments, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_the_dialogue_paths_and_no_others(overlay: str) -> None:
    objs = render(overlay)
    intake, worker = pod(objs, "dialogue"), pod(objs, "dialogue-worker")
    gateway, nlu, chatlog = pod(objs, "gateway"), pod(objs, "nlu"), pod(objs, "chatlog")
    store = redis(objs)
    # Workers: Redis, the NLU, the chatlog, names, and HTTPS to the Graph API
    # (never to private addresses that way).
    assert connects(objs, worker, store, 6379)
    assert connects(objs, worker, nlu, 50052)
    assert connects(objs, worker, chatlog, 50053)
    assert connects(objs, worker, DNS, 53, "UDP") and connects(objs, worker, DNS, 53)
    assert connects(objs, worker, GRAPH_API, 443)
    assert not connects(objs, worker, PRIVATE_HOST, 443)
    assert not connects(objs, worker, GRAPH_API, 80)
    # ...and nothing calls them but Prometheus (the kubelet's probes always pass).
    assert connects(objs, PROMETHEUS, worker, METRICS_PORTS["dialogue-worker"])
    for caller in (gateway, intake, nlu, chatlog, INGRESS_CONTROLLER):
        assert not connects(objs, caller, worker, GRPC_PORTS["dialogue"]), caller
    # Intake: the gateway's calls in; Redis and the chatlog (hand-offs) out.
    assert connects(objs, gateway, intake, 50051)
    assert connects(objs, intake, store, 6379)
    assert connects(objs, intake, chatlog, 50053)
    assert connects(objs, intake, DNS, 53, "UDP")
    assert connects(objs, PROMETHEUS, intake, METRICS_PORTS["dialogue"])
    assert not connects(objs, intake, nlu, 50052)
    assert not connects(objs, intake, GRAPH_API, 443)
    for caller in (worker, nlu, chatlog, INGRESS_CONTROLLER):
        assert not connects(objs, caller, intake, 50051), caller
    # The edge: the ingress controller reaches the gateway, and only the gateway.
    assert connects(objs, INGRESS_CONTROLLER, gateway, 8080)
    assert not connects(objs, INGRESS_CONTROLLER, intake, 50051)


# ---- dev ---------------------------------------------------------------------------


def test_dev_runs_one_replica_each_with_datastores_inside() -> None:
    objs = render("dev")
    deployments = of_kind(objs, "Deployment")
    for name in DEPLOYMENTS:
        assert deployments[name]["spec"]["replicas"] == 1
        image = main_container(objs, name)["image"]
        assert image.endswith(":dev"), image
    sets = of_kind(objs, "StatefulSet")
    redis = pod_spec(sets["redis"])["containers"][0]
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert sets["cassandra"]["spec"]["replicas"] == 1
    assert sets["redis"]["spec"]["volumeClaimTemplates"]
    assert sets["cassandra"]["spec"]["volumeClaimTemplates"]
    assert config(objs, "chatbot-common")["REDIS_URL"].startswith("redis://redis:")
    assert config(objs, "chatlog-config")["CASSANDRA_HOSTS"] == "cassandra"


# ---- prod --------------------------------------------------------------------------


def test_prod_autoscales_every_service() -> None:
    objs = render("prod")
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(DEPLOYMENTS)
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu[0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        # The HPA owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in of_kind(objs, "Deployment")[name]["spec"]
    # Workers scale on the backlog (users waiting for one); intake on CPU alone.
    external = [m for m in hpas["dialogue-worker"]["spec"]["metrics"] if m["type"] == "External"]
    assert external[0]["external"]["metric"]["name"] == "dialogue_ready_users"
    assert external[0]["external"]["target"]["type"] == "AverageValue"
    assert {m["type"] for m in hpas["dialogue"]["spec"]["metrics"]} == {"Resource"}


def test_prod_has_disruption_budgets_matching_the_pods() -> None:
    objs = render("prod")
    budgets = of_kind(objs, "PodDisruptionBudget")
    assert set(budgets) == set(DEPLOYMENTS)
    for name, pdb in budgets.items():
        assert pdb["apiVersion"] == "policy/v1"
        selector = pdb["spec"]["selector"]["matchLabels"]
        labels = of_kind(objs, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1


def test_prod_spreads_pods_over_zones() -> None:
    objs = render("prod")
    for name in DEPLOYMENTS:
        spread = pod_spec(of_kind(objs, "Deployment")[name])["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}


def test_prod_uses_external_datastores() -> None:
    objs = render("prod")
    assert not of_kind(objs, "StatefulSet")
    chatlog = config(objs, "chatlog-config")
    assert chatlog["CASSANDRA_CONSISTENCY"] == "LOCAL_QUORUM"
    assert chatlog["CASSANDRA_APPLY_SCHEMA"] == "false"
    assert chatlog["CASSANDRA_REPLICATION"].startswith("NetworkTopologyStrategy:")
    assert len(chatlog["CASSANDRA_HOSTS"].split(",")) >= 3
    assert "127.0.0.1" not in config(objs, "chatbot-common")["REDIS_URL"]
    job = of_kind(objs, "Job")["chatlog-schema"]
    assert pod_spec(job)["containers"][0]["args"] == ["schema"]
    for name in DEPLOYMENTS:
        image = main_container(objs, name)["image"]
        assert re.search(r":\d+\.\d+\.\d+$", image), image


def test_keda_variant_replaces_the_dialogue_worker_hpa() -> None:
    objs = render("prod-keda")
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(DEPLOYMENTS) - {"dialogue-worker"}
    assert hpas["dialogue"]["spec"]["scaleTargetRef"]["name"] == "dialogue"
    (scaled,) = of_kind(objs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dialogue-worker"
    queries = [t["metadata"].get("query", "") for t in scaled["spec"]["triggers"]]
    assert any("dialogue_ready_users" in q for q in queries)


# ---- Dockerfiles -------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_is_multi_stage_non_root_and_pinned(name: str) -> None:
    text = (REPO / "services" / name / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM (\S+)", text, flags=re.M)
    python = "3.10" if name == "nlu" else "3.11"
    assert len(bases) >= 2
    for base in bases:
        assert base == "builder" or re.fullmatch(rf"python:{python}\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and re.fullmatch(r"[1-9]\d{4,}:[1-9]\d{4,}", users[-1]), users
    assert f'"services.{name}"' in text
    assert "apt-get" not in text
    if name == "nlu":
        assert "RASA_TELEMETRY_ENABLED=false" in text
        assert "NLU_MODEL=/app/models/nlu.tar.gz" in text
        assert "services.nlu train" in text


def test_dockerignore_keeps_local_state_out() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "protos", "mesh", "services"}


def test_the_dev_redis_and_the_production_advice_agree_on_durability() -> None:
    """An acknowledged event must be on disk: the dev overlay's Redis syncs every
    write, and the README asks the same (plus a replica) of production."""
    redis_set = next(
        obj for name, obj in of_kind(render("dev"), "StatefulSet").items() if "redis" in name
    )
    args = next(containers(redis_set))["args"]
    assert args[args.index("--appendfsync") + 1] == "always"
    readme = (K8S / "README.md").read_text()
    for setting in ("`appendfsync always`", "`min-replicas-to-write 1`", "`noeviction`"):
        assert setting in readme, setting
    assert "`appendfsync everysec`" not in readme
