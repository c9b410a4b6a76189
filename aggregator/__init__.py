"""fil-heartbeat aggregator: ingests beats from a fleet of agents and tells who is in consensus."""

from __future__ import annotations

__all__: list[str] = []
