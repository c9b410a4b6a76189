"""What `fil-heartbeat --help` says of every setting: meaning, default, variable, TOML key.

One table, keyed by the setting (the flag's dest and the TOML key); the variables come
from `heartbeat.agent.config`'s own table, so a setting cannot be documented under a
name the program does not read. `tests/test_agent_help.py` checks every flag is here.
"""

from __future__ import annotations

from pathlib import Path

from heartbeat.agent.config import SETTINGS
from heartbeat.common.cli import SettingHelp

__all__ = ["MEANINGS", "setting_help"]

#: (meaning, default as shown) per setting.
MEANINGS: dict[str, tuple[str, str | None]] = {
    "config": ("TOML file with any of these settings (flat keys, or under [agent])", "none"),
    "identity_file": ("the agent's Ed25519 key (its peer id); created 0600 if missing", None),
    "log_format": ("log line format: text or json", "text"),
    "log_level": ("least severe level logged: debug, info, warning, error", "info"),
    "allow_unpatched_libp2p": (
        "run py-libp2p's stock code on a libp2p version the fixes were not written for "
        "(README: what it costs)",
        "off",
    ),
    "targets": (
        "aggregator multiaddr ending in /p2p/<peer-id>; repeatable (the variable takes a "
        "comma-separated list)",
        "none: required",
    ),
    "alerts": (
        "a second target, the alert service: beats and redials every 10 s, as go-filecoin did",
        "none",
    ),
    "nickname": ("the node's name on dashboards: letters, digits, space, -_.:@+#/()", '""'),
    "beat_period": ("time between beats", "3s"),
    "reconnect_period": ("time between dial attempts while a target is unreachable", "10s"),
    "jitter": ("random spread of the reconnect period, a fraction (0.2 or 20%)", "0.2"),
    "error_log_period": ("while a target stays unreachable, one ERROR line per period", "10m"),
    "write_timeout": ("a beat write stalled this long drops the stream and redials", "10s"),
    "dial_timeout": ("one dial (TCP, Noise, Yamux, protocol) must finish within this", "10s"),
    "head_source": (
        "where the chain head comes from: lotus (FULLNODE_API_INFO), static or simulated",
        "lotus when FULLNODE_API_INFO is set",
    ),
    "fullnode_api_info": ("the Lotus node's API: TOKEN:MULTIADDR, as lotus auth api-info", None),
    "miner_api_info": (
        "the lotus-miner API (TOKEN:MULTIADDR); the miner address is read from it "
        "(STORAGE_API_INFO also works)",
        "none",
    ),
    "miner_address": ("the miner address sent, e.g. f01234 (overrides the miner API)", "none"),
    "metrics_listen": ("HOST:PORT for the agent's Prometheus /metrics", "off"),
    "encoding": ("beat encoding: cbor, or json for go-filecoin-era aggregators", "cbor"),
    "static_height": ("--head-source static: the height sent", "0"),
    "static_head": ("--head-source static: the head's CIDs, comma-separated", "a fixed CID"),
    "genesis_cid": ("the genesis CID sent (static and simulated sources)", "none"),
    "block_delay": ("--head-source simulated: the epoch length", "30s"),
    "lag_epochs": ("--head-source simulated: epochs behind the simulated chain", "0"),
    "seed": ("--head-source simulated: random seed for its CIDs", "random"),
}


def setting_help(default_identity_file: Path) -> dict[str, SettingHelp]:
    """The help of every setting, the identity file's default path resolved."""
    out: dict[str, SettingHelp] = {}
    for key, (meaning, default) in MEANINGS.items():
        setting = SETTINGS.get(key)
        env = setting.env if setting is not None else None
        if key == "identity_file":
            default = str(default_identity_file)
        toml = None if key == "config" else key
        out[key] = SettingHelp(meaning, default, env, toml)
    return out
