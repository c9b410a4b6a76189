"""Noise sessions without their per-connection AEAD objects and static key copy.

Upstream bug: noiseprotocol 0.3.1's `CipherState` (noise/state.py, used by py-libp2p
0.8.1's Noise transport) keeps one ChaCha20-Poly1305 object (OpenSSL contexts, 2.2 KB,
unseen by tracemalloc) per direction for the connection's life although every
`encrypt`/`decrypt` is passed the key, and `NoiseProtocol` keeps the handshake's static
key pair (~0.7 KB) after the handshake. Retired by: noiseprotocol building the AEAD per
message (or dropping the keypairs in `handshake_done`).

Seam: py-libp2p's Noise transport (a security option) builds its `NoiseProtocol` from
noise's cipher table by name, without a factory, so the table's "ChaChaPoly" entry and
`NoiseProtocol.handshake_done` are replaced (+1 µs per message); both restored by
`uninstall()`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install", "installed", "uninstall"]

NAME = "noise_memory"
#: (owner, attribute, original) for each replacement while installed.
_originals: list[tuple[Any, str, Any]] = []


def installed() -> bool:
    return bool(_originals)


def install() -> None:
    if _originals:
        return
    from noise.backends.default import ciphers, noise_backend
    from noise.noise_protocol import NoiseProtocol

    table = noise_backend.ciphers
    handshake_done = NoiseProtocol.__dict__["handshake_done"]

    def handshake_done_keys_dropped(self: Any) -> None:
        handshake_done(self)
        # Read only when a handshake starts; the static key pair (an X25519 key with its
        # OpenSSL copy, ~0.7 KB) is one copy per connection of the host's Noise key.
        self.keypairs = dict.fromkeys(self.keypairs)

    _originals.extend(
        [
            (table, "ChaChaPoly", table["ChaChaPoly"]),
            (NoiseProtocol, "handshake_done", handshake_done),
        ]
    )
    table["ChaChaPoly"] = _per_message_cipher_class(ciphers.ChaCha20Cipher)
    NoiseProtocol.handshake_done = handshake_done_keys_dropped


def uninstall() -> None:
    for owner, name, original in reversed(_originals):
        if isinstance(owner, dict):
            owner[name] = original
        else:
            setattr(owner, name, original)
    _originals.clear()


def _per_message_cipher_class(base: type) -> type:
    """noise's ChaCha20Cipher, building the AEAD for each message from the key.

    noise's `CipherState` passes its key to every `encrypt`/`decrypt` (and `rekey`), so
    the object `initialize` builds (its OpenSSL encryption and decryption contexts, 2.2 KB
    per direction and connection) is not needed between messages. Same primitive, same
    nonces, same `InvalidTag` on a bad message.
    """
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    class PerMessageChaCha20Cipher(base):  # type: ignore[misc]
        def initialize(self, key: bytes) -> None:
            self.cipher = None

        def encrypt(self, k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
            return bytes(ChaCha20Poly1305(k).encrypt(self.format_nonce(n), plaintext, ad))

        def decrypt(self, k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
            return bytes(ChaCha20Poly1305(k).decrypt(self.format_nonce(n), ciphertext, ad))

    return PerMessageChaCha20Cipher
