"""`fil-heartbeat-aggregator tail`: the stream as JSON lines, from a durable consumer.

Each message becomes one line on stdout, `{"subject", "seq", "msg_id", "stored_at", ...}`
and the decoded payload (docs/STREAM.md); the message is acknowledged only after its line
is written and flushed. Killed at any point and restarted with the same `--durable`, it
resumes after the last acknowledged message: nothing is skipped, and what the last run
fetched but had not acknowledged (at most one batch, `BATCH`: acks are sent asynchronously,
so a kill may lose the last few) comes again after the server's ack wait (5 s), possibly
after newer messages. Possible duplicates are counted and said on stderr at exit with the
line count: `redelivered` (delivered again by the server: the last run may have written
it) and `duplicates` (a message id written twice in this run).
A NATS outage is waited out (retry with backoff); SIGTERM/SIGINT stop it with status 0.

It doubles as the example of a downstream consumer: a data pipeline reads the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio

from aggregator.config import AggregatorConfig
from aggregator.scaleout import schema
from aggregator.scaleout.bridge import (
    NatsBridge,
    NatsUnavailable,
    StreamMsg,
    open_bridge,
    settings_from_config,
)

__all__ = ["TailCounts", "run_tail", "tail_line"]

log = logging.getLogger(__name__)

#: Message ids remembered to recognise a duplicate within one run.
SEEN_IDS = 100_000
RETRY_MIN, RETRY_MAX = 0.5, 10.0
#: Messages fetched at once: also the most a killed tail leaves unacknowledged.
BATCH = 64


@dataclass
class TailCounts:
    """What one run wrote (pure bookkeeping)."""

    lines: int = 0
    #: delivered again by the server (the last run wrote it, or fetched it unwritten)
    redelivered: int = 0
    #: a message id already written in this run
    duplicates: int = 0
    undecodable: int = 0
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def observe(self, msg: StreamMsg) -> bool:
        """Count `msg`; True when it may be a duplicate (redelivered, or its id seen before)."""
        self.lines += 1
        redelivered = msg.delivered > 1
        self.redelivered += redelivered
        duplicate = False
        if msg.msg_id is not None:
            if msg.msg_id in self._seen:
                duplicate = True
            else:
                self._seen[msg.msg_id] = None
                if len(self._seen) > SEEN_IDS:
                    self._seen.popitem(last=False)
        if duplicate:
            self.duplicates += 1
        return duplicate or redelivered

    def summary(self) -> str:
        return (
            f"tail: lines={self.lines} redelivered={self.redelivered} "
            f"duplicates={self.duplicates} undecodable={self.undecodable}"
        )


def tail_line(msg: StreamMsg, counts: TailCounts | None = None) -> str:
    """One JSON line (no newline) for `msg`: where it is in the stream, then its payload."""
    head: dict[str, Any] = {
        "subject": msg.subject,
        "seq": msg.seq,
        "msg_id": msg.msg_id,
        "stored_at": round(msg.timestamp, 6),
    }
    try:
        body = schema.to_json(schema.decode(msg.data))
    except schema.StreamDecodeError as exc:
        if counts is not None:
            counts.undecodable += 1
        body = {"type": "undecodable", "error": str(exc)}
    return json.dumps({**head, **body}, ensure_ascii=False, separators=(",", ":"))


async def _consume_once(
    bridge: NatsBridge,
    config: AggregatorConfig,
    since: float | None,
    counts: TailCounts,
    out: TextIO,
) -> None:
    stream = bridge.consume(
        config.tail_durable, list(config.tail_subjects), deliver_since=since, batch=BATCH
    )
    async with contextlib.aclosing(stream) as messages:
        async for msg, ack in messages:
            counts.observe(msg)
            out.write(tail_line(msg, counts) + "\n")
            out.flush()
            await ack()


async def run_tail(
    config: AggregatorConfig,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> int:
    """Print the stream until a signal (see the module docstring); the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    counts = TailCounts()
    since = wall_clock() - config.tail_since if config.tail_since is not None else None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                async with open_bridge(settings_from_config(config)) as bridge:
                    await _follow(bridge, config, since, counts, out, err)
            except BrokenPipeError:
                pass  # the reader went away (`tail | head`)
            nursery.cancel_scope.cancel()
    print(counts.summary(), file=err, flush=True)
    return 0


async def _follow(
    bridge: NatsBridge,
    config: AggregatorConfig,
    since: float | None,
    counts: TailCounts,
    out: TextIO,
    err: TextIO,
) -> None:
    delay, written = RETRY_MIN, 0
    while True:
        try:
            await bridge.ensure_stream()
            await _consume_once(bridge, config, since, counts, out)
        except NatsUnavailable as exc:
            print(f"tail: NATS unavailable ({exc.reason}); retrying in {delay:g}s", file=err)
            await trio.sleep(delay)
            delay = RETRY_MIN if counts.lines > written else min(RETRY_MAX, delay * 2)
            written = counts.lines
