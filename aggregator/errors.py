"""The error root of the aggregator package, typed by who is at fault."""

from __future__ import annotations

__all__ = ["AggregatorError", "FleetFull", "StoreError"]


class AggregatorError(Exception):
    """Root of every error this package raises on purpose."""


class FleetFull(AggregatorError):
    """A new peer was refused because the fleet already tracks `limit` peers.

    The ingest counts it as `peers_refused_total{reason="fleet_full"}` and closes the stream.
    """

    reason = "fleet_full"

    def __init__(self, peer_id: str, limit: int) -> None:
        super().__init__(f"fleet full: refusing peer {peer_id} (limit {limit})")
        self.peer_id = peer_id
        self.limit = limit


class StoreError(AggregatorError):
    """The node registry database cannot be opened, read or written: names the path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
