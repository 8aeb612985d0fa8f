"""The PEP 249 cursor of :mod:`txbroker.dbapi`: it sends each statement through its
:class:`~txbroker.dbapi.Connection` and holds the last result, already read whole (the
broker answers a statement with all its rows at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..client import Result
from .errors import InterfaceError, ProgrammingError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Cursor", "Description"]

#: One column of ``Cursor.description``: name, then six fields the protocol does not carry
#: (type_code, display_size, internal_size, precision, scale, null_ok), all None.
Description = Tuple[str, None, None, None, None, None, None]
Row = Tuple[Any, ...]


class Cursor:
    """Runs statements (``?`` placeholders, parameters as a sequence) and fetches their rows.

    ``description`` is None for a statement that returns no result set. Its ``type_code``
    is None: the protocol carries column names only. Values come as the broker sends them
    (DECIMAL as exact ``str``, DATE/DATETIME/TIME as ``str``; see the client's README); the
    SQLAlchemy dialect converts them by the column types it knows.
    """

    def __init__(self, connection: "Connection") -> None:
        self.connection = connection
        self.arraysize = 1
        self.description: Optional[List[Description]] = None
        self.rowcount = -1
        self.lastrowid: Optional[int] = None
        self._rows: List[Row] = []
        self._position = 0
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self._rows = []

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def execute(self, operation: str, parameters: Optional[Sequence[Any]] = None) -> int:
        """Runs one statement; returns ``rowcount``, as MySQL's drivers do."""
        self._check_open()
        if isinstance(parameters, Mapping):
            raise ProgrammingError(
                "txbroker.dbapi uses the qmark paramstyle: pass the parameters as a sequence",
                code="bad_request",
            )
        result = self.connection._run(operation, list(parameters or ()))
        self._take(result)
        return self.rowcount

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> int:
        """Runs the statement once per parameter sequence, in order, stopping at the first
        error; ``rowcount`` is the sum of the rows affected."""
        self._check_open()
        total = 0
        for parameters in seq_of_parameters:
            self.execute(operation, parameters)
            total += max(self.rowcount, 0)
        self.description = None
        self._rows = []
        self.rowcount = total
        return total

    def _take(self, result: Optional[Result]) -> None:
        self._position = 0
        if result is None:  # recorded for a later tx, not run
            self.description, self._rows, self.rowcount, self.lastrowid = None, [], -1, None
            return
        self.lastrowid = result.last_insert_id
        if result.columns:
            self.description = [(name, None, None, None, None, None, None)
                                for name in result.columns]
            self._rows = [tuple(row) for row in result.rows]
            self.rowcount = len(self._rows)
        else:
            self.description = None
            self._rows = []
            self.rowcount = result.affected

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError("the cursor is closed")

    def _check_result(self) -> None:
        self._check_open()
        if self.description is None:
            raise InterfaceError("the last statement returned no rows to fetch")

    def fetchone(self) -> Optional[Row]:
        self._check_result()
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: Optional[int] = None) -> List[Row]:
        self._check_result()
        count = self.arraysize if size is None else size
        rows = self._rows[self._position:self._position + count]
        self._position += len(rows)
        return rows

    def fetchall(self) -> List[Row]:
        self._check_result()
        rows = self._rows[self._position:]
        self._position = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchone, None)

    def setinputsizes(self, sizes: object) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: object, column: Optional[int] = None) -> None:
        """Accepted and ignored, as PEP 249 allows."""
