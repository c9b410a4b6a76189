"""The example configurations (examples/*.toml, packaging/systemd/*.env) load through the
programs' own configuration code, name every setting there is, and show the true defaults,
so that they never rot.

Their convention: a line `# key = value` shows the default, so uncommenting it must change
nothing; a line ending in `# example` shows an example value (the default is "not set",
derived, or depends on the machine), which must at least be valid. A setting added to a
program without a line in its example fails `test_*_example_names_every_setting`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest

from aggregator.__main__ import parse_args
from aggregator.alerts.model import AlertPolicy
from aggregator.alerts.settings import AlertingSettings
from aggregator.alerts.wiring import load_settings
from aggregator.config import AggregatorConfig
from aggregator.config import build_config as build_aggregator_config
from heartbeat.agent.config import AgentConfig, build_config, config_path, parse_toml
from heartbeat.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "examples" / "agent.toml"
AGGREGATOR = REPO / "examples" / "aggregator.toml"
UNITS = REPO / "packaging" / "systemd"

#: What systemd's EnvironmentFile gives the agent (packaging/systemd/fil-heartbeat.env).
LOTUS_ENV = {"FULLNODE_API_INFO": "eyJhbGciOi.token:/ip4/127.0.0.1/tcp/1234/http"}
IDENTITY = Path("/state/fil-heartbeat/agent.key")

#: `# key = value` or `# [table]` / `# [[table]]`, as the examples comment settings out.
_COMMENTED = re.compile(r"^# (\[\[?[a-z_.]+\]\]?(?:  # example)?|[a-z][a-z0-9_]* = .*)$")


def uncomment(text: str, *, examples: bool) -> str:
    """`text` with the defaults (and with `examples`, the example values too) switched on."""
    out = []
    for line in text.splitlines():
        match = _COMMENTED.match(line)
        if match and (examples or not line.endswith("# example")):
            out.append(match.group(1))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def test_uncomment_switches_on_settings_only() -> None:
    text = "# The period.\n# beat_period = 3\n# seed = 1  # example\n# [[a.b]]  # example\n"
    assert (
        uncomment(text, examples=False)
        == "# The period.\nbeat_period = 3\n# seed = 1  # example\n# [[a.b]]  # example\n"
    )
    assert tomllib.loads(uncomment(text, examples=True)) == {
        "beat_period": 3,
        "seed": 1,
        "a": {"b": [{}]},
    }


# -- the agent --------------------------------------------------------------------------


def agent_config(text: str, env: dict[str, str] | None = None) -> AgentConfig:
    return build_config(
        {}, LOTUS_ENV if env is None else env, parse_toml(text), default_identity_file=IDENTITY
    )


def test_agent_example_loads() -> None:
    config = agent_config(AGENT.read_text(encoding="utf-8"))
    assert [t.addr for t in config.targets] == [
        "/dns4/aggregator.example.org/tcp/9081/p2p/12D3KooWLx3SYaRUvBMvgeSbswwVgEX5XMc4rZZw15LhKMD1SMV4"
    ]
    assert config.nickname == "my-sp"
    assert config.head_source == "lotus"
    assert config.identity_file == IDENTITY


def test_agent_example_shows_the_defaults() -> None:
    text = AGENT.read_text(encoding="utf-8")
    defaults = uncomment(text, examples=False)
    assert defaults.count("\n") == text.count("\n")
    assert len(parse_toml(defaults)) >= len(parse_toml(text)) + 15  # defaults really switched on
    assert agent_config(defaults) == agent_config(text)


def test_agent_example_values_are_valid() -> None:
    everything = uncomment(AGENT.read_text(encoding="utf-8"), examples=True)
    config = agent_config(everything, env={})  # the file's own fullnode_api_info
    assert [t.role for t in config.targets] == ["primary", "alerts"]
    assert config.metrics_listen == ("127.0.0.1", 9083)
    assert config.miner_address == "f01234"
    assert config.identity_file == Path("/var/lib/fil-heartbeat/agent.key")
    assert config.seed == 1


def test_agent_example_names_every_setting() -> None:
    everything = parse_toml(uncomment(AGENT.read_text(encoding="utf-8"), examples=True))
    # every AgentConfig field is a TOML key; `alerts` becomes one more of the targets
    known = {f.name for f in fields(AgentConfig)} | {"alerts"}
    assert sorted(known - set(everything)) == [], "add these settings to examples/agent.toml"
    assert sorted(set(everything) - known) == []


def test_agent_example_rejects_what_the_program_rejects() -> None:
    """The checks above mean something: a wrong default in the file is noticed."""
    text = uncomment(AGENT.read_text(encoding="utf-8"), examples=False)
    wrong = text.replace('beat_period = "3s"', 'beat_period = "4s"')
    assert wrong != text
    assert agent_config(wrong) != agent_config(AGENT.read_text(encoding="utf-8"))
    with pytest.raises(ConfigError, match="no_such_setting"):
        agent_config(text + "no_such_setting = 1\n")


# -- the aggregator ---------------------------------------------------------------------


def aggregator_config(text: str, tmp_path: Path) -> AggregatorConfig:
    """Through the command line's own path: --config FILE, no environment."""
    path = tmp_path / "aggregator.toml"
    path.write_text(text, encoding="utf-8")
    _, config = parse_args(["run", "--config", str(path)], env={})
    return config


