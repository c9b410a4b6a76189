"""The hostile peers: garbage, oversize, slowdrip, silent, flood, and the hog (several
connections and streams from one peer id); each expects to be cut off.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from heartbeat.net import p2p
from heartbeat.protocol.wire import encode_cbor
from heartbeat.tools.loadgen.connection import Cut, Session, connect, leaf_exception
from heartbeat.tools.loadgen.scenarios import beating, head_for

if TYPE_CHECKING:
    from heartbeat.tools.loadgen.sim import Sim

__all__ = ["flood", "garbage", "hog", "oversize", "silent", "slowdrip"]

log = logging.getLogger(__name__)


async def flood(sim: Sim, session: Session) -> str:
    return await beating(sim, session, period=1.0 / sim.worker.config.flood_rate)


async def _one_shot(sim: Sim, session: Session, data: bytes) -> str:
    """garbage, oversize and silent: send `data` (maybe nothing), wait to be cut off."""
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        if data:
            await sim.write(watched, data)
        await sim.pause(sim.worker.stop_at, watched)
        nursery.cancel_scope.cancel()
        return "stopped"


async def garbage(sim: Sim, session: Session) -> str:
    # 0x1c: reserved CBOR additional information, a framing error at the first byte.
    return await _one_shot(sim, session, b"\x1c" + os.urandom(255))


async def oversize(sim: Sim, session: Session) -> str:
    beat = replace(head_for("healthy", time.time()), nickname="x" * 8000)
    return await _one_shot(sim, session, encode_cbor(beat))


async def silent(sim: Sim, session: Session) -> str:
    return await _one_shot(sim, session, b"")


async def slowdrip(sim: Sim, session: Session) -> str:
    interval = sim.worker.config.drip_interval
    async with trio.open_nursery() as nursery:
        watched = await sim.open(session, nursery)
        deadline = trio.current_time()
        while True:
            for byte in sim.worker.payload(sim):
                await sim.write(watched, bytes([byte]))
                deadline += interval
                if await sim.pause(deadline, watched) == "stopped":
                    nursery.cancel_scope.cancel()
                    return "stopped"


async def hog(sim: Sim, session: Session) -> str:
    """Several connections from one peer id, several streams on each, all beating."""
    config = sim.worker.config

    async def streams_on(sess: Session, nursery: trio.Nursery) -> None:
        for _ in range(config.hog_streams):
            nursery.start_soon(_hog_stream, sim, sess)

    async def extra_connection(key: p2p.KeyPair) -> None:
        try:
            async with connect(config, key) as sess, trio.open_nursery() as nursery:
                await streams_on(sess, nursery)
        except Exception as exc:  # one refused hog connection must not end the others
            sim.stats.failures["hog_connection_refused"] += 1
            log.debug("hog_connection_failed agent=%d err=%r", sim.index, exc)

    async with trio.open_nursery() as nursery:
        await streams_on(session, nursery)
        for _ in range(config.hog_connections - 1):
            if sim.key is not None:
                nursery.start_soon(extra_connection, sim.key)
        await sim.pause(sim.worker.stop_at)
        nursery.cancel_scope.cancel()
    return "stopped"


async def _hog_stream(sim: Sim, session: Session) -> None:
    config = sim.worker.config
    try:
        async with trio.open_nursery() as nursery:
            watched = await sim.open(session, nursery, trio.Event())
            deadline = trio.current_time()
            while not sim.worker.stopping:
                await sim.write(watched, sim.worker.payload(sim))
                sim.wrote_beat(1)
                deadline += config.beat_period
                with trio.move_on_at(deadline):
                    await watched.closed.wait()
                if watched.closed.is_set():
                    sim._cut(watched)
            nursery.cancel_scope.cancel()
    except Exception as exc:  # a refused stream is the expected outcome for a hog
        if isinstance(leaf_exception(exc), Cut):
            if sim.worker.stopping:
                return
            sim.stats.cut_off += 1
            sim.stats.failures["hog_stream_cut"] += 1
        else:
            sim.stats.failures["hog_stream_refused"] += 1
            log.debug("hog_stream_failed agent=%d err=%r", sim.index, exc)
