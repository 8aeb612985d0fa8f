"""A synchronous client for the txbroker wire protocol, version 1."""

import datetime
import decimal
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import msgpack

from .errors import (
    CommitUnknownError,
    NoTransactionError,
    TxbrokerConnectionError,
    TxbrokerError,
    TxbrokerTimeoutError,
    error_from_map,
)

__version__ = "0.1.0"

__all__ = ["Client", "Transaction", "Result", "TxResult", "retry", "retry_idempotent",
           "new_idempotency_key", "ISOLATION_LEVELS"]

ISOLATION_LEVELS = ("read_uncommitted", "read_committed", "repeatable_read", "serializable")

#: Codes after which the broker closes the connection.
CLOSING_CODES = frozenset({"frame_too_large", "unauthenticated", "busy"})

LENGTH = struct.Struct(">I")

Statement = Union[str, Sequence[Any], Mapping[str, Any]]
T = TypeVar("T")


# --------------------------------------------------------------------------- values


def _format_timedelta(value: datetime.timedelta) -> str:
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{mins:02d}:{secs:02d}"
    if fraction:
        text += f".{fraction:06d}"
    return text


def _encode_default(value: Any) -> Any:
    """msgpack ``default`` hook: Python types with no MessagePack form of their own."""
    if isinstance(value, decimal.Decimal):
        # Exact text, never through a float.
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            raise TypeError("timezone-aware datetimes are not supported; convert to naive first")
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        if value.tzinfo is not None:
            raise TypeError("timezone-aware times are not supported")
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return _format_timedelta(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot send a value of type {type(value).__name__} to txbroker")


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_encode_default, strict_types=False)


# --------------------------------------------------------------------------- results


