"""The floor under CPU per beat at one beat per write: what one wake-up and one receive cost.

A sender process writes small messages (the size of a sealed beat) over N loopback TCP
connections, round robin, paced to a total rate like `bench_ingest`'s, so that nearly
every receive finds one message. This process receives them and does nothing else, and
its CPU time per receive is printed for each way of receiving:

- `selectors`: a plain `selectors` loop with `os.read`, no trio (Python's own floor);
- `trio-receive_some`: a trio task per connection, `SocketStream.receive_some`;
- `trio-wait_readable`: a trio task per connection, `wait_readable` and `os.read` (the
  aggregator's receive, `heartbeat.net.compat.buffered_read._receive`);
- `trio-wait_readable+decrypt`: the same and one ChaCha20-Poly1305 open per message (what
  a Noise transport message costs on top).

Whatever the aggregator spends per beat above the trio line is its own (decrypt,
demultiplex, decode, fleet); the trio line is what a wake-up per beat costs under trio.

    .venv/bin/python -m bench.bench_trio_floor --connections 32 --rate 5600 --duration 5
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing import get_context

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.common import machine_note, print_table

MESSAGE = 120  # about one sealed beat: CBOR + Yamux header + Noise length and tag
KEY = bytes(32)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sender(port: int, connections: int, rate: float, seconds: float) -> None:
    """Paced writes, round robin over the connections, for `seconds`."""
    aead = ChaCha20Poly1305(KEY)
    sealed = aead.encrypt(bytes(12), b"x" * (MESSAGE - 16), None)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            socks[sent % connections].send(sealed)
            sent += 1
        time.sleep(0.0005)
    for s in socks:
        s.close()


def _accept(listener: socket.socket, connections: int) -> list[socket.socket]:
    conns = []
    for _ in range(connections):
        conn, _addr = listener.accept()
        conn.setblocking(False)
        conns.append(conn)
    return conns


class _Window:
    """Counts the receives, and the CPU time, between `begin` and `end` (monotonic)."""

    def __init__(self, begin: float, end: float) -> None:
        self.begin, self.end = begin, end
        self.reads = 0
        self.cpu0: float | None = None
        self.cpu: float | None = None

    def tick(self) -> bool:
        """One receive; False once the window is over (the receiver stops)."""
        now = time.monotonic()
        if now < self.begin:
            return True
        if self.cpu0 is None:
            self.cpu0 = _cpu()
        if now < self.end:
            self.reads += 1
            return True
        if self.cpu is None:
            self.cpu = _cpu() - self.cpu0
        return False

    def result(self) -> tuple[int, float]:
        cpu = self.cpu if self.cpu is not None else _cpu() - (self.cpu0 or _cpu())
        return self.reads, cpu


def _selectors(conns: list[socket.socket], window: _Window) -> None:
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c, selectors.EVENT_READ)
    while sel.get_map():
        for key, _ in sel.select(timeout=1):
            if not os.read(key.fd, 65536):
                sel.unregister(key.fileobj)
            elif not window.tick():
                return


def _trio(conns: list[socket.socket], window: _Window, how: str) -> None:
    aead = ChaCha20Poly1305(KEY)

    async def one(conn: socket.socket) -> None:
        if how == "receive_some":
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            while (await stream.receive_some(65536)) and window.tick():
                pass
            return
        fd = conn.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return
            if how == "decrypt":
                for at in range(0, len(data) - MESSAGE + 1, MESSAGE):
                    aead.decrypt(bytes(12), data[at : at + MESSAGE], None)
            if not window.tick():
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(one, conn)

    trio.run(main)


MODES: dict[str, Callable[[list[socket.socket], _Window], None]] = {
    "selectors": _selectors,
    "trio-receive_some": lambda c, w: _trio(c, w, "receive_some"),
    "trio-wait_readable": lambda c, w: _trio(c, w, "wait_readable"),
    "trio-wait_readable+decrypt": lambda c, w: _trio(c, w, "decrypt"),
}


def run_once(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """(µs of CPU per receive, receives per second) for one mode."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.connections)
    port = listener.getsockname()[1]
    seconds = args.warmup + args.duration + 1.0
    sender = get_context("spawn").Process(
        target=_sender, args=(port, args.connections, args.rate, seconds)
    )
    sender.start()
    conns = _accept(listener, args.connections)
    now = time.monotonic()
    window = _Window(now + args.warmup, now + args.warmup + args.duration)
    try:
        MODES[mode](conns, window)
    finally:
        sender.join(timeout=seconds + 10)
        for c in conns:
            c.close()
        listener.close()
    reads, cpu = window.result()
    return cpu / max(reads, 1) * 1e6, reads / args.duration


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=5600.0, help="messages/s in all")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mode", choices=sorted(MODES), action="append")
    args = p.parse_args(argv)
    rows = []
    for mode in args.mode or list(MODES):
        runs = [run_once(mode, args) for _ in range(args.repeat)]
        us = [r[0] for r in runs]
        rate = [r[1] for r in runs]
        rows.append(
            [
                mode,
                f"{statistics.median(us):.1f} ({min(us):.1f}–{max(us):.1f})",
                f"{statistics.median(rate):.0f}",
            ]
        )
    print(f"# {args.connections} connections, {args.rate:.0f} msg/s; {machine_note()}")
    print_table(["receive", "CPU µs per receive (median, min–max)", "receives/s"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
