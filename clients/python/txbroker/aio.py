"""An asyncio client for the txbroker wire protocol, with the surface of
:class:`txbroker.Client`, for asyncio services (FastAPI, aiohttp...).

    from txbroker import aio

    async with aio.Client("127.0.0.1", 7306) as client:
        await client.tx([("UPDATE accounts SET balance = balance - ? WHERE id = ?", [10, 1])],
                        locks=["accounts:1"])
        async with client.transaction(locks=["accounts:2"]) as t:
            await t.exec("UPDATE accounts SET balance = balance + ? WHERE id = ?", [10, 2])

Requests are **pipelined**: coroutines sharing one client send their requests without
waiting for earlier answers, and one reader task hands each answer to the oldest request
still waiting (the broker answers in order, one request at a time per session). So many
``tx`` calls in flight on one client cost one connection; they still run one after another
in the broker. Like :class:`txbroker.Client`, a client is one session with one transaction
state: while one coroutine has an interactive transaction open, another's ``exec`` would run
inside it. Give each concurrent interactive transaction its own client.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, Deque, Dict, Generator, Iterable, Optional, Sequence, Tuple, Union

import msgpack

from .client import (
    CLOSING_CODES,
    LENGTH,
    RequestEncoder,
    Result,
    Statement,
    TxResult,
    _tx_fields,
    _tx_request_fields,
    _tx_result,
    check_response,
    hello_fields,
)
from .errors import (
    NoTransactionError,
    TxbrokerConnectionError,
    TxbrokerError,
    TxbrokerTimeoutError,
    error_from_map,
)

__all__ = ["Client", "Transaction", "connect"]

Pending = Tuple[int, "asyncio.Future[Dict[str, Any]]"]


async def connect(host: str = "127.0.0.1", port: int = 7306, **kwargs: Any) -> "Client":
    """Connects a :class:`Client` (``await aio.connect(...)``)."""
    return await Client(host, port, **kwargs).connect()


class Client:
    """One broker session over asyncio streams; ``await client.connect()`` (or ``async
    with``) connects and sends ``hello``. Arguments as for :class:`txbroker.Client`;
    ``timeout`` bounds the connect and each wait for an answer (the client is closed when it
    fires, since the late answer would put the stream out of step)."""

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
        self.host, self.port, self.timeout = host, port, timeout
        self._token, self._client_name = token, client_name
        self._ssl_context, self._server_hostname = ssl_context, server_hostname
        self._encoder = RequestEncoder()
        self._writer: Optional[asyncio.StreamWriter] = None
        self._reader_task: Optional["asyncio.Task[None]"] = None
        self._pending: Deque[Pending] = collections.deque()
        self._closed_because: Optional[TxbrokerError] = None
        self.session: Optional[int] = None
        self.server: Optional[str] = None
        self.protocol: Optional[int] = None

    # ----------------------------------------------------------------- connection

    async def connect(self) -> "Client":
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl_context,
                    server_hostname=(self._server_hostname or self.host)
                    if self._ssl_context else None),
                self.timeout)
        except asyncio.TimeoutError as exc:
            raise TxbrokerTimeoutError(f"connecting to {self.host}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise TxbrokerConnectionError(
                f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._reader_task = asyncio.get_running_loop().create_task(self._read_answers(reader))
        try:
            answer = await self._request("hello", hello_fields(self._token, self._client_name))
        except BaseException:
            await self.close()
            raise
        self.session = answer.get("session")
        self.server = answer.get("server")
        self.protocol = answer.get("protocol")
        return self

    @property
    def closed(self) -> bool:
        return self._writer is None

    async def close(self) -> None:
        """Closes the connection; requests still waiting fail with
        :class:`TxbrokerConnectionError`. The broker rolls back an open transaction."""
        self._shut(TxbrokerConnectionError("the client is closed"))
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _shut(self, reason: TxbrokerError) -> None:
        """Closes the stream and fails every waiting request with ``reason``."""
        writer, self._writer = self._writer, None
        if self._closed_because is None:
            self._closed_because = reason
        if writer is not None:
            writer.close()
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(reason)

    async def __aenter__(self) -> "Client":
        return self if not self.closed else await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"session={self.session}"
        return f"<txbroker.aio.Client {self.host}:{self.port} {state}>"

    # ----------------------------------------------------------------- plumbing

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        """The reader task: each frame answers the oldest waiting request."""
        try:
            while True:
                header = await reader.readexactly(4)
                (length,) = LENGTH.unpack(header)
                if length == 0:
                    raise TxbrokerConnectionError("the broker sent an empty frame")
                response = msgpack.unpackb(await reader.readexactly(length), raw=False,
                                           strict_map_key=False)
                self._answer(response)
        except asyncio.IncompleteReadError:
            self._shut(TxbrokerConnectionError("the broker closed the connection"))
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            self._shut(TxbrokerConnectionError(f"connection to the broker lost: {exc}"))
        except TxbrokerError as error:
            self._shut(error)

    def _answer(self, response: Any) -> None:
        if not self._pending:
            # Only `busy` comes unasked (at accept); anything else is out of step.
            error: TxbrokerError = TxbrokerConnectionError(
                f"the broker sent an unasked answer: {response!r}")
            if isinstance(response, dict) and isinstance(response.get("error"), dict):
                error = error_from_map(response["error"], response.get("id"))
            raise error
        request_id, future = self._pending.popleft()
        try:
            answer = check_response(response, request_id)
        except TxbrokerError as error:
            if not future.done():
                future.set_exception(error)
            if isinstance(error, TxbrokerConnectionError) or error.code in CLOSING_CODES:
                raise
            return
        if not future.done():
            future.set_result(answer)

    async def _request(self, op: str, fields: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        writer = self._writer
        if writer is None:
            raise self._closed_because or TxbrokerConnectionError("the client is not connected")
        request_id, frame = self._encoder.encode(op, fields or {})
        future: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        # Appending and writing with no await between them keeps the queue in send order.
        self._pending.append((request_id, future))
        writer.write(frame)
        try:
            await writer.drain()
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError as exc:
            late = TxbrokerTimeoutError(f"no answer from the broker within {self.timeout}s")
            self._shut(late)
            raise late from exc
        except OSError as exc:
            lost = TxbrokerConnectionError(f"connection to the broker lost: {exc}")
            self._shut(lost)
            raise lost from exc

    # ----------------------------------------------------------------- operations

    async def ping(self) -> None:
        await self._request("ping")

    async def stats(self) -> Dict[str, Any]:
        return dict((await self._request("stats")).get("stats") or {})

    async def tx(
        self,
        statements: Union[Statement, Sequence[Statement]],
        locks: Iterable[str] = (),
        read_locks: Iterable[str] = (),
        isolation: Optional[str] = None,
        read_only: bool = False,
        retries: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> TxResult:
        """As :meth:`txbroker.Client.tx`, ``idempotency_key`` included."""
        fields = _tx_request_fields(statements, locks, read_locks, isolation, read_only, retries,
                                    idempotency_key)
        return _tx_result(await self._request("tx", fields))

    async def exec(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """As :meth:`txbroker.Client.exec`."""
        fields: Dict[str, Any] = {"sql": sql}
        if params:
            fields["params"] = list(params)
        return Result.from_map((await self._request("exec", fields)).get("result"))

    def transaction(self, locks: Iterable[str] = (), read_locks: Iterable[str] = (),
                    isolation: Optional[str] = None, read_only: bool = False) -> "Transaction":
        """An interactive transaction, begun by ``async with`` (commit at the end of the
        block, rollback on an exception) or by ``await``."""
        return Transaction(self, _tx_fields(locks, read_locks, isolation, read_only))

    async def begin(self, locks: Iterable[str] = (), read_locks: Iterable[str] = (),
                    isolation: Optional[str] = None, read_only: bool = False) -> "Transaction":
        """Begins an interactive transaction and returns it."""
        return await self.transaction(locks, read_locks, isolation, read_only)

    async def lock(self, locks: Iterable[str] = (), read_locks: Iterable[str] = ()) -> None:
        await self._request("lock", _tx_fields(locks, read_locks, None, False))

    async def commit(self) -> None:
        await self._request("commit")

    async def rollback(self) -> None:
        await self._request("rollback")


class Transaction:
    """An interactive transaction of an asyncio :class:`Client`; refuses use once finished
    (``NoTransactionError``), so a statement never slips into autocommit mode."""

    def __init__(self, client: Client, begin_fields: Dict[str, Any]) -> None:
        self.client = client
        self._begin_fields = begin_fields
        self._state = "new"  # new -> active -> finished

    @property
    def active(self) -> bool:
        return self._state == "active"

    def __await__(self) -> Generator[Any, None, "Transaction"]:
        return self._begin().__await__()

    async def _begin(self) -> "Transaction":
        if self._state != "new":
            raise NoTransactionError("this transaction was already begun")
        await self.client._request("begin", self._begin_fields)
        self._state = "active"
        return self

    def _check(self) -> None:
        if self._state != "active":
            raise NoTransactionError("this transaction is not open")

    async def exec(self, sql: str, params: Sequence[Any] = ()) -> Result:
        self._check()
        return await self.client.exec(sql, params)

    async def lock(self, locks: Iterable[str] = (), read_locks: Iterable[str] = ()) -> None:
        self._check()
        await self.client.lock(locks, read_locks)

    async def commit(self) -> None:
        """Commits; when the commit fails, rolls back (clearing the aborted state) and
        raises."""
        self._check()
        try:
            await self.client.commit()
        except TxbrokerConnectionError:
            self._state = "finished"
            raise
        except TxbrokerError:
            await self._quiet_rollback()
            raise
        self._state = "finished"

    async def rollback(self) -> None:
        if self._state != "active":
            return
        try:
            await self.client.rollback()
        finally:
            self._state = "finished"

    async def _quiet_rollback(self) -> None:
        try:
            if not self.client.closed:
                await self.client.rollback()
        except TxbrokerError:
            pass
        finally:
            self._state = "finished"

    async def __aenter__(self) -> "Transaction":
        return await self._begin()

    async def __aexit__(self, exc_type: Optional[type], *rest: object) -> None:
        if self._state != "active":
            return
        if exc_type is None:
            await self.commit()
        else:
            await self._quiet_rollback()
