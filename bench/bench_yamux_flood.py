"""A Yamux flood from one raw connection: what it costs the aggregator, and whether a
healthy agent still beats.

Starts the aggregator as a subprocess (`python -m aggregator run`, from `--tree PATH`: run
it on another checkout, e.g. `git worktree add /tmp/before e12e14f`, to measure the
"before"), dials it with one Noise + Yamux connection and for `--seconds` each writes raw
Yamux SYN frames (new streams, never negotiated), then raw PING frames, as fast as the
connection takes them; then leaves. Prints the aggregator's RSS before, during (peak) and
after (`--settle` seconds after the attacker left), its ERROR log lines, and whether a
healthy agent's beat on another connection was accepted during and after the flood.

    .venv/bin/python -m bench.bench_yamux_flood [--tree /tmp/before] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.common import PYTHON, REPO, AggregatorProcess, proc_rss_kb
from heartbeat.net import p2p
from heartbeat.protocol.wire import PROTOCOL_ID, Beat, encode_cbor
from heartbeat.tools.loadgen.light import light_connection

HEAD = "{bafy2bzaceheadaaaaaaaaaaaaaaa}"


def start(tree: Path, workdir: Path) -> AggregatorProcess:
    """`AggregatorProcess.start`, but run from `tree` (its own `aggregator` package)."""
    log = open(workdir / "aggregator.log", "ab")
    proc = subprocess.Popen(
        [
            *(PYTHON, "-m", "aggregator", "run", "--listen", "/ip4/127.0.0.1/tcp/0"),
            *("--http-listen", "127.0.0.1:0", "--identity-file", str(workdir / "agg.key")),
            *("--state-db", str(workdir / "agg.db"), "--log-level", "WARNING"),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    log.close()
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode().strip()
        if not line:
            break
        lines.append(line)
        if line.startswith("http://"):
            return AggregatorProcess(proc, lines[0], line)
    proc.kill()
    raise RuntimeError(f"aggregator did not start: {lines!r}")


# mypy cannot check a starred tuple inside `except*`: name the tuple once
_BEAT_ERRORS: tuple[type[Exception], ...] = (trio.TooSlowError, *p2p.LIBP2P_ERRORS)


async def healthy_beat(addr: str, height: int) -> bool:
    """One agent's beat on its own connection; True if it was written and closed cleanly."""
    try:
        with trio.fail_after(10):
            async with light_connection(p2p.new_identity(), addr) as conn:
                stream = await conn.open_stream(PROTOCOL_ID)
                beat = Beat(head=HEAD, height=height, nickname="healthy", miner_address="")
                await stream.write(encode_cbor(beat))
                await stream.close()
                await trio.sleep(0.5)
    except* _BEAT_ERRORS:
        ok = False
    else:
        ok = True
    return ok


async def flood(addr: str, kind: str, seconds: float) -> int:
    """Raw SYN or PING frames on one connection for `seconds`; frames written."""
    from libp2p.stream_muxer.yamux.yamux import (
        FLAG_SYN,
        TYPE_PING,
        TYPE_WINDOW_UPDATE,
        YAMUX_HEADER_FORMAT,
    )

    sent = 0
    try:
        async with light_connection(p2p.new_identity(), addr) as conn:
            muxed: Any = conn._muxed
            with trio.move_on_after(seconds):
                stream_id = 1_000_001
                while not conn.is_closed:
                    if kind == "syn":
                        frame = struct.pack(
                            YAMUX_HEADER_FORMAT, 0, TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, 0
                        )
                        stream_id += 2
                    else:
                        frame = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, sent)
                    await muxed._write_frame(frame)
                    sent += 1
    except* p2p.LIBP2P_ERRORS:
        pass  # closed by the aggregator: the limit at work
    return sent


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="yamux-flood-"))
    agg = start(args.tree, workdir)
    try:
        addr = agg.multiaddr
        await trio.sleep(2)
        rss_before = proc_rss_kb(agg.pid)
        peak = rss_before
        beats: dict[str, bool] = {}

        async def sample(stop: trio.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc_rss_kb(agg.pid))
                await trio.sleep(0.2)

        sent: dict[str, int] = {}
        for kind in ("syn", "ping"):
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample, stop)

                async def attack(kind: str = kind) -> None:
                    sent[kind] = await flood(addr, kind, args.seconds)

                nursery.start_soon(attack)
                await trio.sleep(args.seconds / 2)
                beats[f"during_{kind}"] = await healthy_beat(addr, 100)
                await trio.sleep(args.seconds / 2 + 1)
                stop.set()
        await trio.sleep(args.settle)
        rss_after = proc_rss_kb(agg.pid)
        beats["after"] = await healthy_beat(addr, 101)
        try:
            accepted = agg.metric("fil_heartbeat_beats_accepted_total")
        except (KeyError, ValueError, OSError):
            accepted = float("nan")
        try:
            refusals = {
                r: agg.metric("fil_heartbeat_refusals_total", reason=r)
                for r in ("yamux_stream_cap", "yamux_ping_budget", "yamux_ping_flood")
            }
        except (KeyError, ValueError, OSError):
            refusals = {}
    finally:
        agg.stop()
    log_text = (workdir / "aggregator.log").read_text(errors="replace")
    errors = sum(1 for line in log_text.splitlines() if "ERROR" in line)
    print(f"tree={args.tree} seconds={args.seconds} settle={args.settle}")
    print(f"frames_sent syn={sent.get('syn', 0)} ping={sent.get('ping', 0)}")
    print(
        f"rss_mb before={rss_before / 1024:.1f} peak={peak / 1024:.1f} "
        f"after={rss_after / 1024:.1f} ({100 * (rss_after - rss_before) / rss_before:+.1f}%)"
    )
    print(f"error_lines={errors} log_lines={len(log_text.splitlines())}")
    print("healthy_beat " + " ".join(f"{k}={v}" for k, v in beats.items()))
    print(f"beats_accepted={accepted:g} refusals={refusals}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=REPO, help="checkout to run the aggregator from")
    p.add_argument("--seconds", type=float, default=10.0, help="each flood's length (10)")
    p.add_argument("--settle", type=float, default=5.0, help="wait after the flood (5)")
    args = p.parse_args()
    args.seconds = min(args.seconds, 30.0)
    trio.run(run, args)


if __name__ == "__main__":
    main()