def alerting(config: AggregatorConfig) -> AlertingSettings:
    return load_settings(config.alerts, config.alerts_file)


def test_aggregator_example_loads(tmp_path: Path) -> None:
    config = aggregator_config(AGGREGATOR.read_text(encoding="utf-8"), tmp_path)
    assert config == replace(
        AggregatorConfig(), identity_file=config.identity_file, state_db=config.state_db
    )
    assert config.state_db.name == "aggregator.db"
    assert alerting(config) == AlertingSettings()


def test_aggregator_example_shows_the_defaults(tmp_path: Path) -> None:
    text = AGGREGATOR.read_text(encoding="utf-8")
    defaults = uncomment(text, examples=False)
    doc = tomllib.loads(defaults)
    assert len(doc) > 40 and len(doc["alerts"]) > 20  # the defaults really switched on
    base = aggregator_config(text, tmp_path)
    shown = aggregator_config(defaults, tmp_path)
    assert replace(shown, alerts={}) == replace(base, alerts={})
    assert alerting(shown) == alerting(base)


def test_aggregator_example_values_are_valid(tmp_path: Path) -> None:
    alerts_file = tmp_path / "alerts.toml"
    alerts_file.write_text("[alerts]\n", encoding="utf-8")
    everything = uncomment(AGGREGATOR.read_text(encoding="utf-8"), examples=True)
    everything = everything.replace("/etc/fil-heartbeat/alerts.toml", str(alerts_file))
    config = aggregator_config(everything, tmp_path)
    assert config.identity_file == Path("/var/lib/fil-heartbeat/aggregator.key")
    assert config.max_pending_inbound == 64
    settings = alerting(config)
    assert settings.alertmanager_urls == ("http://127.0.0.1:9093",)
    assert [r.type for r in settings.receivers] == ["slack", "telegram"]
    assert config.alerts_file == alerts_file


def _aggregator_keys() -> set[str]:
    """Every top-level TOML key the aggregator knows: its config fields, http_listen for
    http_host and http_port, and the [alerts] table."""
    names = {f.name for f in fields(AggregatorConfig)}
    return (names - {"http_host", "http_port"}) | {"http_listen"}


def _alerts_keys() -> set[str]:
    """Every key of the [alerts] table: AlertingSettings' fields, its policy's fields, and
    alertmanager_labels for same_labels_as_prometheus."""
    names = {f.name for f in fields(AlertingSettings)} - {"policy", "same_labels_as_prometheus"}
    return names | {f.name for f in fields(AlertPolicy)} | {"alertmanager_labels"}


