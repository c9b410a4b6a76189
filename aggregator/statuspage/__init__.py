"""The status page: the fleet and node pages served by the aggregator's HTTP app.

`privacy` (what a public page hides), `render` (server-side HTML), `assets` (the static files
shipped in the package), `routes` (the page's routes, plugged into aggregator/http.py).
"""

from __future__ import annotations

__all__: list[str] = []
