"""The network layer: the only importer of libp2p (host, identity, handshake gate and the
py-libp2p compat fixes)."""
