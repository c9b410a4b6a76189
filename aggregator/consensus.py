"""Consensus over tipset heads: plurality with a deterministic tie-break, and a stable head hash.

Pure: heads are compared as SETS of CIDs, so `{a,b}`, `{b,a}` and `{ a b }` are one tipset.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["HEAD_HASH_BITS", "NO_HEAD_HASH", "head_hash", "plurality", "tie_break_key"]

#: A head hash fits in 52 bits, so a Prometheus float64 sample holds it exactly.
HEAD_HASH_BITS = 52
#: The hash value reserved for "no head".
NO_HEAD_HASH = 0

_MASK = (1 << HEAD_HASH_BITS) - 1


def head_hash(cids: frozenset[str] | None) -> int:
    """Hash a head's CID set to an integer in [1, 2**52): the same on every process and machine.

    blake2b over the sorted CIDs joined by ",", truncated to 52 bits; 0 means no head (an empty
    or missing set), and a digest that truncates to 0 is mapped to 1.
    """
    if not cids:
        return NO_HEAD_HASH
    digest = hashlib.blake2b(",".join(sorted(cids)).encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "big") & _MASK
    return value or 1


def tie_break_key(cids: frozenset[str]) -> tuple[str, ...]:
    """The order among equally popular heads: the smallest sorted-CID tuple wins."""
    return tuple(sorted(cids))


def plurality(heads: Iterable[frozenset[str]]) -> tuple[frozenset[str] | None, int]:
    """The most common head and its count; ties go to the smallest sorted-CID tuple.

    Empty input gives `(None, 0)`; empty heads are ignored (they name no tipset).
    """
    counts = Counter(h for h in heads if h)
    if not counts:
        return None, 0
    best = max(counts.values())
    winner = min((h for h, n in counts.items() if n == best), key=tie_break_key)
    return winner, best