def test_aggregator_example_names_every_setting() -> None:
    doc = tomllib.loads(uncomment(AGGREGATOR.read_text(encoding="utf-8"), examples=True))
    missing = sorted(_aggregator_keys() - set(doc))
    assert missing == [], "add these settings to examples/aggregator.toml"
    assert sorted(set(doc) - _aggregator_keys()) == []
    missing_alerts = sorted(_alerts_keys() - set(doc["alerts"]))
    assert missing_alerts == [], "add these [alerts] settings to examples/aggregator.toml"
    assert sorted(set(doc["alerts"]) - _alerts_keys()) == []


def test_aggregator_example_rejects_what_the_program_rejects(tmp_path: Path) -> None:
    text = uncomment(AGGREGATOR.read_text(encoding="utf-8"), examples=False)
    wrong = text.replace("max_nodes = 20000", "max_nodes = 20001")
    assert wrong != text
    assert aggregator_config(wrong, tmp_path).max_nodes == 20001
    with pytest.raises(ConfigError, match="no_such_setting"):
        aggregator_config("no_such_setting = 1\n", tmp_path)


# -- the env file examples (packaging/systemd/*.env) -----------------------------------------------


def test_agent_env_example_configures_the_agent() -> None:
    env = env_file(UNITS / "fil-heartbeat.env")
    config = build_config({}, env, {}, default_identity_file=Path("/state/agent.key"))
    assert config.head_source == "lotus"
    assert config.nickname == "my-sp"
    assert [t.addr.split("/")[2] for t in config.targets] == ["aggregator.example.org"]


def test_agent_env_example_names_only_variables_the_agent_reads() -> None:
    """Switched on one by one, every variable of the file changes the configuration."""
    every = env_file(UNITS / "fil-heartbeat.env", commented=True)
    assert config_path({}, every) == "/etc/fil-heartbeat/agent.toml"
    every.pop("FIL_HEARTBEAT_CONFIG")
    identity = Path("/state/agent.key")
    base = build_config({}, every, {}, default_identity_file=identity)
    for name in every:
        without = {k: v for k, v in every.items() if k != name}
        try:
            changed = build_config({}, without, {}, default_identity_file=identity) != base
        except ConfigError:
            changed = True  # required
        assert changed, f"{name} in fil-heartbeat.env is not a variable the agent reads"


def test_agent_env_example_with_the_example_toml() -> None:
    env = env_file(UNITS / "fil-heartbeat.env")
    env["FIL_HEARTBEAT_CONFIG"] = str(AGENT)
    path = config_path({}, env)
    assert path is not None
    toml = parse_toml(Path(path).read_text(encoding="utf-8"))
    config = build_config({}, env, toml, default_identity_file=Path("/state/agent.key"))
    assert config.nickname == "my-sp"


def test_aggregator_env_example_configures_the_aggregator() -> None:
    every = env_file(UNITS / "fil-heartbeat-aggregator.env", commented=True)
    assert every["FIL_HEARTBEAT_AGGREGATOR_CONFIG"] == "/etc/fil-heartbeat/aggregator.toml"
    every["FIL_HEARTBEAT_AGGREGATOR_CONFIG"] = str(AGGREGATOR)
    # an unknown FIL_HEARTBEAT_AGGREGATOR_* variable would be a ConfigError here
    _, config = parse_args(["run"], env=every)
    assert config.workers == 2
    assert config.allowlist_file == Path("/etc/fil-heartbeat/allowlist")
    assert config.log_format == "json"
    # the file's plain (uncommented) lines are the defaults
    active = env_file(UNITS / "fil-heartbeat-aggregator.env")
    assert build_aggregator_config({}, active, {}) == AggregatorConfig()


def env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """VARIABLE=value lines (with `commented`, the `#VARIABLE=value` ones too)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and (commented or not match.group(1)):
            out[match.group(2)] = match.group(3)
    return out
