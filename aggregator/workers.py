"""Several ingest processes on one port: worker 0's hub and supervisor, the workers' loop.

py-libp2p spends ~120 µs of CPU per received frame (Noise, Yamux, trio wake-ups) and
~30 ms per accepted connection, all on one core; `workers = N` puts N processes on one
listen port and one identity (py-libp2p's TCP listener sets SO_REUSEPORT, so the kernel
spreads new connections over them). This process is worker 0: it ingests too and owns
the fleet model, the node registry, HTTP, /metrics and alerting. `WorkerHub` starts
workers 1..N-1 (`python -m aggregator worker …`), restarts a dead one with a backoff,
and publishes what they forward on its own bus (aggregator/worklink.py has the messages),
so every consumer sees one fleet. A worker exits when its link to worker 0 closes: killing
worker 0 takes the whole group down, and the restarted worker 0 starts a new one.

Per-connection limits (per-IP cap, per-peer streams, rate limit) are per worker.

This module is worker 0's side (`WorkerHub`, the supervisor); aggregator/worker.py is the
workers' loop, aggregator/linkstream.py the link between them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from aggregator.config import AggregatorConfig, config_mapping
from aggregator.errors import FleetFull
from aggregator.linkstream import HELLO_TIMEOUT, STOP_TIMEOUT, Link
from aggregator.variants import BenchVariants
from aggregator.worker import WorkerError, run_worker
from aggregator.worklink import (
    LinkError,
    MergedCounters,
    PeerLedger,
    counters_from_wire,
    event_from_wire,
    worker_zero,
)

if TYPE_CHECKING:
    from aggregator.app import Aggregator

__all__ = ["WorkerError", "WorkerHub", "WorkerStatus", "run_worker", "worker_argv"]

log = logging.getLogger(__name__)

#: How long worker 0 waits for its workers to listen before reporting ready anyway.
READY_TIMEOUT = 60.0
RESTART_MIN, RESTART_MAX = 1.0, 30.0
#: A worker that ran this long before dying restarts after RESTART_MIN again.
STABLE_AFTER = 60.0


@dataclass
class WorkerStatus:
    index: int
    pid: int | None = None
    up: bool = False
    ready: bool = False
    restarts: int = 0


def worker_argv(
    index: int, link: str, config: AggregatorConfig, variants: BenchVariants | None = None
) -> list[str]:
    """The command that starts worker `index` (its configuration comes over the link, its
    benchmark variants, if any, on its command line)."""
    return [
        sys.executable,
        "-m",
        "aggregator",
        "worker",
        "--worker-index",
        str(index),
        "--worker-link",
        link,
        "--log-format",
        config.log_format,
        "--log-level",
        config.log_level,
        *(variants or BenchVariants()).argv(),
    ]


# -- worker 0 ----------------------------------------------------------------------------


class WorkerHub:
    """Worker 0's side: supervise workers 1..N-1 and publish what they forward."""

    def __init__(
        self,
        agg: Aggregator,
        *,
        argv: Callable[[int, str], list[str]] | None = None,
    ) -> None:
        self.agg = agg
        self.count = agg.config.workers
        self.status = {i: WorkerStatus(i) for i in range(1, self.count)}
        self.ledger = PeerLedger()
        self.counters = MergedCounters(agg.ingest.counters)
        self._argv = argv or (lambda i, link: worker_argv(i, link, agg.config, agg.variants))
        self._worker_config: dict[str, Any] = {}
        self._all_ready = trio.Event()

    def signal_workers(self, signum: int) -> None:
        """Pass a signal on (SIGHUP: every worker reloads the allowlist too)."""
        for st in self.status.values():
            if st.pid is not None and st.up:
                try:
                    os.kill(st.pid, signum)
                except ProcessLookupError:
                    continue

    def summary(self) -> list[dict[str, Any]]:
        """Every worker, 0 included, for /metrics and /api/v1/workers."""
        out = [worker_zero(os.getpid(), self.agg.ingest.counters)]
        for i, st in sorted(self.status.items()):
            c = self.counters.workers.get(i)
            out.append(
                {
                    "index": i,
                    "pid": st.pid,
                    "up": st.up and st.ready,
                    "restarts": st.restarts,
                    "connections": c.connections if c else 0,
                    "beats_accepted": c.beats_accepted if c else 0,
                }
            )
        return out

    async def run(
        self, listen: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the link socket and supervise the workers until cancelled.

        `listen`: worker 0's bound listen multiaddrs (a port 0 is resolved by then).
        """
        config = replace(self.agg.config, listen=tuple(listen))
        self._worker_config = config_mapping(config, exclude=frozenset({"alerts", "alerts_file"}))
        link_dir = Path(tempfile.mkdtemp(prefix="fil-heartbeat-workers-"))  # mode 0700
        path = str(link_dir / "link")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(max(8, 2 * self.count))
            listener = trio.SocketListener(sock)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.serve_listeners, self._serve_link, [listener]))
                for index in self.status:
                    nursery.start_soon(self._supervise, index, path)
                with trio.move_on_after(READY_TIMEOUT):
                    await self._all_ready.wait()
                ready = sum(st.ready for st in self.status.values())
                (log.info if ready == len(self.status) else log.warning)(
                    "workers_ready ready=%d of=%d", ready, len(self.status)
                )
                task_status.started()
        finally:
            sock.close()
            shutil.rmtree(link_dir, ignore_errors=True)

    async def _supervise(self, index: int, link: str) -> None:
        st = self.status[index]
        backoff = RESTART_MIN
        while True:
            started = trio.current_time()
            argv = self._argv(index, link)
            try:
                proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
            except OSError as exc:
                backoff = min(RESTART_MAX, backoff * 2)
                log.error("worker_start_failed index=%d err=%r retry_in=%.0fs", index, exc, backoff)
                await trio.sleep(backoff)
                continue
            st.pid = proc.pid
            log.info("worker_started index=%d pid=%d", index, proc.pid)
            try:
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    await _stop(proc)
            ran = trio.current_time() - started
            backoff = RESTART_MIN if ran >= STABLE_AFTER else min(RESTART_MAX, backoff * 2)
            st.restarts += 1
            log.error(
                "worker_exited index=%d pid=%d code=%s ran=%.1fs restart_in=%.0fs",
                index,
                proc.pid,
                code,
                ran,
                backoff,
            )
            await trio.sleep(backoff)

    async def _serve_link(self, stream: trio.abc.Stream) -> None:
        link = Link(stream)
        index: int | None = None
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                hello = await link.receive()
            index = self._check_hello(hello)
            await link.send(["config", self._worker_config])
            self.status[index].up = True
            while True:
                with trio.move_on_after(self.agg.config.worker_watchdog) as quiet:
                    message = await link.receive()
                if quiet.cancelled_caught:  # it reports every second: hung or stopped
                    self._kill_silent(index)
                    break
                if message is None:
                    log.warning("worker_link_closed index=%d", index)
                    break
                await self._on_message(index, link, message)
        except (LinkError, trio.TooSlowError) as exc:
            log.error("worker_link_refused index=%s err=%s", index, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("worker_link_lost index=%s err=%r", index, exc)
        finally:
            if index is not None:
                await self._worker_gone(index)
            await link.aclose()

    def _kill_silent(self, index: int) -> None:
        st = self.status[index]
        log.error(
            "worker_silent index=%d pid=%s seconds=%.0f action=kill",
            index,
            st.pid,
            self.agg.config.worker_watchdog,
        )
        if st.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, signal.SIGKILL)  # the supervisor restarts it

    def _check_hello(self, hello: list[Any] | None) -> int:
        if not (hello and hello[0] == "hello" and len(hello) == 3):
            raise LinkError(f"expected hello, got {hello!r}")
        _, index, pid = hello
        st = self.status.get(index) if isinstance(index, int) else None
        if st is None or st.pid != pid:
            raise LinkError(f"no worker {index!r} with pid {pid!r} was started here")
        if st.up:
            raise LinkError(f"worker {index} is already linked")
        return int(index)

    async def _on_message(self, index: int, link: Link, message: list[Any]) -> None:
        kind = message[0]
        if kind == "events" and len(message) == 2 and isinstance(message[1], list):
            for item in message[1]:
                event = event_from_wire(item)
                self.ledger.record(index, event)
                try:
                    await self.agg.bus.publish(event)
                except FleetFull:
                    await link.send(["evict", event.peer_id, "fleet_full"])
        elif kind == "counters" and len(message) == 2:
            self.counters.update(index, counters_from_wire(message[1]))
        elif kind == "ready":
            self.status[index].ready = True
            log.info("worker_ready index=%d pid=%s", index, self.status[index].pid)
            if all(st.ready for st in self.status.values()):
                self._all_ready.set()
        else:
            raise LinkError(f"unexpected message {kind!r}")

    async def _worker_gone(self, index: int) -> None:
        """Its connections died with it: publish their disconnects in its name."""
        st = self.status[index]
        st.up = st.ready = False
        self.counters.retire(index)
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
            try:
                for event in self.ledger.forget(index, self.agg.wall_clock()):
                    await self.agg.bus.publish(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("worker_gone_unpublished index=%d reason=shutting_down", index)


async def _stop(proc: trio.Process) -> None:
    """SIGTERM (a clean stop), SIGKILL after STOP_TIMEOUT; shielded: runs on cancellation."""
    with trio.CancelScope(shield=True):
        proc.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
            return
        proc.kill()
        await proc.wait()
