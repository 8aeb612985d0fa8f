"""``txbroker.dbapi``: a PEP 249 (DB-API 2.0) module over the broker's protocol.

    from txbroker import dbapi

    conn = dbapi.connect("127.0.0.1", 7306)
    conn.lock("accounts:1", "accounts:2")       # declared on the coming begin
    cur = conn.cursor()
    cur.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (10, 1))
    cur.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (10, 2))
    conn.commit()

Transactions open lazily, on the first statement after a commit or rollback, through the
broker's interactive transaction (``begin``, then ``exec`` per statement, ``commit``);
with ``autocommit`` on, each statement is an autocommit ``exec``. The paramstyle is
``qmark`` (``?``), the broker's own: statements reach the database as written. Each broker
error becomes the PEP 249 class its user expects (see :mod:`txbroker.dbapi.errors`).
"""

from __future__ import annotations

import datetime
import ssl
import time
from typing import Any, Optional, Union

from ..client import Client
from .connection import Connection
from .cursor import Cursor
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    broker_errors,
)

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks",
    "Binary", "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID",
]

apilevel = "2.0"
#: Threads may share the module, not connections: a connection is one broker session with
#: one transaction.
threadsafety = 1
#: The broker's own placeholders; SQLAlchemy's dialect compiles to them.
paramstyle = "qmark"


def connect(
    host: str = "127.0.0.1",
    port: int = 7306,
    database: Optional[str] = None,
    token: Optional[str] = None,
    tls: Union[None, bool, ssl.SSLContext] = None,
    *,
    tls_ca: Optional[str] = None,
    server_hostname: Optional[str] = None,
    timeout: Optional[float] = None,
    autocommit: bool = False,
    isolation: Optional[str] = None,
    client_name: Optional[str] = None,
) -> Connection:
    """Opens a broker session.

    ``database`` is checked, not chosen: a session uses the database of the broker's
    ``database_url``, and the protocol has no way to pick another. When given, it is
    compared with ``SELECT DATABASE()`` and a :class:`ProgrammingError` is raised when they
    differ. ``tls`` is True (verify against ``tls_ca``, or the system's CAs) or an
    :class:`ssl.SSLContext`. ``isolation`` is the level of every transaction
    (``"read_committed"``...; None: the broker's default).
    """
    context = tls if isinstance(tls, ssl.SSLContext) else (
        ssl.create_default_context(cafile=tls_ca) if tls else None)
    with broker_errors():
        client = Client(host, port, token=token, timeout=timeout, client_name=client_name,
                        ssl_context=context, server_hostname=server_hostname)
    connection = Connection(client, autocommit=autocommit, isolation=isolation)
    if database is not None:
        try:
            _check_database(client, database)
        except BaseException:
            connection.close()
            raise
    return connection


def _check_database(client: Client, expected: str) -> None:
    with broker_errors():
        actual = client.exec("SELECT DATABASE()").scalar()
    if actual != expected:
        raise ProgrammingError(
            f"the broker's sessions use database {actual!r}, not {expected!r}: a txbroker "
            "session always uses the database of the broker's database_url; name that one "
            "(or none) in the connection URL",
            code="wrong_database")


# PEP 249 type constructors and type objects. The protocol carries no column types (the
# description's type_code is None), so the type objects only serve code that names them.

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249's name
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


def Binary(value: Any) -> bytes:  # noqa: N802
    return bytes(value)


class _TypeObject:
    """A PEP 249 type object: equal to each type code in its set."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def __eq__(self, other: object) -> bool:
        return other in self.names

    def __hash__(self) -> int:
        return hash(self.names)


STRING = _TypeObject("CHAR", "VARCHAR", "TEXT", "ENUM", "SET", "JSON")
BINARY = _TypeObject("BINARY", "VARBINARY", "BLOB")
NUMBER = _TypeObject("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE", "DECIMAL")
DATETIME = _TypeObject("DATE", "TIME", "DATETIME", "TIMESTAMP")
ROWID = _TypeObject()
