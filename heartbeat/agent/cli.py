"""The agent's command line: `fil-heartbeat run|id|config` (no subcommand = run).

The only place that reads `os.environ`, reads the TOML file, installs logging
handlers and handles signals. A bad setting exits with code 2 and one line on
stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs
import trio

from heartbeat.agent.config import (
    ENCODINGS,
    ENV_PREFIX,
    HEAD_SOURCES,
    KNOWN_VARIABLES,
    OTHER_PREFIXES,
    AgentConfig,
    build_config,
    config_path,
    parse_toml,
    resolve_identity_file,
    setting_origins,
)
from heartbeat.agent.runner import make_head_source, run_agent, run_until_signal
from heartbeat.common.cli import (
    check_environment,
    document_flags,
    join_dash_values,
    render_config,
)
from heartbeat.common.logs import setup_logging
from heartbeat.common.ports import bind_problem, shown_address
from heartbeat.errors import ConfigError, HeartbeatError, IdentityError
from heartbeat.net import compat
from heartbeat.net.compat import log_fold
from heartbeat.net.errors import UNPATCHED_HINT, CompatError
from heartbeat.net.identity import IdentityFileRefused
from heartbeat.net.p2p import (
    load_or_create_identity,
    peer_id_of,
    restore_libp2p_logging,
)
from heartbeat.version import __version__

__all__ = [
    "build_parser",
    "busy_metrics_listen",
    "main",
    "make_head_source",
    "run_agent",
    "run_until_signal",
]

log = logging.getLogger("heartbeat.main")

PROG = "fil-heartbeat"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="config")
    parser.add_argument("--identity-file", dest="identity_file")
    parser.add_argument("--log-format", dest="log_format", choices=("text", "json"))
    parser.add_argument(
        "--log-level", dest="log_level", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--allow-unpatched-libp2p",
        dest="allow_unpatched_libp2p",
        action="store_const",
        const=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Filecoin heartbeat agent")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="beat to one or more aggregators (default)")
    _common(run)
    add = run.add_argument
    add(
        "--target",
        dest="targets",
        action="append",
        metavar="MULTIADDR",
        help="aggregator multiaddr ending in /p2p/<peer-id> (repeatable)",
    )
    add("--alerts", dest="alerts", metavar="MULTIADDR", help="alert service (FIL_HEARTBEAT_ALERTS)")
    add("--nickname", dest="nickname")
    add("--beat-period", dest="beat_period", metavar="DURATION", help="default 3s")
    add("--reconnect-period", dest="reconnect_period", metavar="DURATION", help="default 10s")
    add("--jitter", dest="jitter", metavar="FRACTION", help="reconnect jitter, default 0.2")
    add("--error-log-period", dest="error_log_period", metavar="DURATION", help="default 10m")
    add("--write-timeout", dest="write_timeout", metavar="DURATION", help="default 10s")
    add("--dial-timeout", dest="dial_timeout", metavar="DURATION", help="default 10s")
    add("--head-source", dest="head_source", choices=HEAD_SOURCES)
    add("--fullnode-api-info", dest="fullnode_api_info", metavar="TOKEN:MULTIADDR")
    add("--miner-api-info", dest="miner_api_info", metavar="TOKEN:MULTIADDR")
    add("--miner-address", dest="miner_address", metavar="ADDRESS")
    add("--metrics-listen", dest="metrics_listen", metavar="HOST:PORT")
    add("--encoding", dest="encoding", choices=ENCODINGS)
    add("--static-height", dest="static_height", metavar="N")
    add("--static-head", dest="static_head", metavar="CID[,CID…]")
    add("--genesis-cid", dest="genesis_cid", metavar="CID")
    add("--block-delay", dest="block_delay", metavar="DURATION")
    add("--lag-epochs", dest="lag_epochs", metavar="N")
    add("--seed", dest="seed", metavar="N")
    ident = sub.add_parser("id", help="print the agent's peer id (creating the key if needed)")
    _common(ident)
    show = sub.add_parser(
        "config", help="print the effective configuration and where each value comes from"
    )
    for action in run._actions:  # the same settings as run
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            show._add_action(action)
    from heartbeat.agent.help import setting_help

    document_flags(parser, setting_help(default_identity_file()))
    return parser


def default_identity_file() -> Path:
    """Where the agent keeps its key unless told otherwise (the platform's state dir)."""
    return Path(platformdirs.user_state_dir("fil-heartbeat")) / "agent.key"


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if not args or args[0] not in ("run", "id", "config", "-h", "--help", "--version"):
        args.insert(0, "run")
    return args


METRICS_SETTING = "--metrics-listen / FIL_HEARTBEAT_METRICS_LISTEN"


def busy_metrics_listen(config: AgentConfig) -> str | None:
    """One line naming the metrics address if it cannot be bound, or None.

    A plain bind (SO_REUSEADDR, as trio's listener sets) closed at once, run before anything
    else is opened: a taken port is a setting to fix, not a traceback from the nursery.
    """
    if config.metrics_listen is None:
        return None
    host, port = config.metrics_listen
    if port == 0:
        return None
    shown = shown_address(host, port)
    problem = bind_problem(host, port)
    if problem is None:
        return None
    if not problem.resolves:
        return f"cannot resolve metrics listen address {shown} ({METRICS_SETTING}): {problem.why}"
    return f"cannot listen on metrics address {shown} ({METRICS_SETTING}): {problem.why}"


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "command"}


