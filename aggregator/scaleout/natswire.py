"""The asyncio side of the NATS bridge (aggregator/scaleout/bridge.py): a publish window's
acks, the polled pull consumer, raw HPUB writes, reading a delivered message. Typed
loosely (`Any` for nats-py's objects): bridge.py stays the only importer of nats, and runs
everything here on its asyncio loop.

The hot subscriptions (the publish acks, the polled consumer's deliveries) take their
messages raw (`Raw`: bytes as the protocol parser cut them, handed over synchronously by the
bridge's client, `subscribe_raw`): no message object, header dict, queue or task per message.
What is read of one is read from its bytes here: its status line, its msg id, the JetStream
metadata in its reply subject (`raw_stream_msg`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aggregator.scaleout.natsconf import StreamMsg

__all__ = [
    "AckWindow",
    "LiveBuffer",
    "PullFailed",
    "Puller",
    "Raw",
    "RawHandler",
    "drop_own",
    "no_ack",
    "raw_msg_id",
    "raw_sender",
    "raw_status",
    "raw_stream_msg",
    "stream_msg",
]

#: One delivered message as the protocol parser cut it: subject, reply subject, payload, and
#: the header block (`NATS/1.0[ status]\r\n…\r\n\r\n`; None without headers).
Raw = tuple[bytes, bytes, bytes, bytes | None]
#: A raw subscription's handler (synchronous, on the connection's read loop: must not block).
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]

_MSG_ID = b"\r\nNats-Msg-Id:"


def raw_status(hdr: bytes | None) -> tuple[str, str] | None:
    """A status message's code and description (`NATS/1.0 404 No Messages`), else None."""
    if hdr is None or hdr[8:9] != b" ":
        return None
    line = hdr[9 : hdr.find(b"\r\n")].decode(errors="replace")
    code, _, description = line.partition(" ")
    return code, description.strip()


def raw_msg_id(hdr: bytes | None) -> str | None:
    """The `Nats-Msg-Id` header's value."""
    if hdr is None:
        return None
    start = hdr.find(_MSG_ID)
    if start < 0:
        return None
    start += len(_MSG_ID)
    return hdr[start : hdr.find(b"\r\n", start)].strip().decode(errors="replace")


def _ack_tokens(reply: bytes) -> tuple[int, int, int, int]:
    """(delivered, stream sequence, store time ns, pending) from a JetStream delivery's reply
    subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`, or the
    form with a domain and an account hash in front of the stream (11 tokens and more).
    Raises ValueError on anything else."""
    tokens = reply.split(b".")
    if tokens[:2] != [b"$JS", b"ACK"]:
        raise ValueError(f"not a JetStream delivery: {reply[:80]!r}")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5]), int(tokens[7]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[6]), int(tokens[7]), int(tokens[9]), int(tokens[10])
    raise ValueError(f"not a JetStream delivery: {reply[:80]!r}")


def raw_stream_msg(raw: Raw) -> StreamMsg:
    """A delivered stream message, read from its bytes (ValueError: not a stream message)."""
    subject, reply, data, hdr = raw
    delivered, seq, ns, _pending = _ack_tokens(reply)
    return StreamMsg(
        subject=subject.decode(errors="replace"),
        data=data,
        msg_id=raw_msg_id(hdr),
        seq=seq,
        timestamp=ns / 1e9,
        delivered=delivered or 1,
    )


class PullFailed(Exception):
    """A pull request answered by an error status, or by nothing (the consumer is gone)."""


async def no_ack() -> None:
    return None


class AckWindow:
    """The acks of one `publish_many` window (asyncio side)."""

    __slots__ = ("bodies", "complete", "missing")

    def __init__(self, size: int) -> None:
        self.bodies: list[bytes | None] = [None] * size
        self.missing = size
        self.complete = asyncio.Event()

    def answer(self, index: int, body: bytes) -> None:
        if self.bodies[index] is None:
            self.bodies[index] = body
            self.missing -= 1
            if self.missing == 0:
                self.complete.set()


