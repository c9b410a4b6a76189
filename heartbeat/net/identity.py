"""Checks on an identity key file before its key is read: private, ours, not empty.

A key another user can read is a key someone else may hold, and a key owned by another user
is one this user did not create: both are refused with `IdentityFileRefused`, whose message
says how to fix the file. An empty file (a crash or a full disk while writing by hand) is
named as empty rather than as invalid key bytes. Imports no libp2p: `heartbeat.net.p2p`
reads and writes the key itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from heartbeat.errors import IdentityError

__all__ = ["IdentityFileRefused", "check_identity_file"]


class IdentityFileRefused(IdentityError):
    """The identity file exists but is unsafe or unusable as it is; the message names the fix."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"identity file {path} {problem}: {fix}")
        self.path = path
        self.problem = problem
        self.fix = fix


def check_identity_file(path: Path) -> None:
    """Refuse an existing key file that is not a private, non-empty regular file of ours.

    Raises `IdentityFileRefused`; an `OSError` from `stat` is the caller's to translate.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise IdentityFileRefused(path, "is not a regular file", "point the setting at a key file")
    uid = os.getuid()
    if info.st_uid != uid:
        raise IdentityFileRefused(
            path,
            f"is owned by uid {info.st_uid}, not by this user (uid {uid})",
            f"chown {uid} {path}, or run as its owner",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise IdentityFileRefused(
            path, f"has mode {mode:o}: other users may read the key", f"chmod 600 {path}"
        )
    if info.st_size == 0:
        raise IdentityFileRefused(
            path,
            "is empty",
            f"restore the key from a backup, or remove {path} to create a new identity"
            " (a new peer id)",
        )
