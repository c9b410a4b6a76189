"""Tipset key text: both forms parse to the same set, anything else is refused."""

from __future__ import annotations

import pytest

from heartbeat.errors import HeartbeatError
from heartbeat.protocol.tipset import (
    MAX_HEAD_CIDS,
    HeadParseError,
    format_head,
    is_plausible_cid,
    parse_head,
)

A = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
B = "bafy2bzaceb3qxbzw6tqeyb2bmxmswjmqtcw7jx6mlxa54kdgbyrvuyw5jv3x2"
V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", frozenset()),
        ("{ }", frozenset()),
        (f"{{{A}}}", frozenset({A})),
        (f"{{{A},{B}}}", frozenset({A, B})),
        (f"{{{B},{A}}}", frozenset({A, B})),
        (f"{{ {A} {B} }}", frozenset({A, B})),
        (f"{{{A}, {B}}}", frozenset({A, B})),
        (f"{{ {V0} }}", frozenset({V0})),
        # js-libp2p senders: one bare CID is a one-block tipset key
        (A, frozenset({A})),
        (V0, frozenset({V0})),
    ],
)
def test_parse_head_accepts_both_forms(text: str, expected: frozenset[str]) -> None:
    assert parse_head(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "}",
        f"{A} {B}",
        f"{A},{B}",
        f" {A}",
        f"{A} ",
        f"{{{A}",
        f"{A}}}",
        "bafy",
        f"[{A}]",
        f"{{{A},}}",
        f"{{,{A}}}",
        f"{{{A},,{B}}}",
        f"{{{A} {B},{A}}}",
        f"{{{A},{A}}}",
        "{not-a-cid}",
        "{bafy}",
        "{" + "b" + "a" * 200 + "}",
        "{" + ",".join(f"b{'a' * 10}{i:c}" for i in range(97, 97 + MAX_HEAD_CIDS + 1)) + "}",
        "{" + "x" * 10_000 + "}",
    ],
)
def test_parse_head_refuses(text: str) -> None:
    with pytest.raises(HeadParseError):
        parse_head(text)


def test_head_parse_error_is_a_heartbeat_error() -> None:
    assert issubclass(HeadParseError, HeartbeatError)


def test_max_cids_accepted() -> None:
    cids = [f"baaaa{chr(97 + i)}aaaa" for i in range(MAX_HEAD_CIDS)]
    assert parse_head(format_head(cids)) == frozenset(cids)


@pytest.mark.parametrize(
    ("cids", "text"),
    [([], "{}"), ([A], f"{{{A}}}"), ([B, A], f"{{{B},{A}}}")],
)
def test_format_head_keeps_order(cids: list[str], text: str) -> None:
    assert format_head(cids) == text
    assert parse_head(text) == frozenset(cids)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (A, True),
        (V0, True),
        ("zdj7WWeQ43G6JJvLWQWZpyHuAMq6uYWRjkBXFad11vE2LHhQ7", True),
        ("f01711220" + "ab" * 32, True),
        ("Qm123", False),
        ("bafy!", False),
        ("b" + "a" * 200, False),
        ("", False),
        ("xafy2bzacecnamqgq", False),
    ],
)
def test_is_plausible_cid(text: str, ok: bool) -> None:
    assert is_plausible_cid(text) is ok
