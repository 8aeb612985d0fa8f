"""Which statements MySQL commits implicitly (DDL and administrative statements), as the
broker's statement guard lists them (``docs/protocol.md`` section 11).

The broker refuses these inside a transaction, because the database would end the
transaction behind the session's back. MySQL's own drivers let them through and the server
commits whatever was open first; :class:`~txbroker.dbapi.Connection` does the same in the
open: it commits the open transaction, then runs the statement in autocommit mode. This is
a look at the first words, like the guard's, not a parser; whatever it misses the broker
still refuses (``ProgrammingError``), so a miss can never run a statement outside the
transaction its caller believes open.
"""

from __future__ import annotations

import re
from typing import Iterator

__all__ = ["commits_implicitly"]

_IMPLICIT_COMMIT = frozenset(
    {
        "alter", "rename", "truncate", "grant", "revoke", "analyze", "optimize", "repair",
        "check", "flush", "reset", "cache", "load", "install", "uninstall",
    }
)
_WORD = re.compile(r"\w+")


def _words(sql: str) -> Iterator[str]:
    """Lower-cased words of ``sql`` with comments skipped (executable comments
    ``/*! ... */`` read as code, as the server does)."""
    rest = sql
    while True:
        rest = rest.lstrip()
        if not rest:
            return
        if rest.startswith(("/*!", "/*M!")):
            rest = rest[3 if rest.startswith("/*!") else 4:].lstrip("0123456789")
        elif rest.startswith("/*"):
            end = rest.find("*/")
            rest = "" if end < 0 else rest[end + 2:]
        elif rest.startswith(("--", "#")):
            end = rest.find("\n")
            rest = "" if end < 0 else rest[end + 1:]
        else:
            match = _WORD.match(rest)
            if match is None:
                rest = rest[1:]
                continue
            yield match.group(0).lower()
            rest = rest[match.end():]


def commits_implicitly(sql: str) -> bool:
    """Whether MySQL would commit the open transaction before running ``sql``."""
    words = _words(sql)
    first = next(words, "")
    if first in ("create", "drop"):
        return next(words, "") != "temporary"
    return first in _IMPLICIT_COMMIT
