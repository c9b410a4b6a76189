"""The error root of the heartbeat package, typed by who is at fault."""

from __future__ import annotations

__all__ = ["ConfigError", "HeartbeatError", "IdentityError"]


class HeartbeatError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(HeartbeatError):
    """A setting has a bad value: the message names the setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class IdentityError(HeartbeatError):
    """The identity key file cannot be read or written."""
