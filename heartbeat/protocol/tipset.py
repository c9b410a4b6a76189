"""Tipset keys as text: the Lotus form ``{c1,c2}`` and the go-filecoin form ``{ c1 c2 }``.

A beat's ``Head`` is compared by its SET of CIDs, never by its text: ``{ a b }``, ``{a,b}`` and
``{b,a}`` are the same tipset. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from heartbeat.errors import HeartbeatError

__all__ = [
    "MAX_CID_LENGTH",
    "MAX_HEAD_CIDS",
    "HeadParseError",
    "format_head",
    "is_plausible_cid",
    "parse_head",
]

MAX_HEAD_CIDS = 16  # a tipset has at most a handful of blocks; 16 leaves room
MAX_CID_LENGTH = 128
_MAX_HEAD_TEXT = 2 + MAX_HEAD_CIDS * (MAX_CID_LENGTH + 1) + 2

# CIDv0 (base58btc "Qm…", 46 chars) or a multibase CIDv1 in one of the common bases:
# b/B base32, z base58btc, f/F hex, m/u base64 (plain, url).
_CID_RE = re.compile(
    r"Qm[1-9A-HJ-NP-Za-km-z]{44}"
    r"|b[a-z2-7]{8,}|B[A-Z2-7]{8,}"
    r"|z[1-9A-HJ-NP-Za-km-z]{8,}"
    r"|f[0-9a-f]{8,}|F[0-9A-F]{8,}"
    r"|m[A-Za-z0-9+/]{8,}|u[A-Za-z0-9_-]{8,}"
)


class HeadParseError(HeartbeatError):
    """The text is not a tipset key in either accepted form."""


def is_plausible_cid(text: str) -> bool:
    """True when ``text`` looks like a CID string (prefix, alphabet and length only)."""
    return len(text) <= MAX_CID_LENGTH and _CID_RE.fullmatch(text) is not None


def format_head(cids: Sequence[str]) -> str:
    """The Lotus form of a tipset key, order kept: ``["a", "b"]`` gives ``"{a,b}"``."""
    return "{" + ",".join(cids) + "}"


@lru_cache(maxsize=1024)  # every node of a network reports the same few heads
def parse_head(text: str) -> frozenset[str]:
    """The set of CIDs in a tipset key text.

    Accepts ``{a,b}`` (Lotus; spaces around commas tolerated), ``{ a b }`` (go-filecoin) and
    the empty keys ``{}`` / ``{ }``. A bare CID without braces (js-libp2p senders) is a
    one-block tipset key. At most `MAX_HEAD_CIDS` CIDs, each plausible, no repeats.
    Raises `HeadParseError` otherwise.
    """
    if len(text) > _MAX_HEAD_TEXT:
        raise HeadParseError("head text too long")
    if is_plausible_cid(text):
        return frozenset((text,))
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise HeadParseError("head must be enclosed in braces")
    inner = text[1:-1]
    if "," in inner:
        parts = [part.strip() for part in inner.split(",")]
    else:
        parts = inner.split()
    if len(parts) > MAX_HEAD_CIDS:
        raise HeadParseError(f"head has more than {MAX_HEAD_CIDS} cids")
    for part in parts:
        if not is_plausible_cid(part):
            raise HeadParseError("head holds something that is not a cid")
    cids = frozenset(parts)
    if len(cids) != len(parts):
        raise HeadParseError("head repeats a cid")
    return cids
