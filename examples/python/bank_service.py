"""A small bank service written the way SQLAlchemy users write one: a thread per request
(``http.server.ThreadingHTTPServer``), a ``scoped_session`` per thread, ORM models, one
transaction per request, and rows touched in the order the request names them.

    POST /transfer  {"from": 1, "to": 2, "amount": 5}   -> 200 {"ok": true}
    GET  /accounts                                      -> 200 {"balances": {...}, "total": N}

Two transfers in opposite directions lock the same two rows in opposite orders: straight to
MariaDB (``mysql+pymysql://``) one of them is chosen as a deadlock victim and the request
fails. Through txbroker (``mysql+txbroker://``) the only change is the engine URL and one
line that declares the keys of the rows the request will touch
(``txbroker.sqlalchemy.lock``); the broker grants them in ascending order before the
transaction starts, so the requests queue instead of deadlocking.

    python examples/python/bank_service.py --url mysql+pymysql://root@127.0.0.1:3306/bank
    python examples/python/bank_service.py --url mysql+txbroker://127.0.0.1:7306/test --keys
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from txbroker.sqlalchemy import lock


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bank_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(40))
    balance: Mapped[int] = mapped_column(sa.BigInteger)


def account_key(account_id: int) -> str:
    """The broker key of an account's row (zero-padded, so byte order is numeric order)."""
    return f"accounts:{account_id:06d}"


class Bank:
    """The application: an engine, a scoped session factory, and the two operations."""

    def __init__(self, url: str, declare_keys: bool, pool_size: int = 16) -> None:
        self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=0,
                                       pool_pre_ping=True)
        self.sessions = scoped_session(sessionmaker(self.engine))
        self.declare_keys = declare_keys

    def open_accounts(self, count: int, balance: int) -> None:
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)
        with Session(self.engine) as session:
            session.add_all(Account(id=i, owner=f"owner {i}", balance=balance)
                            for i in range(1, count + 1))
            session.commit()

    def transfer(self, source: int, target: int, amount: int) -> None:
        session = self.sessions()
        try:
            if self.declare_keys:
                lock(session, account_key(source), account_key(target))
            # Rows are locked in the order the request names them.
            paying = session.get(Account, source, with_for_update=True)
            paid = session.get(Account, target, with_for_update=True)
            if paying is None or paid is None:
                raise LookupError("no such account")
            paying.balance -= amount
            paid.balance += amount
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self.sessions.remove()

    def balances(self) -> Dict[int, int]:
        session = self.sessions()
        try:
            return {a.id: a.balance for a in session.scalars(sa.select(Account))}
        finally:
            self.sessions.remove()

    def close(self) -> None:
        self.engine.dispose()


def _error_answer(error: exc.DBAPIError) -> Tuple[int, Dict[str, Any]]:
    orig = error.orig
    code = getattr(orig, "mysql_code", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], int):
        code = orig.args[0]  # PyMySQL keeps the MySQL number in args[0]
    deadlock = code == 1213
    return (409 if deadlock else 500), {"ok": False, "deadlock": deadlock, "mysql_code": code,
                                        "error": str(orig)}


def make_handler(bank: Bank) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share a connection

        def _send(self, status: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/accounts":
                return self._send(404, {"ok": False, "error": "not found"})
            balances = bank.balances()
            self._send(200, {"ok": True, "balances": balances, "total": sum(balances.values())})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/transfer":
                return self._send(404, {"ok": False, "error": "not found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                bank.transfer(int(body["from"]), int(body["to"]), int(body["amount"]))
            except exc.DBAPIError as error:
                return self._send(*_error_answer(error))
            except LookupError as error:
                return self._send(404, {"ok": False, "error": str(error)})
            self._send(200, {"ok": True})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: one line per request would drown the load test

    return Handler


def serve(bank: Bank, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Starts the service in a background thread; ``server.server_address`` says where."""
    server = ThreadingHTTPServer((host, port), make_handler(bank), bind_and_activate=False)
    server.request_queue_size = 128  # the default backlog of 5 resets a burst of clients
    server.server_bind()
    server.server_activate()
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="SQLAlchemy engine URL")
    parser.add_argument("--keys", action="store_true", help="declare broker keys")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--accounts", type=int, default=10)
    args = parser.parse_args(argv)
    bank = Bank(args.url, declare_keys=args.keys)
    bank.open_accounts(args.accounts, 1000)
    server = serve(bank, port=args.port)
    print(f"serving on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
        bank.close()


if __name__ == "__main__":
    main()
