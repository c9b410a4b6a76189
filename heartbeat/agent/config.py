"""The agent's configuration: one frozen `AgentConfig` from flags, environment and TOML.

Pure: the caller (`__main__`) reads `os.environ`, the TOML file and the platform's
state directory, and passes them in. Precedence: flags > environment > TOML >
defaults. Every bad value raises one `ConfigError` naming the setting by its flag
and its environment variable.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from heartbeat.agent.config_sources import (
    CONFIG_SETTING,
    ENV_PREFIX,
    KNOWN_VARIABLES,
    OTHER_PREFIXES,
    SETTINGS,
    Setting,
    Sources,
    by_key,
)
from heartbeat.agent.config_sources import choice as _choice
from heartbeat.agent.config_sources import duration as _duration
from heartbeat.agent.config_sources import enabled as _yes
from heartbeat.agent.config_sources import integer as _int
from heartbeat.agent.config_sources import setting_error as _err
from heartbeat.agent.config_sources import text as _text
from heartbeat.agent.targets import Target, parse_target
from heartbeat.errors import ConfigError
from heartbeat.protocol.address import AddressError, normalize_miner_address
from heartbeat.protocol.tipset import is_plausible_cid
from heartbeat.protocol.wire import validate_nickname

__all__ = [
    "ALERTS_PERIOD",
    "ENCODINGS",
    "ENV_PREFIX",
    "HEAD_SOURCES",
    "KNOWN_VARIABLES",
    "OTHER_PREFIXES",
    "SETTINGS",
    "AgentConfig",
    "Setting",
    "build_config",
    "config_path",
    "parse_toml",
    "resolve_identity_file",
]

HEAD_SOURCES = ("lotus", "static", "simulated")
ENCODINGS = ("cbor", "json")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The alert service target beats and redials every 10 s, as the original did.
ALERTS_PERIOD = 10.0

_STATIC_HEAD_CID = "bafy2bzacedstaticheadstaticheadstaticheadstaticheadstatichea"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs, validated."""

    targets: tuple[Target, ...]
    identity_file: Path
    head_source: str  # one of HEAD_SOURCES
    nickname: str = ""
    beat_period: float = 3.0
    reconnect_period: float = 10.0
    jitter: float = 0.2
    error_log_period: float = 600.0
    write_timeout: float = 10.0
    dial_timeout: float = 10.0
    fullnode_api_info: str | None = None
    miner_api_info: str | None = None
    miner_address: str = ""  # normalised; "" = none (or read from the miner API)
    metrics_listen: tuple[str, int] | None = None
    log_format: str = "text"
    log_level: str = "info"
    encoding: str = "cbor"
    static_height: int = 0
    static_head: tuple[str, ...] = field(default=(_STATIC_HEAD_CID,))
    genesis_cid: str | None = None
    block_delay: float = 30.0
    lag_epochs: int = 0
    seed: int | None = None
    #: Run py-libp2p's stock code when the compat gate refuses its version (README).
    allow_unpatched_libp2p: bool = False


def _target_list(src: Sources) -> list[Target]:
    found = src.get("targets")
    if found is None:
        return []
    value, origin = found
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [part for v in value for part in v.split(",") if part.strip()]
    else:
        raise _err("targets", f"expected multiaddr text or a list of them ({origin})")
    return [parse_target(item, setting=by_key["targets"].label) for item in items]


def _listen(src: Sources) -> tuple[str, int] | None:
    found = src.get("metrics_listen")
    if found is None:
        return None
    value, origin = found
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise _err("metrics_listen", f"invalid HOST:PORT {value!r} ({origin}); e.g. 127.0.0.1:9083")
    return host, int(port_text)


def _cids(src: Sources) -> tuple[str, ...] | None:
    found = src.get("static_head")
    if found is None:
        return None
    value, origin = found
    text = str(value).strip().strip("{}")
    cids = tuple(c for c in re.split(r"[,\s]+", text) if c)
    if not cids or len(cids) > 16 or not all(is_plausible_cid(c) for c in cids):
        raise _err(
            "static_head",
            f"invalid tipset key {value!r} ({origin}); e.g. bafy2bzacea...,bafy2bzaceb...",
        )
    return cids


