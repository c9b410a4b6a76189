"""`GET /api/v1/propagation?network=<key>&epochs=30`: who saw each recent tipset how late.

Pure request handling over `aggregator.propagation.Propagation` (the HTTP shell calls
`propagation_response` and sends what it returns). `network` is a network key (genesis CID or
"unknown") or a network's name as the fleet shows it; without it, the only network when there is
one. `epochs`: how many heights, newest first (1..60, default 30).

Answer: `{"network": key, "name": name, "tipsets": [{"height", "timestamp", "head": [cids],
"seen": [{"peer_id", "nickname", "delay"}], "seen_total"}]}`; 400 for a bad `epochs`, 404 for
an unknown network (listing the known keys).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aggregator.propagation import KEEP_EPOCHS

if TYPE_CHECKING:
    from aggregator.fleet import FleetSnapshot
    from aggregator.propagation import Propagation

__all__ = ["DEFAULT_EPOCHS", "PROPAGATION_PATH", "propagation_response"]

PROPAGATION_PATH = "/api/v1/propagation"
DEFAULT_EPOCHS = 30


def propagation_response(
    propagation: Propagation, snapshot: FleetSnapshot, query: str
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON payload) for one request; `query` is the raw query string."""
    params = parse_qs(query, keep_blank_values=True)
    raw_epochs = params.get("epochs", [str(DEFAULT_EPOCHS)])[-1]
    try:
        epochs = int(raw_epochs)
    except ValueError:
        epochs = 0
    if not 1 <= epochs <= KEEP_EPOCHS:
        return 400, {"error": f"epochs must be an integer from 1 to {KEEP_EPOCHS}"}
    known = sorted(set(propagation.networks()) | set(snapshot.networks))
    wanted = params.get("network", [""])[-1]
    key = _resolve(wanted, known, snapshot)
    if key is None:
        return 404, {"error": "unknown network", "network": wanted, "networks": known}
    view = snapshot.networks.get(key)
    return 200, {
        "network": key,
        "name": view.name if view is not None else key,
        "tipsets": [t.as_json() for t in propagation.tipsets(key, epochs)],
    }


def _resolve(wanted: str, known: list[str], snapshot: FleetSnapshot) -> str | None:
    if not wanted:
        return known[0] if len(known) == 1 else None
    if wanted in known:
        return wanted
    for key, view in snapshot.networks.items():
        if view.name == wanted:
            return key
    return None
