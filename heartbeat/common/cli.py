"""What both programs' command lines share: documented flags, unknown variables refused,
hidden internal subcommands, values that start with a dash, the `config` listing.

Pure: argparse objects and mappings in, text out; nothing reads the environment itself.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heartbeat.errors import ConfigError

__all__ = [
    "SettingHelp",
    "check_environment",
    "closest",
    "document_flags",
    "hide_subcommands",
    "join_dash_values",
    "render_config",
]


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name` (a typo, a missing S), if any is close."""
    found = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def check_environment(
    env: Mapping[str, str],
    prefix: str,
    known: Iterable[str],
    *,
    ignore_prefixes: Sequence[str] = (),
    program: str,
) -> None:
    """Refuse a variable that starts with `prefix` but names no setting of the program.

    A misspelt variable is otherwise silently ignored and the default runs. Variables under
    `ignore_prefixes` belong to another program (the agent leaves the aggregator's alone).
    Raises `ConfigError` naming the variable and the closest known one.
    """
    known = set(known)
    for name in sorted(env):
        if not name.startswith(prefix) or name in known:
            continue
        if any(name.startswith(other) for other in ignore_prefixes):
            continue
        guess = closest(name, known)
        hint = f"did you mean {guess}?" if guess else f"see `{program} --help` for the variables"
        raise ConfigError(name, f"unknown environment variable for {program}; {hint}")


@dataclass(frozen=True, slots=True)
class SettingHelp:
    """What `--help` says of one setting."""

    meaning: str
    default: str | None = None  # shown as given; None: no default shown
    env: str | None = None
    toml: str | None = None

    def text(self, existing: str | None = None) -> str:
        parts = [self.meaning or existing or ""]
        where = []
        if self.default is not None:
            where.append(f"default: {self.default}")
        if self.env:
            where.append(f"env {self.env}")
        if self.toml:
            where.append(f"TOML {self.toml}")
        if where:
            parts.append(f"[{'; '.join(where)}]")
        # argparse formats help with %-interpolation: keep literal percent signs.
        return " ".join(p for p in parts if p).replace("%", "%%")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction[Any]]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = [parser]
    for sub in _subparsers(parser):
        for child in dict.fromkeys(sub.choices.values()):
            out.extend(_all_parsers(child))
    return out


def document_flags(
    parser: argparse.ArgumentParser, docs: Mapping[str, SettingHelp], *, strict: bool = True
) -> list[str]:
    """Give every flag of `parser` and its subcommands the help `docs` has for its dest.

    Returns the dests of visible flags that `docs` lacks (a test keeps it empty); with
    `strict` they keep whatever help they had.
    """
    missing: list[str] = []
    for p in _all_parsers(parser):
        for action in p._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            doc = docs.get(action.dest)
            if doc is None:
                missing.append(action.dest)
                continue
            action.help = doc.text(action.help if isinstance(action.help, str) else None)
    return sorted(set(missing)) if strict else []


def hide_subcommands(parser: argparse.ArgumentParser, hidden: Iterable[str]) -> None:
    """Keep internal subcommands (started by the program itself) out of usage and help."""
    hidden = set(hidden)
    for sub in _subparsers(parser):
        sub._choices_actions = [a for a in sub._choices_actions if a.dest not in hidden]
        shown = [name for name in sub.choices if name not in hidden]
        sub.metavar = "{" + ",".join(shown) + "}"


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs is None and not isinstance(
        action, argparse._StoreConstAction | argparse._StoreTrueAction | argparse._CountAction
    )


def join_dash_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--beat-period -3s` as `--beat-period=-3s`, so that the setting's own check says what
    is wrong with the value instead of argparse saying "expected one argument"."""
    options: dict[str, argparse.Action] = {}
    for p in _all_parsers(parser):
        for action in p._actions:
            for option in action.option_strings:
                options[option] = action
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        found = options.get(token)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (
            found is not None
            and _takes_value(found)
            and nxt is not None
            and nxt.startswith("-")
            and nxt != "--"
            and nxt.split("=", 1)[0] not in options
        ):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def render_config(rows: Iterable[tuple[str, object, str]]) -> str:
    """`setting = value  # source` lines (TOML-like), for `<program> config`."""
    rows = list(rows)
    width = max((len(name) for name, _, _ in rows), default=0)
    lines = []
    for name, value, source in rows:
        shown = "(none)" if value is None else _shown(value)
        lines.append(f"{name.ljust(width)} = {shown}  # {source}")
    return "\n".join(lines) + "\n"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f'"{value}"'
