"""What the agent says about its head source: classify node failures, derive the state.

Pure: no trio, no clock reads. The Lotus shell raises the `HeadSourceError` family
(`heartbeat.agent.head`); `classify` turns one into the beat's `SourceState`, a short
`SourceError` text and the bounded metric label `ErrorKind`. `source_state` folds the
source's facts (last failure, a stalled call, a head, syncing) into one state.

Classification is by type (and, for JSON-RPC errors, by code), never by message text:

* `NodeUnauthorized` (HTTP 401/403) -> unauthorized, with advice naming the setting;
* `NodeTimeout`, `NodeUnreachable` (refused, reset, DNS, TLS, HTTP 5xx without a JSON-RPC
  body, a wrong path) -> unreachable;
* `NodeRpcError` with a protocol code (-32700 parse, -32600 invalid request, -32601 method
  not found, -32602 invalid params: the endpoint is not the API it should be) -> unreachable;
  any other code (the node answered but could not give its head) -> no_head;
* `NodeBadResponse` (an answer that is not the documented shape) -> no_head.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from heartbeat.agent.head import (
    HeadSourceError,
    NodeRpcError,
    NodeTimeout,
    NodeUnauthorized,
    NodeUnreachable,
)
from heartbeat.protocol.beat import MAX_SOURCE_ERROR_LENGTH, SourceState

__all__ = [
    "JSONRPC_PROTOCOL_CODES",
    "ErrorKind",
    "Failure",
    "classify",
    "kind_of",
    "source_state",
    "unauthorized_text",
    "wire_text",
]

#: JSON-RPC 2.0 codes that say the request did not reach a method that could answer it.
JSONRPC_PROTOCOL_CODES = frozenset({-32700, -32600, -32601, -32602})


class ErrorKind(StrEnum):
    """Why one Lotus call failed; values are the bounded metric label `kind`."""

    UNAUTHORIZED = "unauthorized"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    RPC_ERROR = "rpc_error"
    BAD_RESPONSE = "bad_response"


@dataclass(frozen=True, slots=True)
class Failure:
    """One classified failure: what the beat says and what the metrics count."""

    state: SourceState
    kind: ErrorKind
    text: str  # the beat's SourceError: printable, at most MAX_SOURCE_ERROR_LENGTH


def wire_text(text: str, limit: int = MAX_SOURCE_ERROR_LENGTH) -> str:
    """`text` made fit for SourceError: printable characters only, at most `limit` long."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text)
    clean = " ".join(clean.split())
    if len(clean) > limit:
        clean = clean[: limit - 1].rstrip() + "…"
    return clean


def unauthorized_text(setting: str, status: int) -> str:
    return f"unauthorized: check the token and its permission ({setting}, http {status})"


def kind_of(exc: HeadSourceError) -> ErrorKind:
    """The metric label of one failed call."""
    if isinstance(exc, NodeUnauthorized):
        return ErrorKind.UNAUTHORIZED
    if isinstance(exc, NodeTimeout):
        return ErrorKind.TIMEOUT
    if isinstance(exc, NodeUnreachable):
        return ErrorKind.UNREACHABLE
    if isinstance(exc, NodeRpcError):
        return ErrorKind.RPC_ERROR
    return ErrorKind.BAD_RESPONSE


def classify(exc: HeadSourceError, *, setting: str = "FULLNODE_API_INFO") -> Failure:
    """The beat's state and error text for a failure of the head's node.

    `setting` names where the endpoint and its token come from, for the advice.
    """
    kind = kind_of(exc)
    if isinstance(exc, NodeUnauthorized):
        text = unauthorized_text(setting, exc.status)
        return Failure(SourceState.UNAUTHORIZED, kind, wire_text(text))
    if isinstance(exc, NodeUnreachable):
        return Failure(SourceState.UNREACHABLE, kind, wire_text(f"unreachable: {exc}"))
    if isinstance(exc, NodeRpcError) and exc.code in JSONRPC_PROTOCOL_CODES:
        text = f"unreachable: {exc} (is {setting} a Lotus full node API?)"
        return Failure(SourceState.UNREACHABLE, kind, wire_text(text))
    return Failure(SourceState.NO_HEAD, kind, wire_text(f"no head: {exc}"))


def source_state(
    *, failure: Failure | None, stalled: str | None, has_head: bool, syncing: bool | None
) -> tuple[SourceState, str | None]:
    """The source's state and error text from its facts, in order of precedence.

    `failure`: the last call to the node failed (None once one succeeds); `stalled`: the
    error text while a call has waited longer than it should (None otherwise).
    """
    if failure is not None:
        return failure.state, failure.text
    if stalled is not None:
        return SourceState.UNREACHABLE, wire_text(stalled)
    if not has_head:
        return SourceState.NO_HEAD, "no head: the node has not reported one yet"
    if syncing:
        return SourceState.SYNCING, None
    return SourceState.OK, None
