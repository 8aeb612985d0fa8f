"""The SQLAlchemy 2.x dialect ``mysql+txbroker://host:7306/dbname?token=...``: SQLAlchemy's
MySQL dialect (its SQL compiler, DDL, types and reflection) driving :mod:`txbroker.dbapi`.

What differs from a MySQL driver, and why:

- statements are compiled with ``?`` placeholders (paramstyle ``qmark``, the broker's own);
- isolation levels travel in the broker's ``begin`` (the broker refuses ``SET ... TRANSACTION``
  as SQL, since it keeps the transaction state itself), and ``AUTOCOMMIT`` is the DB-API
  connection's autocommit mode;
- the broker reports rows *changed* by an UPDATE, not rows matched (its database connections
  do not ask for ``CLIENT_FOUND_ROWS``), so ``supports_sane_rowcount`` is off: the ORM does
  not take an UPDATE that changed nothing for a stale row;
- pool pre-ping is the broker's ``ping`` (the broker replaces a dead database connection on
  its own; what can go stale on the client's side is the broker session);
- the URL's database must be the broker's own (checked at connect);
- two-phase commit (XA) is refused by the broker, so it is not offered.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from sqlalchemy import exc, util
from sqlalchemy.dialects.mysql.base import MySQLDialect
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, IsolationLevel
from sqlalchemy.engine.url import URL

from .. import dbapi
from .types import colspecs

__all__ = ["TxbrokerDialect", "TxbrokerMariaDBDialect"]

DEFAULT_PORT = 7306

#: Error codes after which the broker session is gone (the client closed itself).
_SESSION_GONE = frozenset({"connection", "timeout", "busy", "frame_too_large", "unauthenticated"})

_ISOLATION_LEVELS: Tuple[IsolationLevel, ...] = (
    "SERIALIZABLE", "READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "AUTOCOMMIT")


def _broker_connection(dbapi_connection: Any) -> dbapi.Connection:
    return cast(dbapi.Connection, dbapi_connection)


class TxbrokerDialect(MySQLDialect):
    """``mysql+txbroker``: see the module's documentation."""

    driver = "txbroker"
    supports_statement_cache = True
    default_paramstyle = "qmark"
    supports_sane_rowcount = False
    supports_sane_multi_rowcount = False
    supports_native_decimal = True
    supports_server_side_cursors = False
    colspecs = colspecs

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paramstyle = "qmark"

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        return dbapi

    def create_connect_args(self, url: URL) -> Tuple[List[Any], Dict[str, Any]]:
        if url.password:
            raise exc.ArgumentError(
                "mysql+txbroker takes no database password: the broker connects with the "
                "credentials of its own database_url; authenticate to it with ?token=...")
        opts: Dict[str, Any] = {
            "host": url.host or "127.0.0.1",
            "port": url.port or DEFAULT_PORT,
            "database": url.database or None,
        }
        if url.username:
            opts["client_name"] = url.username
        opts.update(url.query)
        util.coerce_kw_type(opts, "tls", bool)
        util.coerce_kw_type(opts, "timeout", float)
        return [], opts

    def _detect_charset(self, connection: Any) -> str:
        return "utf8mb4"  # the protocol's strings are UTF-8

    def _extract_error_code(self, exception: Any) -> Optional[int]:
        return getattr(exception, "mysql_code", None)

    def is_disconnect(self, e: Any, connection: Any, cursor: Optional[DBAPICursor]) -> bool:
        if isinstance(e, dbapi.Error) and e.code in _SESSION_GONE:
            return True
        return isinstance(connection, dbapi.Connection) and connection.closed

    def do_ping(self, dbapi_connection: DBAPIConnection) -> bool:
        _broker_connection(dbapi_connection).ping()
        return True

    def get_isolation_level_values(self, dbapi_conn: DBAPIConnection) -> Sequence[IsolationLevel]:
        return _ISOLATION_LEVELS

    def detect_autocommit_setting(self, dbapi_conn: DBAPIConnection) -> bool:
        return _broker_connection(dbapi_conn).autocommit

    def set_isolation_level(self, dbapi_connection: DBAPIConnection,
                            level: IsolationLevel) -> None:
        connection = _broker_connection(dbapi_connection)
        if level == "AUTOCOMMIT":
            connection.autocommit = True
            return
        connection.autocommit = False
        connection.isolation = level.lower().replace(" ", "_")

    def get_isolation_level(self, dbapi_connection: DBAPIConnection) -> IsolationLevel:
        connection = _broker_connection(dbapi_connection)
        if connection.isolation is not None:
            return cast(IsolationLevel, connection.isolation.upper().replace("_", " "))
        return super().get_isolation_level(dbapi_connection)

    def _not_offered(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the broker refuses XA: two-phase commit is not offered")

    do_begin_twophase = do_prepare_twophase = _not_offered
    do_rollback_twophase = do_commit_twophase = do_recover_twophase = _not_offered


class TxbrokerMariaDBDialect(MariaDBDialect, TxbrokerDialect):
    """``mariadb+txbroker``: the same, with SQLAlchemy's MariaDB flavour of the dialect."""

    supports_statement_cache = True


dialect = TxbrokerDialect
mariadb_dialect = TxbrokerMariaDBDialect
