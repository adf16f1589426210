"""The Kubernetes manifests, rendered by kustomize, hold the properties the platform needs.

Every overlay under k8s/overlays is built once (``kubectl kustomize``, or the
kustomize that scripts/k8s_check.sh installs when kubectl is missing) and the
rendered objects are checked: security context and resources on every container,
native gRPC probes, the NLU's start-up budget, graceful shutdown longer than the
dialogue lease, autoscaling and disruption budgets in prod, default-deny network
policies, and no Secret from the repository. The Dockerfiles get a few static checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVICES = ("gateway", "dialogue", "nlu", "chatlog")
GRPC_PORTS = {"dialogue": 50051, "nlu": 50052, "chatlog": 50053}
METRICS_PORTS = {"dialogue": 9051, "nlu": 9052, "chatlog": 9053, "gateway": 8080}
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
    for name in SERVICES:
        deployment = of_kind(objs, "Deployment")[name]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": name}
        template = deployment["spec"]["template"]["metadata"]["labels"]
        assert template["app.kubernetes.io/name"] == name
        assert template["app.kubernetes.io/component"] == name
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
    for name in SERVICES:
        deployment = of_kind(objs, "Deployment")[name]
        container = main_container(objs, name)
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = int(command[1])
        env = container_env(objs, container)
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", "10"))
        budget = pod_spec(deployment)["terminationGracePeriodSeconds"]
        extra = int(env["DIALOGUE_LEASE_MS"]) / 1000 if name == "dialogue" else 0
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
    for name in SERVICES:
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
    dialogue = policies["dialogue"]["spec"]
    outside = [r for r in dialogue["egress"] if "ipBlock" in r["to"][0]]
    assert [p["port"] for r in outside for p in r["ports"]] == [443]
    assert "10.0.0.0/8" in outside[0]["to"][0]["ipBlock"]["except"]
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
    paths = {p["path"] for p in rule["http"]["paths"]}
    assert paths == {"/webhooks/messenger", "/admin"}
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {"gateway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pod_security(overlay: str) -> None:
    objs = render(overlay)
    (namespace,) = of_kind(objs, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == namespace["metadata"]["name"], o["kind"]


# ---- dev ---------------------------------------------------------------------------


def test_dev_runs_one_replica_each_with_datastores_inside() -> None:
    objs = render("dev")
    deployments = of_kind(objs, "Deployment")
    for name in SERVICES:
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
    assert set(hpas) == set(SERVICES)
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
    external = [m for m in hpas["dialogue"]["spec"]["metrics"] if m["type"] == "External"]
    assert external[0]["external"]["metric"]["name"] == "dialogue_ready_users"
    assert external[0]["external"]["target"]["type"] == "AverageValue"


def test_prod_has_disruption_budgets_matching_the_pods() -> None:
    objs = render("prod")
    budgets = of_kind(objs, "PodDisruptionBudget")
    assert set(budgets) == set(SERVICES)
    for name, pdb in budgets.items():
        assert pdb["apiVersion"] == "policy/v1"
        selector = pdb["spec"]["selector"]["matchLabels"]
        labels = of_kind(objs, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1


def test_prod_spreads_pods_over_zones() -> None:
    objs = render("prod")
    for name in SERVICES:
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
    for name in SERVICES:
        image = main_container(objs, name)["image"]
        assert re.search(r":\d+\.\d+\.\d+$", image), image


def test_keda_variant_replaces_the_dialogue_hpa() -> None:
    objs = render("prod-keda")
    assert set(of_kind(objs, "HorizontalPodAutoscaler")) == set(SERVICES) - {"dialogue"}
    scaled = of_kind(objs, "ScaledObject")["dialogue"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dialogue"
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
