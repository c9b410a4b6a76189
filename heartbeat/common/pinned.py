"""The guard of every fix made to a library through its seams: the fix runs only on the
distribution versions and the source files it was written for (sha256 of each), else the
caller's error names the distribution or the file. Used by the libp2p fixes
(heartbeat/net/compat) and the NATS bridge's raw delivery (aggregator/scaleout/bridge.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping

__all__ = ["verify_pinned"]


def _file_of(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verify_pinned(
    distributions: Mapping[str, str],
    files: Mapping[str, str],
    error: Callable[[str, str], Exception],
    fixes: str,
) -> None:
    """Raise `error(what, message)` unless each distribution is at its version and each
    module's source file has its sha256; `fixes` names them in the message ("the libp2p
    fixes")."""
    for dist, expected in distributions.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError as exc:
            raise error(dist, f"not installed ({fixes} need {dist}=={expected})") from exc
        if version != expected:
            raise error(f"{dist}=={version}", f"{fixes} were written for {dist}=={expected}")
    for module, expected in files.items():
        path = _file_of(module)
        if path is None:
            raise error(module, "source file not found")
        try:
            digest = _sha256(path)
        except OSError as exc:
            raise error(path, f"unreadable: {exc}") from exc
        if digest != expected:
            raise error(path, f"sha256 {digest[:16]}… is not the recorded {expected[:16]}…")
