"""CLI: `fil-heartbeat-aggregator run|id|alert-test|tail` (no subcommand means `run`).

Exit codes: 0 after a clean shutdown, 2 for a configuration error or a listen address
already in use (checked before anything is opened; the message names the setting), 1 for an
identity or store error. `alert-test`: 0 when every alert receiver took the test
notification, 1 when one did not, 2 for a configuration error. `tail`: the JetStream stream
as JSON lines (aggregator/scaleout/tail.py), 0 when stopped by a signal (it waits NATS out).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from aggregator.alerts.service import add_alert_arguments, load_settings, merge_alert_flags
from aggregator.config import (
    AggregatorConfig,
    build_config,
    config_mapping,
    setting_label,
)
from aggregator.config_values import MULTIADDR as _MULTIADDR
from aggregator.errors import AggregatorError
from aggregator.variants import BenchVariants, add_variant_flags
from heartbeat.common.cli import document_flags, hide_subcommands, join_dash_values, render_config
from heartbeat.common.ports import bind_problem, shown_address
from heartbeat.errors import ConfigError, HeartbeatError
from heartbeat.net.errors import UNPATCHED_HINT, CompatError
from heartbeat.net.identity import IdentityFileRefused

__all__ = ["busy_listen_address", "main", "parse_args"]

log = logging.getLogger("aggregator")


def _state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("fil-heartbeat"))


def _parser() -> argparse.ArgumentParser:
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
        p.add_argument("--config", metavar="FILE", help="TOML configuration file")
        p.add_argument("--identity-file", metavar="PATH", help="Ed25519 key file (created)")
    for p in (parser, run):
        p.add_argument(
            "--listen",
            action="append",
            metavar="MULTIADDR",
            help="libp2p listen address (repeatable; default /ip4/0.0.0.0/tcp/9081)",
        )
        p.add_argument("--http-listen", metavar="HOST:PORT", help="HTTP address (0.0.0.0:9082)")
        p.add_argument("--state-db", metavar="PATH", help="SQLite node registry")
        p.add_argument(
            "--allowlist",
            dest="allowlist_file",
            metavar="FILE",
            help="allowed peer ids, one per line (reloaded on SIGHUP)",
        )
        p.add_argument(
            "--legacy-metrics",
            action="store_const",
            const=True,
            help="also export go-filecoin's unprefixed gauges",
        )
        p.add_argument("--name", help="this aggregator's name (legacy metrics label)")
        p.add_argument(
            "--status-page",
            choices=["private", "public", "off"],
            help="the status page at / (private, the default: everything; public: no remote "
            "addresses, IPs or source error texts, in the page and its JSON; off: no page); "
            "env FIL_HEARTBEAT_AGGREGATOR_STATUS_PAGE, TOML status_page",
        )
        p.add_argument("--max-connections", type=str, metavar="N")
        p.add_argument("--max-connections-per-ip", type=str, metavar="N")
        p.add_argument(
            "--max-streams-total",
            type=str,
            metavar="N",
            help="streams on the host (default 4 x max connections)",
        )
        p.add_argument(
            "--max-memory-mb",
            type=str,
            metavar="MB",
            help="resource manager memory (default max(512, max connections / 4))",
        )
        p.add_argument(
            "--max-peers",
            type=str,
            metavar="N",
            help="peerstore size (default 2 x max connections + 64)",
        )
        p.add_argument(
            "--max-pending-inbound",
            type=str,
            metavar="N",
            help="inbound handshakes at once (default 64)",
        )
        p.add_argument(
            "--handshake-queue-wait",
            type=str,
            metavar="DURATION",
            help="close a connection that waited this long for a handshake (5s)",
        )
        p.add_argument(
            "--first-bytes-timeout",
            type=str,
            metavar="DURATION",
            help="close an inbound dialer that sends nothing this long (2s)",
        )
        p.add_argument(
            "--upgrade-timeout",
            type=str,
            metavar="DURATION",
            help="the inbound Noise + Yamux upgrade's deadline (10s)",
        )
        p.add_argument(
            "--refusal-cap",
            type=str,
            metavar="N",
            help="close at accept an IP refused more than N times per window (20; 0: off)",
        )
        p.add_argument(
            "--refusal-window",
            type=str,
            metavar="DURATION",
            help="the window of --refusal-cap (1m)",
        )
        add_variant_flags(p)  # hidden: bench/README.md
        p.add_argument(
            "--max-connections-per-peer",
            type=str,
            metavar="N",
            help="connections per peer id (default 2)",
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
            help="silence before a node is down, until its period is known (30s)",
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
            help="how long node history (state changes, epoch heights, uptime) is kept in "
            "the state db (default 720h = 30 days; env "
            "FIL_HEARTBEAT_AGGREGATOR_HISTORY_RETENTION, TOML history_retention)",
        )
        p.add_argument("--max-nodes", type=str, metavar="N")
        p.add_argument(
            "--probation",
            type=str,
            metavar="DURATION",
            help="a new peer id counts once it has beaten this long (1m; 0 disables)",
        )
        p.add_argument("--max-probation", type=str, metavar="N", help="peers on probation (1000)")
        p.add_argument("--max-probation-per-ip", type=str, metavar="N", help="per IP (64)")
        p.add_argument(
            "--reset-state",
            action="store_const",
            const=True,
            help="move an unreadable state db aside and start empty",
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
            help="run py-libp2p's stock code on a version the fixes were not written for "
            "(it refuses every connection after max_connections ever accepted)",
        )
        p.add_argument(
            "--workers",
            type=str,
            metavar="N",
            help="ingest processes on one port and identity (default 1)",
        )
        p.add_argument(
            "--worker-watchdog",
            type=str,
            metavar="DURATION",
            help="kill and restart a worker silent this long (60s)",
        )
        p.add_argument("--alerts-file", metavar="FILE", help="alerting configuration")
        p.add_argument(
            "--runbook-base-url",
            metavar="URL",
            help="where grafana/RUNBOOK.md is published: alert runbook links become "
            "URL/grafana/RUNBOOK.md#alertname (default: relative links); env "
            "FIL_HEARTBEAT_AGGREGATOR_RUNBOOK_BASE_URL, TOML runbook_base_url",
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

    document_flags(parser, setting_help(_state_dir()))
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


def parse_args(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    origins: dict[str, str] | None = None,
) -> tuple[str, AggregatorConfig]:
    """(command, config); raises ConfigError. `origins` gets where each value came from."""
    parser = _parser()
    args = parser.parse_args(join_dash_values(list(argv), parser))
    flags: dict[str, Any] = {
        k: v for k, v in vars(args).items() if v is not None and not k.startswith("variant_")
    }
    command = flags.pop("command", None) or "run"
    if command == "worker":
        flags.pop("worker_index"), flags.pop("worker_link")
    env = dict(os.environ) if env is None else env
    file: dict[str, Any] = {}
    config_path = flags.pop("config", None) or env.get("FIL_HEARTBEAT_AGGREGATOR_CONFIG")
    env = {k: v for k, v in env.items() if k != "FIL_HEARTBEAT_AGGREGATOR_CONFIG"}
    if config_path:
        try:
            file = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                "--config / FIL_HEARTBEAT_AGGREGATOR_CONFIG", f"{config_path}: {exc}"
            ) from exc
        file = dict(file.get("aggregator", file))
    merge_alert_flags(flags, file)
    config = build_config(flags, env, file, state_dir=_state_dir(), origins=origins)
    load_settings(config.alerts, config.alerts_file, env)  # a bad [alerts] setting fails here
    return command, config


def _print_ready(agg: Any) -> None:
    for addr in agg.multiaddrs:
        print(addr, flush=True)
    print(agg.http_url, flush=True)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _bind_targets(config: AggregatorConfig) -> list[tuple[str, str, int]]:
    """(flag / variable, host, port) of every listen address with a fixed port."""
    out = []
    for addr in config.listen:
        match = _MULTIADDR.match(addr)
        if match is not None and int(match.group(3)) != 0:
            out.append(
                ("--listen / FIL_HEARTBEAT_AGGREGATOR_LISTEN", match.group(2), int(match.group(3)))
            )
    if config.http_port != 0:
        out.append(
            (
                "--http-listen / FIL_HEARTBEAT_AGGREGATOR_HTTP_LISTEN",
                config.http_host,
                config.http_port,
            )
        )
    return out


def busy_listen_address(config: AggregatorConfig) -> str | None:
    """One line naming the first listen address already in use and its setting, or None.

    A plain bind (SO_REUSEADDR, as trio's and py-libp2p's listeners set) to every resolved
    address, closed at once: run before the state db, the identity or any worker is opened.
    """
    for setting, host, port in _bind_targets(config):
        problem = bind_problem(host, port)
        if problem is None:
            continue
        if not problem.resolves:
            return f"cannot resolve listen address {host}:{port} ({setting}): {problem.why}"
        shown = shown_address(host, port)
        return f"listen address {shown} ({setting}) is not available: {problem.why}"
    return None


def _run_worker(argv: Sequence[str]) -> int:
    from aggregator.workers import run_worker

    args = _parser().parse_args(list(argv))

    def exit_now() -> None:  # worker 0 is gone: leave the port at once (see run_worker)
        logging.shutdown()
        os._exit(0)

    variants = BenchVariants.from_args(args)
    trio.run(
        partial(
            run_worker, args.worker_index, args.worker_link, variants=variants, orphaned=exit_now
        )
    )
    return 0


def _main(argv: Sequence[str]) -> int:
    command, config = parse_args(argv)
    if command == "run":
        busy = busy_listen_address(config)
        if busy is not None:
            print(f"fil-heartbeat-aggregator: {busy}", file=sys.stderr)
            return 2
    from heartbeat.common.logs import setup_logging

    setup_logging(config.log_format, config.log_level)
    from heartbeat.net import p2p

    p2p.restore_libp2p_logging()
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    from heartbeat.net.gate import Libp2pUpgradeLogFilter

    upgrade_log_filter = Libp2pUpgradeLogFilter()
    folded = [logging.getLogger(n) for n in ("libp2p.network.swarm", "libp2p.transport.upgrader")]
    for logger in folded:
        logger.addFilter(upgrade_log_filter)
    try:
        return _run_command(command, config, argv)
    finally:  # main() may run again in the same process (tests): leave the loggers as found
        for logger in folded:
            logger.removeFilter(upgrade_log_filter)


def _run_command(command: str, config: AggregatorConfig, argv: Sequence[str]) -> int:
    from heartbeat.net import p2p

    if command == "id":
        print(p2p.peer_id_of(p2p.load_or_create_identity(config.identity_file)))
        return 0
    if command == "worker":
        return _run_worker(argv)
    if command == "config":
        return _print_config(argv)
    if command == "alert-test":
        from aggregator.alerts.service import run_alert_test

        return trio.run(run_alert_test, config, dict(os.environ))
    if command == "tail":
        from aggregator.scaleout.tail import run_tail

        code: int = trio.run(run_tail, config)
        return code
    from aggregator.app import run_aggregator

    variants = BenchVariants.from_args(_parser().parse_args(list(argv)))
    trio.run(
        partial(
            run_aggregator,
            config,
            variants=variants,
            on_ready=_print_ready,
            alert_env=dict(os.environ),
        )
    )
    return 0


def _print_config(argv: Sequence[str]) -> int:
    """`fil-heartbeat-aggregator config`: every setting, its value and where it came from."""
    origins: dict[str, str] = {}
    _, config = parse_args(argv, origins=origins)
    values = config_mapping(config)
    names = {"flag": "flag", "env": "env", "file": "config file"}
    rows: list[tuple[str, object, str]] = []
    for key in sorted(values, key=lambda k: (k not in origins, k)):
        if key in ("alerts",):
            continue
        origin = origins.get(key)
        shown = "default" if origin is None else f"{names.get(origin, origin)}"
        if origin in ("flag", "env"):
            shown = f"{shown} {setting_label(key).split(' / ')[0 if origin == 'flag' else 1]}"
        rows.append((key, values[key], shown))
    sys.stdout.write(render_config(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary: whatever the services raised, alone or grouped by trio's
    nurseries, becomes one line on stderr and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    codes: list[int] = []
    try:
        codes.append(_main(argv))
    except* ConfigError as group:
        print(
            f"fil-heartbeat-aggregator: configuration error: {_leaves(group)[0]}", file=sys.stderr
        )
        codes.append(2)
    except* CompatError as group:
        print(f"fil-heartbeat-aggregator: {_leaves(group)[0]}{UNPATCHED_HINT}", file=sys.stderr)
        codes.append(2)
    except* IdentityFileRefused as group:  # unsafe, foreign or empty: the message names the fix
        print(f"fil-heartbeat-aggregator: {_leaves(group)[0]}", file=sys.stderr)
        codes.append(2)
    except* (HeartbeatError, AggregatorError, OSError) as group:
        print(f"fil-heartbeat-aggregator: {_leaves(group)[0]}", file=sys.stderr)
        codes.append(1)
    except* KeyboardInterrupt:
        codes.append(130)
    return codes[0]


if __name__ == "__main__":
    sys.exit(main())
