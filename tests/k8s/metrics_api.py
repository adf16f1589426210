"""An aggregated metrics API for the HPA controller, served by the test process.

``external.metrics.k8s.io/v1beta1`` answers the values a test sets (the
Prometheus Adapter's place in a real cluster); ``metrics.k8s.io/v1beta1``
reports every running pod nearly idle (metrics-server's place), so that an HPA
with a CPU metric next to the external one can also scale down. Served over
HTTPS with a self-signed certificate and registered as APIServices with
``insecureSkipTLSVerify``, behind an ExternalName Service: kube-apiserver's
aggregator proxies to it like to any extension API server.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

Obj = dict[str, Any]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "metrics.crt", directory / "metrics.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class MetricsAPI:
    """external.metrics.k8s.io (values the test sets) and metrics.k8s.io (every
    pod nearly idle), served over HTTPS and registered as aggregated APIServices."""

    EXTERNAL = "external.metrics.k8s.io/v1beta1"
    RESOURCE = "metrics.k8s.io/v1beta1"

    def __init__(self, api: httpx.Client, directory: Path) -> None:
        self.external: dict[tuple[str, str], int] = {}
        self.requests: list[str] = []
        self._api = api
        cert, key = _self_signed(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _pod_metrics(self, namespace: str, selector: str) -> Obj:
        pods = self._api.get(
            f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}
        ).json()["items"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "PodMetricsList",
            "apiVersion": self.RESOURCE,
            "metadata": {},
            "items": [
                {
                    "metadata": {"name": p["metadata"]["name"], "namespace": namespace},
                    "timestamp": now,
                    "window": "1s",
                    "containers": [
                        {"name": c["name"], "usage": {"cpu": "1m", "memory": "16Mi"}}
                        for c in p["spec"]["containers"]
                    ],
                }
                for p in pods
                if p["status"].get("phase") == "Running"
            ],
        }

    def _route(self, path: str, query: dict[str, list[str]]) -> Obj | None:
        parts = path.strip("/").split("/")
        group_version = "/".join(parts[1:3])
        if parts[:1] != ["apis"] or group_version not in (self.EXTERNAL, self.RESOURCE):
            return None
        rest = parts[3:]
        if not rest:
            resources = (
                [{"name": "dialogue_ready_users", "kind": "ExternalMetricValueList"}]
                if group_version == self.EXTERNAL
                else [{"name": "pods", "kind": "PodMetrics"}]
            )
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [
                    {**r, "singularName": "", "namespaced": True, "verbs": ["get", "list"]}
                    for r in resources
                ],
            }
        if len(rest) != 3 or rest[0] != "namespaces":
            return None
        namespace, name = rest[1], rest[2]
        if group_version == self.RESOURCE:
            if name != "pods":
                return None
            return self._pod_metrics(namespace, query.get("labelSelector", [""])[0])
        if (namespace, name) not in self.external:
            return None
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "ExternalMetricValueList",
            "apiVersion": self.EXTERNAL,
            "metadata": {},
            "items": [
                {
                    "metricName": name,
                    "metricLabels": {},
                    "timestamp": now,
                    "value": str(self.external[(namespace, name)]),
                }
            ],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                api.requests.append(url.path)
                body = api._route(url.path, parse_qs(url.query))
                status = 200 if body is not None else 404
                payload = json.dumps(
                    body
                    if body is not None
                    else {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def register(self, plane: Any) -> None:
        objects: list[Obj] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "test-metrics", "namespace": "kube-system"},
                # The aggregator resolves an ExternalName Service to that host.
                "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
            }
        ]
        for group in ("external.metrics.k8s.io", "metrics.k8s.io"):
            objects.append(
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"v1beta1.{group}"},
                    "spec": {
                        "group": group,
                        "version": "v1beta1",
                        "service": {
                            "namespace": "kube-system",
                            "name": "test-metrics",
                            "port": self.port,
                        },
                        "insecureSkipTLSVerify": True,
                        "groupPriorityMinimum": 100,
                        "versionPriority": 100,
                    },
                }
            )
        plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        for group in ("external.metrics.k8s.io", "metrics.k8s.io"):
            plane.kubectl(
                "wait", "--for=condition=Available", "--timeout=120s", f"apiservice/v1beta1.{group}"
            )
