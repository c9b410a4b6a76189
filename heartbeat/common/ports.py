"""Is a listen address free? A plain bind, closed at once, run by both programs before they
open anything, so a taken port is a setting to fix rather than a traceback from a nursery."""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["BindProblem", "bind_problem", "shown_address"]


@dataclass(frozen=True, slots=True)
class BindProblem:
    """Why an address cannot be listened on: it does not resolve, or binding it failed."""

    resolves: bool
    why: str


def shown_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_problem(host: str, port: int) -> BindProblem | None:
    """None when every resolved address of (host, port) binds now (SO_REUSEADDR, as trio's and
    py-libp2p's listeners set; IPv6 sockets v6-only), else the first problem."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return BindProblem(resolves=False, why=str(exc))
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return BindProblem(resolves=True, why=exc.strerror or str(exc))
    return None
