"""The Lotus head source: API info parsing, JSON-RPC client, ChainNotify, the source."""

from __future__ import annotations

__all__: list[str] = []
