"""Tests of the pure consensus helpers: plurality with tie-break, and the stable head hash."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.consensus import HEAD_HASH_BITS, head_hash, plurality

A = frozenset({"bafya"})
B = frozenset({"bafyb"})
AB = frozenset({"bafya", "bafyb"})


def test_plurality_empty() -> None:
    assert plurality([]) == (None, 0)
    assert plurality([frozenset()]) == (None, 0)


def test_plurality_majority_and_tie_break() -> None:
    assert plurality([B, A, B]) == (B, 2)
    assert plurality([B, A]) == (A, 1)
    assert plurality([A, B]) == (A, 1)
    assert plurality([AB, B, AB, B]) == (AB, 2)  # ("bafya","bafyb") < ("bafyb",)


@given(st.lists(st.sampled_from([A, B, AB]), max_size=12), st.randoms())
def test_plurality_ignores_order(heads: list[frozenset[str]], rnd: object) -> None:
    shuffled = list(heads)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plurality(heads) == plurality(shuffled)


def test_head_hash_properties() -> None:
    assert head_hash(frozenset()) == 0
    assert head_hash(None) == 0
    assert head_hash(AB) == head_hash(frozenset(["bafyb", "bafya"]))
    assert head_hash(A) != head_hash(B)
    assert 0 < head_hash(AB) < 2**HEAD_HASH_BITS
    assert float(head_hash(AB)) == head_hash(AB)  # exact in a float64


@pytest.mark.integration  # other interpreters
def test_head_hash_is_stable_across_processes() -> None:
    code = (
        "from aggregator.consensus import head_hash\n"
        "print(head_hash(frozenset({'bafya', 'bafyb'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == head_hash(AB)


@given(st.frozensets(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_head_hash_range(cids: frozenset[str]) -> None:
    assert 1 <= head_hash(cids) < 2**52
