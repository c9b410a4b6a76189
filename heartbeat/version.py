"""The agent's version, as sent in each beat's `Version` key."""

from __future__ import annotations

from importlib import metadata

__all__ = ["AGENT_VERSION", "STATIC_MARKER", "__version__", "is_static"]

try:
    __version__ = metadata.version("fil-heartbeat")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

#: What the agent reports in the `Version` key of a beat.
AGENT_VERSION = f"fil-heartbeat/{__version__}"
#: Ends the `Version` of an agent whose head source is static (`--head-source static`): its
#: head never moves by design, so the aggregator's head-stall alerts stay quiet for it.
STATIC_MARKER = "+static"


def is_static(version: str | None) -> bool:
    """True for the `Version` of an agent with a static head (`STATIC_MARKER`)."""
    return version is not None and version.endswith(STATIC_MARKER)
