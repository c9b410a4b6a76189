"""The aggregator's command line parser: every subcommand and flag, each flag documented
from aggregator/help.py, the internal `worker` subcommand hidden, the benchmark variants
hidden (aggregator/variants.py). `aggregator.__main__` parses with it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import platformdirs

from aggregator.alerts.wiring import add_alert_arguments
from aggregator.variants import add_variant_flags
from heartbeat.common.cli import document_flags, hide_subcommands

__all__ = ["build_parser", "state_dir"]


def state_dir() -> Path:
    """Where the default key and state db live (the platform's user state directory)."""
    return Path(platformdirs.user_state_dir("fil-heartbeat"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fil-heartbeat-aggregator",
        description="Ingest heartbeats from Filecoin node agents and export fleet metrics.",
        argument_default=argparse.SUPPRESS,
    )
    sub = parser.add_subparsers(dest="command")
    # SUPPRESS everywhere: an option given before the subcommand is not reset by
    # the subcommand's own default.
    run = sub.add_parser(
        "run", help="run the aggregator (the default)", argument_default=argparse.SUPPRESS
    )
    ident = sub.add_parser(
        "id", help="print the aggregator's peer id", argument_default=argparse.SUPPRESS
    )
    alert_test = sub.add_parser(
        "alert-test",
        help="send one test notification to every configured alert receiver and exit "
        "(0: all took it, 1: some failed, 2: configuration error)",
        argument_default=argparse.SUPPRESS,
    )
    # Started by worker 0 (`--workers N`), not by hand: the configuration comes over the link.
    worker = sub.add_parser("worker", argument_default=argparse.SUPPRESS)
    worker.add_argument("--worker-index", type=int, required=True, help=argparse.SUPPRESS)
    worker.add_argument("--worker-link", required=True, metavar="PATH", help=argparse.SUPPRESS)
    add_variant_flags(worker)  # worker 0 passes its own on (`BenchVariants.argv`)
    for p in (parser, run, ident, alert_test):
        p.add_argument("--config", metavar="FILE")
        p.add_argument("--identity-file", metavar="PATH")
    for p in (parser, run):
        p.add_argument(
            "--listen",
            action="append",
            metavar="MULTIADDR",
        )
        p.add_argument("--http-listen", metavar="HOST:PORT")
        p.add_argument("--state-db", metavar="PATH")
        p.add_argument(
            "--allowlist",
            dest="allowlist_file",
            metavar="FILE",
        )
        p.add_argument(
            "--legacy-metrics",
            action="store_const",
            const=True,
        )
        p.add_argument("--name")
        p.add_argument(
            "--status-page",
            choices=["private", "public", "off"],
        )
        p.add_argument("--max-connections", type=str, metavar="N")
        p.add_argument("--max-connections-per-ip", type=str, metavar="N")
        p.add_argument(
            "--max-streams-total",
            type=str,
            metavar="N",
        )
        p.add_argument(
            "--max-memory-mb",
            type=str,
            metavar="MB",
        )
        p.add_argument(
            "--max-peers",
            type=str,
            metavar="N",
        )
        p.add_argument(
            "--max-pending-inbound",
            type=str,
            metavar="N",
        )
        p.add_argument(
            "--handshake-queue-wait",
            type=str,
            metavar="DURATION",
        )
        p.add_argument(
            "--first-bytes-timeout",
            type=str,
            metavar="DURATION",
        )
        p.add_argument(
            "--upgrade-timeout",
            type=str,
            metavar="DURATION",
        )
        p.add_argument(
            "--refusal-cap",
            type=str,
            metavar="N",
        )
        p.add_argument(
            "--refusal-window",
            type=str,
            metavar="DURATION",
        )
        add_variant_flags(p)  # hidden: bench/README.md
        p.add_argument(
            "--max-connections-per-peer",
            type=str,
            metavar="N",
        )
        p.add_argument("--max-streams-per-peer", type=str, metavar="N")
        p.add_argument("--max-beat-size", type=str, metavar="BYTES")
        p.add_argument("--rate-limit", type=str, metavar="BEATS_PER_S")
        p.add_argument("--rate-burst", type=str, metavar="N")
        p.add_argument("--flood-drops", type=str, metavar="N")
        p.add_argument("--flood-window", type=str, metavar="DURATION")
        p.add_argument(
            "--beat-timeout",
            type=str,
            metavar="DURATION",
        )
        p.add_argument("--beat-timeout-min", type=str, metavar="DURATION")
        p.add_argument("--beat-timeout-max", type=str, metavar="DURATION")
        p.add_argument("--lag-threshold", type=str, metavar="EPOCHS")
        p.add_argument("--stall-after", type=str, metavar="DURATION")
        p.add_argument("--retention", type=str, metavar="DURATION")
        p.add_argument(
            "--history-retention",
            type=str,
            metavar="DURATION",
        )
        p.add_argument("--max-nodes", type=str, metavar="N")
        p.add_argument(
            "--probation",
            type=str,
            metavar="DURATION",
        )
        p.add_argument("--max-probation", type=str, metavar="N")
        p.add_argument("--max-probation-per-ip", type=str, metavar="N")
        p.add_argument(
            "--reset-state",
            action="store_const",
            const=True,
        )
        p.add_argument("--gc-threshold", type=str, metavar="G0,G1,G2")
        p.add_argument(
            "--no-gc-freeze",
            dest="gc_freeze",
            action="store_const",
            const=False,
        )
        p.add_argument(
            "--allow-unpatched-libp2p",
            action="store_const",
            const=True,
        )
        p.add_argument(
            "--workers",
            type=str,
            metavar="N",
        )
        p.add_argument(
            "--worker-watchdog",
            type=str,
            metavar="DURATION",
        )
        p.add_argument("--alerts-file", metavar="FILE")
        p.add_argument(
            "--runbook-base-url",
            metavar="URL",
        )
        _add_nats_arguments(p)
        add_alert_arguments(p)
    for p in (parser, run, ident, worker):
        p.add_argument("--log-format", choices=["text", "json"])
        p.add_argument("--log-level")
    for action in run._actions:  # alert-test reads its settings as `run` does
        if (
            action.option_strings
            and not isinstance(action, argparse._HelpAction)
            and not set(action.option_strings) & set(alert_test._option_string_actions)
        ):
            alert_test._add_action(action)
    show = sub.add_parser(
        "config",
        help="print the effective configuration and where each value comes from",
        argument_default=argparse.SUPPRESS,
    )
    for action in run._actions:  # the same settings as run
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            show._add_action(action)
    tail = sub.add_parser(
        "tail",
        help="print the NATS stream's beats and events as JSON lines from a durable consumer "
        "(acknowledged after each line: a restart resumes, no gaps)",
        argument_default=argparse.SUPPRESS,
    )
    for action in run._actions:  # tail connects to NATS as run does
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            tail._add_action(action)
    tail.add_argument("--durable", dest="tail_durable", metavar="NAME")
    tail.add_argument("--subjects", dest="tail_subjects", metavar="SUBJECT", action="append")
    tail.add_argument("--since", dest="tail_since", metavar="DURATION")
    from aggregator.help import setting_help

    document_flags(parser, setting_help(state_dir()))
    hide_subcommands(parser, {"worker"})  # started by worker 0 only
    return parser


def _add_nats_arguments(p: argparse.ArgumentParser) -> None:
    """The JetStream scale-out's settings (aggregator/scaleout/); help from aggregator/help.py."""
    p.add_argument("--nats-url", metavar="URL", action="append")
    p.add_argument("--nats-user", metavar="NAME")
    for flag in ("--nats-password-file", "--nats-token-file", "--nats-creds", "--nats-nkey"):
        p.add_argument(flag, metavar="FILE")
    p.add_argument("--nats-tls-ca", metavar="FILE")
    p.add_argument("--nats-stream", metavar="NAME")
    p.add_argument("--nats-replicas", metavar="N")
    p.add_argument("--nats-max-age", metavar="DURATION")
    p.add_argument("--nats-max-bytes", metavar="BYTES")
    p.add_argument("--nats-spool-max", metavar="N")
    p.add_argument("--nats-catch-up", metavar="DURATION")
    p.add_argument("--nats-lease-ttl", metavar="DURATION")
