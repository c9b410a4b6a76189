"""The Lotus head source: API info parsing, JSON-RPC client, ChainNotify, the source.

Import the pieces from their modules (`heartbeat.agent.lotus.apiinfo` is pure and cheap;
`heartbeat.agent.lotus.source` pulls in httpx and trio-websocket).
"""

from __future__ import annotations

__all__: list[str] = []
