"""The worker processes: agents spread over `--processes` spawned processes, each its own trio
loop, and the parent that starts them, bounds the run and merges their reports.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from typing import Any

import trio

from heartbeat.net import p2p
from heartbeat.tools.loadgen.config import STOP_GRACE, LoadgenConfig
from heartbeat.tools.loadgen.report import AgentStats, merge_reports, summarize
from heartbeat.tools.loadgen.sim import Worker

__all__ = ["run_loadgen", "run_worker"]

log = logging.getLogger(__name__)


def rss_kb() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def run_worker(
    config: LoadgenConfig,
    indices: Sequence[int],
    *,
    start_delay: float = 0.0,
    parent: int | None = None,
) -> tuple[dict[str, Any], list[AgentStats]]:
    """Run agents `indices` in the current trio loop; their report and raw stats.

    `parent`: the pid of the process that spawned this one; the run ends the process at
    once if that parent is gone.
    """
    worker = Worker(config, indices, trio.current_time() + start_delay, parent)
    peak = 0

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kb() or 0)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        await worker.run()
        nursery.cancel_scope.cancel()
    stats = [sim.stats for sim in worker.agents]
    for sim, s in zip(worker.agents, stats, strict=True):
        s.connected = sim.connected_at_end
        if worker.storm_time is not None and sim._storm_pending:
            s.failures["storm_not_recovered"] += 1
    report = summarize(stats)
    for kind, k in report["kinds"].items():
        k["storm_missing"] = sum(
            1 for s in stats if s.kind == kind and "storm_not_recovered" in s.failures
        )
    report.update(agents=len(indices), rss_kb=peak)
    return report, stats


def worker_main(
    config: LoadgenConfig,
    worker: int,
    indices: list[int],
    start_wall: float,
    out: Any,
    log_level: str,
) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if log_level == "DEBUG":
        p2p.restore_libp2p_logging()
    else:  # py-libp2p logs every refused stream at ERROR: noise for a load generator
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    gc.set_threshold(50_000, 50, 100)  # full collections would distort every timing
    report: dict[str, Any]
    try:
        spawner = multiprocessing.parent_process()
        report, _ = trio.run(
            lambda: run_worker(
                config,
                indices,
                start_delay=max(0.0, start_wall - time.time()),
                parent=spawner.pid if spawner is not None else None,
            )
        )
    except Exception as exc:  # reported to the parent, which prints it
        report = {"kinds": {}, "agents": len(indices), "rss_kb": rss_kb(), "error": repr(exc)}
    report["worker"] = worker
    out.put(report)


def run_loadgen(config: LoadgenConfig, *, log_level: str = "WARNING") -> dict[str, Any]:
    """Run the whole load (spawning `config.processes` workers) and return the summary."""
    config.validate()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_wall = time.time() + 1.0 + 0.3 * config.processes  # spawn + import time
    procs = []
    for w in range(config.processes):
        indices = list(range(w, config.agents, config.processes))
        proc = ctx.Process(
            target=worker_main,
            args=(config, w, indices, start_wall, out, log_level),
            name=f"loadgen-{w}",
            daemon=True,
        )
        proc.start()
        procs.append(proc)
    reports: list[dict[str, Any]] = []
    hard_stop = start_wall + config.duration + config.close_grace + STOP_GRACE + 30.0
    while len(reports) < len(procs) and time.time() < hard_stop:
        try:
            reports.append(out.get(timeout=max(0.1, min(1.0, hard_stop - time.time()))))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and out.empty():
                break
    for proc in procs:
        proc.join(timeout=2.0)
        if proc.is_alive():
            log.warning("worker_killed pid=%s", proc.pid)
            proc.kill()
            proc.join(timeout=2.0)
    seen = {r.get("worker") for r in reports}
    for w, proc in enumerate(procs):
        if w not in seen:
            reports.append({"worker": w, "kinds": {}, "error": f"exit code {proc.exitcode}"})
    return merge_reports(reports, elapsed=time.time() - start_wall)
