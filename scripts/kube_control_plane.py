#!/usr/bin/env python3
"""A local Kubernetes control plane with simulated nodes, for the manifests' tests.

Builds once from the Go module proxy, into the shared cache keyed by version:
kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
k8s.io/kubernetes, etcd, and kwok (nodes and pods without containers). Then
starts them on free loopback ports with a throwaway CA, service-account key and
kubeconfig in a temporary directory, and stops them all on exit.

    scripts/kube_control_plane.py build     # print the binaries' directory
    scripts/kube_control_plane.py run       # start, print the kubeconfig, wait for Ctrl-C

k8s.io/kubernetes cannot be `go install`ed: its go.mod points its staging
modules (k8s.io/api, k8s.io/apiserver, ...) at ./staging, which the proxy's zip
lacks. A small wrapper module requires it and pins each staging module to the
matching v0.X.Y with `replace`. etcd's server module has the same kind of
replace lines, so it gets a wrapper too. Building takes several minutes and
about 1 GB of module and build cache the first time; the build runs under
`nice` so it yields the CPU to everything else.

CHATBOT_CACHE (default ~/.cache/chatbot) is the cache the Makefile uses for the
NLU environment; a fresh checkout reuses what another one built.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KUBERNETES_VERSION = "v1.34.2"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
KEDA_VERSION = "v2.16.1"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*COMPONENTS, "etcd", "kwok")


def cache_root() -> Path:
    named = os.environ.get("CHATBOT_CACHE")
    if named:
        return Path(named)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbot"


def bin_dir(root: Path | None = None) -> Path:
    key = f"kube-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}"
    return (root or cache_root()) / key / "bin"


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


# ---- building ---------------------------------------------------------------


def _go(args: Sequence[str], cwd: Path, env: dict[str, str]) -> str:
    """Runs go at the lowest CPU priority, its output indented on stderr as progress."""
    proc = subprocess.Popen(
        ["nice", "-n", "19", "go", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(f"    {line}", end="", file=sys.stderr, flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"error: go {' '.join(args)} failed in {cwd}")
    return "".join(lines)


def _downloaded(module: str, env: dict[str, str], cwd: Path, what: str) -> Path:
    """A module fetched into Go's cache: its go.mod (``what="GoMod"``) or source (``"Dir"``)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)[what])


def _staging_modules(kubernetes_go_mod: Path) -> list[str]:
    modules = set()
    for line in kubernetes_go_mod.read_text().splitlines():
        parts = line.split()
        # "k8s.io/api => ./staging/src/k8s.io/api" inside the replace block.
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            modules.add(parts[0])
    return sorted(modules)


