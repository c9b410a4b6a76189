"""Recompile one method of a library class from its own, edited, source.

The code object keeps the library file's name and the method's real line numbers, so a
traceback through recompiled code points at the library's file and lines. An edit that
changes the number of lines keeps the lines above it exact; below it they shift by the
difference (the edits here replace a block by one of the same length).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from heartbeat.net.errors import CompatError

__all__ = ["recompiled_method"]


def recompiled_method(cls: Any, name: str, patch: Callable[[str], str | None]) -> Any:
    """`cls.name` recompiled in its module's globals from its source after `patch`.

    Raises `CompatError` (naming the method) when the source cannot be read or `patch`
    refuses it (returns None).
    """
    method = cls.__dict__.get(name)
    what = f"{cls.__module__}.{cls.__qualname__}.{name}"
    try:
        lines, first_line = inspect.getsourcelines(method)
        filename = inspect.getsourcefile(method)
    except (OSError, TypeError) as exc:
        raise CompatError(what, f"source not readable: {exc}") from exc
    patched = patch(textwrap.dedent("".join(lines)))
    if patched is None or method.__code__.co_freevars or filename is None:
        raise CompatError(what, "source is not the one this fix was written for")
    tree = ast.parse(patched, filename)
    ast.increment_lineno(tree, first_line - 1)
    code = compile(tree, filename, "exec")
    namespace = sys.modules[cls.__module__].__dict__
    local: dict[str, Any] = {}
    exec(code, namespace, local)
    new = local[name]
    new.__qualname__ = method.__qualname__
    return new
