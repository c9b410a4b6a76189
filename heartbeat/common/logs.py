"""Logging set-up for both programs' `__main__`: text (default) or JSON lines.

Library modules only call `logging.getLogger(__name__)`; handlers are installed
here, once, by the entry points.

Two policies live here because both programs need them:

* JSON lines carry the key=value fields of a message as typed values: `beats=5` is the
  number 5, `remote_closed=True` the boolean true, `err=None` null (`typed_value`).
* HTTP client request lines (httpx logs every request at INFO: one per Lotus RPC,
  ~57k a day per agent; one per alert POST) are DEBUG lines (`DemoteFilter` on the
  `HTTP_CLIENT_LOGGERS`): the project reports the failures that matter itself.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = [
    "HTTP_CLIENT_LOGGERS",
    "LOG_FORMATS",
    "DemoteFilter",
    "JsonFormatter",
    "message_fields",
    "setup_logging",
    "typed_value",
]

LOG_FORMATS = ("text", "json")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: The HTTP client libraries' loggers; their INFO request lines become DEBUG.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")

# key=value; a value is a quoted repr ('a b', "a b") or a run of non-blanks.
_FIELD = re.compile(r"""(?:^|\s)([A-Za-z_]\w*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_INT = re.compile(r"-?(?:0|[1-9]\d*)")
_FLOAT = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+(?:[eE][-+]?\d+)?|[eE][-+]?\d+)")
_CONSTANTS: dict[str, bool | None] = {
    "True": True,
    "true": True,
    "False": False,
    "false": False,
    "None": None,
    "null": None,
}


def typed_value(text: str) -> Any:
    """A key=value field's value as JSON would type it: int, float, bool, null or string.

    Only exact spellings convert (`5`, `-3`, `0.25`, `1e-3`, `True`/`true`, `None`/`null`):
    `007`, `3s`, `1.` and `nan` stay strings, so nothing is lost. A quoted value (`%r` of
    a string) is the string inside its quotes.
    """
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def message_fields(message: str) -> Iterator[tuple[str, Any]]:
    """The key=value fields of a log message, values typed (`typed_value`)."""
    for match in _FIELD.finditer(message):
        yield match.group(1), typed_value(match.group(2))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, message and key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": event,
            "msg": message,
        }
        for key, value in message_fields(rest):
            if key not in obj:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


class DemoteFilter(logging.Filter):
    """Turns a logger's records from `lowest` to `highest` (levels) into DEBUG records.

    A demoted record is kept only if the root logger logs DEBUG (`--log-level debug`):
    the logger's own level let it through as what it was, not as DEBUG. `demoted` counts
    the records turned.
    """

    def __init__(self, lowest: int = logging.INFO, highest: int = logging.CRITICAL) -> None:
        super().__init__()
        self.lowest = max(lowest, logging.DEBUG + 1)
        self.highest = highest
        self.demoted = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.lowest <= record.levelno <= self.highest:
            return True
        self.demoted += 1
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)

    def attach(self, names: Iterable[str]) -> None:
        """Put this filter first on each named logger (before others that count levels)."""
        for name in names:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.filters.insert(0, self)

    def detach(self, names: Iterable[str]) -> None:
        for name in names:
            logging.getLogger(name).removeFilter(self)


_HTTP_DEMOTE = DemoteFilter(logging.INFO, logging.INFO)  # their warnings stay


def setup_logging(
    fmt: str = "text", level: int | str = logging.INFO, stream: IO[str] | None = None
) -> None:
    """Install one stderr handler on the root logger (replacing earlier ones); HTTP client
    request lines are DEBUG."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(_TEXT_FORMAT)
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _HTTP_DEMOTE.attach(HTTP_CLIENT_LOGGERS)
