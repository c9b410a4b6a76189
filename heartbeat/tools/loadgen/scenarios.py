"""What the well-behaved agents send: the simulated network's heads (healthy, lagging, forked),
the latency stamp, and the steady beat loop (healthy, lagging, forked, flapping, flood).
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import trio

from heartbeat.protocol.wire import Beat
from heartbeat.tools.loadgen.config import SIM_GENESIS_CID, SIM_GENESIS_TS, STAMP_PREFIX

if TYPE_CHECKING:
    from heartbeat.tools.loadgen.connection import Session
    from heartbeat.tools.loadgen.sim import Sim

__all__ = ["beating", "head_for", "parse_stamp", "stamp_version"]


def _cid(tag: str, height: int) -> str:
    digest = hashlib.sha256(f"{tag}:{height}".encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    bits = int.from_bytes(digest, "big")
    return "bafy2bzace" + "".join(alphabet[(bits >> (5 * i)) & 31] for i in range(50))


def head_for(kind: str, unix_now: float, *, epoch: float = 30.0, lag: int = 10) -> Beat:
    """The beat a `kind` agent sends at `unix_now` on the simulated network (no Version)."""
    height = int((unix_now - SIM_GENESIS_TS) // epoch)
    tag = "main"
    if kind == "lagging":
        height -= lag
    elif kind == "forked":
        tag = "fork"
    return Beat(
        head="{" + _cid(tag, height) + "}",
        height=height,
        nickname="",
        miner_address="",
        genesis_cid=SIM_GENESIS_CID,
        head_timestamp=int(SIM_GENESIS_TS + height * epoch),
    )


def stamp_version(monotonic_ns: int) -> str:
    return f"{STAMP_PREFIX}{monotonic_ns}"


def parse_stamp(version: str | None) -> int | None:
    """The sender's CLOCK_MONOTONIC ns from a `--stamp`ed beat's Version, else None."""
    if not version or not version.startswith(STAMP_PREFIX):
        return None
    digits = version[len(STAMP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


async def beating(sim: Sim, session: Session, *, period: float | None = None) -> str:
    """healthy, lagging, forked, flapping and flood: a beat every period (`--beats-per-write`
    of them, each its own Yamux frame, all in one Noise message)."""
    config = sim.worker.config
    if period is None:
        period = config.beat_period
    flap_at = math.inf
    if sim.kind == "flapping":
        flap_at = trio.current_time() + config.flap_period * (
            1 + config.jitter * (2 * sim.worker.rand.random() - 1)
        )
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        deadline = trio.current_time()
        batch = config.beats_per_write
        while True:
            payload = sim.worker.payload
            await sim.write_frames(watched, [payload(sim) for _ in range(batch)])
            sim.wrote_beat(config.beats_per_frame * batch)
            now = trio.current_time()
            deadline += period
            if deadline < now:  # stalled: skip missed beats rather than burst
                deadline = now + period
            if await sim.pause(min(deadline, flap_at), watched) == "stopped":
                result = await sim.finish(watched)
                nursery.cancel_scope.cancel()
                return result
            if trio.current_time() >= flap_at:
                nursery.cancel_scope.cancel()
                return "flap"