def _build_kubernetes(work: Path, out: Path, env: dict[str, str]) -> None:
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    mod = _downloaded(f"k8s.io/kubernetes@{KUBERNETES_VERSION}", env, work, "GoMod")
    staging = _staging_modules(mod)
    if not staging:
        raise SystemExit(f"error: no staging modules found in {mod}")
    (work / "go.mod").write_text(
        "module kubebuild\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n"
        + "".join(f"\t{m} => {m} {staging_version}\n" for m in staging)
        + ")\n"
    )
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage kubebuild\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in COMPONENTS)
        + ")\n"
    )
    _say(f"resolving k8s.io/kubernetes {KUBERNETES_VERSION} and {len(staging)} staging modules")
    _go(["mod", "tidy", "-e"], work, env)
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    ldflags = " ".join(
        f"-X {pkg}.{name}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in (
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    _say(f"compiling {', '.join(COMPONENTS)} (the longest step)")
    _go(
        ["build", "-v", "-ldflags", f"-s -w {ldflags}", "-o", str(out) + "/"]
        + [f"k8s.io/kubernetes/cmd/{c}" for c in COMPONENTS],
        work,
        env,
    )


def _build_etcd(work: Path, out: Path, env: dict[str, str]) -> None:
    (work / "go.mod").write_text(
        f"module etcdbuild\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    (work / "tools.go").write_text(
        '//go:build tools\n\npackage etcdbuild\n\nimport _ "go.etcd.io/etcd/server/v3"\n'
    )
    _say(f"building etcd {ETCD_VERSION}")
    _go(["mod", "tidy", "-e"], work, env)
    _go(
        ["build", "-v", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
        work,
        env,
    )


def _build_kwok(work: Path, out: Path, env: dict[str, str]) -> None:
    _say(f"building kwok {KWOK_VERSION}")
    _go(
        ["install", "-v", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
        work,
        {**env, "GOBIN": str(out)},
    )


def _write_share(share: Path, env: dict[str, str], work: Path) -> None:
    """kwok's stages (it simulates nothing without them) and KEDA's ScaledObject CRD."""
    kwok = _downloaded(f"sigs.k8s.io/kwok@{KWOK_VERSION}", env, work, "Dir")
    stages = [
        kwok / "kustomize/stage/node/fast/node-initialize.yaml",
        kwok / "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
        kwok / "kustomize/stage/pod/fast/pod-ready.yaml",
        kwok / "kustomize/stage/pod/fast/pod-complete.yaml",
        kwok / "kustomize/stage/pod/fast/pod-delete.yaml",
    ]
    (share / "kwok-stages.yaml").write_text(
        "\n---\n".join(path.read_text().strip() for path in stages) + "\n"
    )
    # KEDA's CRDs ship in its Go module; without them prod-keda cannot be applied.
    try:
        keda = _downloaded(f"github.com/kedacore/keda/v2@{KEDA_VERSION}", env, work, "Dir")
    except subprocess.CalledProcessError as error:
        _say(f"KEDA {KEDA_VERSION} not downloadable, prod-keda will be skipped: {error.stderr}")
        return
    crd = keda / "config/crd/bases/keda.sh_scaledobjects.yaml"
    shutil.copyfile(crd, share / "keda-crds.yaml")


def build(root: Path | None = None) -> Path:
    """Builds the binaries unless the cache has them; returns their directory."""
    target = bin_dir(root)
    share = target.parent / "share"
    if all((target / b).is_file() for b in BINARIES) and (share / "kwok-stages.yaml").is_file():
        return target
    if shutil.which("go") is None:
        raise SystemExit("error: Go is needed to build the control plane (https://go.dev/dl/)")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -mod=mod -buildvcs=false").strip(),
    }
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kube-build.", dir=target.parent.parent))
    try:
        if not all((target / b).is_file() for b in BINARIES):
            _say(
                f"building Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION} and kwok "
                f"{KWOK_VERSION} into {target}\n    (Go module proxy; about 1 GB of downloads "
                "and caches, several minutes the first time)"
            )
            out = staging / "bin"
            out.mkdir()
            steps = (
                ("kubernetes", _build_kubernetes),
                ("etcd", _build_etcd),
                ("kwok", _build_kwok),
            )
            for name, step in steps:
                work = staging / name
                work.mkdir()
                step(work, out, env)
            for b in BINARIES:
                if not (out / b).is_file():
                    raise SystemExit(f"error: {b} was not built")
            # Moved into place last, so an interrupted build never leaves a partial set.
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
        _say("collecting kwok's stages and KEDA's CRDs")
        new_share = staging / "share"
        new_share.mkdir()
        _write_share(new_share, env, staging)
        if share.exists():
            shutil.rmtree(share)
        new_share.rename(share)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(f"control plane binaries ready: {target}")
    return target


# ---- running ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_service_account_key(path: Path) -> None:
    # Imported here: building needs only the standard library.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _kubeconfig(server: str, ca: Path, user: str, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        },
        indent=2,
    )


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ControlPlaneError(RuntimeError):
    """A component did not start, or stopped early."""


@dataclass
class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on
    free loopback ports, all state in ``work`` (a fresh directory).

    ``hpa_sync_seconds`` is the controller-manager's HPA period (15 s by
    default in Kubernetes; shorter here so tests see the autoscalers act soon).
    """

    bins: Path
    work: Path
    hpa_sync_seconds: float = 2.0
    processes: list[_Process] = field(default_factory=list)
    api_port: int = 0
    token: str = ""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    @property
    def ca(self) -> Path:
        # kube-apiserver writes its self-signed serving certificate (with its CA) here.
        return self.work / "apiserver" / "apiserver.crt"

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(self.bins / name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work,
                start_new_session=True,  # Ctrl-C reaches the script, which stops them in order
            )
        process = _Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait(
        self, process: _Process, ready: Callable[[], bool], what: str, timeout: float = 120
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{process.name}: {what} not within {timeout:.0f} s:\n{process.tail()}"
        )

    def _get(self, url: str) -> bool:
        import ssl

        context = (
            ssl.create_default_context(cafile=str(self.ca)) if url.startswith("https") else None
        )
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.token = os.urandom(24).hex()
        tokens = {
            "admin": self.token,
            "system:kube-controller-manager": os.urandom(24).hex(),
            "system:kube-scheduler": os.urandom(24).hex(),
            "kwok": os.urandom(24).hex(),
        }
        # One system:masters token per component, so the audit trail names each.
        (self.work / "tokens.csv").write_text(
            "".join(f'{t},{user},{user},"system:masters"\n' for user, t in tokens.items())
        )
        (self.work / "tokens.csv").chmod(0o600)
        sa_key = self.work / "service-account.key"
        _write_service_account_key(sa_key)

        etcd_port, peer_port = free_port(), free_port()
        _say(f"starting etcd on 127.0.0.1:{etcd_port}")
        etcd = self._spawn(
            "etcd",
            [
                "--name=local",
                f"--data-dir={self.work / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # throwaway state
                "--log-level=warn",
            ],
        )
        self._wait(etcd, lambda: self._get(f"http://127.0.0.1:{etcd_port}/health"), "/health")

        self.api_port = free_port()
        _say(f"starting kube-apiserver on {self.server}")
        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.work / 'apiserver'}",
                f"--token-auth-file={self.work / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No kube-proxy: the "kubernetes" Service's endpoints would be loopback.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(
            apiserver, lambda: self.ca.exists() and self._get(f"{self.server}/readyz"), "/readyz"
        )
        self.kubeconfig.write_text(_kubeconfig(self.server, self.ca, "admin", self.token))
        self.kubeconfig.chmod(0o600)

        def kubeconfig_for(user: str) -> Path:
            path = self.work / f"{user.rsplit(':', 1)[-1]}.kubeconfig"
            path.write_text(_kubeconfig(self.server, self.ca, user, tokens[user]))
            path.chmod(0o600)
            return path

        _say("starting kube-controller-manager and kube-scheduler")
        manager = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig_for('system:kube-controller-manager')}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.ca}",
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_seconds}s",
                "--v=1",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig_for('system:kube-scheduler')}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )
        _say("starting kwok (simulated nodes and pods)")
        kwok = self._spawn(
            "kwok",
            [
                f"--kubeconfig={kubeconfig_for('kwok')}",
                f"--config={self.bins.parent / 'share' / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
            ],
        )
        # Components that died at once (bad flag, port taken) fail here, not later.
        time.sleep(1)
        for process in (manager, scheduler, kwok):
            if process.popen.poll() is not None:
                raise ControlPlaneError(f"{process.name} exited:\n{process.tail()}")
        _say(f"control plane up; KUBECONFIG={self.kubeconfig}")

    def check_running(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}"
                )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        self.processes.clear()

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            [str(self.bins / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,  # above any --timeout a caller gives kubectl wait
        )
        if check and out.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed:\n{out.stderr}")
        return out.stdout

    def add_nodes(self, count: int, zones: Sequence[str] = ("a", "b", "c")) -> list[str]:
        """Fake nodes, spread over zones, that kwok keeps Ready and runs pods on."""
        names = [f"kwok-node-{i}" for i in range(count)]
        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": f"zone-{zones[i % len(zones)]}",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                },
            }
            for i, name in enumerate(names)
        ]
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}),
        )
        self.kubectl(
            "wait", "--for=condition=Ready", "--timeout=120s", *(f"node/{n}" for n in names)
        )
        return names


@contextlib.contextmanager
def running(
    work: Path | None = None, nodes: int = 3, hpa_sync_seconds: float = 2.0
) -> Iterator[ControlPlane]:
    """Builds if needed, starts, adds ``nodes`` kwok nodes; stops everything on exit."""
    bins = build()
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kube-")))
        plane = stack.enter_context(ControlPlane(bins, work, hpa_sync_seconds))
        if nodes:
            _say(f"adding {nodes} kwok nodes")
            plane.add_nodes(nodes)
        yield plane


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build (once, cached) and run a local Kubernetes control plane with kwok nodes."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the binaries once (cached) and print their directory")
    run = sub.add_parser("run", help="start the control plane and wait; Ctrl-C stops it")
    run.add_argument("--nodes", type=int, default=3, help="kwok nodes to add (default 3)")
    run.add_argument(
        "--hpa-sync-seconds", type=float, default=15.0, help="HPA controller period (default 15)"
    )
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with running(nodes=args.nodes, hpa_sync_seconds=args.hpa_sync_seconds) as plane:
        print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
        _say("running; Ctrl-C stops it")
        while not stopping:
            plane.check_running()
            time.sleep(0.5)
        _say("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
