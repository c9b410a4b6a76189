"""The aggregator against a js-libp2p receiver, under the same js-libp2p flood, same run.

A js-libp2p 2.x sender (`bench/js/sender.mjs`: `--connections` connections, each writing
one valid CBOR beat per write as fast as its stream takes it) floods (a) the aggregator
with its rate limits raised and (b) a minimal js-libp2p receiver of the same protocol
(`bench/js/receiver.mjs`, Noise + Yamux, counting complete CBOR items), one after the
other in each run. Each side's steady-state beats/s is counted by the receiver itself
over the window after `--warmup` (the aggregator's `beats_received_total`, the js
receiver's own counter); the ratio aggregator/js is the figure. Median of `--repeat`.
`npm ci` installs the pinned comparator (bench/js/package-lock.json) first. Never run by
the test suite.

    .venv/bin/python -m bench.bench_js_ratio --repeat 3 --duration 15 [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.common import REPO, AggregatorProcess, fmt_spread, machine_note, print_table

__all__ = ["AGGREGATOR_FLAGS", "main", "run_once"]

JS = REPO / "bench" / "js"
NODE = shutil.which("node") or "node"
NPM = shutil.which("npm") or "npm"

#: The flood is the point: the aggregator's per-peer rate limits raised out of the way.
AGGREGATOR_FLAGS = (
    "--rate-limit",
    "1000000",
    "--rate-burst",
    "1000000",
    "--flood-drops",
    "1000000000",
    "--max-connections-per-ip",
    "20000",
)


def beat_hex() -> str:
    """One valid CBOR beat (the agent's encoding), as the sender writes it."""
    from heartbeat.protocol.wire import Beat, encode_cbor

    head = "{bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2}"
    genesis = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
    return encode_cbor(Beat(head, 123456, "bench-js", "f01234", genesis)).hex()


def npm_ci() -> None:
    subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600)


