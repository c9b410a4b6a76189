"""The guard of the library fixes (heartbeat/common/pinned.py) names what is not as recorded."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util

import pytest

from heartbeat.common.pinned import verify_pinned


class Refused(Exception):
    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")


def _sha256_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_the_recorded_versions_and_files_pass() -> None:
    trio_version = importlib.metadata.version("trio")
    verify_pinned({"trio": trio_version}, {"trio._abc": _sha256_of("trio._abc")}, Refused, "x")


@pytest.mark.parametrize(
    ("distributions", "files", "message"),
    [
        ({"no-such-distribution-here": "1.0"}, {}, "not installed (the fixes need"),
        ({"trio": "0.0.1"}, {}, "the fixes were written for trio==0.0.1"),
        ({}, {"no_such_module_here": "0" * 64}, "no_such_module_here: source file not found"),
        ({}, {"trio._abc": "0" * 64}, "is not the recorded 0000000000000000"),
    ],
)
def test_anything_else_is_refused_naming_it(
    distributions: dict[str, str], files: dict[str, str], message: str
) -> None:
    with pytest.raises(Refused) as caught:
        verify_pinned(distributions, files, Refused, "the fixes")
    assert message in str(caught.value)
