"""Benchmark 4: reconnect storm after an aggregator restart.

Each run: start an aggregator (identity and state db kept in its work directory), connect
`--agents` simulated agents (fixed keys, beat period `--beat-period`, the agent's default
reconnect period 10 s ±20 %), wait until they are all connected, then kill the aggregator
(`--signal kill` = SIGKILL, a crash; `term` = a clean stop) and start it again on the same
port. Measured from the kill: when the nodes up in the restarted aggregator's fleet
(connected AND beating since the restart, on probation or not, polled on /nodes every
second) reach 50 / 90 / 99 / 100 % of those up before the kill, how many are back 120 s
after the kill, and, from the load generator, each agent's time from losing its connection
to its first beat written on the new one (p50/p99/max). TCP ESTABLISHED sockets on the
port are printed too, but they also count connections queued for a handshake, so they
overstate what is back in a storm.

    .venv/bin/python -m bench.bench_storm --agents 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_connections import established
from bench.common import (
    AggregatorProcess,
    LoadgenProcess,
    add_aggregator_variants,
    fmt_spread,
    http_get,
    machine_note,
    metric_sum,
    print_table,
    proc_children,
    proc_cpu_seconds,
    variant_flags,
)
from heartbeat.tools.loadgen import parse_rate

__all__ = ["main", "run_once"]

MARKS = (0.5, 0.9, 0.99, 1.0)


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cap = str(args.agents + 1000)
    flags = (
        "--max-connections-per-ip",
        cap,
        "--max-connections",
        cap,
        "--max-nodes",
        cap,
        # One loopback IP stands in for many hosts: lift the per-IP probation bound (64).
        "--max-probation-per-ip",
        cap,
        "--max-probation",
        cap,
        *variant_flags(args),
        "--workers",
        str(args.workers),
    )
    agg = AggregatorProcess.start(workdir, *flags)
    port = agg.port
    ramp_s = args.agents / parse_rate(args.ramp)
    # The agents must outlive the whole measurement: the ramp runs slower than nominal when
    # accepting is the bottleneck (the wait below allows ramp + settle + 60 s, then the budget).
    run_for = ramp_s * 1.5 + args.settle + 60 + args.budget + 30
    loadgen = LoadgenProcess(
        agg.multiaddr,
        "--agents",
        str(args.agents),
        "--processes",
        str(args.processes),
        "--ramp",
        args.ramp,
        "--beat-period",
        args.beat_period,
        "--key-seed",
        "storm",
        "--reconnect-period",
        "10s",
        "--jitter",
        "0.2",
        "--duration",
        f"{run_for:.0f}s",
    )
    restarted: AggregatorProcess | None = None
    try:
        t0 = time.monotonic()
        best, best_at = 0, time.monotonic()
        while time.monotonic() - t0 < ramp_s * 1.5 + args.settle + 60:
            time.sleep(2.0)
            now_est = established(port)
            if now_est > best:
                best, best_at = now_est, time.monotonic()
            if now_est >= args.agents or time.monotonic() - best_at > args.settle:
                break
        before = beating(agg)
        tcp_before = established(port)
        if args.signal == "kill":
            agg.kill()  # worker 0: its workers exit by themselves
        else:
            agg.stop()
        killed = time.monotonic()
        restarted = AggregatorProcess.start(workdir, *flags, port=port)
        cpu0, lg_cpu0 = restarted.cpu_seconds(), _tree_cpu(loadgen.proc.pid)
        t_cpu0 = time.monotonic()
        startup = time.monotonic() - killed
        reached: dict[float, float | None] = dict.fromkeys(MARKS)
        at_120: int | None = None
        n = 0
        while time.monotonic() - killed < args.budget:
            n = beating(restarted)
            since = time.monotonic() - killed
            if at_120 is None and since >= 120:
                at_120 = n
            for mark in MARKS:
                if reached[mark] is None and n >= mark * before:
                    reached[mark] = since
            if reached[1.0] is not None:
                break
            time.sleep(1.0)
        after = n
        cpu_s = restarted.cpu_seconds() - cpu0
        lg_cpu_s = _tree_cpu(loadgen.proc.pid) - lg_cpu0
        window = time.monotonic() - t_cpu0
        tcp_after = established(port)
        samples = restarted.metrics()
        shed = metric_sum(samples, "fil_heartbeat_handshakes_shed_total")
        refusals = {
            dict(lab).get("reason", "?"): v
            for (n, lab), v in samples.items()
            if n == "fil_heartbeat_refusals_total" and v
        }
        summary = loadgen.result(timeout=run_for + 120)
    finally:
        (restarted or agg).stop()
    rec = summary["kinds"]["healthy"]["recoveries"]
    return {
        "connected_before": before,
        "connected_after": after,
        "beating_at_120_s": at_120 if at_120 is not None else after,
        "tcp_before": tcp_before,
        "tcp_after": tcp_after,
        "handshakes_shed": shed,
        "refusals": refusals,
        "startup_s": startup,
        # CPU while the agents came back: the aggregator's group and the load generator's
        # (its agents' Noise handshakes cost about as much as the aggregator's).
        "agg_cores": cpu_s / window,
        "loadgen_cores": lg_cpu_s / window,
        "agg_cpu_ms_per_agent_back": cpu_s / max(after, 1) * 1000,
        **{f"t{int(m * 100)}_s": reached[m] for m in MARKS},
        "recovered": rec["count"],
        "recovery_p50_s": rec["p50"],
        "recovery_p99_s": rec["p99"],
        "recovery_max_s": rec["max"],
    }


def _tree_cpu(pid: int) -> float:
    return sum(proc_cpu_seconds(p) for p in (pid, *proc_children(pid)) if _exists(p))


def _exists(pid: int) -> bool:
    try:
        proc_cpu_seconds(pid)
    except OSError:
        return False
    return True


def beating(agg: AggregatorProcess) -> int:
    """Nodes up in the aggregator's fleet: connected, and beating since the (re)start.

    Counted from `/nodes` (every node up, on probation or not), not the networks'
    `nodes_up`: a node on probation (a peer id new to this aggregator, or one the killed
    process had not persisted yet) is served and beating but does not vote, and for its
    first minute it is left out of the networks' counts (aggregator/fleet.py).
    """
    try:
        return len(json.loads(http_get(agg.http_url + "/nodes", timeout=30.0)))
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--ramp", default="50/s")
    p.add_argument("--beat-period", default="5s")
    p.add_argument("--settle", type=float, default=15.0)
    p.add_argument("--budget", type=float, default=180.0, help="give up after (s)")
    p.add_argument("--signal", choices=("kill", "term"), default="kill")
    p.add_argument("--repeat", type=int, default=3)
    add_aggregator_variants(p)
    args = p.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
            runs.append(run_once(args, Path(tmp)))
        print(f"run {i + 1}: {runs[-1]}", flush=True)

    def col(key: str, fmt: str = "{:.1f}") -> str:
        vals = [r[key] for r in runs if r[key] is not None]
        missing = len(runs) - len(vals)
        text = fmt_spread(vals, fmt) if vals else "not reached"
        return text + (f" ({missing} run(s) not reached)" if missing and vals else "")

    print(
        f"\nbench_storm agents={args.agents} signal={args.signal} "
        f"workers={args.workers} fast_task_lookup={args.fast_task_lookup} "
        f"identify_peers={args.identify_peers} throttle_reconcile={args.throttle_reconcile} "
        f"aggregator_args={' '.join(args.aggregator_arg) or '-'} "
        f"beat_period={args.beat_period} runs={len(runs)} {machine_note()}"
    )
    print_table(
        ["figure", "median (min–max)"],
        [
            ["beating before the kill (fleet: nodes up)", col("connected_before", "{:.0f}")],
            ["TCP established before the kill", col("tcp_before", "{:.0f}")],
            ["aggregator restart (s)", col("startup_s")],
            *[
                [f"{int(m * 100)} % beating again (s after kill)", col(f"t{int(m * 100)}_s")]
                for m in MARKS
            ],
            ["beating again 120 s after the kill", col("beating_at_120_s", "{:.0f}")],
            ["beating again at the end", col("connected_after", "{:.0f}")],
            ["TCP established at the end (incl. handshakes queued)", col("tcp_after", "{:.0f}")],
            ["handshakes shed by the restarted aggregator", col("handshakes_shed", "{:.0f}")],
            ["aggregator CPU while they came back (cores)", col("agg_cores", "{:.2f}")],
            ["load generator CPU meanwhile (cores)", col("loadgen_cores", "{:.2f}")],
            ["aggregator CPU per agent back (ms)", col("agg_cpu_ms_per_agent_back", "{:.1f}")],
            ["agents beating again (load generator)", col("recovered", "{:.0f}")],
            ["agent recovery p50 (s)", col("recovery_p50_s")],
            ["agent recovery p99 (s)", col("recovery_p99_s")],
            ["agent recovery max (s)", col("recovery_max_s")],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
