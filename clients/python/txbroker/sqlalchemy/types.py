"""Result conversions of the ``mysql+txbroker`` dialect.

The protocol sends DECIMAL, DATE, DATETIME/TIMESTAMP and TIME values as exact text (and
DECIMAL results of integer aggregates such as ``SUM()`` too), without column types; these
types turn that text back into the Python values SQLAlchemy's column types promise
(``Decimal``, ``date``, ``datetime``, ``time``, ``int``), the way SQLAlchemy's SQLite dialect
does for its text dates. Values that already have their type pass through unchanged.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any, Callable, Dict, Optional

from sqlalchemy.dialects.mysql import types as mysql_types
from sqlalchemy.dialects.mysql.base import MySQLDialect
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeEngine

__all__ = ["colspecs"]

Processor = Callable[[Any], Any]


def _from_text(parse: Callable[[str], Any]) -> Processor:
    def process(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse(value)
            except ValueError:  # a zero date, say: hand over what MySQL sent
                return value
        return value
    return process


def parse_time(text: str) -> datetime.time:
    """``[-]H:MM:SS[.ffffff]`` as MySQL prints TIME, wrapped into a day as SQLAlchemy's
    MySQL TIME type does with the driver's timedelta."""
    negative = text.startswith("-")
    hours, minutes, seconds = text.lstrip("-").split(":")
    whole, _, fraction = seconds.partition(".")
    span = datetime.timedelta(hours=int(hours), minutes=int(minutes), seconds=int(whole),
                              microseconds=int((fraction + "000000")[:6]))
    span = -span if negative else span
    day_seconds = span.seconds
    return datetime.time(day_seconds // 3600, day_seconds // 60 % 60, day_seconds % 60,
                         microsecond=span.microseconds)


def _integer(text: str) -> int:
    return int(decimal.Decimal(text))


class TxbrokerNumeric(sqltypes.Numeric):  # type: ignore[type-arg]
    def result_processor(self, dialect: Dialect, coltype: object) -> Optional[Processor]:
        return _from_text(decimal.Decimal if self.asdecimal else float)


class TxbrokerInteger(sqltypes.Integer):
    def result_processor(self, dialect: Dialect, coltype: object) -> Optional[Processor]:
        return _from_text(_integer)


class TxbrokerDate(sqltypes.Date):
    def result_processor(self, dialect: Dialect, coltype: object) -> Optional[Processor]:
        return _from_text(datetime.date.fromisoformat)


class TxbrokerDateTime(sqltypes.DateTime):
    def result_processor(self, dialect: Dialect, coltype: object) -> Optional[Processor]:
        return _from_text(datetime.datetime.fromisoformat)


class TxbrokerTime(sqltypes.Time):
    def result_processor(self, dialect: Dialect, coltype: object) -> Optional[Processor]:
        return _from_text(parse_time)


colspecs: Dict[Any, type[TypeEngine[Any]]] = dict(MySQLDialect.colspecs)
# MySQL's own integer and decimal types (those reflection returns) map to themselves there;
# here they map to the converting types too.
# (_NumericCommonType is SQLAlchemy 2.1's; 2.0 has the other two.)
for name in ("_NumericType", "_NumericCommonType"):
    if hasattr(mysql_types, name):
        colspecs[getattr(mysql_types, name)] = TxbrokerNumeric
colspecs.update({
    mysql_types._IntegerType: TxbrokerInteger,
    sqltypes.Numeric: TxbrokerNumeric,
    sqltypes.Integer: TxbrokerInteger,
    sqltypes.Date: TxbrokerDate,
    sqltypes.DateTime: TxbrokerDateTime,
    sqltypes.Time: TxbrokerTime,
})
