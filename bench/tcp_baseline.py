"""The ceiling: the same `BeatDecoder` behind plain TCP (no Noise, no Yamux, no libp2p).

`serve` runs a trio TCP receiver on loopback that feeds every connection's bytes to a
`BeatDecoder` and prints its beat count every second; `send` writes beats (one beat per
`send_all`, like the agent) as fast as it can over several connections. `measure(...)` runs
both as subprocesses and returns the receiver's beats/s and CPU µs per beat.

    .venv/bin/python -m bench.tcp_baseline --duration 10 --repeat 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from functools import partial
from typing import Any

import trio

from bench.common import PYTHON, REPO, fmt_spread, machine_note, print_table
from heartbeat.protocol.wire import BeatDecoder, encode_cbor
from heartbeat.tools.loadgen import head_for

__all__ = ["main", "measure"]


async def _serve(fast_path: bool = True) -> None:
    count = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal count
        decoder = BeatDecoder(fast_path=fast_path)
        async with stream:
            while data := await stream.receive_some(65536):
                count += len(decoder.feed(data))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        print(listeners[0].socket.getsockname()[1], flush=True)
        while True:  # timestamped, so a reader may drain the pipe late
            await trio.sleep(0.5)
            print(f"{time.monotonic():.4f} {count} {time.process_time():.4f}", flush=True)


async def _send(port: int, connections: int, duration: float, beats_per_frame: int) -> None:
    beat = head_for("healthy", time.time())
    payload = encode_cbor(beat) * beats_per_frame

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            while True:
                await stream.send_all(payload)

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)


def measure(
    duration: float = 10.0,
    *,
    connections: int = 16,
    senders: int = 1,
    warmup: float = 2.0,
    beats_per_frame: int = 1,
    fast_path: bool = True,
) -> dict[str, Any]:
    """One run: receiver beats/s and CPU µs per beat over `duration` seconds after warm-up."""
    serve = [PYTHON, "-m", "bench.tcp_baseline", "serve"]
    if not fast_path:
        serve.append("--no-fast-path")
    recv = subprocess.Popen(serve, stdout=subprocess.PIPE, cwd=REPO)
    assert recv.stdout is not None
    try:
        port = int(recv.stdout.readline())
        procs = [
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "bench.tcp_baseline",
                    "send",
                    "--port",
                    str(port),
                    "--connections",
                    str(connections),
                    "--for",
                    str(duration + warmup + 2),
                    "--beats-per-frame",
                    str(beats_per_frame),
                ],
                cwd=REPO,
            )
            for _ in range(senders)
        ]

        time.sleep(warmup + duration)
        for proc in procs:
            proc.wait(timeout=30)
    finally:
        recv.kill()
        out, _ = recv.communicate()
    samples = [tuple(map(float, line.split())) for line in out.decode().splitlines()]
    start = samples[0][0] + warmup
    window = [s for s in samples if start <= s[0] <= start + duration]
    (t0, n0, c0), (t1, n1, c1) = window[0], window[-1]
    beats = n1 - n0
    return {
        "beats_per_s": beats / (t1 - t0),
        "cpu_us_per_beat": (c1 - c0) / max(beats, 1) * 1e6,
        "cpu_share": (c1 - c0) / (t1 - t0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "serve", "send"))
    p.add_argument("--port", type=int)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--for", dest="for_", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--beats-per-frame", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-fast-path", action="store_true", help="the decoder's full scanner only")
    args = p.parse_args(argv)
    if args.mode == "serve":
        trio.run(_serve, not args.no_fast_path)
        return 0
    if args.mode == "send":
        trio.run(_send, args.port, args.connections, min(args.for_, 600.0), args.beats_per_frame)
        return 0
    runs = [
        measure(
            min(args.duration, 120.0),
            connections=args.connections,
            senders=args.senders,
            beats_per_frame=args.beats_per_frame,
            fast_path=not args.no_fast_path,
        )
        for _ in range(args.repeat)
    ]
    print(
        f"tcp_baseline duration={args.duration}s connections={args.connections} "
        f"senders={args.senders} beats_per_frame={args.beats_per_frame} "
        f"fast_path={not args.no_fast_path} runs={len(runs)} {machine_note()}"
    )
    print_table(
        ["figure", "median (min–max)"],
        [
            ["beats/s", fmt_spread(r["beats_per_s"] for r in runs)],
            ["CPU µs per beat", fmt_spread((r["cpu_us_per_beat"] for r in runs), "{:.1f}")],
            ["receiver CPU (cores)", fmt_spread((r["cpu_share"] for r in runs), "{:.2f}")],
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
