"""CLI: `fil-heartbeat-aggregator run|id|alert-test|tail` (no subcommand means `run`).

Exit codes: 0 after a clean shutdown, 2 for a configuration error or a listen address
already in use (checked before anything is opened; the message names the setting), 1 for an
identity or store error. `alert-test`: 0 when every alert receiver took the test
notification, 1 when one did not, 2 for a configuration error. `tail`: the JetStream stream
as JSON lines (aggregator/scaleout/tail.py), 0 when stopped by a signal (it waits NATS out).
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from aggregator.alerts.wiring import load_settings, merge_alert_flags
from aggregator.cli_parser import build_parser as _parser
from aggregator.cli_parser import state_dir as _state_dir
from aggregator.config import (
    AggregatorConfig,
    build_config,
    config_mapping,
    setting_label,
)
from aggregator.config_values import MULTIADDR as _MULTIADDR
from aggregator.errors import AggregatorError
from aggregator.variants import BenchVariants
from heartbeat.common.cli import join_dash_values, render_config
from heartbeat.common.ports import bind_problem, shown_address
from heartbeat.errors import ConfigError, HeartbeatError
from heartbeat.net.errors import UNPATCHED_HINT, CompatError
from heartbeat.net.identity import IdentityFileRefused

__all__ = ["busy_listen_address", "main", "parse_args"]

log = logging.getLogger("aggregator")


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
        from aggregator.alerts.wiring import run_alert_test

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
