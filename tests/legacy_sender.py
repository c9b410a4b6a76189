"""Test senders over real libp2p: scripted bytes, go-filecoin-style JSON, and a crowd.

- `ScriptedSender`: one host with its own identity, one heartbeat stream to the
  aggregator, writing exactly the bytes a test gives it (CBOR beats from
  `encode_cbor`, garbage, slow drips...).
- `legacy_line(...)`: a beat as go-filecoin's `json.Encoder` wrote it.
- `python -m tests.legacy_sender crowd MULTIADDR COUNT`: holds COUNT connections
  (one identity each) with a heartbeat stream open, prints `connected N` lines
  and `ready N` once all are up, then keeps writing one legacy beat per
  connection every few seconds until stdin closes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.custom_types import TProtocol

from heartbeat.net import p2p
from heartbeat.net.p2p import HostLimits, running_host
from heartbeat.tools.loadgen.light import light_connection

__all__ = ["ScriptedSender", "legacy_line", "scripted_sender"]

PROTOCOL = "fil/heartbeat/1.0.0"


def legacy_line(
    height: int,
    nickname: str = "legacy",
    head: str = "{ bafy2bzacealegacyheadaaaa bafy2bzacealegacyheadbbbb }",
    miner: str = "t01234",
    genesis: str | None = None,
) -> bytes:
    """One go-filecoin beat: Go field names, `GenesisCID` as `{"/": cid}`, newline."""
    obj: dict[str, Any] = {"Head": head, "Height": height, "Nickname": nickname}
    obj["MinerAddress"] = miner
    if genesis is not None:
        obj["GenesisCID"] = {"/": genesis}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class ScriptedSender:
    """A connected stream whose bytes the test controls."""

    def __init__(self, host: Any, stream: Any) -> None:
        self.host = host
        self.stream = stream
        self.peer_id = host.get_id().to_base58()

    async def write(self, data: bytes) -> None:
        with trio.fail_after(10):
            await self.stream.write(data)

    async def read_until_closed(self, timeout: float = 10.0) -> str:
        """Wait for the aggregator to end the stream: "closed", or "timeout".

        py-libp2p reports a remote reset as EOF (and sometimes as a reset): the
        two cannot be told apart from this side.
        """
        with trio.move_on_after(timeout):
            try:
                while True:
                    await self.stream.read(1024)
            except p2p.StreamClosed:
                return "closed"
        return "timeout"

    async def finish(self) -> None:
        """Half-close and wait for the aggregator to close its side (no beat lost)."""
        with trio.move_on_after(5):
            try:
                await self.stream.close()
            except p2p.StreamClosed:
                return
            await self.read_until_closed(5)

    def connected(self) -> bool:
        return bool(self.host.get_network().get_connections())


@asynccontextmanager
async def scripted_sender(
    aggregator_addr: str, protocol: str = PROTOCOL, *, key_pair: Any = None
) -> AsyncIterator[ScriptedSender]:
    """A fresh (or given) identity, connected with one heartbeat stream open."""
    key_pair = key_pair if key_pair is not None else p2p.new_identity()
    async with running_host(key_pair, [], HostLimits()) as host:
        info = p2p.peer_info_from_multiaddr(aggregator_addr)
        with trio.fail_after(15):
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [TProtocol(protocol)])
        yield ScriptedSender(host, stream)


async def _crowd_member(
    addr: str, index: int, handshakes: trio.Semaphore, ready: trio.Semaphore, period: float
) -> None:
    """One light connection (no host: ~58 KB each) with one heartbeat stream."""
    await handshakes.acquire()  # held only during the handshake
    released = False
    try:
        async with light_connection(p2p.new_identity(), addr, timeout=60.0) as conn:
            stream = await conn.open_stream(PROTOCOL)
            height = 1
            await stream.write(legacy_line(height, nickname=f"crowd{index}"))
            handshakes.release()
            released = True
            ready.release()
            while True:
                await trio.sleep(period)
                height += 1
                await stream.write(legacy_line(height, nickname=f"crowd{index}"))
    except (*p2p.StreamClosed, OSError, trio.TooSlowError) as exc:
        print(f"failed {index} {exc!r}", flush=True)
    finally:
        if not released:
            handshakes.release()


async def crowd(addr: str, count: int, concurrency: int = 8, period: float = 5.0) -> None:
    """Hold `count` connections (one identity each); stop when stdin closes."""
    ready = trio.Semaphore(0, max_value=count)
    handshakes = trio.Semaphore(concurrency)
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(_crowd_member, addr, i, handshakes, ready, period)

        async def report() -> None:
            connected = 0
            while connected < count:
                await ready.acquire()
                connected += 1
                if connected % 50 == 0 and connected < count:
                    print(f"connected {connected}", flush=True)
            print(f"ready {connected}", flush=True)

        nursery.start_soon(report)
        # trio-typing's trio-stubs (a libp2p dependency) predate abandon_on_cancel
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # type: ignore[call-arg]
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "crowd":
        print("usage: python -m tests.legacy_sender crowd MULTIADDR COUNT", file=sys.stderr)
        return 2
    trio.run(crowd, argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
