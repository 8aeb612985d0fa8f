"""The PEP 249 connection of :mod:`txbroker.dbapi`: one broker session (a
:class:`~txbroker.Client`), and the transaction that DB-API code believes open on it.

DB-API transactions are implicit: the first statement after a commit or rollback opens one.
Here that first statement sends the broker's ``begin`` (with the keys declared by
:meth:`Connection.lock` beforehand), then its ``exec``; ``commit`` and ``rollback`` send the
broker's ops, and do nothing when no statement ran. In autocommit mode each statement is
an ``exec`` on its own, or a one-statement ``tx`` when keys were declared for it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from ..client import Client, Result, Transaction, TxResult
from .cursor import Cursor
from .errors import InterfaceError, OperationalError, broker_errors
from .implicit_commit import commits_implicitly

__all__ = ["Connection"]


class _DeclaredKeys:
    """Keys declared for the coming transaction, sent with its ``begin``."""

    def __init__(self) -> None:
        self.locks: List[str] = []
        self.read_locks: List[str] = []

    def add(self, locks: Iterable[str], read_locks: Iterable[str]) -> None:
        self.locks.extend(locks)
        self.read_locks.extend(read_locks)

    def clear(self) -> None:
        self.locks, self.read_locks = [], []

    def __bool__(self) -> bool:
        return bool(self.locks or self.read_locks)


class Connection:
    """A DB-API connection to txbroker; made by :func:`txbroker.dbapi.connect`.

    Attributes:
        isolation: the isolation level of the coming transactions (``"read_committed"``...,
            None for the broker's ``default_isolation``); takes effect at the next begin.
        read_only: start the coming transactions ``READ ONLY``.
        client: the underlying :class:`~txbroker.Client` (one broker session).
    """

    def __init__(self, client: Client, autocommit: bool = False,
                 isolation: Optional[str] = None) -> None:
        self.client: Optional[Client] = client
        self.isolation = isolation
        self.read_only = False
        self._autocommit = autocommit
        self._transaction: Optional[Transaction] = None
        self._declared = _DeclaredKeys()
        self._begin_options: Dict[str, Any] = {}
        self._recording: Optional[List[Dict[str, Any]]] = None

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self.client is None or self.client.closed

    @property
    def in_transaction(self) -> bool:
        """True while a broker transaction is open (a statement ran since the last commit
        or rollback)."""
        return self._transaction is not None and self._transaction.active

    @property
    def autocommit(self) -> bool:
        """Whether each statement runs alone (an autocommit ``exec``). Switching it on
        commits the open transaction first, as MySQL's ``SET autocommit = 1`` does."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and not self._autocommit:
            self.commit()
        self._autocommit = bool(value)

    def _open_client(self) -> Client:
        if self.client is None or self.client.closed:
            raise InterfaceError("the connection is closed", code="connection")
        return self.client

    # ------------------------------------------------------------------ PEP 249

    def cursor(self) -> Cursor:
        self._open_client()
        return Cursor(self)

    def commit(self) -> None:
        """Commits the open transaction, if a statement opened one. When the commit fails
        the transaction is rolled back, and the error raised."""
        transaction, self._transaction = self._transaction, None
        self._declared.clear()
        if transaction is not None and self.closed:
            raise OperationalError(
                "the connection to the broker was lost: the transaction was rolled back",
                code="connection")
        if transaction is None or not transaction.active:
            return
        with broker_errors():
            transaction.commit()

    def rollback(self) -> None:
        """Rolls back the open transaction (clearing the broker's aborted state), and forgets
        the keys declared for it."""
        transaction, self._transaction = self._transaction, None
        self._declared.clear()
        if transaction is None or not transaction.active:
            return
        with broker_errors():
            transaction.rollback()

    def close(self) -> None:
        """Closes the session; the broker rolls back an open transaction."""
        client, self.client = self.client, None
        self._transaction = None
        if client is not None:
            client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ txbroker

    def lock(self, *keys: str, read: Iterable[str] = ()) -> None:
        """Declares keys (exclusive ``keys``, shared ``read``) for the transaction.

        Before the transaction's first statement, the keys are sent with its ``begin``: the
        broker grants them all in ascending order before anything runs, the deadlock-free
        way. Declare them there whenever you can.

        Inside an open transaction this sends the broker's ``lock``, whose contract has an
        extension rule: a key above every key the transaction holds is waited for as usual;
        a key below one it already holds (or an upgrade from shared to exclusive) is only
        *tried*, and if it is taken the answer is ``lock_conflict``
        (:class:`OperationalError`, retryable), which aborts the transaction: roll back and
        run it again, declaring the keys up front. This keeps every wait in ascending order.

        In autocommit mode the keys apply to the next statement, which then runs as a
        one-statement ``tx`` holding them.
        """
        self._open_client()
        transaction = self._transaction
        if transaction is None or not transaction.active:
            self._declared.add(keys, read)
            return
        with broker_errors():
            transaction.lock(list(keys), list(read))

    def next_transaction(self, **options: Any) -> None:
        """Options for the coming transaction's ``begin``, passed as keyword arguments to
        the client's ``transaction()`` (``isolation``, ``read_only``, and whatever fields it
        learns later); they override the connection's own for that one transaction."""
        self._begin_options.update(options)

    def ping(self) -> None:
        """One round trip to the broker; raises :class:`OperationalError` when the session
        is gone."""
        with broker_errors():
            self._open_client().ping()

    def tx(self, statements: Sequence[Dict[str, Any]], locks: Iterable[str] = (),
           read_locks: Iterable[str] = (), retries: Optional[int] = None,
           **options: Any) -> TxResult:
        """Sends ``statements`` as one broker ``tx`` (keys, retries on database deadlocks,
        possibly grouped with others on the same keys); no transaction may be open."""
        with broker_errors():
            options = {"isolation": self.isolation, "read_only": self.read_only, **options}
            return self._open_client().tx(list(statements), locks=locks, read_locks=read_locks,
                                          retries=retries, **options)

    @contextmanager
    def recording(self) -> Iterator[List[Dict[str, Any]]]:
        """While the block runs, statements are recorded (as ``{"sql", "params"}``) instead
        of run; their cursors see no result. Send them with :meth:`tx`."""
        if self.in_transaction:
            raise InterfaceError("cannot record statements while a transaction is open")
        recorded: List[Dict[str, Any]] = []
        self._recording = recorded
        try:
            yield recorded
        finally:
            self._recording = None

    # ------------------------------------------------------------------ running

    def _run(self, sql: str, params: List[Any]) -> Optional[Result]:
        """Runs one statement where DB-API semantics put it."""
        client = self._open_client()
        if self._recording is not None:
            self._recording.append({"sql": sql, "params": params})
            return None
        with broker_errors():
            if commits_implicitly(sql):
                self.commit()
                return client.exec(sql, params)
            if self._autocommit:
                return self._run_alone(client, sql, params)
            if self._transaction is None or not self._transaction.active:
                self._transaction = self._begin(client)
            return self._transaction.exec(sql, params)

    def _run_alone(self, client: Client, sql: str, params: List[Any]) -> Result:
        if not self._declared:
            return client.exec(sql, params)
        keys, self._declared = self._declared, _DeclaredKeys()
        answer = client.tx([(sql, params)], locks=keys.locks, read_locks=keys.read_locks,
                           isolation=self.isolation, read_only=self.read_only)
        return answer.results[0]

    def _begin(self, client: Client) -> Transaction:
        options = {"isolation": self.isolation, "read_only": self.read_only,
                   **self._begin_options}
        transaction = client.transaction(
            locks=self._declared.locks, read_locks=self._declared.read_locks, **options)
        self._declared.clear()
        self._begin_options = {}
        return transaction