def config_path(flags: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The TOML file to read, if any: --config, else FIL_HEARTBEAT_CONFIG."""
    value = flags.get("config")
    if value:
        return str(value)
    text = env.get(CONFIG_SETTING.env or "", "").strip()
    return text or None


def parse_toml(text: str) -> dict[str, Any]:
    """Parse the TOML file's text; keys may use '-' or '_'. A `[agent]` table is accepted."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(CONFIG_SETTING.label, f"invalid TOML: {exc}") from exc
    agent = data.get("agent")
    if isinstance(agent, dict):
        data = {**{k: v for k, v in data.items() if k != "agent"}, **agent}
    normalised = {key.replace("-", "_"): value for key, value in data.items()}
    if "target" in normalised and "targets" not in normalised:
        normalised["targets"] = normalised.pop("target")
    unknown = sorted(set(normalised) - set(by_key))
    if unknown:
        raise ConfigError(
            CONFIG_SETTING.label, f"unknown key(s) {', '.join(unknown)} in config file"
        )
    return normalised


def resolve_identity_file(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    toml: Mapping[str, Any],
    default: Path,
) -> Path:
    """The identity key file (for `fil-heartbeat id` as well as `run`)."""
    text = _text(Sources(flags, env, toml), "identity_file")
    if text == "":
        raise _err("identity_file", "empty path")
    return Path(text).expanduser() if text else default


def _jitter(src: Sources, done: Mapping[str, Any]) -> float:
    found = src.get("jitter")
    if found is None:
        return 0.2
    value, origin = found
    try:
        text = str(value).strip()
        jitter = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise _err("jitter", f"invalid fraction {value!r} ({origin}); e.g. 0.2 or 20%") from exc
    if not 0.0 <= jitter < 1.0:
        raise _err("jitter", f"{value!r} ({origin}) out of range [0, 1); e.g. 0.2")
    return jitter


def _targets(src: Sources, done: Mapping[str, Any]) -> tuple[Target, ...]:
    """Every target with the beat and reconnect periods; the alert service's own."""
    targets = [
        replace(t, beat_period=done["beat_period"], reconnect_period=done["reconnect_period"])
        for t in _target_list(src)
    ]
    alerts = _text(src, "alerts")
    if alerts:
        alert = parse_target(alerts, setting=by_key["alerts"].label)
        targets.append(
            replace(alert, beat_period=ALERTS_PERIOD, reconnect_period=ALERTS_PERIOD, role="alerts")
        )
    if not targets:
        raise _err(
            "targets",
            "no target given; set --target MULTIADDR (repeatable) or FIL_HEARTBEAT_TARGETS",
        )
    seen: set[tuple[str, str]] = set()
    for t in targets:
        if (t.role, t.addr) in seen:
            raise _err("targets", f"duplicate target {t.addr}")
        seen.add((t.role, t.addr))
    return tuple(targets)


def _nickname(src: Sources, done: Mapping[str, Any]) -> str:
    nickname = _text(src, "nickname") or ""
    if not validate_nickname(nickname):
        raise _err(
            "nickname",
            f"invalid nickname {nickname!r}: letters, digits, space and -_.:@+#/() "
            "up to 64 characters; e.g. alpha-1",
        )
    return nickname


def _miner_api_info(src: Sources, done: Mapping[str, Any]) -> str | None:
    miner_api = _text(src, "miner_api_info") or None
    if miner_api is None and src.env.get("STORAGE_API_INFO", "").strip():
        miner_api = src.env["STORAGE_API_INFO"].strip()
    return miner_api


def _head_source(src: Sources, done: Mapping[str, Any]) -> str:
    """The head source; Lotus (the default when FULLNODE_API_INFO is set) needs its API."""
    fullnode = done["fullnode_api_info"]
    head_source = _choice(src, "head_source", HEAD_SOURCES, "lotus" if fullnode else None)
    if head_source is None:
        raise _err(
            "head_source",
            "no head source: set FULLNODE_API_INFO (to follow a Lotus node) "
            "or --head-source static|simulated",
        )
    if head_source == "lotus" and not fullnode:
        raise _err("fullnode_api_info", "--head-source lotus needs FULLNODE_API_INFO")
    if head_source == "lotus":
        _check_api_info(fullnode or "", "fullnode_api_info", miner=False)
        if done["miner_api_info"]:
            _check_api_info(done["miner_api_info"], "miner_api_info", miner=True)
    return head_source


def _miner_address(src: Sources, done: Mapping[str, Any]) -> str:
    miner_text = _text(src, "miner_address")
    if not miner_text:
        return ""
    try:
        return normalize_miner_address(miner_text)
    except (AddressError, ValueError) as exc:
        raise _err(
            "miner_address", f"invalid Filecoin address {miner_text!r}; e.g. f01234"
        ) from exc


def _identity_file(src: Sources, done: Mapping[str, Any]) -> Path:
    # `done` holds the caller's default until this row replaces it
    return resolve_identity_file(src.flags, src.env, src.toml, done["identity_file"])


_Parser = Callable[[Sources, Mapping[str, Any]], Any]

#: Every `AgentConfig` field and its parser, in the order settings are checked (the first
#: bad one is the one reported). A parser sees the fields parsed before it in `done`.
_PARSERS: tuple[tuple[str, _Parser], ...] = (
    ("beat_period", lambda src, done: _duration(src, "beat_period", 3.0)),
    ("reconnect_period", lambda src, done: _duration(src, "reconnect_period", 10.0)),
    ("jitter", _jitter),
    ("targets", _targets),
    ("nickname", _nickname),
    ("fullnode_api_info", lambda src, done: _text(src, "fullnode_api_info") or None),
    ("miner_api_info", _miner_api_info),
    ("head_source", _head_source),
    ("miner_address", _miner_address),
    ("identity_file", _identity_file),
    ("error_log_period", lambda src, done: _duration(src, "error_log_period", 600.0, minimum=1.0)),
    ("write_timeout", lambda src, done: _duration(src, "write_timeout", 10.0)),
    ("dial_timeout", lambda src, done: _duration(src, "dial_timeout", 10.0)),
    ("metrics_listen", lambda src, done: _listen(src)),
    ("log_format", lambda src, done: _choice(src, "log_format", LOG_FORMATS, "text") or "text"),
    ("log_level", lambda src, done: _choice(src, "log_level", LOG_LEVELS, "info") or "info"),
    ("encoding", lambda src, done: _choice(src, "encoding", ENCODINGS, "cbor") or "cbor"),
    ("static_height", lambda src, done: _int(src, "static_height", 0, 0, 2**63 - 1) or 0),
    ("static_head", lambda src, done: _cids(src) or (_STATIC_HEAD_CID,)),
    ("genesis_cid", lambda src, done: _text(src, "genesis_cid") or None),
    ("block_delay", lambda src, done: _duration(src, "block_delay", 30.0, minimum=0.01)),
    ("lag_epochs", lambda src, done: _int(src, "lag_epochs", 0, 0, 1_000_000) or 0),
    ("seed", lambda src, done: _int(src, "seed", None, 0, 2**63 - 1)),
    ("allow_unpatched_libp2p", lambda src, done: _yes(src, "allow_unpatched_libp2p")),
)


def build_config(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    toml: Mapping[str, Any] | None = None,
    *,
    default_identity_file: Path,
) -> AgentConfig:
    """Build and validate the agent's configuration. `flags` maps setting keys to the
    parsed command-line values (None or missing = not given)."""
    src = Sources(flags, env, toml or {})
    done: dict[str, Any] = {"identity_file": default_identity_file}
    for key, parse in _PARSERS:
        done[key] = parse(src, done)
    return AgentConfig(**done)


def _check_api_info(value: str, key: str, *, miner: bool) -> None:
    from heartbeat.agent.lotus.apiinfo import parse_api_info

    parse_api_info(value, setting=by_key[key].label, miner=miner)


def setting_origins(
    flags: Mapping[str, Any], env: Mapping[str, str], toml: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Where each setting's value comes from: flag, env, config file or default (for
    `fil-heartbeat config`)."""
    src = Sources(flags, env, toml or {})
    out: dict[str, str] = {}
    for key, setting in by_key.items():
        found = src.get(key)
        origin = "default" if found is None else found[1]
        if origin == "env" and setting.env:
            origin = f"env {setting.env}"
        elif origin == "flag":
            origin = f"flag {setting.flag}"
        out[key] = origin
    return out
