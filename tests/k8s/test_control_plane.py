"""Every overlay, applied to a real control plane, runs and autoscales as declared.

A local kube-apiserver, kube-controller-manager and kube-scheduler on etcd, with
kwok nodes (``scripts/kube_control_plane.py``, built once by ``make kube``).
Each overlay is applied with server-side apply; then what the server stored
and what its controllers did is checked: every Deployment Available on the
nodes, each Service's endpoints exactly its workload's pods, each PDB counting
its Deployment's pods, the NetworkPolicies (as stored) admitting the mesh's
paths and nothing else, and probes and security contexts intact after
admission (the namespaces enforce the restricted Pod Security Standard). For
prod, the real HPA controller scales the dialogue workers on
``dialogue_ready_users`` served by an aggregated external metrics API that this
module runs, out and back as the HPA's behavior allows.

kwok runs no containers: pods become Ready without an image being pulled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import itertools
import json
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from harness.support import REPO
from tests.k8s.metrics_api import MetricsAPI
from tests.k8s.test_manifests import (
    DNS,
    GRAPH_API,
    INGRESS_CONTROLLER,
    METRICS_PORTS,
    PRIVATE_HOST,
    PROMETHEUS,
    Peer,
    connects,
)

pytestmark = pytest.mark.kube

Obj = dict[str, Any]
OVERLAYS = ("dev", "prod", "prod-keda")
NAMESPACES = {"dev": "chatbot-dev", "prod": "chatbot", "prod-keda": "chatbot"}
WAIT_SECONDS = 240.0

# The mesh's paths between its own pods: (caller, callee, callee's port).
MESH_PATHS = {
    ("gateway", "dialogue", 50051),
    ("gateway", "nlu", 50052),
    ("gateway", "chatlog", 50053),
    ("gateway", "redis", 6379),
    ("dialogue", "redis", 6379),
    ("dialogue", "chatlog", 50053),
    ("dialogue-worker", "redis", 6379),
    ("dialogue-worker", "nlu", 50052),
    ("dialogue-worker", "chatlog", 50053),
    ("chatlog", "cassandra", 9042),
    ("chatlog-schema", "cassandra", 9042),
}


def _load_script() -> ModuleType:
    path = REPO / "scripts" / "kube_control_plane.py"
    spec = importlib.util.spec_from_file_location("kube_control_plane", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kcp = _load_script()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Polls until ``condition()`` is truthy; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.25)


# ---- fixtures ---------------------------------------------------------------------------


@dataclass
class Cluster:
    plane: Any
    api: httpx.Client
    metrics: MetricsAPI

    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, path: str, **params: str) -> Obj:
        with self.lock:  # the replica recorder's thread shares the client
            response = self.api.get(path, params=params)
        response.raise_for_status()
        result: Obj = response.json()
        return result

    def items(self, path: str, kind: str, **params: str) -> list[Obj]:
        return [{**item, "kind": kind} for item in self.get(path, **params)["items"]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bins = kcp.bin_dir()
    missing = [b for b in kcp.BINARIES if not (bins / b).is_file()]
    if missing:
        pytest.fail(
            f"no {', '.join(missing)} in {bins}: run `make kube` "
            "(or scripts/kube_control_plane.py build), or the whole suite with `make test`"
        )
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kube-")))
        plane = stack.enter_context(kcp.running(work, nodes=3, hpa_sync_seconds=1.0))

        def client() -> httpx.Client:
            return httpx.Client(
                base_url=plane.server,
                verify=ssl.create_default_context(cafile=str(plane.ca)),
                headers={"Authorization": f"Bearer {plane.token}"},
                timeout=30,
            )

        api = stack.enter_context(client())
        # The metrics server's threads get a client of their own.
        metrics = MetricsAPI(stack.enter_context(client()), work)
        stack.callback(metrics.stop)
        metrics.register(plane)
        yield Cluster(plane, api, metrics)


@dataclass
class Deployed:
    overlay: str
    namespace: str
    rendered: list[Obj]
    cluster: Cluster

    def rendered_of(self, kind: str) -> dict[str, Obj]:
        return {o["metadata"]["name"]: o for o in self.rendered if o["kind"] == kind}

    def stored(self, path: str, kind: str) -> dict[str, Obj]:
        items = self.cluster.items(path.format(ns=self.namespace), kind)
        return {o["metadata"]["name"]: o for o in items}

    def pods(self) -> list[Obj]:
        return self.cluster.items(f"/api/v1/namespaces/{self.namespace}/pods", "Pod")


def _persistent_volumes(rendered: list[Obj], namespace: str) -> list[Obj]:
    """One pre-bound volume per StatefulSet claim: nothing provisions storage here."""
    volumes = []
    for workload in rendered:
        if workload["kind"] != "StatefulSet":
            continue
        for template in workload["spec"].get("volumeClaimTemplates", []):
            for ordinal in range(workload["spec"].get("replicas", 1)):
                claim = f"{template['metadata']['name']}-{workload['metadata']['name']}-{ordinal}"
                volumes.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": f"{namespace}-{claim}"},
                        "spec": {
                            "capacity": {
                                "storage": template["spec"]["resources"]["requests"]["storage"]
                            },
                            "accessModes": template["spec"]["accessModes"],
                            "claimRef": {"namespace": namespace, "name": claim},
                            "hostPath": {"path": f"/var/lib/kwok/{namespace}/{claim}"},
                        },
                    }
                )
    return volumes


def _explain_unavailable(cluster: Cluster, namespace: str) -> str:
    return str(
        cluster.plane.kubectl(
            "-n", namespace, "get", "deployments,replicasets,pods,events", "-o", "wide", check=False
        )
    )


@pytest.fixture(scope="module")
def deployed(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[Deployed]:
    overlay: str = request.param
    namespace = NAMESPACES[overlay]
    plane = cluster.plane
    if overlay == "prod-keda":
        crds = kcp.bin_dir().parent / "share" / "keda-crds.yaml"
        if not crds.is_file():
            pytest.skip(
                f"KEDA's CRDs were not downloadable when the control plane was built ({crds})"
            )
        plane.kubectl("apply", "--server-side", "-f", str(crds))
        plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/scaledobjects.keda.sh"
        )
    text = plane.kubectl("kustomize", str(REPO / "k8s" / "overlays" / overlay))
    rendered = [doc for doc in yaml.safe_load_all(text) if doc]
    volumes = _persistent_volumes(rendered, namespace)
    if volumes:
        plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": volumes}),
        )
    cluster.metrics.external[(namespace, "dialogue_ready_users")] = 0
    plane.kubectl("apply", "--server-side", "--field-manager=chatbot", "-f", "-", stdin=text)
    try:
        plane.kubectl(
            "-n",
            namespace,
            "wait",
            "--for=condition=Available",
            "--all",
            "deployments",
            f"--timeout={WAIT_SECONDS:.0f}s",
        )
    except kcp.ControlPlaneError as error:
        pytest.fail(f"{overlay}: {error}\n{_explain_unavailable(cluster, namespace)}")
    result = Deployed(overlay, namespace, rendered, cluster)
    # Settled: each HPA has raised its Deployment to its minimum, and all of it is available.
    minimum = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"].get("minReplicas", 1)
        for hpa in result.rendered_of("HorizontalPodAutoscaler").values()
    }

    def settled() -> bool:
        deployments = result.stored("/apis/apps/v1/namespaces/{ns}/deployments", "Deployment")
        return all(
            d["spec"]["replicas"] >= minimum.get(name, 1)
            and d["status"].get("observedGeneration") == d["metadata"]["generation"]
            and d["status"].get("availableReplicas") == d["spec"]["replicas"]
            and d["status"].get("updatedReplicas") == d["spec"]["replicas"]
            for name, d in deployments.items()
        )

    wait_for(settled, f"{overlay}: every Deployment at its HPA's minimum and available")
    try:
        yield result
    finally:
        plane.kubectl(
            "delete", "namespace", namespace, "--wait=true", "--timeout=180s", check=False
        )
        if volumes:
            plane.kubectl(
                "delete",
                "pv",
                *(v["metadata"]["name"] for v in volumes),
                "--wait=false",
                check=False,
            )
        plane.check_running()


def each_overlay() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("deployed", OVERLAYS, indirect=True)


# ---- helpers ------------------------------------------------------------------------------


def owned_pods(deployed: Deployed, kind: str, name: str) -> set[str]:
    """The pods a workload made (through its ReplicaSets for a Deployment)."""
    owners = {name}
    if kind == "Deployment":
        replica_sets = deployed.stored("/apis/apps/v1/namespaces/{ns}/replicasets", "ReplicaSet")
        owners = {
            rs
            for rs, obj in replica_sets.items()
            if any(
                o["kind"] == "Deployment" and o["name"] == name
                for o in obj["metadata"].get("ownerReferences", [])
            )
        }
        kind = "ReplicaSet"
    return {
        p["metadata"]["name"]
        for p in deployed.pods()
        if any(
            o["kind"] == kind and o["name"] in owners
            for o in p["metadata"].get("ownerReferences", [])
        )
        and p["metadata"].get("deletionTimestamp") is None
    }


def selector_string(selector: Obj) -> str:
    terms = [f"{k}={v}" for k, v in selector.get("matchLabels", {}).items()]
    for e in selector.get("matchExpressions", []):
        match e["operator"]:
            case "In" | "NotIn":
                terms.append(f"{e['key']} {e['operator'].lower()} ({','.join(e['values'])})")
            case "Exists":
                terms.append(e["key"])
            case "DoesNotExist":
                terms.append(f"!{e['key']}")
    return ",".join(terms)


def contains(stored: Any, declared: Any) -> bool:
    """Everything declared is in what was stored (the server may only add defaults)."""
    if isinstance(declared, dict):
        return isinstance(stored, dict) and all(
            k in stored and contains(stored[k], v) for k, v in declared.items()
        )
    if isinstance(declared, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(declared)
            and all(contains(s, d) for s, d in zip(stored, declared, strict=True))
        )
    return bool(stored == declared)


# ---- the overlays, as stored and acted on ----------------------------------------------------


@each_overlay()
def test_every_deployment_is_available_on_kwok_nodes(deployed: Deployed) -> None:
    deployments = deployed.stored("/apis/apps/v1/namespaces/{ns}/deployments", "Deployment")
    assert set(deployments) == set(deployed.rendered_of("Deployment"))
    nodes = {n["metadata"]["name"]: n for n in deployed.cluster.items("/api/v1/nodes", "Node")}
    for name, deployment in deployments.items():
        status = deployment["status"]
        available = {c["type"]: c["status"] for c in status["conditions"]}["Available"]
        assert available == "True", name
        assert status["availableReplicas"] == deployment["spec"]["replicas"] >= 1, name
        pods = owned_pods(deployed, "Deployment", name)
        assert len(pods) == deployment["spec"]["replicas"], name
    # dev's datastores too, on the volumes bound for them.
    for name in deployed.rendered_of("StatefulSet"):

        def ready(name: str = name) -> bool:
            sets = deployed.stored("/apis/apps/v1/namespaces/{ns}/statefulsets", "StatefulSet")
            status = sets[name].get("status", {})
            return bool(status.get("readyReplicas") == sets[name]["spec"]["replicas"])

        wait_for(ready, f"StatefulSet {name} ready")
    for pod in deployed.pods():
        if pod["status"].get("phase") == "Running":
            node = nodes[pod["spec"]["nodeName"]]
            assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
            assert pod["status"]["podIP"], pod["metadata"]["name"]


@each_overlay()
def test_services_send_traffic_to_their_own_pods_only(deployed: Deployed) -> None:
    services = deployed.stored("/api/v1/namespaces/{ns}/services", "Service")
    assert set(services) == set(deployed.rendered_of("Service"))
    workloads = {
        **{n: "Deployment" for n in deployed.rendered_of("Deployment")},
        **{n: "StatefulSet" for n in deployed.rendered_of("StatefulSet")},
    }
    for name, service in services.items():
        # Each Service is named after the workload it fronts.
        expected = owned_pods(deployed, workloads[name], name)
        assert expected, name

        def endpoints(name: str = name) -> set[str]:
            slices = deployed.cluster.items(
                f"/apis/discovery.k8s.io/v1/namespaces/{deployed.namespace}/endpointslices",
                "EndpointSlice",
                labelSelector=f"kubernetes.io/service-name={name}",
            )
            return {
                e["targetRef"]["name"]
                for s in slices
                for e in s.get("endpoints") or []
                if e.get("conditions", {}).get("ready")
            }

        running = {
            p["metadata"]["name"]
            for p in deployed.pods()
            if p["metadata"]["name"] in expected and p["status"].get("podIP")
        }
        assert running, f"no pod of {name} has an address"
        wait_for(
            lambda running=running: endpoints() == running,  # type: ignore[misc]
            f"{name}'s endpoints are {sorted(running)}",
        )
        # Named target ports resolve to the ports the containers declare.
        template = deployed.rendered_of(workloads[name])[name]["spec"]["template"]
        declared = {
            p.get("name"): p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        slices = deployed.cluster.items(
            f"/apis/discovery.k8s.io/v1/namespaces/{deployed.namespace}/endpointslices",
            "EndpointSlice",
            labelSelector=f"kubernetes.io/service-name={name}",
        )
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = declared[target] if isinstance(target, str) else target
            assert any(
                p["port"] == number and p.get("name", "") == port.get("name", "")
                for s in slices
                for p in s.get("ports") or []
            ), (name, port)


@each_overlay()
def test_every_disruption_budget_counts_its_deployments_pods(deployed: Deployed) -> None:
    budgets = deployed.stored("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", "PDB")
    assert set(budgets) == set(deployed.rendered_of("PodDisruptionBudget"))
    if deployed.overlay == "dev":
        assert not budgets
    for name, budget in budgets.items():
        pods = owned_pods(deployed, "Deployment", name)
        selected = {
            p["metadata"]["name"]
            for p in deployed.cluster.items(
                f"/api/v1/namespaces/{deployed.namespace}/pods",
                "Pod",
                labelSelector=selector_string(budget["spec"]["selector"]),
            )
        }
        assert selected == pods and pods, name

        def counted(name: str = name, pods: set[str] = pods) -> bool:
            status = deployed.stored("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", "PDB")[
                name
            ].get("status", {})
            return bool(status.get("expectedPods") == len(pods) == status.get("currentHealthy"))

        wait_for(counted, f"the disruption controller counts {name}'s {len(pods)} pods")


@each_overlay()
def test_network_policies_as_stored_admit_the_mesh_paths_and_nothing_else(
    deployed: Deployed,
) -> None:
    base = "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
    policies = deployed.stored(base, "NetworkPolicy")
    assert set(policies) == set(deployed.rendered_of("NetworkPolicy"))
    namespace = deployed.cluster.get(f"/api/v1/namespaces/{deployed.namespace}")
    workloads: dict[str, Obj] = {}
    for kind, path in (
        ("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
        ("StatefulSet", "/apis/apps/v1/namespaces/{ns}/statefulsets"),
        ("Job", "/apis/batch/v1/namespaces/{ns}/jobs"),
    ):
        workloads.update(deployed.stored(path, kind))
    objs = (
        {**namespace, "kind": "Namespace"},
        *policies.values(),
        *workloads.values(),
    )

    def labels(name: str) -> dict[str, str]:
        result: dict[str, str] = workloads[name]["spec"]["template"]["metadata"]["labels"]
        return result

    def ports(name: str) -> set[int]:
        return {
            p["containerPort"]
            for c in workloads[name]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
            if p.get("protocol", "TCP") == "TCP"
        }

    peers = {name: Peer(labels(name)) for name in workloads}
    # External datastores (prod) are addresses in the blocks their policies name.
    externals: dict[str, Peer] = {}
    for store, policy in (
        ("redis", "allow-external-redis"),
        ("cassandra", "allow-external-cassandra"),
    ):
        if store not in workloads and policy in policies:
            (rule,) = policies[policy]["spec"]["egress"]
            network = ipaddress.ip_network(rule["to"][0]["ipBlock"]["cidr"])
            externals[store] = Peer(ip=str(next(network.hosts())))
    # Every pod with every port another pod declares: admitted exactly on the mesh's paths.
    for source in workloads:
        for target in workloads:
            for port in ports(target):
                expected = (source, target, port) in MESH_PATHS
                assert connects(objs, peers[source], peers[target], port) == expected, (
                    source,
                    target,
                    port,
                )
        for store, peer in externals.items():
            port = {"redis": 6379, "cassandra": 9042}[store]
            expected = (source, store, port) in MESH_PATHS
            assert connects(objs, peers[source], peer, port) == expected, (source, store)
        # Names for everyone; HTTPS to the Graph API for the workers only, never inward.
        assert connects(objs, peers[source], DNS, 53, "UDP"), source
        assert connects(objs, peers[source], GRAPH_API, 443) == (source == "dialogue-worker")
        assert not connects(objs, peers[source], PRIVATE_HOST, 443), source
    # From outside the namespace: the ingress controller to the gateway's HTTP port,
    # Prometheus to each metrics port.
    for target in workloads:
        for port in ports(target):
            assert connects(objs, INGRESS_CONTROLLER, peers[target], port) == (
                (target, port) == ("gateway", 8080)
            ), (target, port)
            assert connects(objs, PROMETHEUS, peers[target], port) == (
                METRICS_PORTS.get(target) == port
            ), (target, port)


@each_overlay()
def test_probes_and_security_contexts_survive_admission(deployed: Deployed) -> None:
    namespace = deployed.cluster.get(f"/api/v1/namespaces/{deployed.namespace}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = deployed.pods()
    for kind, path in (
        ("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
        ("StatefulSet", "/apis/apps/v1/namespaces/{ns}/statefulsets"),
    ):
        stored = deployed.stored(path, kind)
        for name, declared in deployed.rendered_of(kind).items():
            declared_spec = declared["spec"]["template"]["spec"]
            stored_spec = stored[name]["spec"]["template"]["spec"]
            owned = owned_pods(deployed, kind, name)
            admitted = [p["spec"] for p in pods if p["metadata"]["name"] in owned]
            assert admitted, f"no pod of {name} passed admission"
            for spec in (stored_spec, *admitted):
                assert contains(
                    spec.get("securityContext", {}), declared_spec.get("securityContext", {})
                ), name
                # The ServiceAccount admission plugin mounted no API token.
                assert not any(
                    m["mountPath"].startswith("/var/run/secrets/kubernetes.io")
                    for c in spec["containers"]
                    for m in c.get("volumeMounts", [])
                ), name
                for key in ("containers", "initContainers"):
                    live = {c["name"]: c for c in spec.get(key, [])}
                    for container in declared_spec.get(key, []):
                        got = live[container["name"]]
                        for field_name in (
                            "securityContext",
                            "readinessProbe",
                            "livenessProbe",
                            "startupProbe",
                            "lifecycle",
                        ):
                            if field_name in container:
                                assert contains(got.get(field_name), container[field_name]), (
                                    name,
                                    container["name"],
                                    field_name,
                                )


# ---- the dialogue workers' HPA, acting ---------------------------------------------------


class ReplicaRecorder:
    """Every distinct ``spec.replicas`` the Deployment goes through, in order."""

    def __init__(self, cluster: Cluster, path: str) -> None:
        self._cluster, self._path = cluster, path
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            replicas = int(self._cluster.get(self._path)["spec"]["replicas"])
            if not self.values or self.values[-1] != replicas:
                self.values.append(replicas)
            self._stop.wait(0.1)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reaches(self, replicas: int) -> bool:
        return bool(self.values) and self.values[-1] == replicas


def _step_limit(policies: Obj, replicas: int) -> int:
    """The most one period's policies let the count move from ``replicas``."""
    limits = [
        p["value"] if p["type"] == "Pods" else -(-replicas * p["value"] // 100)
        for p in policies["policies"]
    ]
    return int(max(limits) if policies.get("selectPolicy", "Max") == "Max" else min(limits))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("deployed", ["prod"], indirect=True)
def test_dialogue_workers_scale_out_and_back_on_ready_users(deployed: Deployed) -> None:
    cluster, ns = deployed.cluster, deployed.namespace
    hpa_path = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/dialogue-worker"
    deployment_path = f"/apis/apps/v1/namespaces/{ns}/deployments/dialogue-worker"
    spec = cluster.get(hpa_path)["spec"]
    low, high = spec["minReplicas"], spec["maxReplicas"]
    (external,) = (m["external"] for m in spec["metrics"] if m["type"] == "External")
    metric = external["metric"]["name"]
    assert metric == "dialogue_ready_users"
    per_replica = int(external["target"]["averageValue"])
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    # Minutes of scale-down stabilization would only make the test wait; the
    # rate policies, which shape the scale-down, stay as declared.
    if down.get("stabilizationWindowSeconds", 300):
        cluster.api.patch(
            hpa_path,
            content=json.dumps(
                {"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}}
            ),
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()

    def settled(replicas: int, value: int) -> bool:
        hpa = cluster.get(hpa_path)
        status = hpa.get("status", {})
        seen = [
            m["external"]["current"]
            for m in status.get("currentMetrics") or []
            if m["type"] == "External"
        ]
        active = {c["type"]: c["status"] for c in status.get("conditions", [])}
        current = cluster.get(deployment_path)["spec"]["replicas"]
        return (
            active.get("ScalingActive") == "True"
            and bool(seen)
            and _quantity(seen[0]["averageValue"]) * current == value
            and current == replicas
        )

    wait_for(lambda: settled(low, 0), f"dialogue-worker at its minimum {low} with no ready users")

    # Enough ready users for more workers than one scale-up period may add.
    target = low + _step_limit(up, low) + 1
    assert target <= high
    with ReplicaRecorder(cluster, deployment_path) as recorder:
        cluster.metrics.external[(ns, metric)] = target * per_replica
        wait_for(
            lambda: recorder.reaches(target), f"{target} workers for {target * per_replica} users"
        )
        rising = list(recorder.values)
    assert rising[0] == low and rising[-1] == target, rising
    assert len(rising) >= 3, f"the scale-up policies should have paced {rising}"
    for before, after in itertools.pairwise(rising):
        assert 0 < after - before <= _step_limit(up, before), rising

    # A scale-down policy limits the change from the count at the start of its
    # period, and scale-ups inside that period count: dropped at once, the
    # workers could go straight back to 3. Let the period pass first, so each of
    # the policy's steps shows. (The HPA controller's clock is the subject here.)
    time.sleep(max(p["periodSeconds"] for p in down["policies"]) + 3)
    with ReplicaRecorder(cluster, deployment_path) as recorder:
        cluster.metrics.external[(ns, metric)] = 0
        wait_for(
            lambda: recorder.reaches(low),
            f"back to {low} workers",
            timeout=WAIT_SECONDS + 60 * (target - low),
        )
        falling = list(recorder.values)
    expected = [target]
    while expected[-1] > low:
        expected.append(max(low, expected[-1] - _step_limit(down, expected[-1])))
    assert falling == expected, "scale-down steps as the HPA's policies declare"
    assert all(low <= r <= high for r in rising + falling)
    assert "/apis/external.metrics.k8s.io/v1beta1/namespaces/chatbot/dialogue_ready_users" in (
        cluster.metrics.requests
    )


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the HPA reports a metric ("0", "16", "5333m")."""
    if value.endswith("m"):
        return int(value[:-1]) / 1000
    return float(value)
