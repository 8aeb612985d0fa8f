"""Exceptions raised by the txbroker client.

Every error the broker answers becomes a :class:`TxbrokerError` (or a subclass chosen by its
``code``), carrying the fields of the protocol's ``error`` map. Problems with the connection
itself (refused, reset, closed, timed out, a malformed frame) raise
:class:`TxbrokerConnectionError`, which is both a :class:`TxbrokerError` and a built-in
:class:`ConnectionError`.
"""

from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "TxbrokerError",
    "BadRequestError",
    "FrameTooLargeError",
    "AuthenticationError",
    "BusyError",
    "ShuttingDownError",
    "SqlError",
    "DeadlockError",
    "DbLockTimeoutError",
    "LockTimeoutError",
    "LockConflictError",
    "TxActiveError",
    "NoTransactionError",
    "TxAbortedError",
    "DbUnavailableError",
    "CommitUnknownError",
    "InternalError",
    "TxbrokerConnectionError",
    "TxbrokerTimeoutError",
    "error_from_map",
]


class TxbrokerError(Exception):
    """An error answered by the broker (or detected by the client).

    Attributes:
        code: the protocol's error code, e.g. ``"sql"``, ``"deadlock"``, ``"lock_timeout"``.
        message: the human-readable message.
        retryable: whether running the whole transaction again may succeed.
        mysql_code: the MySQL error number, when the database reported one.
        sqlstate: the SQLSTATE, when the database reported one.
        statement: index of the failing statement of a ``tx``, when known.
        request_id: the id of the request the error answers (None when the broker could
            not read it).
    """

    #: Default code of the class; instances always carry their own ``code``.
    default_code = "error"
    default_retryable = False

    def __init__(
        self,
        message: str = "",
        code: Optional[str] = None,
        retryable: Optional[bool] = None,
        mysql_code: Optional[int] = None,
        sqlstate: Optional[str] = None,
        statement: Optional[int] = None,
        request_id: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.code: str = code if code is not None else self.default_code
        self.message: str = message
        self.retryable: bool = bool(self.default_retryable if retryable is None else retryable)
        self.mysql_code = mysql_code
        self.sqlstate = sqlstate
        self.statement = statement
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [f"{self.code}: {self.message}"]
        if self.mysql_code is not None:
            parts.append(f"mysql_code={self.mysql_code}")
        if self.sqlstate is not None:
            parts.append(f"sqlstate={self.sqlstate}")
        if self.statement is not None:
            parts.append(f"statement={self.statement}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable!r}, mysql_code={self.mysql_code!r}, "
            f"sqlstate={self.sqlstate!r}, statement={self.statement!r})"
        )

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:  # picklable (multiprocessing)
        return (
            _rebuild_error,
            (
                type(self),
                self.message,
                self.code,
                self.retryable,
                self.mysql_code,
                self.sqlstate,
                self.statement,
                self.request_id,
            ),
        )


def _rebuild_error(
    cls: Type[TxbrokerError],
    message: str,
    code: str,
    retryable: bool,
    mysql_code: Optional[int],
    sqlstate: Optional[str],
    statement: Optional[int],
    request_id: Optional[int],
) -> TxbrokerError:
    return cls(
        message,
        code=code,
        retryable=retryable,
        mysql_code=mysql_code,
        sqlstate=sqlstate,
        statement=statement,
        request_id=request_id,
    )


class BadRequestError(TxbrokerError):
    """``bad_request``: the request was malformed (wrong field type, bad key, unknown op...)."""

    default_code = "bad_request"


class FrameTooLargeError(TxbrokerError):
    """``frame_too_large``: the request frame was over the broker's limit; the broker closed
    the connection."""

    default_code = "frame_too_large"


class AuthenticationError(TxbrokerError):
    """``unauthenticated``: a missing or wrong token; the broker closed the connection."""

    default_code = "unauthenticated"


class BusyError(TxbrokerError):
    """``busy``: the broker's session limit is reached; try again later."""

    default_code = "busy"
    default_retryable = True


class ShuttingDownError(TxbrokerError):
    """``shutting_down``: the broker is draining and will not start a transaction."""

    default_code = "shutting_down"
    default_retryable = True


class SqlError(TxbrokerError):
    """``sql``: the database rejected a statement (see ``mysql_code``, ``sqlstate``,
    ``statement``)."""

    default_code = "sql"


class DeadlockError(TxbrokerError):
    """``deadlock``: the database reported a deadlock (1213)."""

    default_code = "deadlock"
    default_retryable = True


class DbLockTimeoutError(TxbrokerError):
    """``db_lock_timeout``: the database reported a lock wait timeout (1205)."""

    default_code = "db_lock_timeout"
    default_retryable = True


class LockTimeoutError(TxbrokerError):
    """``lock_timeout``: a declared key was not granted within ``lock_wait_timeout_ms``."""

    default_code = "lock_timeout"
    default_retryable = True


class LockConflictError(TxbrokerError):
    """``lock_conflict``: an out-of-order ``lock`` could not be granted at once; the
    transaction is aborted."""

    default_code = "lock_conflict"
    default_retryable = True


class TxActiveError(TxbrokerError):
    """``tx_active``: ``begin`` or ``tx`` while a transaction is open."""

    default_code = "tx_active"


class NoTransactionError(TxbrokerError):
    """``no_transaction``: ``commit`` or ``lock`` with no transaction open (also raised by the
    client when a finished :class:`~txbroker.Transaction` is used again)."""

    default_code = "no_transaction"


class TxAbortedError(TxbrokerError):
    """``tx_aborted``: the open transaction was aborted by the broker or the database; only
    ``rollback`` clears the state."""

    default_code = "tx_aborted"


class DbUnavailableError(TxbrokerError):
    """``db_unavailable``: the database cannot be reached; nothing was committed."""

    default_code = "db_unavailable"
    default_retryable = True


class CommitUnknownError(TxbrokerError):
    """``commit_unknown``: the database connection was lost during COMMIT; the outcome is
    unknown."""

    default_code = "commit_unknown"


class IdempotencyMismatchError(TxbrokerError):
    """``idempotency_mismatch``: the idempotency key was used by a different request (other
    statements, keys, isolation or access mode); nothing ran."""

    default_code = "idempotency_mismatch"


class InternalError(TxbrokerError):
    """``internal``: a bug in the broker."""

    default_code = "internal"


class TxbrokerConnectionError(TxbrokerError, ConnectionError):
    """The connection to the broker failed, was closed, or went out of sync.

    Its ``code`` is ``"connection"`` (not a protocol code). It is not retryable: when the
    connection was lost during a request, the client cannot know whether the request ran.
    The :class:`~txbroker.Client` is closed afterwards.
    """

    default_code = "connection"


class TxbrokerTimeoutError(TxbrokerConnectionError, TimeoutError):
    """No answer within the client's ``timeout``; the client is closed, since a late answer
    would put the connection out of sync. Its ``code`` is ``"timeout"``."""

    default_code = "timeout"


_BY_CODE: Dict[str, Type[TxbrokerError]] = {
    cls.default_code: cls
    for cls in (
        BadRequestError,
        FrameTooLargeError,
        AuthenticationError,
        BusyError,
        ShuttingDownError,
        SqlError,
        DeadlockError,
        DbLockTimeoutError,
        LockTimeoutError,
        LockConflictError,
        TxActiveError,
        NoTransactionError,
        TxAbortedError,
        DbUnavailableError,
        CommitUnknownError,
        IdempotencyMismatchError,
        InternalError,
    )
}


def error_from_map(error: Any, request_id: Optional[int] = None) -> TxbrokerError:
    """Builds the exception for a response's ``error`` map."""
    if not isinstance(error, dict):
        return TxbrokerError(f"malformed error in response: {error!r}", code="internal",
                             request_id=request_id)
    code = error.get("code")
    code = code if isinstance(code, str) else "internal"
    message = error.get("message")
    message = message if isinstance(message, str) else ""
    cls = _BY_CODE.get(code, TxbrokerError)
    retryable = error.get("retryable")
    return cls(
        message,
        code=code,
        retryable=bool(retryable) if retryable is not None else None,
        mysql_code=error.get("mysql_code"),
        sqlstate=error.get("sqlstate"),
        statement=error.get("statement"),
        request_id=request_id,
    )
