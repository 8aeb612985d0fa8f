"""txbroker for SQLAlchemy 2.x: the ``mysql+txbroker://`` dialect (registered through the
``sqlalchemy.dialects`` entry point; see :mod:`txbroker.sqlalchemy.dialect`) and helpers to
declare keys and to run units of work.

    engine = create_engine("mysql+txbroker://127.0.0.1:7306/shop")
    with Session(engine) as session:
        lock(session, "accounts:1", "accounts:2")   # declared on the coming begin
        ...                                          # ORM work as usual
        session.commit()

Three ways to run a unit of work, from the most general to the fastest:

- plain SQLAlchemy code after :func:`lock`: the transaction is the broker's interactive
  transaction, holding the declared keys; nothing is retried;
- :func:`run_in_transaction`: the same, rerun from the start (after a rollback) when it
  fails with a retryable error (a deadlock, a lock timeout or conflict, a busy or draining
  broker); for ORM work, whose statements need their answers as they run;
- :func:`run_tx`: Core statements recorded and sent as **one** broker ``tx``: one round
  trip, retried by the broker itself on database deadlocks, and eligible for the broker's
  group execution; for units of work that need no answer before their last statement.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from .. import dbapi
from ..client import TxResult

__all__ = ["lock", "broker_connection", "run_in_transaction", "run_tx", "retryable"]

T = TypeVar("T")
Bind = Union[Session, "scoped_session[Any]", Connection]


def broker_connection(bind: Bind) -> dbapi.Connection:
    """The :class:`txbroker.dbapi.Connection` under a Session (its current connection,
    begun if needed) or a Core Connection; TypeError when it is not ``mysql+txbroker``."""
    connection = bind if isinstance(bind, Connection) else bind.connection()
    raw = connection.connection.dbapi_connection
    if not isinstance(raw, dbapi.Connection):
        raise TypeError(f"not a mysql+txbroker connection: {type(raw).__name__}")
    return raw


def lock(bind: Bind, *keys: str, read: Iterable[str] = ()) -> None:
    """Declares keys for the transaction of ``bind`` (a Session, scoped_session or Core
    Connection): see :meth:`txbroker.dbapi.Connection.lock`. Before the transaction's first
    statement the keys go with its ``begin``; after it, a key below one already held is only
    tried (``lock_conflict`` when taken, which aborts the transaction). Errors are raised
    as SQLAlchemy raises a statement's: :class:`sqlalchemy.exc.OperationalError` and so on,
    with the DB-API error in ``orig``."""
    connection = broker_connection(bind)
    try:
        connection.lock(*keys, read=read)
    except dbapi.Error as error:
        # As SQLAlchemy raises errors from statements: wrapped, the DB-API error in `orig`.
        raise exc.DBAPIError.instance(None, None, error, dbapi.Error) from error


def retryable(error: BaseException) -> bool:
    """Whether ``error`` (a DB-API error, or SQLAlchemy's wrapper of one) says that running
    the whole transaction again may succeed."""
    if isinstance(error, exc.DBAPIError):
        error = error.orig if error.orig is not None else error
    return isinstance(error, dbapi.Error) and error.retryable


def _retrying(run: Callable[[], T], attempts: int, backoff: float) -> T:
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except (dbapi.Error, exc.DBAPIError) as error:
            if attempt == attempts or not retryable(error):
                raise
            time.sleep(min(1.0, backoff * 2 ** (attempt - 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


def run_in_transaction(session: Union[Session, "scoped_session[Any]"],
                       fn: Callable[[Session], T], keys: Iterable[str] = (),
                       read_keys: Iterable[str] = (), attempts: int = 5,
                       backoff: float = 0.02, **begin_options: Any) -> T:
    """Runs ``fn(session)`` in a transaction holding ``keys`` (exclusive) and ``read_keys``
    (shared), then commits; when it fails with a retryable error, rolls back and runs it
    again (up to ``attempts`` runs in all, with jittered exponential back-off). Returns what
    ``fn`` returns. The session must have no transaction of its own open: every run starts
    afresh, so ``fn`` must do the whole unit of work (reading included). ``begin_options``
    go to each run's ``begin`` (see :meth:`txbroker.dbapi.Connection.next_transaction`)."""
    keys, read_keys = list(keys), list(read_keys)

    def run() -> T:
        try:
            lock(session, *keys, read=read_keys)
            if begin_options:
                broker_connection(session).next_transaction(**begin_options)
            value = fn(session if isinstance(session, Session) else session())
            session.commit()
            return value
        except BaseException:
            session.rollback()
            raise

    return _retrying(run, attempts, backoff)


@contextmanager
def _core_connection(bind: Union[Engine, Connection]) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            yield connection
    else:
        yield bind


def run_tx(bind: Union[Engine, Connection], fn: Callable[[Connection], Any],
           keys: Iterable[str] = (), read_keys: Iterable[str] = (),
           retries: Optional[int] = None, attempts: int = 3, backoff: float = 0.02,
           **tx_options: Any) -> TxResult:
    """Runs the Core statements that ``fn(connection)`` executes as **one** broker ``tx``
    holding ``keys``/``read_keys``.

    ``fn`` runs once, with statements *recorded* instead of run: SQLAlchemy compiles them as
    usual, but their results inside ``fn`` are empty (do not read them). Then the statements
    go to the broker in one request: it takes the keys, runs them in one transaction, and
    reruns it on a database deadlock up to ``retries`` times (its default when None); the
    request is sent again, up to ``attempts`` in all, on other retryable errors (nothing
    was committed then). Returns the :class:`~txbroker.TxResult`: one
    :class:`~txbroker.Result` (``rows``, ``affected``, ``last_insert_id``) per statement.
    ``tx_options`` go to the broker's ``tx`` as they are.
    """
    with _core_connection(bind) as connection:
        raw = broker_connection(connection)
        with raw.recording() as statements:
            fn(connection)
        connection.rollback()  # SQLAlchemy's own transaction around fn ran nothing
        if not statements:
            return TxResult([], 0)
        keys, read_keys = list(keys), list(read_keys)
        return _retrying(
            lambda: raw.tx(statements, locks=keys, read_locks=read_keys, retries=retries,
                           **tx_options),
            attempts, backoff)
