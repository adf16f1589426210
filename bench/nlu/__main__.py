"""python -m bench.nlu: NLU throughput, latency, CPU and memory.

Runs in the NLU environment. Measures the bare in-process parse of the trained
model (the floor) at batches of 1, 8 and 32, then starts the real server as its
own process and drives Parse and ParseBatch over gRPC at several concurrencies.
Prints one table.

CPU is process CPU time (every thread), not wall time: the figure that decides
how many messages a core can take, and the one that stays put when other work
shares the machine. The server's resident memory is read once the model is
loaded and warmed, and again at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from chatbot.nlu.v1 import nlu_service_pb2 as pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    path: str
    concurrency: int
    texts: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.texts / self.seconds

    @property
    def cpu_ms(self) -> float:
        """CPU milliseconds per text, all threads of the process that parsed."""
        return self.cpu_seconds / self.texts * 1000

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def corpus() -> list[str]:
    texts = []
    for name in ("data/nlu.yml", "eval/heldout.yml"):
        for line in (REPO / "services" / "nlu" / name).read_text().splitlines():
            match = re.match(r"^\s+- (.+)$", line)
            if match and not line.strip().startswith("- \\"):
                texts.append(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", match.group(1)))
    return texts


def in_process(backend: Any, texts: list[str], n: int, batch: int, repeat: int) -> Row:
    """The median of ``repeat`` runs of ``n`` texts, by CPU per text."""
    runs = []
    for _ in range(repeat):
        latencies = []
        started, cpu = time.perf_counter(), time.process_time()
        done = 0
        while done < n:
            chunk = [texts[(done + i) % len(texts)] for i in range(batch)]
            t0 = time.perf_counter()
            backend.parse_many(chunk)
            latencies.append(time.perf_counter() - t0)
            done += batch
        label = "in-process parse" if batch == 1 else f"in-process batch of {batch}"
        seconds = time.perf_counter() - started
        runs.append(Row(label, 1, done, seconds, latencies, time.process_time() - cpu))
    return sorted(runs, key=lambda r: r.cpu_ms)[len(runs) // 2]


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, every thread, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


async def over_grpc(
    server: subprocess.Popen[bytes],
    port: int,
    texts: list[str],
    n: int,
    concurrency: int,
    batch: int,
) -> Row:
    latencies: list[float] = []
    counter = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = nlu_service_pb2_grpc.NluServiceStub(channel)
        await stub.Parse(pb.ParseRequest(text="warm up"))

        async def worker() -> None:
            nonlocal counter
            while counter < n:
                start = counter
                counter += batch
                chunk = [texts[(start + i) % len(texts)] for i in range(batch)]
                t0 = time.perf_counter()
                if batch == 1:
                    await stub.Parse(pb.ParseRequest(text=chunk[0]))
                else:
                    await stub.ParseBatch(
                        pb.ParseBatchRequest(requests=[pb.ParseRequest(text=t) for t in chunk])
                    )
                latencies.append(time.perf_counter() - t0)

        started, cpu = time.perf_counter(), process_cpu_seconds(server.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu = process_cpu_seconds(server.pid) - cpu
    label = "gRPC Parse" if batch == 1 else f"gRPC ParseBatch of {batch}"
    return Row(label, concurrency, counter, seconds, latencies, cpu)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NLU_PORT": str(port), "NLU_MODEL": str(model), "METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.nlu", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("the NLU server exited")
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("the NLU server did not become SERVING")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nlu", description=__doc__)
    parser.add_argument("-n", type=int, default=800, help="texts per measurement (800)")
    parser.add_argument("--repeat", type=int, default=3, help="in-process runs per row (3)")
    parser.add_argument("--model", type=Path, help="model file (default: the trained one)")
    args = parser.parse_args()
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")

    from services.nlu.backend import RasaBackend
    from services.nlu.server import NluSettings

    model = args.model or NluSettings.from_env().model_path
    texts = corpus()
    print(f"model {model.name}, {len(texts)} distinct texts, {args.n} per row", flush=True)
    print("measuring in-process Rasa ...", flush=True)
    backend = RasaBackend(model)
    backend.parse_many(texts[:32])  # warm up
    backend.parse_many(texts[:1])
    rows = [in_process(backend, texts, args.n, b, args.repeat) for b in (1, 8, 32)]
    del backend
    port = free_port()
    print("starting the NLU server ...", flush=True)
    server = start_server(model, port)
    try:
        asyncio.run(over_grpc(server, port, texts, 64, 1, 1))
        asyncio.run(over_grpc(server, port, texts, 64, 1, 32))
        warm_rss, load_peak = rss_mib(server.pid)
        for concurrency in (1, 8, 32):
            print(f"gRPC Parse at concurrency {concurrency} ...", flush=True)
            rows.append(asyncio.run(over_grpc(server, port, texts, args.n, concurrency, 1)))
        for concurrency in (1, 8):
            print(f"gRPC ParseBatch at concurrency {concurrency} ...", flush=True)
            rows.append(asyncio.run(over_grpc(server, port, texts, args.n, concurrency, 32)))
        end_rss, peak = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait()

    floor = rows[0].throughput
    print()
    header = ("path", "conc.", "texts/s", "p50 ms", "p99 ms", "CPU ms", "vs floor")
    print(f"| {header[0]:<26} | " + " | ".join(f"{h:>8}" for h in header[1:]) + " |")
    print(f"|{'-' * 28}|" + "|".join("-" * 10 for _ in header[1:]) + "|")
    for row in rows:
        print(
            f"| {row.path:<26} | {row.concurrency:>8} | {row.throughput:>8.1f} | "
            f"{row.pct(0.5):>8.1f} | {row.pct(0.99):>8.1f} | {row.cpu_ms:>8.2f} | "
            f"{row.throughput / floor:>7.2f}x |"
        )
    grpc8 = next(r for r in rows if r.path == "gRPC Parse" and r.concurrency == 8)
    overhead = (floor / grpc8.throughput - 1) * 100
    print(f"\ngRPC overhead at concurrency 8 (Parse vs in-process parse): {overhead:+.1f} %")
    print(f"(mean latency in-process: {statistics.mean(rows[0].latencies) * 1000:.1f} ms)")
    print("CPU ms: process CPU per text (the server's, for the gRPC rows)")
    print(
        f"server RSS: {warm_rss:.0f} MiB loaded and warmed, {end_rss:.0f} MiB at the end, "
        f"{load_peak:.0f} MiB peak while loading, {peak:.0f} MiB peak overall"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
