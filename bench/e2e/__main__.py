"""python -m bench.e2e: the whole stack beside Rasa's own server, measured three ways.

Starts this stack as ``make run`` does (``chatbot run``) (replies go to a Graph API stand-in in
its own process), then ``rasa run`` (REST channel, Redis lock store, 1 and 2
workers) trained on the same NLU data and pipeline with one rule per intent,
and measures each with the same messages (held-out texts neither model was
trained on). Modes (``--modes``, all three by default, in this order):

latency   An idle system, one user: one message at a time, each sent after
          the previous reply (p50/p99 from delivery to reply out); then
          bursts of 8 messages from one user, delivered as Messenger does
          and overlapping: time until all 8 are answered.

ordering  N users x M messages with a think time between messages. The
          default ``--load messenger`` delivers as Messenger does: a
          conversation's next delivery only after the previous one got its
          200 (``--per-page``: one delivery in flight for the whole page), a
          delivery without a 200 within ``--timeout`` delivered again, and
          10 % of messages delivered a second time, later and concurrently.
          After each reply comes (this stack: at the Graph API stand-in;
          Rasa: in its REST response), the user's phone sends a
          ``delivery`` receipt (0.05-0.3 s later) and a ``read`` receipt
          (0.5-3 s later), each its own signed webhook with the reply's time
          as watermark, delivered in turn and retried like the messages: to
          this stack's gateway and to Rasa's Messenger channel
          (``--no-receipts`` sends none). Receipts get no reply and count in
          no latency, order or duplicate figure; the report says how many
          were sent and acknowledged, and their work is in the CPU and
          Redis figures. ``--load overlapping`` (the older mode, without
          receipts) delivers every message as soon as it is typed, so one
          user's deliveries overlap. Reports replies missing, duplicated
          and answered late, and, from each
          server's own record (this stack: the chatlog; Rasa: its tracker),
          the order it received the messages in, so that a late reply is put
          down to the way in or to the server. Rasa's tracker holds the order
          it took messages up under its lock, which is also the order of its
          replies: for Rasa, "late on the way in" means "taken up late".

capacity  Open-loop steps of offered load (``--rates``, ``--step-seconds``
          each): answered msg/s, reply and ack p50/p99, CPU per answered
          message summed over the system's processes (driver and stand-ins
          apart), peak RSS, Redis commands, scripts and round trips per
          message; the knee (highest offered load with reply p99 under
          ``--p99-limit``) for each system; a picture of the curves.

Rasa's REST response is both its acknowledgement and its reply; this
stack's acknowledgement is the webhook's 200 and its reply the Send API call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

from bench.e2e import latency, order, redis_cost, report, sweep
from bench.e2e.load import MESSENGER, OVERLAPPING, LoadShape, Message, Record, outcome, plan, play
from bench.e2e.rasa_baseline import DOMAIN, ensure_model
from bench.e2e.systems import RasaServer, Sampler, Usage
from bench.e2e.targets import RasaTarget, StackTarget, Target
from harness.redis_servers import RedisServer
from harness.support import REPO
from mesh import cache_dir

GEN_NLU = REPO / "build" / "gen" / "nlu"
MODES = ("latency", "ordering", "capacity")
DEFAULT_RATES = "10,20,40,80,120,160,240,320"
DEFAULT_PICTURE = REPO / "docs" / "pictures" / "bench-e2e-capacity.svg"
DRIVER = "load driver"
# How long a receipt waits for its reply: the whole ordering run.
REPLY_WAIT_S = 24 * 3600.0


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def receipts_line(receipts: Mapping[str, Mapping[str, int]]) -> str:
    """Acknowledged of sent, by kind: ``delivery 12/12, read 12/12``."""
    return ", ".join(f"{kind} {c['acknowledged']}/{c['sent']}" for kind, c in receipts.items())


def heldout_texts() -> list[str]:
    """Texts neither model was trained on, entity annotations removed.

    Hand-off requests are left out: after one, a person answers that user,
    not the bot, so later replies would rightly never come.
    """
    handoff = yaml.safe_load(DOMAIN.read_text()).get("handoff_intent", "")
    data = yaml.safe_load((REPO / "services" / "nlu" / "eval" / "heldout.yml").read_text())
    texts = []
    for item in data["nlu"]:
        if item.get("intent") in (None, handoff):
            continue
        for line in item["examples"].splitlines():
            match = re.match(r"^\s*- (.+)$", line)
            if match:
                texts.append(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", match.group(1)))
    return texts


def nlu_python() -> str:
    explicit = os.environ.get("NLU_PYTHON")
    if explicit:
        return explicit
    found = sorted(cache_dir().glob("nlu-venv-*/bin/python"))
    if not found:
        sys.exit("the NLU environment is missing: run `make nlu-env` or set NLU_PYTHON")
    return str(found[-1])


def bare_parse(python: str, texts: list[str], count: int) -> tuple[float | None, list[str]]:
    """Bare parse throughput over ``count`` texts (none when 0) and each text's intent."""
    result = subprocess.run(
        [python, "-m", "bench.e2e.bare_parse", str(count)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{GEN_NLU}"},
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"the bare parse run failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["texts_per_second"], answer["intents"]


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def revision() -> dict[str, Any]:
    """The commit measured, and which of the measured code differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "services", "mesh", "cli", "protos")
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": [line[3:] for line in changed.splitlines()],
    }


def tree_cpu(roots: dict[str, list[int]]) -> float:
    total = 0.0
    for pids in roots.values():
        for pid in pids:
            try:
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    times = process.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    return total


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting on I/O)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def wait_idle(roots: dict[str, list[int]], cores: float = 0.25, max_s: float = 90.0) -> float:
    """Waits until the system uses under ``cores`` for a second; returns the seconds waited."""
    started = time.monotonic()
    last = tree_cpu(roots)
    while time.monotonic() - started < max_s:
        time.sleep(1.0)
        now = tree_cpu(roots)
        if now - last < cores:
            break
        last = now
    return time.monotonic() - started


class Bench:
    """Runs the chosen modes against one started system."""

    def __init__(self, target: Target, args: argparse.Namespace, texts: list[str], redis_pid: int):
        self.target = target
        self.args = args
        self.texts = texts
        self.system = {**target.system_roots(), "redis": [redis_pid]}
        self.roots = {**self.system, **target.standin_roots(), DRIVER: [os.getpid()]}
        self.run = f"{re.sub(r'[^a-z0-9]', '', target.name)[:6]}{int(time.time())}"

    def sampler(self) -> Sampler:
        return Sampler(self.roots, alone=frozenset({DRIVER}))

    def split_cpu(self, usage: dict[str, Usage]) -> tuple[float, float, float]:
        system = sum(used.cpu_s for name, used in usage.items() if name in self.system)
        driver = usage[DRIVER].cpu_s if DRIVER in usage else 0.0
        standins = sum(u.cpu_s for n, u in usage.items() if n not in self.system and n != DRIVER)
        return system, driver, standins

    def warm_up(self) -> None:
        async def go() -> None:
            for seq in range(10):
                message = Message(f"warm-{self.run}", seq, f"warm-{self.run}-{seq}", "hello")
                await self.target.deliver(message)
                if await self.target.replies.wait(message.mid, 120) is None:
                    raise RuntimeError(f"{self.target.name} did not answer a warm-up message")

        asyncio.run(go())

    def latency(self) -> dict[str, Any]:
        say(f"{self.target.name}: latency probe (idle, one user) ...")
        wait_idle(self.system)
        before = redis_cost.counters(self.target.redis)
        result = asyncio.run(
            latency.probe(
                self.texts,
                f"{self.run}p",
                self.args.probe_messages,
                self.args.bursts,
                self.args.burst_size,
                self.target.deliver,
                self.target.replies.wait,
            )
        )
        answered = result.messages + 2 * result.bursts * result.burst_size - result.missing
        cost = redis_cost.per_message(before, redis_cost.counters(self.target.redis), answered)
        say(
            f"{self.target.name}: one at a time p50 {report.ms(result.p50_ms)} ms, "
            f"p99 {report.ms(result.p99_ms)} ms; burst of {result.burst_size} "
            f"(Messenger) p50 {report.ms(result.burst_messenger_ms[0])} ms"
        )
        return {"probe": asdict(result), "redis_per_message": cost and asdict(cost)}

    def ordering(self, shape: LoadShape) -> dict[str, Any]:
        say(
            f"{self.target.name}: {shape.mode} load, {shape.users} users x {shape.messages} "
            f"messages{' (per page)' if shape.per_page else ''} ..."
        )
        wait_idle(self.system)
        users = plan(shape, self.texts, f"{self.run}o")
        mids = [m.mid for messages in users for m in messages]
        record = Record()
        before = redis_cost.counters(self.target.redis)
        sampler = self.sampler().start()
        try:
            asyncio.run(
                play(
                    shape,
                    users,
                    self.target.deliver,
                    record,
                    lambda: self.target.answered(mids),
                    self.args.settle,
                    say,
                    replied=lambda mid: self.target.replies.wait(mid, REPLY_WAIT_S),
                    send_receipt=self.target.deliver_receipt,
                )
            )
        finally:
            usage = sampler.stop()
        for mid in mids:
            for at in self.target.replies.times.get(mid, []):
                record.reply(mid, at)
        result = outcome(record)
        cost = redis_cost.per_message(
            before, redis_cost.counters(self.target.redis), result.answered
        )
        received = self.received([messages[0].user for messages in users], set(mids))
        seq_of = {m.mid: m.seq for messages in users for m in messages}
        first = {mid: times[0] for mid, times in record.replies.items() if times}
        answered_order = {
            messages[0].user: [
                m.seq
                for m in sorted((m for m in messages if m.mid in first), key=lambda m: first[m.mid])
            ]
            for messages in users
        }
        received_at = {
            user: {seq_of[mid]: at for mid, at in times.items() if mid in seq_of}
            for user, times in received.items()
        }
        attribution = order.attribute(answered_order, received_at)
        system_cpu, driver_cpu, standin_cpu = self.split_cpu(usage)
        say(
            f"{self.target.name}: {result.answered}/{result.messages} answered, "
            f"{result.duplicated} duplicated, {attribution.answered_late} answered late "
            f"({attribution.late_by_server} by the server, {attribution.late_on_arrival} "
            f"on the way in), {attribution.received_late} received late"
            + (
                f"; receipts acknowledged: {receipts_line(asdict(result)['receipts'])}"
                if shape.receipts
                else ""
            )
        )
        return {
            "shape": asdict(shape),
            "outcome": {**asdict(result), "per_second": result.per_second},
            "order": asdict(attribution),
            "usage": {name: asdict(used) for name, used in usage.items()},
            "cpu_s_per_msg": system_cpu / max(1, result.answered),
            "driver_cpu_s_per_msg": driver_cpu / max(1, result.answered),
            "standin_cpu_s_per_msg": standin_cpu / max(1, result.answered),
            "redis_per_message": cost and asdict(cost),
        }

    def received(self, users: list[str], mids: set[str]) -> dict[str, dict[str, float]]:
        # The chatlog may be written a little after the reply: wait for it, briefly.
        deadline = time.monotonic() + 20
        while True:
            received = self.target.received(users)
            known = sum(len(times.keys() & mids) for times in received.values())
            if known >= len(mids) or time.monotonic() > deadline:
                return received
            time.sleep(1)

    def explain(self, record: sweep.StepRecord, mids: list[str]) -> dict[str, int]:
        by_user: dict[str, list[str]] = {}
        for mid in mids:
            by_user.setdefault(record.users[mid], []).append(mid)
        try:
            why = self.target.unanswered(by_user)
        except Exception as error:  # the explanation is a courtesy; the numbers stand
            return {f"unexplained ({type(error).__name__})": len(mids)}
        unacked = sum(1 for mid in mids if mid not in record.acked_in)
        if unacked:
            why["of them, delivered without a 200"] = unacked
        say(f"{self.target.name}: unanswered: {why}")
        return why

    def capacity(self, rates: list[float]) -> list[sweep.Step]:
        steps: list[sweep.Step] = []
        over = 0
        for number, rate in enumerate(rates):
            waited = wait_idle(self.system)
            if waited > 80:
                say(f"{self.target.name}: not idle after {waited:.0f} s; the sweep stops here")
                break
            say(f"{self.target.name}: {rate:g} msg/s for {self.args.step_seconds:g} s ...")
            before = redis_cost.counters(self.target.redis)
            busy_before, wall_before = busy_cpu_s(), time.monotonic()
            sampler = self.sampler().start()
            try:
                record = asyncio.run(
                    sweep.offer(
                        rate,
                        self.args.step_seconds,
                        self.args.warm_fraction,
                        self.args.drain_seconds,
                        self.args.user_gap,
                        self.texts,
                        f"{self.run}c{number}",
                        self.target.deliver,
                        self.target.answered,
                    )
                )
            finally:
                usage = sampler.stop()
            busy = busy_cpu_s() - busy_before
            wall = time.monotonic() - wall_before
            step = sweep.measure(record, self.target.replies.first)
            cost = redis_cost.per_message(
                before, redis_cost.counters(self.target.redis), step.answered
            )
            system_cpu, driver_cpu, standin_cpu = self.split_cpu(usage)
            answered = max(1, step.answered)
            step = replace(
                step,
                cpu_s_per_msg=system_cpu / answered,
                driver_cpu_s_per_msg=driver_cpu / answered,
                standin_cpu_s_per_msg=standin_cpu / answered,
                peak_rss_mb=sum(u.peak_rss for n, u in usage.items() if n in self.system) / 2**20,
                redis_commands_per_msg=cost.commands if cost else math.nan,
                redis_scripts_per_msg=cost.scripts if cost else math.nan,
                redis_round_trips_per_msg=cost.round_trips if cost else math.nan,
                others_cores=max(0.0, busy - sum(u.cpu_s for u in usage.values())) / wall,
            )
            missing = [mid for mid in record.sent_at if self.target.replies.first(mid) is None]
            if missing:
                step = replace(step, unanswered=self.explain(record, missing))
            steps.append(step)
            if isinstance(self.target, StackTarget):
                self.target.forget_bodies()
            say(
                f"{self.target.name}: {rate:g} msg/s offered -> {step.answered_per_s:.1f} "
                f"answered/s, reply p50 {report.ms(step.reply_p50_ms)} ms p99 "
                f"{report.ms(step.reply_p99_ms)} ms, CPU {step.cpu_s_per_msg * 1000:.1f} ms/msg"
            )
            if not record.drained:
                say(f"{self.target.name}: replies still missing {self.args.drain_seconds:g} s "
                    "after the step")  # fmt: skip
            # An undrained step has an infinite p99: it counts as past the knee.
            over = over + 1 if step.reply_p99_ms >= self.args.p99_limit * 1000 else 0
            if over >= self.args.past_knee:
                say(f"{self.target.name}: {over} steps past the knee; the sweep stops here")
                break
        return steps


def run_system(
    target: Target, args: argparse.Namespace, texts: list[str], redis_pid: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    bench = Bench(target, args, texts, redis_pid)
    bench.warm_up()
    if "latency" in args.modes:
        result["latency"] = bench.latency()
    if "ordering" in args.modes:
        shape = LoadShape(
            users=args.users,
            messages=args.messages,
            mode=args.load,
            per_page=args.per_page,
            duplicate_rate=args.duplicate_rate,
            timeout_s=args.timeout,
            receipts=args.load == MESSENGER and not args.no_receipts,
        )
        result["ordering"] = bench.ordering(shape)
    if "capacity" in args.modes:
        rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
        result["capacity"] = [asdict(step) for step in bench.capacity(rates)]
    return result


def print_report(args: argparse.Namespace, results: dict[str, Any], bare: float | None) -> None:
    print()
    print(
        f"Machine: {os.cpu_count()} cores; load average when each system started: "
        + ", ".join(
            f"{name} {result['load_average_at_start'][0]:.2f}" for name, result in results.items()
        )
    )
    if bare:
        print(f"Bare in-process parse of the same texts, one at a time: {bare:.1f} texts/s")
    probes = {n: r["latency"] for n, r in results.items() if "latency" in r}
    if probes:
        size = next(iter(probes.values()))["probe"]["burst_size"]
        print("\nLatency probe, idle system, one user (ms):\n")
        header: tuple[str, ...] = (
            "system", "one at a time p50", "p99", f"burst of {size}, Messenger p50", "worst",
            f"burst of {size}, overlapping p50", "worst", "missing", "Redis cmds/msg",
            "Redis round trips/msg",
        )  # fmt: skip
        rows: list[tuple[str, ...]] = []
        for name, entry in probes.items():
            p = entry["probe"]
            cost = entry["redis_per_message"] or {}
            rows.append(
                (
                    name, report.ms(p["p50_ms"]), report.ms(p["p99_ms"]),
                    report.ms(p["burst_messenger_ms"][0]), report.ms(p["burst_messenger_ms"][1]),
                    report.ms(p["burst_overlapping_ms"][0]),
                    report.ms(p["burst_overlapping_ms"][1]), str(p["missing"]),
                    report.num(cost.get("commands", math.nan)),
                    report.num(cost.get("round_trips", math.nan)),
                )
            )  # fmt: skip
        print(report.table(header, rows))
    orderings = {n: r["ordering"] for n, r in results.items() if "ordering" in r}
    if orderings:
        shape = next(iter(orderings.values()))["shape"]
        print(
            f"\nOrdering: {shape['users']} users x {shape['messages']} messages, "
            f"'{shape['mode']}' load{' per page' if shape['per_page'] else ''}, think time "
            f"{shape['think_s'][0]}-{shape['think_s'][1]} s, {shape['duplicate_rate']:.0%} "
            f"delivered twice, redelivery after {shape['timeout_s']:g} s without a 200"
            + (
                f", delivery and read receipts {shape['delivery_receipt_s'][0]:g}-"
                f"{shape['delivery_receipt_s'][1]:g} s and {shape['read_receipt_s'][0]:g}-"
                f"{shape['read_receipt_s'][1]:g} s after each reply (in no latency, order or "
                "duplicate figure).\n"
                if shape["receipts"]
                else ", no receipts.\n"
            )
        )
        header = (
            "system", "acks p50 ms", "acks p99 ms", "msg/s", "e2e p50 ms", "e2e p99 ms",
            "missing", "duplicated", "received late", "answered late", "late on the way in",
            "late by the server", "unknown", "deliveries", "receipts acked/sent",
            "CPU ms/msg", "Redis cmds/msg",
            "Redis scripts/msg", "Redis round trips/msg",
        )  # fmt: skip
        rows = []
        for name, entry in orderings.items():
            o, a = entry["outcome"], entry["order"]
            cost = entry["redis_per_message"] or {}
            rows.append(
                (
                    name, report.ms(o["ack_ms"][0]), report.ms(o["ack_ms"][1]),
                    report.num(o["per_second"]), report.ms(o["e2e_ms"][0]),
                    report.ms(o["e2e_ms"][1]), str(o["missing"]), str(o["duplicated"]),
                    str(a["received_late"]), str(a["answered_late"]), str(a["late_on_arrival"]),
                    str(a["late_by_server"]), str(a["unknown"]),
                    f"{o['deliveries']} ({o['redeliveries']} redelivered)",
                    receipts_line(o["receipts"]) if entry["shape"]["receipts"] else "-",
                    report.num(entry["cpu_s_per_msg"] * 1000),
                    report.num(cost.get("commands", math.nan)),
                    report.num(cost.get("scripts", math.nan)),
                    report.num(cost.get("round_trips", math.nan)),
                )
            )  # fmt: skip
        print(report.table(header, rows))
        print("\nCPU and peak memory during the ordering run:\n")
        usage_rows = [
            (
                name, process, report.num(u["cpu_s"]),
                report.num(u["cpu_s"] / u["wall_s"] if u["wall_s"] else 0.0, 2),
                report.num(u["peak_rss"] / 2**20, 0),
            )
            for name, entry in orderings.items()
            for process, u in entry["usage"].items()
        ]  # fmt: skip
        print(report.table(("system", "process", "CPU s", "mean cores", "peak RSS MB"), usage_rows))
    curves = {
        n: [sweep.Step(**step) for step in r["capacity"]]
        for n, r in results.items()
        if r.get("capacity")
    }
    if curves:
        print(
            f"\nCapacity: open-loop steps of {args.step_seconds:g} s (the first "
            f"{args.warm_fraction:.0%} left out), one message per user every "
            f"{args.user_gap:g} s on average.\n"
        )
        print(report.capacity_table(curves))
        print()
        for name, steps in curves.items():
            for step in steps:
                if step.unanswered:
                    reasons = ", ".join(f"{n} {why}" for why, n in step.unanswered.items())
                    print(f"{name} at {step.offered:g} msg/s, never answered: {reasons}")
                if step.failed_deliveries:
                    print(f"{name} at {step.offered:g} msg/s, deliveries without a 200: "
                          f"{step.failed_deliveries}")  # fmt: skip
        for line in report.knee_lines(curves, args.p99_limit * 1000):
            print(line)
        if args.picture:
            report.draw(
                curves,
                args.p99_limit * 1000,
                args.picture,
                f"{os.cpu_count()} cores; open-loop steps of {args.step_seconds:g} s",
            )
            print(f"picture: {args.picture}")


def _plain(value: Any) -> Any:
    """JSON without NaN or Infinity: null and the string "inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf"
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES),
        help="what to measure (all three)",
    )  # fmt: skip
    systems = parser.add_argument_group("systems")
    systems.add_argument(
        "--rasa-workers", type=int, nargs="*", default=[1, 2],
        help="Sanic worker counts to run Rasa with, one system each (1 2); none skips Rasa",
    )  # fmt: skip
    systems.add_argument("--no-stack", action="store_true", help="skip this stack")
    systems.add_argument("--no-bare", action="store_true", help="skip the bare parse floor")
    probe = parser.add_argument_group("latency mode")
    probe.add_argument("--probe-messages", type=int, default=200, help="one at a time (200)")
    probe.add_argument("--bursts", type=int, default=10, help="bursts of each kind (10)")
    probe.add_argument("--burst-size", type=int, default=8, help="messages per burst (8)")
    load = parser.add_argument_group("ordering mode")
    load.add_argument(
        "--load", choices=(MESSENGER, OVERLAPPING), default=MESSENGER,
        help="messenger: next delivery of a conversation after the previous 200, delivery "
        "and read receipts after each reply (default); overlapping: every message delivered "
        "as soon as it is typed, no receipts",
    )  # fmt: skip
    load.add_argument(
        "--per-page", action="store_true",
        help="with --load messenger: one delivery in flight for the whole page",
    )  # fmt: skip
    load.add_argument(
        "--no-receipts", action="store_true",
        help="with --load messenger: send no delivery and read receipts after the replies",
    )  # fmt: skip
    load.add_argument("--users", type=int, default=100, help="users sending at once (100)")
    load.add_argument("--messages", type=int, default=10, help="messages per user (10)")
    load.add_argument(
        "--duplicate-rate", type=float, default=0.1, help="share of messages delivered twice (0.1)"
    )
    load.add_argument(
        "--timeout", type=float, default=20.0, help="seconds before a delivery is retried (20)"
    )
    load.add_argument(
        "--settle", type=float, default=300.0, help="max seconds to wait for replies (300)"
    )
    capacity = parser.add_argument_group("capacity mode")
    capacity.add_argument(
        "--rates", default=DEFAULT_RATES, help=f"offered loads, msg/s ({DEFAULT_RATES})"
    )
    capacity.add_argument("--step-seconds", type=float, default=30.0, help="per step (30)")
    capacity.add_argument(
        "--warm-fraction", type=float, default=0.2,
        help="share of each step left out of its numbers (0.2)",
    )  # fmt: skip
    capacity.add_argument(
        "--drain-seconds", type=float, default=60.0,
        help="max wait for a step's replies after it; later ones count as never answered (60)",
    )  # fmt: skip
    capacity.add_argument(
        "--user-gap", type=float, default=5.0, help="mean seconds between a user's messages (5)"
    )
    capacity.add_argument(
        "--p99-limit", type=float, default=2.0, help="reply p99 that defines the knee, s (2)"
    )
    capacity.add_argument(
        "--past-knee", type=int, default=2,
        help="stop a system's sweep after this many steps in a row over the limit (2)",
    )  # fmt: skip
    capacity.add_argument(
        "--picture", type=Path, default=DEFAULT_PICTURE,
        help="where to draw the curves, .svg or .png (docs/pictures/bench-e2e-capacity.svg)",
    )  # fmt: skip
    capacity.add_argument(
        "--no-picture", dest="picture", action="store_const", const=None, help="draw nothing"
    )
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Hundreds of requests can be in flight, each on its own connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    started = time.time()
    host = machine()
    code = revision()
    python = nlu_python()
    texts = heldout_texts()
    say("loading the NLU model" + ("" if args.no_bare else " and timing a bare parse") + " ...")
    bare, intents = bare_parse(python, texts, 0 if args.no_bare else 400)
    if bare:
        say(f"bare in-process parse: {bare:.1f} texts/s")
    # What the model would take for a hand-off request stays out of the load too.
    handoff = yaml.safe_load(DOMAIN.read_text()).get("handoff_intent", "")
    texts = [text for text, intent in zip(texts, intents, strict=True) if intent != handoff]
    results: dict[str, Any] = {}

    def save() -> None:
        # After every system too, so that a failure later keeps what was measured.
        if not args.json:
            return
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": "python -m bench.e2e " + " ".join(sys.argv[1:] if argv is None else argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "minutes": round((time.time() - started) / 60, 1),
            "machine": host,
            "revision": code,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "bare_parse_per_second": bare,
            "systems": results,
        }
        args.json.write_text(json.dumps(_plain(document), indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir)
        client = redis.Redis(port=redis_server.port)
        try:
            if not args.no_stack:
                say("starting this stack (chatbot run, as make run does) ...")
                stack = StackTarget(workdir, client, redis_server.url, python)
                try:
                    stack.wait_up()
                    results[stack.name] = run_system(stack, args, texts, redis_server.proc.pid)
                    save()
                except Exception:
                    say(
                        "this stack's log ends with:\n"
                        + stack.stack.log_path.read_text(errors="replace")[-4000:]
                    )
                    raise
                finally:
                    say("stopping this stack ...")
                    stack.stop()
            if args.rasa_workers:
                _, model = ensure_model(python, say)
                for workers in args.rasa_workers:
                    client.flushall()
                    server = RasaServer(workdir, python, model, redis_server.port, workers)
                    say(f"starting {server.name} ...")
                    rasa = RasaTarget(server, client)
                    try:
                        rasa.wait_up()
                        results[rasa.name] = run_system(rasa, args, texts, redis_server.proc.pid)
                        save()
                    finally:
                        say(f"stopping {server.name} ...")
                        rasa.stop()
        finally:
            client.close()
            redis_server.stop()
    save()
    print_report(args, results, bare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
