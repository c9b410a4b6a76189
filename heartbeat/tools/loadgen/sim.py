"""The simulated agents of one process (`Worker`) and one agent's life (`Sim`): dial, behave,
redial, until the run stops; storms drop every connection at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import replace

import trio

from heartbeat.net import p2p
from heartbeat.protocol.wire import PROTOCOL_ID, encode_cbor
from heartbeat.tools.loadgen.config import (
    MAX_RECOVERIES_KEPT,
    SIM_GENESIS_TS,
    STOP_GRACE,
    LoadgenConfig,
    assign_kinds,
)
from heartbeat.tools.loadgen.connection import Cut, Session, Watched, connect, leaf_exception
from heartbeat.tools.loadgen.hostile import flood, garbage, hog, oversize, silent, slowdrip
from heartbeat.tools.loadgen.light import write_frames
from heartbeat.tools.loadgen.report import AgentStats
from heartbeat.tools.loadgen.scenarios import beating, head_for, stamp_version

__all__ = ["BEHAVIOURS", "Sim", "Worker"]

log = logging.getLogger(__name__)


class Worker:
    """All simulated agents of one process."""

    def __init__(
        self,
        config: LoadgenConfig,
        indices: Sequence[int],
        start_at: float,
        parent: int | None = None,
    ) -> None:
        self.config = config
        #: The pid of the process that spawned this one (None: not a spawned worker).
        self.parent = parent
        kinds = assign_kinds(config.agents, config.mix)
        self.agents = [Sim(self, i, kinds[i]) for i in indices]
        self.start_at = start_at  # trio time of the run's start (agent 0)
        self.stop_at = start_at + config.duration
        self.stopping = False
        self.storm_time: float | None = None
        self.rand = random.Random(config.key_seed or None)
        self._version = "lg"

    def key(self, index: int) -> p2p.KeyPair:
        seed = self.config.key_seed
        if seed is None:
            return p2p.new_identity()
        return p2p.new_identity(hashlib.sha256(f"{seed}:{index}".encode()).digest())

    def payload(self, sim: Sim) -> bytes:
        """What `sim` writes now. Without `--stamp` a beat changes only with the simulated
        head (once an epoch), so it is encoded once per epoch, not once per write."""
        config = self.config
        now = time.time()
        epoch = int((now - SIM_GENESIS_TS) // config.epoch)
        if not config.stamp and sim.payload_epoch == epoch:
            return sim.payload_cache
        beat = replace(
            head_for(sim.kind, now, epoch=config.epoch, lag=config.lag),
            nickname=sim.nickname,
            miner_address=sim.miner,
            version=stamp_version(time.monotonic_ns()) if config.stamp else self._version,
        )
        data = encode_cbor(beat) * config.beats_per_frame
        if not config.stamp:
            sim.payload_epoch, sim.payload_cache = epoch, data
        return data

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.parent is not None:
                nursery.start_soon(exit_when_orphaned, self.parent)
            for sim in self.agents:
                nursery.start_soon(sim.run)
            if self.config.storm_at is not None:
                nursery.start_soon(self._storm, self.start_at + self.config.storm_at)
            await trio.sleep_until(self.stop_at)
            for sim in self.agents:
                sim.connected_at_end = sim.beating
            self.stopping = True
            for sim in self.agents:
                sim.stop()
            with trio.move_on_after(self.config.close_grace + STOP_GRACE):
                while any(sim.running for sim in self.agents):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _storm(self, at: float) -> None:
        await trio.sleep_until(at)
        self.storm_time = trio.current_time()
        dropped = sum(sim.drop("storm") for sim in self.agents)
        log.info("storm dropped=%d", dropped)


class Sim:
    """One simulated agent: dial, behave, redial, until the run stops."""

    def __init__(self, worker: Worker, index: int, kind: str) -> None:
        self.worker = worker
        self.index = index
        self.kind = kind
        self.stats = AgentStats(kind)
        self.nickname = f"{worker.config.nickname_prefix}-{kind}-{index}"
        self.miner = f"f0{10_000 + index}"
        self.running = False
        self.beating = False
        self.connected_at_end = False
        self._scope: trio.CancelScope | None = None
        self._wake = trio.Event()
        self._dropped: str | None = None
        self._lost_at: float | None = None
        self._storm_pending = False
        self.key: p2p.KeyPair | None = None
        self.payload_epoch: int | None = None  # Worker.payload's cache
        self.payload_cache = b""

    # -- control (synchronous: called by the worker) ------------------------------------

    def stop(self) -> None:
        self._wake.set()
        if not self.beating and self._scope is not None:
            self._scope.cancel()

    def drop(self, reason: str) -> bool:
        """Drop the connection now (a storm); the agent redials at once."""
        if self._scope is None:
            return False
        self._dropped = reason
        self._storm_pending = True
        self._scope.cancel()
        return True

    # -- the life of the agent -----------------------------------------------------------

    async def run(self) -> None:
        worker, config = self.worker, self.worker.config
        await trio.sleep_until(worker.start_at + self.index / config.ramp)
        if worker.stopping or trio.current_time() >= worker.stop_at:
            return
        self.running = True
        self.stats.started = True
        key = self.key = worker.key(self.index)
        try:
            while not worker.stopping:
                self._wake = trio.Event()
                self._dropped = None
                outcome = await self._session(key)
                self.beating = False
                if worker.stopping:
                    break
                if self._lost_at is None:
                    self._lost_at = trio.current_time()
                if outcome == "storm":
                    continue  # redial at once, everyone together
                delay = config.flap_down if outcome == "flap" else config.reconnect_period
                delay *= 1 + config.jitter * (2 * worker.rand.random() - 1)
                self._wake = trio.Event()  # the session's own may be set already
                if not worker.stopping:
                    with trio.move_on_after(delay):
                        await self._wake.wait()
        finally:
            self.running = False

    async def _session(self, key: p2p.KeyPair) -> str:
        config, stats = self.worker.config, self.stats
        stats.dials += 1
        phase = "dial"
        # The handler sits outside the cancel scope: a cut racing a stop or a storm arrives
        # as a group the scope has already stripped of its own Cancelled.
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with connect(config, key) as session:
                    stats.sessions += 1
                    stats.session_beats = 0
                    phase = "stream"
                    return await BEHAVIOURS[self.kind](self, session)
        except Exception as exc:  # the connect loop's catch-all: one failed attempt
            leaf = leaf_exception(exc)
            if isinstance(leaf, Cut) and self.worker.stopping:
                return "stopped"  # our own close at the end of the run, not a cut
            if isinstance(leaf, Cut):
                stats.cut_off += 1
                stats.failures["cut_off"] += 1
                return "cut"
            if isinstance(leaf, trio.TooSlowError):
                stats.failures[f"{phase}_timeout"] += 1
            else:
                stats.failures[f"{phase}_failed"] += 1
            log.debug("session_failed agent=%d phase=%s err=%r", self.index, phase, leaf)
            return "failed"
        finally:
            self._scope = None
        return self._dropped or "stopped"

    # -- helpers for the behaviours ------------------------------------------------------

    async def open(
        self, session: Session, nursery: trio.Nursery, wake: trio.Event | None = None
    ) -> Watched:
        stream = await session.open_stream(PROTOCOL_ID, self.worker.config.dial_timeout)
        self.stats.streams_opened += 1
        return Watched(stream, nursery, self._wake if wake is None else wake)

    async def write(self, watched: Watched, data: bytes) -> None:
        if watched.closed.is_set():
            self._cut(watched)
        try:
            with trio.fail_after(self.worker.config.write_timeout):
                await watched.stream.write(data)
        except p2p.StreamClosed as exc:
            self._cut(watched, exc)

    async def write_frames(self, watched: Watched, chunks: list[bytes]) -> None:
        """`write` for several writes at once: each its own Yamux frame, one Noise message."""
        if watched.closed.is_set():
            self._cut(watched)
        try:
            with trio.fail_after(self.worker.config.write_timeout):
                await write_frames(watched.stream, chunks)
        except p2p.StreamClosed as exc:
            self._cut(watched, exc)

    def _cut(self, watched: Watched, exc: BaseException | None = None) -> None:
        if not self.worker.stopping:
            self.stats.cut_after.append(round(trio.current_time() - watched.opened_at, 3))
        raise Cut() from exc

    def wrote_beat(self, frames: int) -> None:
        stats = self.stats
        stats.beats_sent += frames
        stats.session_beats += frames
        if self.beating:
            return
        self.beating = True
        stats.ever_connected = True
        now = trio.current_time()
        if self._storm_pending and self.worker.storm_time is not None:
            stats.storm_recovery = round(now - self.worker.storm_time, 3)
            self._storm_pending = False
        elif self._lost_at is not None and len(stats.recoveries) < MAX_RECOVERIES_KEPT:
            stats.recoveries.append(round(now - self._lost_at, 3))
        self._lost_at = None

    async def pause(self, until: float, watched: Watched | None = None) -> str | None:
        """Wait until `until`; the reason to end the session early, if any."""
        with trio.move_on_at(until):
            await self._wake.wait()
        if watched is not None and watched.closed.is_set():
            self._cut(watched)
        if self.worker.stopping:
            return "stopped"
        return None

    async def finish(self, watched: Watched) -> str:
        """Stop gracefully: half-close, and wait for the aggregator to close its side."""
        with trio.move_on_after(self.worker.config.close_grace):
            try:
                await watched.stream.close()
            except p2p.StreamClosed as exc:
                log.debug("close_failed agent=%d err=%r", self.index, exc)
            await watched.closed.wait()
        return "stopped"


BEHAVIOURS = {
    "healthy": beating,
    "lagging": beating,
    "forked": beating,
    "flapping": beating,
    "flood": flood,
    "garbage": garbage,
    "oversize": oversize,
    "slowdrip": slowdrip,
    "silent": silent,
    "hog": hog,
}


async def exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """Exit this process at once when its parent is gone (killed: its clean-up never ran),
    so that no simulated agent outlives the run that started it."""
    while True:
        if os.getppid() != parent:
            log.warning("parent_gone parent=%d: exiting", parent)
            os._exit(3)
        await trio.sleep(interval)
