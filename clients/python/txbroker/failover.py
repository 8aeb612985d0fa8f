"""A client of several brokers that share one database (``coordination = "database"``).

``FailoverClient(["10.0.0.1:7306", "10.0.0.2:7306"])`` keeps one connection, to the first
broker that accepts it, and moves to the next address when a connection is refused or lost,
or when a broker turns a request away before running it (``busy``, ``shutting_down``).

A ``tx`` without an idempotency key whose connection is lost while it is in flight is never
sent again: it may have committed before the broker vanished, so the caller gets the
:class:`TxbrokerConnectionError` and decides. A ``tx`` with ``idempotency_key=`` is carried
across instead: after a lost connection or ``commit_unknown`` the client moves to the next
broker and sends it again with the same key, once per address and once more
(:func:`txbroker.retry_idempotent`), so its answer is the truth: run once, or the recorded
outcome of the run that committed (``replayed``).
"""

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .client import Client, TxResult, retry_idempotent
from .errors import BusyError, CommitUnknownError, ShuttingDownError, TxbrokerConnectionError

Address = Union[str, Tuple[str, int]]


def _host_port(address: Address) -> Tuple[str, int]:
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, _, port = address.rpartition(":")
    return host, int(port)


class FailoverClient:
    """Connected to one of ``addresses`` at a time; keyword arguments go to each
    :class:`Client` it makes (``token``, ``timeout``, ``ssl_context``...). Safe to share
    between threads: requests are serialized."""

    def __init__(self, addresses: Sequence[Address], **client_options: Any) -> None:
        if not addresses:
            raise ValueError("FailoverClient needs at least one broker address")
        self.addresses: List[Tuple[str, int]] = [_host_port(a) for a in addresses]
        self._options = client_options
        self._lock = threading.RLock()
        self._client: Optional[Client] = None
        self._index = 0  # of the address in use, or the one to try first

    @property
    def current_address(self) -> Optional[Tuple[str, int]]:
        """The address of the broker in use, if connected."""
        with self._lock:
            if self._client is None or self._client.closed:
                return None
            return self.addresses[self._index]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "FailoverClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def tx(self, statements: Any, **options: Any) -> TxResult:
        """:meth:`Client.tx` on the broker in use. Without ``idempotency_key`` it is sent
        again, to the next broker, only when one turned it away without running it; a
        connection lost while it was in flight raises :class:`TxbrokerConnectionError` (its
        outcome is unknown) and the next call goes to the next broker. With one it is also
        sent again after a lost connection or ``commit_unknown`` (to the next broker) or a
        retryable error, at most once per address and once more."""
        key = options.get("idempotency_key")
        if key is None:
            return self._tx_once(statements, options)
        return retry_idempotent(lambda _same_key: self._tx_once(statements, options),
                                attempts=len(self.addresses) + 1, key=key)

    def _tx_once(self, statements: Any, options: Dict[str, Any]) -> TxResult:
        """One try: on the broker in use, or on the next ones that turn it away. After a lost
        connection, or a ``commit_unknown`` of a keyed tx, the next try goes to the next
        broker."""
        with self._lock:
            for _ in range(len(self.addresses)):
                client = self._connection()
                try:
                    return client.tx(statements, **options)
                except (BusyError, ShuttingDownError):
                    self._move_on()
                except TxbrokerConnectionError:
                    # In flight when the connection went: without a key, never sent again
                    # (module doc).
                    self._move_on()
                    raise
                except CommitUnknownError:
                    if options.get("idempotency_key") is not None:
                        # This broker cannot learn the outcome; the next reads the key's record.
                        self._move_on()
                    raise
            raise TxbrokerConnectionError("every broker turned the request away")

    def stats(self) -> Dict[str, Any]:
        """The counters of the broker in use."""
        with self._lock:
            try:
                return self._connection().stats()
            except TxbrokerConnectionError:
                self._move_on()
                raise

    def _connection(self) -> Client:
        """The live connection; a new one, to the first address from the next that
        accepts, when there is none or the one there is closed."""
        if self._client is not None and not self._client.closed_by_broker():
            return self._client
        if self._client is not None:
            self._move_on()
        last_error: Optional[Exception] = None
        for offset in range(len(self.addresses)):
            index = (self._index + offset) % len(self.addresses)
            host, port = self.addresses[index]
            try:
                self._client = Client(host, port, **self._options)
            except (TxbrokerConnectionError, BusyError) as exc:
                last_error = exc
                continue
            self._index = index
            return self._client
        raise TxbrokerConnectionError(f"no broker accepted a connection: {last_error}")

    def _move_on(self) -> None:
        """Drops the connection in use; the next one goes first to the address after it."""
        if self._client is not None:
            self._client.close()
            self._client = None
            self._index = (self._index + 1) % len(self.addresses)
