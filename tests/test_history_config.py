"""The history retention setting: flag, environment, TOML, default and refusals."""

from __future__ import annotations

import pytest

from aggregator.__main__ import parse_args
from aggregator.config import build_config, config_mapping
from heartbeat.errors import ConfigError


def test_default_is_thirty_days() -> None:
    assert build_config().history_retention == 30 * 86_400


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"env": {"FIL_HEARTBEAT_AGGREGATOR_HISTORY_RETENTION": "48h"}}, 48 * 3600),
        ({"file": {"history_retention": "168h"}}, 168 * 3600),
        ({"file": {"history-retention": "1h30m"}}, 5400),
        (
            {
                "flags": {"history_retention": "2h"},
                "env": {"FIL_HEARTBEAT_AGGREGATOR_HISTORY_RETENTION": "48h"},
            },
            7200,
        ),
    ],
)
def test_sources(kwargs: dict[str, dict[str, str]], expected: float) -> None:
    assert build_config(**kwargs).history_retention == expected  # type: ignore[arg-type]


def test_the_flag() -> None:
    _, config = parse_args(["run", "--history-retention", "720h"], env={})
    assert config.history_retention == 30 * 86_400


@pytest.mark.parametrize("value", ["0", "30d", "-1h", ""])
def test_bad_values_name_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(env={"FIL_HEARTBEAT_AGGREGATOR_HISTORY_RETENTION": value})
    # the flag and the environment variable, for the operator to find it
    assert "--history-retention" in caught.value.setting
    assert "FIL_HEARTBEAT_AGGREGATOR_HISTORY_RETENTION" in caught.value.setting


def test_workers_receive_it() -> None:
    config = build_config(file={"history_retention": "3h"})
    assert build_config(file=config_mapping(config)).history_retention == 3 * 3600
