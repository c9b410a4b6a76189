"""Load generator: many simulated agents, each with its own identity, against one aggregator.

For capacity planning and resilience testing (docs/CAPACITY.md). Every simulated agent has its
own Ed25519 key (a distinct peer id) and its own Noise + Yamux connection. By default the
connection is a `light.light_connection` (~58 KB per agent); `--dialer host` runs a full py-libp2p
host per agent instead (~150 KB, and it runs identify like a real agent does).

Behaviours (`--mix kind=weight,…`):
- healthy: beats the simulated network's head every beat period;
- lagging: beats a head `--lag` epochs behind; forked: the right height, another head;
- flapping: healthy, but drops its connection every `--flap-period` and redials;
- garbage: writes bytes that are not CBOR; oversize: a beat larger than the aggregator allows;
- slowdrip: a valid beat, one byte per second; silent: opens a stream and sends nothing;
- flood: beats at `--flood-rate`, far above the per-peer limit;
- hog: several connections and streams from the same peer id.
`--storm-at T` makes every agent drop its connection and redial at once at T.

Agents are spread over `--processes` worker processes (each its own trio loop), started at
`--ramp` agents per second (all processes together), and stop by themselves after
`--duration`: a healthy agent half-closes and waits for the aggregator to close, so its last
beats are counted. Hard caps bound every count; non-loopback targets are refused unless
`--allow-remote`. The summary (per behaviour: connected, beats sent, failures by kind) is
printed as a table, or as JSON with `--json`.

`--stamp` puts the sender's CLOCK_MONOTONIC (ns) into each beat's Version (`lg t=<ns>`), so a
receiver on the same machine can measure beat latency (`parse_stamp`).

The package, by concern: `config` (kinds, hard caps, `LoadgenConfig`, the mix), `scenarios`
(heads, stamps, the steady beat loop), `hostile` (the hostile peers), `connection` (the light
connection or a full host, watched streams), `sim` (one process's agents and one agent's life),
`processes` (spawned workers and the parent), `report` (statistics and summaries), `cli`.

The network layer (heartbeat/net/) is the only importer of libp2p in production code; the load
generator is a tool, not production code, and may import libp2p directly.
"""

from __future__ import annotations

from heartbeat.tools.loadgen.cli import build_parser, config_from_args, main
from heartbeat.tools.loadgen.config import (
    BEATING_KINDS,
    HOSTILE_KINDS,
    KINDS,
    MAX_AGENTS,
    MAX_DURATION,
    MAX_PROCESSES,
    MAX_RAMP,
    LoadgenConfig,
    assign_kinds,
    is_loopback_target,
    parse_mix,
    parse_rate,
)
from heartbeat.tools.loadgen.processes import run_loadgen, run_worker
from heartbeat.tools.loadgen.report import AgentStats, format_table, merge_reports, summarize
from heartbeat.tools.loadgen.scenarios import head_for, parse_stamp, stamp_version

__all__ = [
    "BEATING_KINDS",
    "HOSTILE_KINDS",
    "KINDS",
    "MAX_AGENTS",
    "MAX_DURATION",
    "MAX_PROCESSES",
    "MAX_RAMP",
    "AgentStats",
    "LoadgenConfig",
    "assign_kinds",
    "build_parser",
    "config_from_args",
    "format_table",
    "head_for",
    "is_loopback_target",
    "main",
    "merge_reports",
    "parse_mix",
    "parse_rate",
    "parse_stamp",
    "run_loadgen",
    "run_worker",
    "stamp_version",
    "summarize",
]
