"""The export's spool (aggregator/scaleout/spool.py): order, bound, persistence (SQLite file)."""

from __future__ import annotations

from pathlib import Path

from aggregator.scaleout.spool import Spool


def rows(first: int, count: int) -> list[tuple[str, str, bytes, float]]:
    return [(f"s.{i}", f"id-{i}", bytes([i % 256]), float(i)) for i in range(first, first + count)]


def test_oldest_first_remove_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state.db", 100)
    assert spool.depth == 0 and spool.oldest_at is None
    assert spool.append(rows(0, 5)) == 0
    head = spool.peek(3)
    assert [m.msg_id for m in head] == ["id-0", "id-1", "id-2"] and spool.oldest_at == 0.0
    spool.remove([head[0].seq, head[2].seq])  # acknowledged out of order
    assert [m.msg_id for m in spool.peek(10)] == ["id-1", "id-3", "id-4"]
    assert spool.depth == 3 and spool.oldest_at == 1.0
    spool.close()
    again = Spool(tmp_path / "state.db", 100)  # what waited survives a restart
    assert again.depth == 3 and [m.data for m in again.peek(10)] == [b"\x01", b"\x03", b"\x04"]
    again.remove([m.seq for m in again.peek(10)])
    assert again.depth == 0 and again.oldest_at is None
    again.close()


def test_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state.db", 10)
    assert spool.append(rows(0, 8)) == 0
    assert spool.append(rows(8, 5)) == 3
    assert spool.depth == 10 and spool.dropped == 3
    assert [m.msg_id for m in spool.peek(2)] == ["id-3", "id-4"] and spool.oldest_at == 3.0
    spool.close()
