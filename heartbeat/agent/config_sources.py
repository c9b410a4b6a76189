"""The agent's settings table and the typed lookups in flags, environment and TOML.

`Setting` says how one setting is spelt in each source; `Sources.get` finds a value by
precedence (flags > environment > TOML) and says where it came from; the lookups turn it
into a typed value or one `ConfigError` naming the flag and the variable, with an example.
Pure: `heartbeat.agent.config` builds the `AgentConfig` from these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heartbeat.common.settings import parse_choice, parse_duration_value, parse_int
from heartbeat.errors import ConfigError, HeartbeatError

__all__ = [
    "CONFIG_SETTING",
    "ENV_PREFIX",
    "KNOWN_VARIABLES",
    "OTHER_PREFIXES",
    "SETTINGS",
    "Setting",
    "Sources",
    "by_key",
    "choice",
    "duration",
    "enabled",
    "integer",
    "setting_error",
    "text",
]


@dataclass(frozen=True, slots=True)
class Setting:
    """How one setting is spelled in each source."""

    key: str  # TOML key and the parsed-flags key
    flag: str
    env: str | None = None

    @property
    def label(self) -> str:
        return f"{self.flag} / {self.env}" if self.env else self.flag


#: Every setting (but `--config`) by key.
by_key = {
    s.key: s
    for s in (
        Setting("targets", "--target", "FIL_HEARTBEAT_TARGETS"),
        Setting("alerts", "--alerts", "FIL_HEARTBEAT_ALERTS"),
        Setting("nickname", "--nickname", "FIL_HEARTBEAT_NICKNAME"),
        Setting("beat_period", "--beat-period", "FIL_HEARTBEAT_BEAT_PERIOD"),
        Setting("reconnect_period", "--reconnect-period", "FIL_HEARTBEAT_RECONNECT_PERIOD"),
        Setting("jitter", "--jitter", "FIL_HEARTBEAT_JITTER"),
        Setting("error_log_period", "--error-log-period", "FIL_HEARTBEAT_ERROR_LOG_PERIOD"),
        Setting("write_timeout", "--write-timeout", "FIL_HEARTBEAT_WRITE_TIMEOUT"),
        Setting("dial_timeout", "--dial-timeout", "FIL_HEARTBEAT_DIAL_TIMEOUT"),
        Setting("head_source", "--head-source", "FIL_HEARTBEAT_HEAD_SOURCE"),
        Setting("fullnode_api_info", "--fullnode-api-info", "FULLNODE_API_INFO"),
        Setting("miner_api_info", "--miner-api-info", "MINER_API_INFO"),
        Setting("miner_address", "--miner-address", "FIL_HEARTBEAT_MINER_ADDRESS"),
        Setting("identity_file", "--identity-file", "FIL_HEARTBEAT_IDENTITY_FILE"),
        Setting("metrics_listen", "--metrics-listen", "FIL_HEARTBEAT_METRICS_LISTEN"),
        Setting("log_format", "--log-format", "FIL_HEARTBEAT_LOG_FORMAT"),
        Setting("log_level", "--log-level", "FIL_HEARTBEAT_LOG_LEVEL"),
        Setting("encoding", "--encoding", "FIL_HEARTBEAT_ENCODING"),
        Setting("static_height", "--static-height", "FIL_HEARTBEAT_STATIC_HEIGHT"),
        Setting("static_head", "--static-head", "FIL_HEARTBEAT_STATIC_HEAD"),
        Setting("genesis_cid", "--genesis-cid", "FIL_HEARTBEAT_GENESIS_CID"),
        Setting("block_delay", "--block-delay", "FIL_HEARTBEAT_BLOCK_DELAY"),
        Setting("lag_epochs", "--lag-epochs", "FIL_HEARTBEAT_LAG_EPOCHS"),
        Setting("seed", "--seed", "FIL_HEARTBEAT_SEED"),
        Setting(
            "allow_unpatched_libp2p",
            "--allow-unpatched-libp2p",
            "FIL_HEARTBEAT_ALLOW_UNPATCHED_LIBP2P",
        ),
    )
}
CONFIG_SETTING = Setting("config", "--config", "FIL_HEARTBEAT_CONFIG")
#: Every setting by key, `--config` included (help, `config`, the variable check).
SETTINGS: Mapping[str, Setting] = {**by_key, "config": CONFIG_SETTING}
#: The agent's prefix; the aggregator's variables (FIL_HEARTBEAT_AGGREGATOR_*) are not ours.
ENV_PREFIX = "FIL_HEARTBEAT_"
OTHER_PREFIXES = ("FIL_HEARTBEAT_AGGREGATOR_",)
KNOWN_VARIABLES = frozenset(s.env for s in SETTINGS.values() if s.env)


class Sources:
    """Looks a setting up in flags, then env, then TOML; remembers where it came from."""

    def __init__(
        self, flags: Mapping[str, Any], env: Mapping[str, str], toml: Mapping[str, Any]
    ) -> None:
        self.flags, self.env, self.toml = flags, env, toml

    def get(self, key: str) -> tuple[Any, str] | None:
        s = by_key[key]
        value = self.flags.get(key)
        if value is not None and value != []:
            return value, "flag"
        if s.env is not None and self.env.get(s.env, "").strip():
            return self.env[s.env].strip(), "env"
        if key in self.toml:
            return self.toml[key], "config file"
        return None


def setting_error(key: str, message: str) -> ConfigError:
    return ConfigError(by_key[key].label, message)


def duration(src: Sources, key: str, default: float, *, minimum: float = 0.001) -> float:
    found = src.get(key)
    if found is None:
        return default
    value, origin = found
    try:
        seconds = parse_duration_value(value)
    except (ValueError, HeartbeatError) as exc:
        raise setting_error(
            key, f"invalid duration {value!r} ({origin}); example: 3s, 1m30s"
        ) from exc
    if not seconds >= minimum or seconds > 86400 * 365:
        raise setting_error(key, f"duration {value!r} ({origin}) out of range; example: 3s")
    return seconds


def choice(src: Sources, key: str, choices: Sequence[str], default: str | None) -> str | None:
    found = src.get(key)
    if found is None:
        return default
    value, origin = found
    try:
        return parse_choice(value, choices)
    except ValueError as exc:
        raise setting_error(key, f"invalid value {value!r} ({origin}); {exc}") from exc


def integer(src: Sources, key: str, default: int | None, lo: int, hi: int) -> int | None:
    found = src.get(key)
    if found is None:
        return default
    value, origin = found
    try:
        number = parse_int(value)
    except ValueError as exc:
        raise setting_error(
            key, f"expected an integer, got {value!r} ({origin}); example: 100"
        ) from exc
    if not lo <= number <= hi:
        raise setting_error(key, f"{number} ({origin}) out of range [{lo}, {hi}]")
    return number


def text(src: Sources, key: str) -> str | None:
    found = src.get(key)
    if found is None:
        return None
    value, origin = found
    if not isinstance(value, str):
        raise setting_error(key, f"expected text, got {value!r} ({origin})")
    return value.strip()


def enabled(src: Sources, key: str) -> bool:
    found = src.get(key)
    if found is None:
        return False
    value, origin = found
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("true", "1", "yes", "false", "0", "no"):
        return value if isinstance(value, bool) else text in ("true", "1", "yes")
    raise setting_error(key, f"expected true or false, got {value!r} ({origin})")
