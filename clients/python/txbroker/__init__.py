"""Python client for txbroker, a transaction broker for MySQL/MariaDB.

    from txbroker import Client

    with Client("127.0.0.1", 7306) as client:
        client.tx(
            [("UPDATE accounts SET balance = balance - ? WHERE id = ?", [10, 1]),
             ("UPDATE accounts SET balance = balance + ? WHERE id = ?", [10, 2])],
            locks=["accounts:1", "accounts:2"],
        )
"""

from .client import (
    ISOLATION_LEVELS,
    Client,
    Result,
    Transaction,
    TxResult,
    __version__,
    new_idempotency_key,
    retry,
    retry_idempotent,
)
from .errors import (
    AuthenticationError,
    BadRequestError,
    BusyError,
    CommitUnknownError,
    DbLockTimeoutError,
    DbUnavailableError,
    DeadlockError,
    FrameTooLargeError,
    IdempotencyMismatchError,
    InternalError,
    LockConflictError,
    LockTimeoutError,
    NoTransactionError,
    ShuttingDownError,
    SqlError,
    TxAbortedError,
    TxActiveError,
    TxbrokerConnectionError,
    TxbrokerError,
    TxbrokerTimeoutError,
)
from .failover import FailoverClient

__all__ = [
    "__version__",
    "Client",
    "FailoverClient",
    "Transaction",
    "Result",
    "TxResult",
    "retry",
    "retry_idempotent",
    "new_idempotency_key",
    "ISOLATION_LEVELS",
    "TxbrokerError",
    "TxbrokerConnectionError",
    "TxbrokerTimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BusyError",
    "CommitUnknownError",
    "DbLockTimeoutError",
    "DbUnavailableError",
    "DeadlockError",
    "FrameTooLargeError",
    "IdempotencyMismatchError",
    "InternalError",
    "LockConflictError",
    "LockTimeoutError",
    "NoTransactionError",
    "ShuttingDownError",
    "SqlError",
    "TxAbortedError",
    "TxActiveError",
]
