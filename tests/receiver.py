"""A small real libp2p heartbeat receiver for tests.

Listens on 127.0.0.1 (port 0 unless told), registers `PROTOCOL_ID`, decodes each
stream with `BeatDecoder` and records the beats with their trio arrival time.
It can be stopped and started again on the same port with the same identity, so
tests can kill and restart "the aggregator". After EOF it closes its side of the
stream, as a good receiver must (py-libp2p trap 11), so a half-closing sender
sees its last beats delivered.

    async with trio.open_nursery() as nursery:
        receiver = Receiver()
        await receiver.start(nursery)        # receiver.addr: /ip4/127.0.0.1/tcp/P/p2p/ID
        await receiver.wait_for(3, timeout=5)
        await receiver.stop()
        await receiver.start(nursery)        # same port, same peer id
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from heartbeat.net.p2p import (
    HostLimits,
    KeyPair,
    StreamClosed,
    listen_multiaddrs,
    peer_id_of,
    running_host,
    set_stream_handlers,
)
from heartbeat.protocol.wire import PROTOCOL_ID, Beat, BeatDecodeError, BeatDecoder, BeatRejected

__all__ = ["Receiver"]

log = logging.getLogger(__name__)


class Receiver:
    """A heartbeat listener that records what it receives."""

    def __init__(self, key_pair: KeyPair | None = None, port: int = 0) -> None:
        if key_pair is None:
            from libp2p.crypto.ed25519 import create_new_key_pair

            key_pair = create_new_key_pair()
        self.key_pair = key_pair
        self.peer_id = peer_id_of(key_pair)
        self.port = port
        self.beats: list[tuple[float, Beat]] = []
        self.rejected: list[BeatRejected] = []
        self.decode_errors: list[BeatDecodeError] = []
        self.streams_opened = 0
        self.streams_ended = 0
        self._changed = trio.Event()
        self._stop_requested: trio.Event | None = None
        self._stopped: trio.Event | None = None

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def start(self, nursery: trio.Nursery) -> str:
        """Start listening (on the previous port after a stop); returns `addr`."""
        await nursery.start(self._run)
        return self.addr

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, drop every connection and close the listening socket."""
        if self._stop_requested is not None and self._stopped is not None:
            self._stop_requested.set()
            with trio.fail_after(timeout):
                await self._stopped.wait()
        self._stop_requested = None

    async def _run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # Close the host explicitly before leaving `host.run`: py-libp2p 0.8.1
        # stops the swarm by cancelling it, and its clean-up `finally` (which
        # closes the TCP listener) is aborted by that very cancellation. The
        # listening socket then lives on in a system task; bound with
        # SO_REUSEPORT, it shares the port with the restarted receiver, and the
        # kernel hands it a share of the new dials, which it upgrades and drops
        # ("No valid connections available" on the dialer).
        self._stopped = trio.Event()
        self._stop_requested = trio.Event()
        try:
            listen = [f"/ip4/127.0.0.1/tcp/{self.port}"]
            # Like the aggregator: two connections per peer, so a sender's
            # redial is not refused while its previous connection is torn down.
            limits = HostLimits(max_connections_per_peer=2)
            async with running_host(self.key_pair, listen, limits) as host:
                set_stream_handlers(host, [PROTOCOL_ID], self._handle)
                addrs = listen_multiaddrs(host)
                self.port = int(addrs[0].split("/tcp/")[1].split("/")[0])
                task_status.started()
                await self._stop_requested.wait()
                await host.close()
        finally:
            self._stopped.set()

    async def _handle(self, stream: Any) -> None:
        self.streams_opened += 1
        decoder = BeatDecoder()
        try:
            while True:
                data = await stream.read(4096)
                for item in decoder.feed(data):
                    if isinstance(item, Beat):
                        self.beats.append((trio.current_time(), item))
                    else:
                        self.rejected.append(item)
                self._notify()
        except StreamClosed:
            # EOF: close our side so the sender's half-close completes.
            try:
                await stream.close()
            except StreamClosed:
                pass
        except BeatDecodeError as exc:
            self.decode_errors.append(exc)
            await stream.reset()
        except Exception as exc:  # the top of a stream handler: never let it reach the host
            log.warning("receiver_stream_failed err=%r", exc)
            await stream.reset()
        finally:
            self.streams_ended += 1
            self._notify()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Beat]:
        """Wait until at least `count` beats in total have arrived."""
        with trio.fail_after(timeout):
            while len(self.beats) < count:
                await self._changed.wait()
        return [beat for _, beat in self.beats]

    async def wait_streams_ended(self, count: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while self.streams_ended < count:
                await self._changed.wait()
