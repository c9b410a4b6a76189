"""How many beats/s one load-generator process pushes, into a receiver that is not the limit.

The receiver is the minimal js-libp2p receiver of the heartbeat protocol
(`bench/js/receiver.mjs`: Noise + Yamux, counting complete CBOR items; ~70k beats/s on this
machine, so the sender is the bottleneck). One load-generator process (`--processes 1`)
runs `--agents` flooding agents (`--beat-period 1ms`, as fast as each stream takes it). Over
the window after `--warmup`: the receiver's beats/s, the load generator's CPU (its worker
process, from /proc), its CPU µs per beat and the beats/s a full core of it would push.
`--loadgen-arg` passes flags through (e.g. `--loadgen-arg=--beats-per-write=16`); `--cases`
runs several configurations one after another in each run.

    .venv/bin/python -m bench.bench_sender --repeat 3 --duration 10
    .venv/bin/python -m bench.bench_sender --cases "1,4,16"   # --beats-per-write values
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

from bench.common import (
    REPO,
    LoadgenProcess,
    fmt_spread,
    machine_note,
    print_table,
    proc_cpu_seconds,
)

__all__ = ["main", "run_once"]

JS = REPO / "bench" / "js"
NODE = shutil.which("node") or "node"


class Receiver:
    """The js receiver: its multiaddr, and its running beat count (read in a thread)."""

    def __init__(self) -> None:
        if not (JS / "node_modules").is_dir():
            raise SystemExit(f"bench_sender: run `npm ci` in {JS} first")
        self._err = tempfile.TemporaryFile()  # a full pipe would block the receiver
        self.proc = subprocess.Popen(
            [NODE, str(JS / "receiver.mjs")],
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=JS,
        )
        assert self.proc.stdout is not None
        self.multiaddr = self.proc.stdout.readline().decode().strip()
        if "/p2p/" not in self.multiaddr:
            self.stop()
            raise RuntimeError(f"js receiver did not start: {self.multiaddr!r}")
        self.samples: list[tuple[float, int]] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[bytes]) -> None:
        for line in out:
            try:
                self.samples.append((time.monotonic(), int(json.loads(line)["beats"])))
            except (ValueError, KeyError):
                continue

    def beats_at(self, t: float) -> tuple[float, int]:
        """The first sample at or after monotonic time `t` (waits for it)."""
        deadline = t + 20
        while time.monotonic() < deadline:
            for sample in self.samples:
                if sample[0] >= t:
                    return sample
            time.sleep(0.1)
        self._err.seek(0)
        tail = self._err.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"js receiver stopped reporting (exit {self.proc.poll()}): {tail}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        out += [int(c) for c in text.split()]
    return out


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_seconds(pid)
        except OSError:  # exited meanwhile
            pass
    return total


def run_once(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    receiver = Receiver()
    try:
        run_for = args.warmup + args.duration + 3
        loadgen = LoadgenProcess(
            receiver.multiaddr,
            "--agents",
            str(args.agents),
            "--processes",
            "1",
            "--ramp",
            "1000/s",
            "--beat-period",
            "1ms",
            "--duration",
            f"{run_for:.0f}s",
            *args.loadgen_arg,
            *extra,
        )
        time.sleep(args.warmup)
        pids = [loadgen.proc.pid, *_children(loadgen.proc.pid)]
        t0, b0 = receiver.beats_at(time.monotonic())
        c0 = _cpu(pids)
        t1, b1 = receiver.beats_at(t0 + args.duration)
        c1 = _cpu(pids)
        summary = loadgen.result(timeout=run_for + 60)
    finally:
        receiver.stop()
    beats = b1 - b0
    sent = sum(k.get("beats_sent", 0) for k in summary.get("kinds", {}).values())
    return {
        "beats_per_s": beats / (t1 - t0),
        "loadgen_cores": (c1 - c0) / (t1 - t0),
        "cpu_us_per_beat": (c1 - c0) / max(beats, 1) * 1e6,
        "sent_total": sent,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--cases",
        default="",
        help="comma-separated --beats-per-write values, each run in turn (default: none given)",
    )
    p.add_argument("--loadgen-arg", action="append", default=[], help="extra loadgen flag")
    args = p.parse_args(argv)
    args.duration = min(args.duration, 120.0)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] or [""]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for i in range(args.repeat):
        for case in cases:
            extra = [f"--beats-per-write={case}"] if case else []
            results[case].append(run_once(args, extra))
            print(f"run {i + 1} case {case or 'default'}: {results[case][-1]}", flush=True)
    print(
        f"\nbench_sender agents={args.agents} processes=1 window={args.duration}s "
        f"runs={args.repeat} loadgen_args={' '.join(args.loadgen_arg) or '-'} {machine_note()}"
    )
    rows = []
    for case, runs in results.items():
        rows.append(
            [
                case or "default",
                fmt_spread(r["beats_per_s"] for r in runs),
                fmt_spread((r["loadgen_cores"] for r in runs), "{:.2f}"),
                fmt_spread((r["cpu_us_per_beat"] for r in runs), "{:.1f}"),
                fmt_spread(1e6 / r["cpu_us_per_beat"] for r in runs),
            ]
        )
    print_table(
        [
            "beats per write",
            "beats/s received",
            "loadgen CPU (cores)",
            "loadgen CPU µs/beat",
            "beats/s per full core",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