class Puller:
    """One ephemeral consumer's no-wait pull requests, on a raw subscription (asyncio side):
    the messages of a request are collected by its handler, no task or object per message."""

    #: A request answered by nothing for this long: the consumer is gone (re-created above).
    TIMEOUT = 2.0

    def __init__(self, nc: Any, next_subject: str, batch: int) -> None:
        self.nc = nc
        self.next_subject = next_subject
        self.batch = batch
        self.request = json.dumps({"batch": batch, "no_wait": True}).encode()
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self.msgs: list[Raw] = []
        self.token = b""
        self.seq = 0
        self.count = 0
        self.done: asyncio.Event | None = None
        self.error: str | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe_raw(self.inbox + ".*", self._on_raw)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.nc.unsubscribe_raw(self.sub)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
        status = raw_status(hdr)
        if status is None:
            # a stream message (delivered with its own subject: which request it answers is
            # not told; a late one of an earlier request simply counts here)
            self.msgs.append((subject, reply, data, hdr))
            self.count += 1
            if self.count >= self.batch and self.done is not None:
                self.done.set()
        elif subject == self.token and self.done is not None:
            # 404 no messages, 408 the request ended: this request is over; others: an error
            code, description = status
            if code not in ("404", "408"):
                self.error = f"status {code} {description}"
            self.done.set()

    async def pull(self) -> list[Raw]:
        """One request: what the consumer has now, up to `batch` messages."""
        self.seq += 1
        token = f"{self.inbox}.{self.seq}"
        self.token = token.encode()
        self.count, self.error = 0, None
        done = self.done = asyncio.Event()
        await self.nc.publish(self.next_subject, self.request, reply=token)
        try:
            await asyncio.wait_for(done.wait(), self.TIMEOUT)
        except TimeoutError:
            self.error = "no answer to a pull request"
        msgs, self.msgs = self.msgs, []
        if self.error is not None and not msgs:
            raise PullFailed(self.error)
        return msgs

    @staticmethod
    def pending(raw: Raw) -> int:
        """How many messages the consumer holds behind this one (0 when not told)."""
        try:
            return _ack_tokens(raw[1])[3]
        except ValueError:
            return 0


class LiveBuffer:
    """A core subscription's payloads as they come (asyncio side, a raw handler: one list
    append per message), taken in bursts by its reader. Past `cap` waiting messages it stops
    keeping them and says so (`overflowed`): its reader re-reads the stream instead."""

    __slots__ = ("cap", "overflowed", "payloads")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.payloads: list[bytes] = []
        self.overflowed = False

    def on_raw(self, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
        payloads = self.payloads
        if len(payloads) < self.cap:
            payloads.append(data)
        else:
            self.overflowed = True

    def take(self) -> list[bytes]:
        payloads, self.payloads = self.payloads, []
        return payloads


def raw_sender(nc: Any) -> Callable[[bytes], Awaitable[None]] | None:
    """nats-py's `_send_command` while connected (None: use `publish`)."""
    send = getattr(nc, "_send_command", None)
    if send is None or not hasattr(nc, "_flush_pending") or not nc.is_connected:
        return None
    result: Callable[[bytes], Awaitable[None]] = send
    return result


def drop_own(
    msgs: list[Raw], prefix: str, on_skipped: Callable[[int, float], None] | None
) -> list[Raw]:
    """`msgs` without those whose msg id starts with `prefix` (one search of each header
    block: the exporter writes the id as `Nats-Msg-Id: <id>`)."""
    needle = _MSG_ID + b" " + prefix.encode()
    kept: list[Raw] = []
    last: Raw | None = None
    for msg in msgs:
        hdr = msg[3]
        if hdr is not None and needle in hdr:
            last = msg
        else:
            kept.append(msg)
    if last is not None and on_skipped is not None:
        try:
            stored = _ack_tokens(last[1])[2] / 1e9  # one reply subject read per request
        except ValueError:
            stored = 0.0
        on_skipped(len(msgs) - len(kept), stored)
    return kept


def stream_msg(msg: Any) -> StreamMsg:
    meta = msg.metadata
    headers = msg.headers or {}
    return StreamMsg(
        subject=msg.subject,
        data=bytes(msg.data),
        msg_id=headers.get("Nats-Msg-Id"),
        seq=int(meta.sequence.stream),
        timestamp=meta.timestamp.timestamp() if meta.timestamp else 0.0,
        delivered=int(meta.num_delivered or 1),
    )