def _sender(target: str, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """`--sender-processes` node processes sharing `--connections` between them."""
    seconds = args.warmup + args.duration + 2
    procs = []
    for i in range(args.sender_processes):
        share = args.connections // args.sender_processes
        share += 1 if i < args.connections % args.sender_processes else 0
        cmd = [NODE, "sender.mjs", target, str(share), f"{seconds:.1f}", beat_hex()]
        procs.append(
            subprocess.Popen(cmd, cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        )
    return procs


def _sender_result(procs: list[subprocess.Popen[bytes]], timeout: float) -> dict[str, Any]:
    total = {"written": 0, "connected": 0}
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("js sender timed out") from None
        lines = out.decode().strip().splitlines()
        row = json.loads(lines[-1]) if lines else {}
        for key in total:
            total[key] += int(row.get(key, 0))
    return total


def measure_aggregator(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
    agg = AggregatorProcess.start(workdir, *AGGREGATOR_FLAGS, *extra, *args.aggregator_arg)
    try:
        sender = _sender(agg.multiaddr, args)
        time.sleep(args.warmup)
        t0, b0, c0 = (
            time.monotonic(),
            agg.metric("fil_heartbeat_beats_received_total"),
            agg.cpu_seconds(),
        )
        time.sleep(args.duration)
        t1, b1, c1 = (
            time.monotonic(),
            agg.metric("fil_heartbeat_beats_received_total"),
            agg.cpu_seconds(),
        )
        sent = _sender_result(sender, args.warmup + args.duration + 60)
    finally:
        agg.stop()
    beats = b1 - b0
    return {
        "beats_per_s": beats / (t1 - t0),
        "cpu_us_per_beat": (c1 - c0) / max(beats, 1.0) * 1e6,
        "cpu_cores": (c1 - c0) / (t1 - t0),
        "connected": sent.get("connected", 0),
    }


class _Counter:
    """The js receiver's stdout: its multiaddr, then {"t", "beats"} once a second."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.samples: list[tuple[float, int]] = []
        self.multiaddr = stream.readline().decode().strip()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            self.samples.append((time.monotonic(), int(row["beats"])))

    def latest(self) -> tuple[float, int]:
        return self.samples[-1] if self.samples else (time.monotonic(), 0)


def measure_js(args: argparse.Namespace) -> dict[str, Any]:
    recv = subprocess.Popen(
        [NODE, "receiver.mjs"], cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert recv.stdout is not None
        counter = _Counter(recv.stdout)
        if not counter.multiaddr.startswith("/ip4/"):
            raise RuntimeError(f"js receiver did not start: {counter.multiaddr!r}")
        sender = _sender(counter.multiaddr, args)
        time.sleep(args.warmup)
        t0, b0 = counter.latest()
        c0 = _cpu(recv.pid)
        time.sleep(args.duration)
        t1, b1 = counter.latest()
        c1 = _cpu(recv.pid)
        sent = _sender_result(sender, args.warmup + args.duration + 60)
    finally:
        recv.terminate()
        try:
            recv.wait(10)
        except subprocess.TimeoutExpired:
            recv.kill()
            recv.wait()
    beats = b1 - b0
    return {
        "beats_per_s": beats / max(t1 - t0, 1e-9),
        "cpu_us_per_beat": (c1 - c0) / max(beats, 1) * 1e6,
        "cpu_cores": (c1 - c0) / max(t1 - t0, 1e-9),
        "connected": sent.get("connected", 0),
    }


def _cpu(pid: int) -> float:
    from bench.common import proc_cpu_seconds

    try:
        return proc_cpu_seconds(pid)
    except OSError:
        return 0.0


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-js-ratio-") as tmp:
        ours = measure_aggregator(args, Path(tmp))
    js = measure_js(args)
    return {"aggregator": ours, "js": js, "ratio": ours["beats_per_s"] / js["beats_per_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50, help="sender connections (50)")
    p.add_argument("--sender-processes", type=int, default=1, help="node processes sending (1)")
    p.add_argument("--duration", type=float, default=15.0, help="measurement window, s (15)")
    p.add_argument("--warmup", type=float, default=5.0, help="before the window, s (5)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="aggregator --workers (1)")
    p.add_argument("--no-npm-ci", action="store_true", help="bench/js/node_modules as it is")
    p.add_argument(
        "--aggregator-arg",
        action="append",
        default=[],
        help="extra aggregator flag (repeatable), e.g. --aggregator-arg=--py-libp2p-read",
    )
    args = p.parse_args(argv)
    args.duration = min(args.duration, 300.0)
    if not args.no_npm_ci:
        npm_ci()
    runs = []
    for i in range(args.repeat):
        runs.append(run_once(args))
        print(f"run {i + 1}: {json.dumps(runs[-1])}", flush=True)
    print(
        f"\nbench_js_ratio connections={args.connections} "
        f"sender_processes={args.sender_processes} workers={args.workers} "
        f"args={' '.join(args.aggregator_arg) or '-'} window={args.duration}s "
        f"runs={len(runs)} {machine_note()}"
    )
    rows = [
        ["aggregator beats/s", fmt_spread(r["aggregator"]["beats_per_s"] for r in runs)],
        [
            "aggregator CPU µs/beat",
            fmt_spread((r["aggregator"]["cpu_us_per_beat"] for r in runs), "{:.1f}"),
        ],
        [
            "aggregator CPU (cores)",
            fmt_spread((r["aggregator"]["cpu_cores"] for r in runs), "{:.2f}"),
        ],
        ["js-libp2p receiver beats/s", fmt_spread(r["js"]["beats_per_s"] for r in runs)],
        [
            "js-libp2p receiver CPU µs/beat",
            fmt_spread((r["js"]["cpu_us_per_beat"] for r in runs), "{:.1f}"),
        ],
        ["ratio aggregator/js", fmt_spread((r["ratio"] for r in runs), "{:.3f}")],
    ]
    print_table(["figure", "median (min–max)"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
