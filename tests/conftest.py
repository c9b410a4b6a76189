"""Shared test fixtures and the `requires_tools` marker."""

from __future__ import annotations

import pytest

from tests.promservers import require_tools


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_tools(*tools): needs system tools (tests/promservers.py TOOLS); "
        "skips without them, fails under CI=true",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    tools = [tool for mark in item.iter_markers("requires_tools") for tool in mark.args]
    if tools:
        require_tools(*tools)
