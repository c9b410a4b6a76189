"""`fil-heartbeat loadgen`: the command line, its options into a validated `LoadgenConfig`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from heartbeat.common.durations import parse_duration
from heartbeat.errors import ConfigError
from heartbeat.tools.loadgen.config import (
    KINDS,
    MAX_AGENTS,
    MAX_PROCESSES,
    LoadgenConfig,
    parse_mix,
    parse_rate,
)
from heartbeat.tools.loadgen.processes import run_loadgen
from heartbeat.tools.loadgen.report import format_table

__all__ = ["build_parser", "config_from_args", "main"]

DESCRIPTION = (
    "Load generator: many simulated agents, each with its own identity, against one aggregator."
)


def build_parser(prog: str = "fil-heartbeat loadgen") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add = p.add_argument
    add("--target", required=True, metavar="MULTIADDR", help="aggregator /…/p2p/<id>")
    add("--agents", type=int, default=10, help=f"simulated agents (max {MAX_AGENTS})")
    add("--processes", type=int, default=1, help=f"worker processes (max {MAX_PROCESSES})")
    add("--beat-period", default="1s", metavar="DURATION")
    add("--ramp", default="50/s", metavar="RATE", help="new agents per second, e.g. 50/s")
    add("--duration", default="60s", metavar="DURATION", help="whole run, ramp included")
    add("--mix", default="healthy=100", help="kind=weight,… of: " + ", ".join(KINDS))
    add("--storm-at", metavar="DURATION", help="all agents drop and redial at this time")
    add("--reconnect-period", default="5s", metavar="DURATION")
    add("--jitter", type=float, default=0.2)
    add("--flap-period", default="20s", metavar="DURATION")
    add("--flap-down", default="2s", metavar="DURATION")
    add("--lag", type=int, default=10, help="epochs behind, for lagging agents")
    add("--flood-rate", default="200/s", metavar="RATE")
    add("--hog-connections", type=int, default=3)
    add("--hog-streams", type=int, default=8)
    add("--beats-per-frame", type=int, default=1, help="beats per write (1 = like the agent)")
    add(
        "--beats-per-write",
        type=int,
        default=1,
        help="writes (each its own Yamux frame) sent together in one Noise message and one "
        "socket send (1 = one per beat period, like the agent)",
    )
    add("--dialer", choices=("light", "host"), default="light")
    add("--stamp", action="store_true", help="send CLOCK_MONOTONIC ns in Version")
    add("--key-seed", help="derive agent keys from this seed (same peer ids every run)")
    add("--allow-remote", action="store_true", help="allow a non-loopback target")
    add("--json", action="store_true", help="print the summary as JSON")
    add("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(args: argparse.Namespace) -> LoadgenConfig:
    def duration(flag: str, text: str) -> float:
        try:
            return float(parse_duration(text))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(flag, f"bad duration {text!r}") from exc

    flood = parse_rate(args.flood_rate)
    return LoadgenConfig(
        target=args.target,
        agents=args.agents,
        processes=args.processes,
        beat_period=duration("--beat-period", args.beat_period),
        ramp=parse_rate(args.ramp),
        duration=duration("--duration", args.duration),
        mix=parse_mix(args.mix),
        storm_at=duration("--storm-at", args.storm_at) if args.storm_at else None,
        reconnect_period=duration("--reconnect-period", args.reconnect_period),
        jitter=args.jitter,
        flap_period=duration("--flap-period", args.flap_period),
        flap_down=duration("--flap-down", args.flap_down),
        lag=args.lag,
        flood_rate=flood,
        hog_connections=args.hog_connections,
        hog_streams=args.hog_streams,
        beats_per_frame=args.beats_per_frame,
        beats_per_write=args.beats_per_write,
        dialer=args.dialer,
        stamp=args.stamp,
        key_seed=args.key_seed,
        allow_remote=args.allow_remote,
    ).validate()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"fil-heartbeat loadgen: error: {exc}", file=sys.stderr)
        return 2
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    summary = run_loadgen(config, log_level=level)
    summary["config"] = {k: v for k, v in asdict(config).items() if k != "mix"}
    summary["config"]["mix"] = dict(config.mix)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=False))
    else:
        print(format_table(summary))
    failed = any(w.get("error") for w in summary["workers"])
    return 1 if failed else 0