class Result:
    """The result of one statement.

    Attributes:
        affected: rows affected.
        last_insert_id: the generated AUTO_INCREMENT value, or None.
        columns: column names ([] when the statement returns no result set).
        rows: list of rows, each a list of values (str for DECIMAL/date/time, bytes for
            binary columns, int, float, None...).
    """

    __slots__ = ("affected", "last_insert_id", "columns", "rows")

    def __init__(
        self,
        affected: int = 0,
        last_insert_id: Optional[int] = None,
        columns: Optional[List[str]] = None,
        rows: Optional[List[List[Any]]] = None,
    ) -> None:
        self.affected = affected
        self.last_insert_id = last_insert_id
        self.columns = columns if columns is not None else []
        self.rows = rows if rows is not None else []

    @classmethod
    def from_map(cls, value: Any) -> "Result":
        if not isinstance(value, dict):
            raise TxbrokerConnectionError(f"malformed result in response: {value!r}",
                                          code="protocol")
        return cls(
            affected=value.get("affected") or 0,
            last_insert_id=value.get("last_insert_id"),
            columns=list(value.get("columns") or []),
            rows=[list(row) for row in (value.get("rows") or [])],
        )

    def dicts(self) -> List[Dict[str, Any]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def scalar(self) -> Any:
        """The first column of the first row, or None when there is no row."""
        if not self.rows or not self.rows[0]:
            return None
        return self.rows[0][0]

    def __iter__(self) -> Iterator[List[Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (self.affected, self.last_insert_id, self.columns, self.rows) == (
            other.affected, other.last_insert_id, other.columns, other.rows)

    def __repr__(self) -> str:
        return (
            f"Result(affected={self.affected!r}, last_insert_id={self.last_insert_id!r}, "
            f"columns={self.columns!r}, rows={self.rows!r})"
        )


class TxResult:
    """The answer to :meth:`Client.tx`: one :class:`Result` per statement, and how many runs
    the transaction took (``attempts`` > 1 when the broker retried after a deadlock).

    ``replayed`` is true when the answer was recorded for an earlier request with the same
    idempotency key, which committed (nothing of this one committed); ``results_omitted`` when
    that record was too large to keep its rows (the results keep columns and counts)."""

    __slots__ = ("results", "attempts", "replayed", "results_omitted")

    def __init__(self, results: List[Result], attempts: int, replayed: bool = False,
                 results_omitted: bool = False) -> None:
        self.results = results
        self.attempts = attempts
        self.replayed = replayed
        self.results_omitted = results_omitted

    def __getitem__(self, index: int) -> Result:
        return self.results[index]

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return (f"TxResult(results={self.results!r}, attempts={self.attempts!r}, "
                f"replayed={self.replayed!r})")


# --------------------------------------------------------------------------- requests


def _statement(value: Statement) -> Dict[str, Any]:
    if isinstance(value, str):
        return {"sql": value}
    if isinstance(value, Mapping):
        if "sql" not in value:
            raise TypeError(f"a statement dict needs a 'sql' key: {value!r}")
        out: Dict[str, Any] = {"sql": value["sql"]}
        params = value.get("params")
        if params is not None:
            out["params"] = list(params)
        return out
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return {"sql": value[0]}
        if len(value) == 2:
            sql, params = value
            out = {"sql": sql}
            if params is not None:
                out["params"] = list(params)
            return out
    raise TypeError(
        "a statement is a SQL string, a (sql, params) tuple or a {'sql':..., 'params':...} "
        f"dict, not {value!r}"
    )


def _keys(value: Union[None, str, Iterable[str]], name: str) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        value = [value]
    keys = []
    for key in value:
        if isinstance(key, bytes):
            key = key.decode("utf-8")
        if not isinstance(key, str):
            raise TypeError(f"{name}: a key is a str, not {type(key).__name__}")
        keys.append(key)
    return keys


def _tx_fields(
    locks: Union[None, str, Iterable[str]],
    read_locks: Union[None, str, Iterable[str]],
    isolation: Optional[str],
    read_only: bool,
    idempotency_key: Optional[str] = None,
) -> Dict[str, Any]:
    fields: Dict[str, Any] = {}
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    keys = _keys(locks, "locks")
    if keys:
        fields["locks"] = keys
    keys = _keys(read_locks, "read_locks")
    if keys:
        fields["read_locks"] = keys
    if isolation is not None:
        fields["isolation"] = isolation
    if read_only:
        fields["read_only"] = True
    return fields


def _tx_request_fields(
    statements: Union[Statement, Sequence[Statement]],
    locks: Iterable[str],
    read_locks: Iterable[str],
    isolation: Optional[str],
    read_only: bool,
    retries: Optional[int],
    idempotency_key: Optional[str] = None,
) -> Dict[str, Any]:
    """The fields of a ``tx`` request (shared by the blocking and the asyncio client)."""
    if isinstance(statements, (str, Mapping)):
        statements = [statements]
    elif isinstance(statements, tuple) and len(statements) == 2 \
            and isinstance(statements[0], str) and not isinstance(statements[1], str):
        statements = [statements]  # a single (sql, params) pair
    fields = _tx_fields(locks, read_locks, isolation, read_only, idempotency_key)
    fields["statements"] = [_statement(s) for s in statements]
    if retries is not None:
        fields["retries"] = retries
    return fields


def _tx_result(answer: Mapping[str, Any]) -> "TxResult":
    results = [Result.from_map(r) for r in (answer.get("results") or [])]
    return TxResult(results, answer.get("attempts") or 1, bool(answer.get("replayed")),
                    bool(answer.get("results_omitted")))


def check_response(response: Any, request_id: int) -> Dict[str, Any]:
    """The success response to request ``request_id``, or raises: the broker's error (the
    connection must then be closed when its code is in ``CLOSING_CODES``), or a
    :class:`TxbrokerConnectionError` when the stream is out of step (close it)."""
    if not isinstance(response, dict):
        raise TxbrokerConnectionError(
            f"the broker sent a response that is not a map: {response!r}")
    got_id = response.get("id")
    if response.get("ok") is True:
        if got_id != request_id:
            raise TxbrokerConnectionError(
                f"out-of-order response: expected id {request_id}, got {got_id!r}")
        return response
    error = error_from_map(response.get("error"), got_id)
    if got_id is not None and got_id != request_id:
        raise TxbrokerConnectionError(
            f"out-of-order response: expected id {request_id}, got {got_id!r} ({error})")
    raise error


class RequestEncoder:
    """Numbers a connection's requests (ids 1, 2, ...) and frames them: a 4-byte big-endian
    length, then the MessagePack map."""

    def __init__(self) -> None:
        self._next_id = 1
        self._packer = _packer()

    def encode(self, op: str, fields: Mapping[str, Any]) -> Tuple[int, bytes]:
        request_id = self._next_id
        self._next_id += 1
        message = {"id": request_id, "op": op}
        message.update(fields)
        try:
            body = self._packer.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer = _packer()  # reset any partial state
            raise TypeError(f"cannot encode the {op} request: {exc}") from exc
        return request_id, LENGTH.pack(len(body)) + body


def hello_fields(token: Optional[str], client_name: Optional[str]) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"client": client_name or f"txbroker-python/{__version__}"}
    if token is not None:
        fields["token"] = token
    return fields


# --------------------------------------------------------------------------- client


class Client:
    """A connection (one broker session) to txbroker.

    ``Client(host, port, token=None, timeout=None)`` connects and sends ``hello`` at once;
    ``session``, ``server`` and ``protocol`` hold the broker's answer. Use it as a context
    manager, or call :meth:`close`.

    ``ssl_context`` (an :class:`ssl.SSLContext`) connects over TLS, for a broker with
    ``tls_cert``/``tls_key`` set; the server name checked is ``host`` unless
    ``server_hostname`` says otherwise.

    ``timeout`` (seconds) bounds the connect and every wait for an answer; None waits
    forever. Note that a ``tx`` may legitimately wait for its keys up to the broker's
    ``lock_wait_timeout_ms`` (and retry). When a timeout fires the client is closed, since
    the late answer would put the connection out of sync.

    Thread safety: requests are serialized by an internal lock, so a Client cannot be
    corrupted by concurrent use, but a session has a single transaction state: while one
    thread has an interactive transaction open, another thread's ``exec`` would run inside
    it. Use one Client per thread (or per process: never share one across ``fork``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7306,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
        client_name: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._lock = threading.RLock()
        self._encoder = RequestEncoder()
        self._sock: Optional[socket.socket] = None
        self._transaction: Optional["Transaction"] = None
        self.session: Optional[int] = None
        self.server: Optional[str] = None
        self.protocol: Optional[int] = None
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout as exc:
            raise TxbrokerTimeoutError(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise TxbrokerConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            try:
                self._sock = ssl_context.wrap_socket(
                    self._sock, server_hostname=server_hostname or host
                )
            except (ssl.SSLError, OSError) as exc:
                self._sock = None
                raise TxbrokerConnectionError(
                    f"TLS handshake with {host}:{port} failed: {exc}") from exc
        self._sock.settimeout(timeout)
        self._received = bytearray()
        try:
            answer = self._request("hello", hello_fields(token, client_name))
        except BaseException:
            self.close()
            raise
        self.session = answer.get("session")
        self.server = answer.get("server")
        self.protocol = answer.get("protocol")

    # ----------------------------------------------------------------- plumbing

    @property
    def closed(self) -> bool:
        return self._sock is None

    def closed_by_broker(self) -> bool:
        """Whether the broker has closed the connection (or it failed) while no request was
        in flight: a request sent now could not arrive. Looks without waiting; over TLS,
        where that cannot be seen without reading, it says False."""
        with self._lock:
            sock = self._sock
            if sock is None:
                return True
            if isinstance(sock, ssl.SSLSocket):
                return False
            try:
                sock.setblocking(False)
                try:
                    return sock.recv(1, socket.MSG_PEEK) == b""
                finally:
                    sock.settimeout(self.timeout)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True

    def close(self) -> None:
        """Closes the connection. The broker rolls back an open transaction and releases
        its keys."""
        sock, self._sock = self._sock, None
        if self._transaction is not None:
            self._transaction._finished = True
            self._transaction = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"session={self.session}"
        return f"<txbroker.Client {self.host}:{self.port} {state}>"

    def _fail(self, message: str, cause: Optional[BaseException] = None,
              timeout: bool = False) -> TxbrokerConnectionError:
        self.close()
        cls = TxbrokerTimeoutError if timeout else TxbrokerConnectionError
        error = cls(message)
        if cause is not None:
            error.__cause__ = cause
        return error

    def _read_frame(self) -> Any:
        header = self._take(4)
        (length,) = LENGTH.unpack(header)
        if length == 0:
            raise self._fail("the broker sent an empty frame")
        body = self._take(length)
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:
            raise self._fail(f"the broker sent a frame that is not MessagePack: {exc}",
                             exc) from exc

    def _take(self, count: int) -> bytes:
        """The next ``count`` bytes of the stream. Each read takes what the socket has (up
        to 64 KiB more than asked), so that an answer usually costs one system call, not
        one for its length and one for its body: with threads, each blocking call is also a
        wait for the GIL."""
        received = self._received
        while len(received) < count:
            sock = self._sock
            if sock is None:
                raise TxbrokerConnectionError("the client is closed")
            try:
                chunk = sock.recv(max(count - len(received), 1 << 16))
            except socket.timeout as exc:
                raise self._fail(f"no answer from the broker within {self.timeout}s", exc,
                                 timeout=True) from exc
            except OSError as exc:
                raise self._fail(f"connection to the broker lost: {exc}", exc) from exc
            if not chunk:
                raise self._fail("the broker closed the connection")
            received += chunk
        data = bytes(received[:count])
        del received[:count]
        return data

    def _request(self, op: str, fields: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Sends one request and returns its success response (raises on failure)."""
        with self._lock:
            if self._sock is None:
                raise TxbrokerConnectionError("the client is closed")
            request_id, frame = self._encoder.encode(op, fields or {})
            try:
                self._sock.sendall(frame)
            except socket.timeout as exc:
                raise self._fail(f"sending to the broker timed out after {self.timeout}s", exc,
                                 timeout=True) from exc
            except OSError as exc:
                # The broker may have written an error (busy, unauthenticated...) before
                # closing: read it if it is there.
                early = self._try_read_pending()
                if early is not None:
                    raise early from exc
                raise self._fail(f"connection to the broker lost: {exc}", exc) from exc
            return self._response(request_id)

    def _try_read_pending(self) -> Optional[TxbrokerError]:
        sock = self._sock
        if sock is None:
            return None
        try:
            sock.settimeout(0.2)
            response = self._read_frame()
        except Exception:
            return None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        self.close()
        if isinstance(response, dict) and response.get("ok") is False:
            return error_from_map(response.get("error"), response.get("id"))
        return None

    def _response(self, request_id: int) -> Dict[str, Any]:
        response = self._read_frame()
        try:
            return check_response(response, request_id)
        except TxbrokerConnectionError as error:
            raise self._fail(error.message, error) from error
        except TxbrokerError as error:
            if error.code in CLOSING_CODES:
                self.close()
            raise

    # ----------------------------------------------------------------- operations

    def ping(self) -> None:
        """Round trip to the broker; raises if it does not answer."""
        self._request("ping")

    def stats(self) -> Dict[str, Any]:
        """The broker's counters (``sessions``, ``transactions_committed``, ``deadlocks``,
        ``locks_held``, ``lock_waiters``...)."""
        return dict(self._request("stats").get("stats") or {})

    def tx(
        self,
        statements: Union[Statement, Sequence[Statement]],
        locks: Iterable[str] = (),
        read_locks: Iterable[str] = (),
        isolation: Optional[str] = None,
        read_only: bool = False,
        retries: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> TxResult:
        """Runs ``statements`` as one transaction after the broker grants ``locks``
        (exclusive) and ``read_locks`` (shared), in ascending key order.

        Statements are SQL strings, ``(sql, params)`` tuples or ``{"sql":..., "params":...}``
        dicts. On a database deadlock or lock wait timeout the broker reruns the whole
        transaction up to ``retries`` more times (default from its config). Raises a
        :class:`TxbrokerError` (``statement`` names the failing statement) on failure,
        after which nothing of the transaction was committed.

        With ``idempotency_key`` (a str of 1 to 128 bytes, one per logical transaction) the
        broker records the outcome with the commit, and answers a later ``tx`` with the same
        key from that record (``replayed``) without running it again; see
        :func:`retry_idempotent`.
        """
        fields = _tx_request_fields(statements, locks, read_locks, isolation, read_only,
                                    retries, idempotency_key)
        return _tx_result(self._request("tx", fields))

    def exec(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Runs one statement: inside the open interactive transaction if there is one,
        otherwise on its own in autocommit mode (no keys taken)."""
        fields: Dict[str, Any] = {"sql": sql}
        if params:
            fields["params"] = list(params)
        return Result.from_map(self._request("exec", fields).get("result"))

    def transaction(
        self,
        locks: Iterable[str] = (),
        read_locks: Iterable[str] = (),
        isolation: Optional[str] = None,
        read_only: bool = False,
        idempotency_key: Optional[str] = None,
    ) -> "Transaction":
        """Begins an interactive transaction (``begin``), holding ``locks``/``read_locks``.

        With ``idempotency_key``, the commit is recorded under that key; if the key's
        transaction committed already, nothing is opened and the transaction's ``replayed`` is
        true: its ``exec`` and ``lock`` raise, and ``commit`` only acknowledges (the broker
        answers ``tx_aborted`` until then, so nothing runs in autocommit mode).

        Use it as a context manager: it commits when the block ends normally and rolls back
        (re-raising) when it ends with an exception::

            with client.transaction(locks=["accounts:1"]) as t:
                t.exec("UPDATE accounts SET balance = balance - ? WHERE id = ?", [10, 1])
        """
        answer = self._request(
            "begin", _tx_fields(locks, read_locks, isolation, read_only, idempotency_key))
        transaction = Transaction(self, replayed=bool(answer.get("replayed")))
        self._transaction = transaction
        return transaction

    def begin(self, locks: Iterable[str] = (), read_locks: Iterable[str] = (),
              isolation: Optional[str] = None, read_only: bool = False,
              idempotency_key: Optional[str] = None) -> "Transaction":
        """Same as :meth:`transaction`."""
        return self.transaction(locks, read_locks, isolation, read_only, idempotency_key)

    def lock(self, locks: Iterable[str] = (), read_locks: Iterable[str] = ()) -> None:
        """Adds keys to the open interactive transaction (see :meth:`Transaction.lock`)."""
        self._request("lock", _tx_fields(locks, read_locks, None, False))

    def commit(self) -> None:
        """Commits the open interactive transaction (``no_transaction`` when none is)."""
        try:
            self._request("commit")
        finally:
            self._forget_transaction()

    def rollback(self) -> None:
        """Rolls back the open interactive transaction, and clears the aborted state; a
        no-op when no transaction is open."""
        try:
            self._request("rollback")
        finally:
            self._forget_transaction()

    def _forget_transaction(self) -> None:
        if self._transaction is not None:
            self._transaction._finished = True
            self._transaction = None


class Transaction:
    """An interactive transaction on a :class:`Client`'s session; see
    :meth:`Client.transaction`.

    After ``commit()`` or ``rollback()`` the object refuses further use (raising
    :class:`~txbroker.NoTransactionError`), so a statement can never slip into autocommit
    mode by mistake.
    """

    def __init__(self, client: Client, replayed: bool = False) -> None:
        self.client = client
        self._finished = False
        #: The key's transaction had committed already: nothing is open.
        self.replayed = replayed

    @property
    def active(self) -> bool:
        """True until the transaction is committed or rolled back."""
        return not self._finished

    def _check(self) -> None:
        if self._finished:
            raise NoTransactionError("this transaction is already finished")
        if self.replayed:
            raise NoTransactionError(
                "this transaction's idempotency key committed already: nothing is open")

    def exec(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Runs one statement in the transaction. A SQL error leaves the transaction open;
        a database deadlock or lock wait timeout aborts it (the broker answers
        ``tx_aborted`` until the rollback)."""
        self._check()
        return self.client.exec(sql, params)

    def lock(self, locks: Iterable[str] = (), read_locks: Iterable[str] = ()) -> None:
        """Adds keys. A key above every key held is waited for; any other key is only tried,
        and ``LockConflictError`` (which aborts the transaction) is raised if it is taken."""
        self._check()
        self.client.lock(locks, read_locks)

    def commit(self) -> None:
        """Commits and releases the keys. If the commit fails, the transaction is rolled
        back (clearing any aborted state) before the error is raised. A replayed transaction
        (its key committed already) only acknowledges, with a ``rollback``."""
        if self.replayed and not self._finished:
            self.rollback()
            return
        self._check()
        try:
            self.client._request("commit")
        except TxbrokerConnectionError:
            self._finish()
            raise
        except TxbrokerError:
            self._quiet_rollback()
            raise
        self._finish()

    def rollback(self) -> None:
        """Rolls back and releases the keys (also clears the aborted state)."""
        if self._finished:
            return
        try:
            self.client._request("rollback")
        finally:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        if self.client._transaction is self:
            self.client._transaction = None

    def _quiet_rollback(self) -> None:
        try:
            if not self.client.closed:
                self.client._request("rollback")
        except TxbrokerError:
            pass
        finally:
            self._finish()

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Optional[type], *rest: object) -> None:
        if self._finished:
            return
        if exc_type is None:
            self.commit()
        else:
            self._quiet_rollback()

    def __repr__(self) -> str:
        return f"<txbroker.Transaction {'active' if self.active else 'finished'}>"


# --------------------------------------------------------------------------- retry


def new_idempotency_key() -> str:
    """A fresh idempotency key: a random UUID (122 random bits) in hex."""
    return uuid.uuid4().hex


def retry_idempotent(
    fn: Callable[[str], T],
    attempts: int = 10,
    key: Optional[str] = None,
    backoff: float = 0.02,
    max_backoff: float = 1.0,
    on_retry: Optional[Callable[[TxbrokerError, int], None]] = None,
) -> T:
    """Runs one logical transaction with one idempotency key for every run: ``fn(key)``
    (``key``, or a fresh one from :func:`new_idempotency_key`) until it returns, up to
    ``attempts`` runs. Unlike :func:`retry` it also runs ``fn`` again after
    ``commit_unknown`` and after a lost connection (:class:`TxbrokerConnectionError`, where
    ``fn`` should connect anew): the key makes the broker answer a retry of a transaction that
    did commit with its recorded outcome (``replayed``) instead of running it twice. A
    non-retryable error (``idempotency_mismatch`` among them), or the last one, is raised::

        def transfer(key):
            with txbroker.Client(host, port) as client:
                return client.tx(statements, locks=keys, idempotency_key=key)

        result = txbroker.retry_idempotent(transfer)
    """
    key = key if key is not None else new_idempotency_key()

    def may_send_again(error: TxbrokerError) -> bool:
        return error.retryable or isinstance(error, (CommitUnknownError, TxbrokerConnectionError))

    return _run_retrying(lambda: fn(key), may_send_again, attempts, backoff, max_backoff,
                         on_retry)


def retry(
    fn: Callable[[], T],
    attempts: int = 5,
    backoff: float = 0.02,
    max_backoff: float = 1.0,
    on_retry: Optional[Callable[[TxbrokerError, int], None]] = None,
) -> T:
    """Calls ``fn()`` until it returns, retrying up to ``attempts`` runs in all when it raises
    a retryable :class:`TxbrokerError` (deadlock, lock timeout, busy, ...), with jittered
    exponential back-off. A non-retryable error, or the last retryable one, is raised.

    ``fn`` should run a whole transaction (a ``client.tx`` call or a ``with
    client.transaction()`` block), so that each run starts afresh.
    """
    return _run_retrying(fn, lambda error: error.retryable, attempts, backoff, max_backoff,
                         on_retry)


def _run_retrying(
    fn: Callable[[], T],
    may_send_again: Callable[[TxbrokerError], bool],
    attempts: int,
    backoff: float,
    max_backoff: float,
    on_retry: Optional[Callable[[TxbrokerError, int], None]],
) -> T:
    """Calls ``fn()`` up to ``attempts`` times while it raises an error ``may_send_again``
    accepts, pausing with jittered exponential back-off in between."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TxbrokerError as error:
            if not may_send_again(error) or attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(error, attempt)
            delay = min(max_backoff, backoff * (2 ** (attempt - 1)))
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover
