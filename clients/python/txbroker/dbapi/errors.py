"""The PEP 249 exception hierarchy of :mod:`txbroker.dbapi`, and the one place where a broker
error (a :class:`~txbroker.TxbrokerError`) becomes the DB-API class its user expects.

The class follows the broker's ``code`` and, for database errors (``sql``), the MySQL error
number, the way MySQL's own drivers classify them: a duplicate key or a foreign key
violation is an :class:`IntegrityError`, a syntax error or a missing table a
:class:`ProgrammingError`, a deadlock or a lock timeout an :class:`OperationalError`. Every
exception keeps the broker's fields (``code``, ``retryable``, ``mysql_code``, ``sqlstate``,
``statement``) and the original error as ``__cause__``; ``args`` are ``(mysql_code or code,
message)`` as with PyMySQL, so code that reads ``args[0]`` finds the MySQL number.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, FrozenSet, Iterator, Optional, Type, Union

from ..errors import TxbrokerError

__all__ = [
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "from_broker_error",
    "broker_errors",
]


class Warning(Exception):  # noqa: A001, N818 - the name PEP 249 gives it
    """PEP 249's ``Warning``; the broker reports no warnings, so nothing raises it."""


class Error(Exception):
    """Base of every DB-API error.

    Attributes:
        code: the broker's error code (``"sql"``, ``"deadlock"``, ``"lock_timeout"``...), or
            ``"connection"``/``"timeout"``/``"interface"`` for problems found by the client.
        message: the human-readable message.
        retryable: whether running the whole transaction again may succeed.
        mysql_code: the MySQL error number, when the database reported one.
        sqlstate: the SQLSTATE, when the database reported one.
        statement: index of the failing statement of a ``tx``, when known.
    """

    def __init__(
        self,
        message: str = "",
        code: str = "interface",
        retryable: bool = False,
        mysql_code: Optional[int] = None,
        sqlstate: Optional[str] = None,
        statement: Optional[int] = None,
    ) -> None:
        first: Union[int, str] = mysql_code if mysql_code is not None else code
        super().__init__(first, message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.mysql_code = mysql_code
        self.sqlstate = sqlstate
        self.statement = statement

    def __str__(self) -> str:
        if self.mysql_code is not None:
            return f"({self.mysql_code}, {self.message!r}) [{self.code}]"
        return f"{self.code}: {self.message}"


class InterfaceError(Error):
    """A misuse of the interface itself: a closed connection or cursor, a fetch before any
    result."""


class DatabaseError(Error):
    """An error the broker or the database answered."""


class DataError(DatabaseError):
    """A value the database could not store: out of range, too long, a bad date..."""


class OperationalError(DatabaseError):
    """A transaction that could not be processed: a deadlock, a lock timeout, a lost
    connection, a busy or draining broker, an aborted transaction. Most are retryable
    (see ``retryable``): roll back and run the whole transaction again."""


class IntegrityError(DatabaseError):
    """A constraint said no: duplicate key, foreign key, NOT NULL, CHECK."""


class InternalError(DatabaseError):
    """The broker (``internal``) or the database reported an internal error."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: syntax, a missing table or column, a request the broker
    refuses (``bad_request``: transaction control as SQL, a wrong parameter count...), or a
    transaction op at the wrong time (``tx_active``, ``no_transaction``)."""


class NotSupportedError(DatabaseError):
    """The database does not support what was asked."""


# MySQL error numbers by the class MySQL's drivers raise for them; any other number of 1000
# or more is an OperationalError, below 1000 an InternalError.
_INTEGRITY: FrozenSet[int] = frozenset(
    {
        1022,  # ER_DUP_KEY
        1048,  # ER_BAD_NULL_ERROR
        1062,  # ER_DUP_ENTRY
        1169,  # ER_DUP_UNIQUE
        1215,  # ER_CANNOT_ADD_FOREIGN
        1216,  # ER_NO_REFERENCED_ROW
        1217,  # ER_ROW_IS_REFERENCED
        1451,  # ER_ROW_IS_REFERENCED_2
        1452,  # ER_NO_REFERENCED_ROW_2
        1557,  # ER_FOREIGN_DUPLICATE_KEY
        1586,  # ER_DUP_ENTRY_WITH_KEY_NAME
        1761,  # ER_FOREIGN_DUPLICATE_KEY_WITH_CHILD_INFO
        1762,  # ER_FOREIGN_DUPLICATE_KEY_WITHOUT_CHILD_INFO
        3819,  # ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
        4025,  # ER_CONSTRAINT_FAILED (MariaDB CHECK)
    }
)
_PROGRAMMING: FrozenSet[int] = frozenset(
    {
        1007,  # ER_DB_CREATE_EXISTS
        1049,  # ER_BAD_DB_ERROR
        1050,  # ER_TABLE_EXISTS_ERROR
        1051,  # ER_BAD_TABLE_ERROR
        1054,  # ER_BAD_FIELD_ERROR
        1060,  # ER_DUP_FIELDNAME
        1061,  # ER_DUP_KEYNAME
        1064,  # ER_PARSE_ERROR
        1065,  # ER_EMPTY_QUERY
        1091,  # ER_CANT_DROP_FIELD_OR_KEY
        1102,  # ER_WRONG_DB_NAME
        1103,  # ER_WRONG_TABLE_NAME
        1110,  # ER_FIELD_SPECIFIED_TWICE
        1111,  # ER_INVALID_GROUP_FUNC_USE
        1112,  # ER_UNSUPPORTED_EXTENSION
        1113,  # ER_TABLE_MUST_HAVE_COLUMNS
        1146,  # ER_NO_SUCH_TABLE
        1149,  # ER_SYNTAX_ERROR
        1166,  # ER_WRONG_COLUMN_NAME
        1179,  # ER_CANT_DO_THIS_DURING_AN_TRANSACTION
        1210,  # ER_WRONG_ARGUMENTS
        1305,  # ER_SP_DOES_NOT_EXIST
    }
)
_DATA: FrozenSet[int] = frozenset(
    {
        1230,  # ER_NO_DEFAULT
        1171,  # ER_PRIMARY_CANT_HAVE_NULL
        1263,  # ER_WARN_NULL_TO_NOTNULL
        1264,  # ER_WARN_DATA_OUT_OF_RANGE
        1265,  # WARN_DATA_TRUNCATED
        1292,  # ER_TRUNCATED_WRONG_VALUE
        1364,  # ER_NO_DEFAULT_FOR_FIELD
        1365,  # ER_DIVISION_BY_ZERO
        1366,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
        1367,  # ER_ILLEGAL_VALUE_FOR_TYPE
        1406,  # ER_DATA_TOO_LONG
        1441,  # ER_DATETIME_FUNCTION_OVERFLOW
    }
)
_NOT_SUPPORTED: FrozenSet[int] = frozenset(
    {
        1196,  # ER_WARNING_NOT_COMPLETE_ROLLBACK
        1235,  # ER_NOT_SUPPORTED_YET
        1286,  # ER_UNKNOWN_STORAGE_ENGINE
        1289,  # ER_FEATURE_DISABLED
    }
)

# Broker codes other than `sql`, by class.
_BY_CODE: Dict[str, Type[Error]] = {
    "bad_request": ProgrammingError,
    "tx_active": ProgrammingError,
    "no_transaction": ProgrammingError,
    "internal": InternalError,
    # A lost or refused connection, a deadlock, a lock wait, a draining broker, an aborted
    # transaction or an unknown commit: the transaction could not be processed.
    "frame_too_large": OperationalError,
    "unauthenticated": OperationalError,
    "busy": OperationalError,
    "shutting_down": OperationalError,
    "deadlock": OperationalError,
    "db_lock_timeout": OperationalError,
    "lock_timeout": OperationalError,
    "lock_conflict": OperationalError,
    "tx_aborted": OperationalError,
    "db_unavailable": OperationalError,
    "commit_unknown": OperationalError,
    "connection": OperationalError,
    "timeout": OperationalError,
}


def _class_for_mysql_code(mysql_code: Optional[int]) -> Type[Error]:
    if mysql_code is None:
        return DatabaseError
    for codes, cls in (
        (_INTEGRITY, IntegrityError),
        (_PROGRAMMING, ProgrammingError),
        (_DATA, DataError),
        (_NOT_SUPPORTED, NotSupportedError),
    ):
        if mysql_code in codes:
            return cls
    return OperationalError if mysql_code >= 1000 else InternalError


def error_class(code: str, mysql_code: Optional[int]) -> Type[Error]:
    """The DB-API class for a broker error ``code`` (and its MySQL number, for ``sql``)."""
    if code == "sql":
        return _class_for_mysql_code(mysql_code)
    return _BY_CODE.get(code, DatabaseError)


def from_broker_error(error: TxbrokerError) -> Error:
    """The DB-API exception for a broker error, with its fields kept; raise it ``from`` the
    original."""
    cls = error_class(error.code, error.mysql_code)
    return cls(
        error.message,
        code=error.code,
        retryable=error.retryable,
        mysql_code=error.mysql_code,
        sqlstate=error.sqlstate,
        statement=error.statement,
    )


@contextmanager
def broker_errors() -> Iterator[None]:
    """Raises the DB-API form of any broker error raised in the block."""
    try:
        yield
    except TxbrokerError as error:
        raise from_broker_error(error) from error
