"""The agent's version, as sent in each beat's `Version` key."""

from __future__ import annotations

from importlib import metadata

__all__ = ["AGENT_VERSION", "__version__"]

try:
    __version__ = metadata.version("fil-heartbeat")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

#: What the agent reports in the `Version` key of a beat.
AGENT_VERSION = f"fil-heartbeat/{__version__}"