def _load_toml(flags: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    path = config_path(flags, env)
    if path is None:
        return {}
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config / FIL_HEARTBEAT_CONFIG", f"cannot read {path}: {exc}") from exc
    return parse_toml(text)


def _main(argv: Sequence[str] | None) -> int:
    if (sys.argv[1:] if argv is None else list(argv))[:1] == ["loadgen"]:
        from heartbeat.tools.loadgen import (
            main as loadgen_main,  # capacity tooling, docs/CAPACITY.md
        )

        return loadgen_main((sys.argv[1:] if argv is None else list(argv))[1:])
    parser = build_parser()
    args = parser.parse_args(
        join_dash_values(_normalise_argv(sys.argv[1:] if argv is None else argv), parser)
    )
    env = dict(os.environ)
    flags = _flags(args)
    default_identity = default_identity_file()
    try:
        check_environment(
            env, ENV_PREFIX, KNOWN_VARIABLES, ignore_prefixes=OTHER_PREFIXES, program=PROG
        )
        toml = _load_toml(flags, env)
        if args.command == "id":
            return _print_id(resolve_identity_file(flags, env, toml, default_identity))
        config = build_config(flags, env, toml, default_identity_file=default_identity)
        if args.command == "config":
            return _print_config(config, setting_origins(flags, env, toml))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    busy = busy_metrics_listen(config)  # before the identity, the host or the head source
    if busy is not None:
        print(f"{PROG}: error: {busy}", file=sys.stderr)
        return 2

    setup_logging(config.log_format, config.log_level.upper())
    restore_libp2p_logging()
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    # dial failures and lost streams reach the log through the loops' escalation policy
    log_fold.install_agent_demotion()
    try:
        compat.install_all(allow_unpatched=config.allow_unpatched_libp2p)
        trio.run(run_until_signal, config)
    finally:  # main() may run again in the same process (tests): leave the loggers as found
        log_fold.uninstall_agent_demotion()
    return 0


def _print_id(path: Path) -> int:
    """The peer id on stdout; on stderr where the key is, when this call created it."""
    existed = path.exists()
    peer_id = peer_id_of(load_or_create_identity(path))
    if not existed:
        print(f"{PROG}: created a new identity key at {path} (mode 0600)", file=sys.stderr)
    print(peer_id)
    return 0


def _print_config(config: AgentConfig, origins: Mapping[str, str]) -> int:
    rows: list[tuple[str, object, str]] = []
    for key, origin in origins.items():
        value: object = getattr(config, key, None)
        if key == "targets":
            value = [t.addr for t in config.targets if t.role != "alerts"]
        elif key == "alerts":
            value = next((t.addr for t in config.targets if t.role == "alerts"), None)
        elif key in ("fullnode_api_info", "miner_api_info") and isinstance(value, str):
            value = "<token hidden>:" + value.split(":", 1)[-1] if ":" in value else value
        elif key == "metrics_listen" and value is not None:
            value = shown_address(*config.metrics_listen)  # type: ignore[misc]
        rows.append((key, value, origin))
    sys.stdout.write(render_config(rows))
    return 0


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The one error boundary: whatever the services raised, alone or grouped by trio's
    nurseries, becomes one line and an exit code (2: a setting or file to fix, 1: a failure)."""
    codes: list[int] = []
    try:
        codes.append(_main(argv))
    except* (ConfigError, IdentityFileRefused) as group:
        print(f"{PROG}: error: {_leaves(group)[0]}", file=sys.stderr)
        codes.append(2)
    except* CompatError as group:
        print(f"{PROG}: {_leaves(group)[0]}{UNPATCHED_HINT}", file=sys.stderr)
        codes.append(2)
    except* IdentityError as group:
        print(f"{PROG}: error: {_leaves(group)[0]}", file=sys.stderr)
        codes.append(1)
    except* (HeartbeatError, OSError) as group:
        log.error("agent_failed err=%s", _leaves(group)[0])
        print(f"{PROG}: error: {_leaves(group)[0]}", file=sys.stderr)
        codes.append(1)
    except* KeyboardInterrupt:
        codes.append(130)
    return codes[0]


if __name__ == "__main__":
    sys.exit(main())
