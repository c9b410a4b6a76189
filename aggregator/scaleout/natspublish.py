"""The NATS bridge's publish path, without importing nats: one message with its ack, or a
window of them pipelined on the connection, acknowledged on one ack inbox per connection.
A part of `NatsBridge` (aggregator/scaleout/bridge.py), on its connection (`BridgeCore`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aggregator.scaleout.natsconf import pub_ack
from aggregator.scaleout.natsconnect import BridgeCore
from aggregator.scaleout.natswire import AckWindow, raw_sender, raw_status

__all__ = ["Publisher"]


class Publisher(BridgeCore):
    """JetStream publishes with their acks."""

    #: The publish acks' inbox (per connection) and the futures waiting on it.
    _ack_sub: tuple[Any, bytes] | None
    _acks: dict[bytes, tuple[AckWindow, int]]
    _ack_seq: int

    async def publish(self, subject: str, data: bytes, msg_id: str, timeout: float = 2.0) -> bool:
        """Store one message; True when stored, False when the server saw `msg_id` already."""
        js = await self._jetstream()
        headers = {"Nats-Msg-Id": msg_id}
        ack = await self._aio(
            "publish",
            lambda: js.publish(
                subject, data, timeout=timeout, stream=self.settings.stream, headers=headers
            ),
        )
        return not bool(ack.duplicate)

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, str]], timeout: float = 2.0
    ) -> list[bool | None]:
        """Publish (subject, data, msg_id) items pipelined on the connection, in order.

        One result per item: True stored, False a duplicate, None not acknowledged (retry
        it). Raises `NatsUnavailable` when there is no connection at all."""
        await self._jetstream()  # connected (or NatsUnavailable)
        stream = self.settings.stream

        nc = self._nc
        assert nc is not None

        async def publish_all() -> list[Any]:
            # One core PUB each, replying to this connection's one ack inbox: no request
            # task or timer per message (nats-py's js.publish and publish_async have one),
            # and no suspension between the PUBs, so they leave in order in few writes and
            # the stream stores them in order.
            prefix = await self._ack_prefix(nc)
            window = AckWindow(len(items))
            tokens: list[bytes] = []
            # Connected: the window's HPUBs are written as one bytes into the client's
            # pending buffer (`_send_command`, what `publish` ends in) and flushed once:
            # nats-py's per message header checks were most of the export's publishing cost.
            # Ids with line breaks, and anything while reconnecting, take the public
            # `publish` (after what is gathered so far: the order stays).
            raw = raw_sender(nc)
            tail = b"\r\nNats-Expected-Stream: " + stream.encode() + b"\r\n\r\n"
            gathered: list[bytes] = []
            for index, (subject, data, msg_id) in enumerate(items):
                token = prefix + b"%d" % self._ack_seq
                tokens.append(token)
                self._ack_seq += 1
                self._acks[token] = (window, index)
                if raw is not None and "\n" not in msg_id and "\r" not in msg_id:
                    hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + tail
                    gathered.append(
                        b"HPUB %s %s %d %d\r\n%s%s\r\n"
                        % (subject.encode(), token, len(hdr), len(hdr) + len(data), hdr, data)
                    )
                else:
                    if gathered and raw is not None:
                        await raw(b"".join(gathered))
                        gathered.clear()
                    headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": stream}
                    await nc.publish(subject, data, reply=token.decode(), headers=headers)
            if raw is not None and gathered:
                await raw(b"".join(gathered))
            if raw is not None and items:
                await nc._flush_pending()
            try:
                if items:
                    # one event for the window, set by its last ack: no callback per message
                    await asyncio.wait_for(window.complete.wait(), timeout)
            except TimeoutError:
                pass  # the unanswered ones stay None: retried
            finally:
                for token in tokens:
                    self._acks.pop(token, None)  # unanswered: a late ack is ignored
            return window.bodies

        results = await self._aio("publish", publish_all)
        return [pub_ack(r) for r in results]

    async def _ack_prefix(self, nc: Any) -> bytes:
        """This connection's ack inbox (`<inbox>.`), subscribed once (asyncio side)."""
        if self._ack_sub is not None and self._ack_sub[0] is nc:
            return self._ack_sub[1]
        prefix: str = nc.new_inbox() + "."
        acks = self._acks

        def on_ack(subject: bytes, _reply: bytes, data: bytes, hdr: bytes | None) -> None:
            entry = acks.pop(subject, None)
            if entry is not None:
                # a status reply (503: no responders) has no body: not stored
                entry[0].answer(entry[1], b"" if raw_status(hdr) else data)

        await nc.subscribe_raw(prefix + "*", on_ack)
        self._ack_sub = (nc, prefix.encode())
        return self._ack_sub[1]
