"""Both command lines explain every setting and refuse what they do not know.

`--help` gives each flag its meaning, default, variable and TOML key; internal subcommands
stay out of usage; `config` prints the effective configuration and each value's source; a
misspelt variable with the program's prefix is an error naming the closest known one; a
value starting with a dash reaches the setting's own check. In-process, no sockets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from aggregator.__main__ import main as aggregator_main
from aggregator.cli_parser import build_parser as aggregator_parser
from aggregator.help import ALERT_SET_KEYS
from aggregator.help import setting_help as aggregator_help
from heartbeat.agent.cli import build_parser, default_identity_file
from heartbeat.agent.cli import main as agent_main
from heartbeat.agent.config import KNOWN_VARIABLES, SETTINGS
from heartbeat.agent.help import setting_help as agent_help
from heartbeat.common.cli import (
    SettingHelp,
    check_environment,
    closest,
    document_flags,
    join_dash_values,
    render_config,
)
from heartbeat.errors import ConfigError

TARGET = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def _visible_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out += _visible_flags(child)
        elif action.option_strings and action.help != argparse.SUPPRESS:
            if not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                out.append(action)
    return out


@pytest.mark.parametrize("program", ["agent", "aggregator"])
def test_every_flag_has_meaning_default_variable_and_toml_key(program: str) -> None:
    if program == "agent":
        parser, docs = build_parser(), agent_help(default_identity_file())
    else:
        parser, docs = aggregator_parser(), aggregator_help(Path("/state"))
    assert document_flags(parser, docs) == []  # no flag without a table entry
    for action in _visible_flags(parser):
        text = action.help or ""
        assert text and not text.startswith("["), action.dest  # a meaning first
        assert "default:" in text or "TOML" in text, action.dest
        if action.dest != "config" and not action.dest.startswith("alert"):
            assert f"TOML {action.dest}" in text, (action.dest, text)


def test_agent_variables_in_help_are_the_ones_the_agent_reads() -> None:
    help_text = build_parser().format_help() + "".join(
        (a.help or "") for a in _visible_flags(build_parser())
    )
    for setting in SETTINGS.values():
        if setting.env and setting.env.startswith("FIL_HEARTBEAT_"):
            assert setting.env in help_text


def test_aggregator_hides_its_worker_subcommand_and_lists_alert_set_keys() -> None:
    parser = aggregator_parser()
    usage = parser.format_help()
    assert "{run,id,alert-test,config,tail}" in usage
    assert not [line for line in usage.splitlines() if line.strip().startswith("worker")]
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    run_help = sub.choices["run"].format_help()
    for key in ("lagging_for", "node_down_for", "evaluation_interval"):
        assert key in ALERT_SET_KEYS and key in run_help
    # still parsed, for worker 0's own use
    args = parser.parse_args(["worker", "--worker-index", "1", "--worker-link", "/x"])
    assert args.command == "worker"


def test_default_paths_are_shown() -> None:
    docs = aggregator_help(Path("/var/lib/fil-heartbeat"))
    assert docs["state_db"].default == "/var/lib/fil-heartbeat/aggregator.db"
    assert docs["identity_file"].default == "/var/lib/fil-heartbeat/aggregator.key"
    assert agent_help(Path("/k/agent.key"))["identity_file"].default == "/k/agent.key"


def test_setting_help_text_escapes_percent_for_argparse() -> None:
    text = SettingHelp("a fraction (0.2 or 20%)", "0.2", "X", "x").text()
    assert "20%%" in text and text.endswith("[default: 0.2; env X; TOML x]")


def test_unknown_variables_name_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as info:
        check_environment(
            {"FIL_HEARTBEAT_TARGET": "x"}, "FIL_HEARTBEAT_", KNOWN_VARIABLES, program="p"
        )
    assert info.value.setting == "FIL_HEARTBEAT_TARGET"
    assert "did you mean FIL_HEARTBEAT_TARGETS?" in str(info.value)
    # the aggregator's variables are not the agent's business; others pass through
    check_environment(
        {"FIL_HEARTBEAT_AGGREGATOR_BEAT_TIMEOUT": "x", "PATH": "/bin"},
        "FIL_HEARTBEAT_",
        KNOWN_VARIABLES,
        ignore_prefixes=("FIL_HEARTBEAT_AGGREGATOR_",),
        program="p",
    )
    with pytest.raises(ConfigError, match="see `p --help`"):
        check_environment({"FIL_HEARTBEAT_ZZZZZZ": "1"}, "FIL_HEARTBEAT_", {"A"}, program="p")
    assert closest("FIL_HEARTBEAT_BEAT_PERIUD", KNOWN_VARIABLES) == "FIL_HEARTBEAT_BEAT_PERIOD"


def test_agent_exits_2_on_an_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIL_HEARTBEAT_TARGET", TARGET)
    assert agent_main(["run", "--head-source", "static"]) == 2
    err = capsys.readouterr().err
    assert "FIL_HEARTBEAT_TARGET" in err and "did you mean FIL_HEARTBEAT_TARGETS?" in err


def test_a_value_starting_with_a_dash_reaches_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert join_dash_values(["run", "--beat-period", "-3s", "--nickname", "a"], parser) == [
        "run",
        "--beat-period=-3s",
        "--nickname",
        "a",
    ]
    # a flag after a flag is left alone: argparse reports the missing value itself
    assert join_dash_values(["--beat-period", "--nickname"], parser) == [
        "--beat-period",
        "--nickname",
    ]
    code = agent_main(
        ["run", "--beat-period", "-3s", "--head-source", "static", "--target", TARGET]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--beat-period / FIL_HEARTBEAT_BEAT_PERIOD: invalid duration '-3s'" in err
    assert aggregator_main(["run", "--beat-timeout", "-3s"]) == 2
    err = capsys.readouterr().err
    assert "--beat-timeout / FIL_HEARTBEAT_AGGREGATOR_BEAT_TIMEOUT" in err
    assert "negative" in err


def test_agent_config_prints_each_value_and_its_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('beat_period = "5s"\n')
    monkeypatch.setenv("FIL_HEARTBEAT_NICKNAME", "bob")
    monkeypatch.setenv("FULLNODE_API_INFO", "secrettoken:/ip4/127.0.0.1/tcp/1234/http")
    code = agent_main(["config", "--config", str(toml), "--target", TARGET, "--jitter", "0.1"])
    assert code == 0
    lines = {line.split(" =")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["nickname"].endswith('"bob"  # env FIL_HEARTBEAT_NICKNAME')
    assert lines["beat_period"].endswith("5.0  # config file")
    assert lines["jitter"].endswith("0.1  # flag --jitter")
    assert lines["reconnect_period"].endswith("# default")
    assert "secrettoken" not in lines["fullnode_api_info"]  # the token is never printed


def test_aggregator_config_prints_each_value_and_its_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("FIL_HEARTBEAT_AGGREGATOR_RATE_BURST", "7")
    assert aggregator_main(["config", "--rate-limit", "3", "--state-db", str(tmp_path / "d")]) == 0
    lines = {line.split(" =")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["rate_burst"].endswith("7  # env FIL_HEARTBEAT_AGGREGATOR_RATE_BURST")
    assert lines["rate_limit"].endswith("3.0  # flag --rate-limit")
    assert lines["max_nodes"].endswith("20000  # default")


def test_id_says_on_stderr_where_it_created_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "sub" / "agent.key"
    assert agent_main(["id", "--identity-file", str(key)]) == 0
    first = capsys.readouterr()
    assert f"created a new identity key at {key}" in first.err
    assert first.out.strip().startswith("12D3KooW")
    assert agent_main(["id", "--identity-file", str(key)]) == 0
    again = capsys.readouterr()
    assert again.err == "" and again.out == first.out


def test_render_config_shows_types_as_toml() -> None:
    text = render_config([("a", True, "default"), ("bb", [1, "x"], "flag --bb"), ("c", None, "d")])
    assert text.splitlines() == [
        "a  = true  # default",
        'bb = [1, "x"]  # flag --bb',
        "c  = (none)  # d",
    ]
