"""What a public status page hides: remote addresses, IP addresses and source error texts.

Pure. `redact_public(node)` is applied to every node dict a public page or its JSON APIs send
(`/api/v1/nodes`, `/api/v1/nodes/{peer_id}`, the feed, the history): it drops `remote_address`,
`remote_addr`, `source_error`, and every other key ending in `_address` or `_addr` except
`miner_address` (a miner's on-chain address is public anyway), at any depth (nested dicts and
lists of dicts are copied, never changed in place). `redact_history(history)` also drops the
`error` text of each transition of a node's history.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PUBLIC_KEPT", "is_private_key", "redact_history", "redact_public"]

#: Address-like keys a public page keeps.
PUBLIC_KEPT = frozenset({"miner_address"})
_PRIVATE = frozenset({"remote_address", "remote_addr", "source_error"})


def is_private_key(key: str) -> bool:
    """Whether a public page must drop the value under `key`."""
    if key in PUBLIC_KEPT:
        return False
    return key in _PRIVATE or key.endswith(("_address", "_addr"))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if not is_private_key(str(k))}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_public(node: dict[str, Any]) -> dict[str, Any]:
    """A copy of `node` without what a public page hides (see the module doc)."""
    out: dict[str, Any] = _redact(node)
    return out


def redact_history(history: dict[str, Any]) -> dict[str, Any]:
    """A copy of a node's history (`/api/v1/nodes/{peer_id}/history`) for a public page: as
    `redact_public`, and each transition without its `error` text."""
    out = redact_public(history)
    transitions = out.get("transitions")
    if isinstance(transitions, list):
        out["transitions"] = [
            {k: v for k, v in t.items() if k != "error"} if isinstance(t, dict) else t
            for t in transitions
        ]
    return out
