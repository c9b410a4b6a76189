"""Checks on an identity key file before its key is read: private, ours, not empty.

A key another user can read is a key someone else may hold, and a key owned by another user
is one this user did not create: both are refused with `IdentityFileRefused`, whose message
says how to fix the file. An empty file (a crash or a full disk while writing by hand) is
named as empty rather than as invalid key bytes. Also where keys are made, loaded and
named (`load_or_create_identity`, `new_identity`, `peer_id_of`; re-exported by
`heartbeat.net.p2p`), importing libp2p only when called (importing libp2p loads zeroconf,
which runs `ldconfig`: the command lines import this module before any setting is read).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from heartbeat.errors import IdentityError

if TYPE_CHECKING:  # libp2p is imported on use: the checks stay cheap to import
    from libp2p.crypto.keys import KeyPair

__all__ = [
    "IdentityFileRefused",
    "check_identity_file",
    "load_or_create_identity",
    "new_identity",
    "peer_id_of",
]


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


def _ensure_private_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def load_or_create_identity(path: Path) -> KeyPair:
    """Load the Ed25519 identity at `path`, creating it (mode 0600) on first use.

    An existing file must be private, ours and not empty (`IdentityFileRefused` otherwise).
    """
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.identity_utils import load_identity, save_identity

    try:
        if path.exists():
            check_identity_file(path)  # IdentityFileRefused: unsafe or empty, fix named
            return load_identity(path)
        _ensure_private_dir(path)
        key_pair = create_new_key_pair()
        # Write to a temporary name first so a crash never leaves a truncated key.
        tmp = path.with_name(path.name + ".tmp")
        save_identity(key_pair, tmp)
        os.replace(tmp, path)
        return key_pair
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot load or create identity file {path}: {exc}") from exc


def new_identity(seed: bytes | None = None) -> KeyPair:
    """A fresh Ed25519 key pair; the same 32-byte `seed` always gives the same key."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair(seed)


def peer_id_of(key_pair: KeyPair) -> str:
    from libp2p.peer.id import ID

    return ID.from_pubkey(key_pair.public_key).to_base58()
