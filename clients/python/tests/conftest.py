"""Fixtures: real txbroker processes (target/debug/txbroker) on port 0, against a private
database on the real MariaDB.

Environment:
    TXBROKER_BIN   the broker binary (default <repo>/target/debug/txbroker)
    DATABASE_URL   the MariaDB server (default mysql://root@127.0.0.1:3306/test)
    TXBROKER_TEST_DB_PREFIX  prefix of the private database (default txb), so that checkouts
                   sharing one server do not collide
"""

import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import txbroker
import txbroker.dbapi

REPO = Path(__file__).resolve().parents[3]
BROKER_BIN = Path(os.environ.get("TXBROKER_BIN", REPO / "target" / "debug" / "txbroker"))
BASE_URL = os.environ.get("DATABASE_URL", "mysql://root@127.0.0.1:3306/test")
DB_NAME = f"{os.environ.get('TXBROKER_TEST_DB_PREFIX', 'txb')}_py_{os.getpid()}"


def database_url(name: str) -> str:
    """BASE_URL with its database replaced by ``name`` (query string kept)."""
    base, _, query = BASE_URL.partition("?")
    scheme, sep, rest = base.partition("://")
    host_part = rest.split("/", 1)[0]
    url = f"{scheme}{sep}{host_part}/{name}"
    return f"{url}?{query}" if query else url


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


class BrokerProcess:
    """One txbroker process on a free port, with its log kept for failure reports."""

    def __init__(self, db_url: str, listen: str = "127.0.0.1:0", **config: Any) -> None:
        if not BROKER_BIN.exists():
            pytest.fail(f"broker binary {BROKER_BIN} is missing: run `cargo build --bin txbroker`"
                        " or set TXBROKER_BIN")
        settings: Dict[str, Any] = {"shutdown_grace_ms": 500, "log_level": "info"}
        settings.update(config)
        fd, path = tempfile.mkstemp(prefix="txbroker-py-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            for key, value in settings.items():
                f.write(f"{key} = {_toml_value(value)}\n")
        self.config_path = path
        self.log: List[str] = []
        self.process = subprocess.Popen(
            [str(BROKER_BIN), "--config", path, "--listen", listen,
             "--database-url", db_url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        addresses: "queue.Queue[str]" = queue.Queue()

        def read_log() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line.rstrip("\n"))
                if "address: " in line:
                    rest = line.split("address: ", 1)[1]
                    addresses.put(rest.replace(",", " ").split()[0])

        threading.Thread(target=read_log, daemon=True).start()
        try:
            address = addresses.get(timeout=30)
        except queue.Empty:
            self.stop()
            pytest.fail("the broker did not log its address:\n" + "\n".join(self.log))
        host, _, port = address.rpartition(":")
        self.host = host
        self.port = int(port)

    def client(self, **kwargs: Any) -> txbroker.Client:
        kwargs.setdefault("timeout", 30)
        return txbroker.Client(self.host, self.port, **kwargs)

    def dbapi(self, **kwargs: Any) -> "txbroker.dbapi.Connection":
        """A DB-API connection to this broker."""
        kwargs.setdefault("timeout", 30)
        return txbroker.dbapi.connect(self.host, self.port, **kwargs)

    def url(self, database: str, **query: str) -> str:
        """A ``mysql+txbroker`` SQLAlchemy URL for this broker."""
        extra = "&".join(f"{key}={value}" for key, value in query.items())
        url = f"mysql+txbroker://{self.host}:{self.port}/{database}"
        return f"{url}?{extra}" if extra else url

    def stop(self) -> Optional[int]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.unlink(self.config_path)
        except OSError:
            pass
        return self.process.returncode


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Polls ``predicate`` until it returns a truthy value; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def database():
    """A private database, created through a broker on the base URL (the broker runs DDL in
    autocommit mode) and dropped at the end of the run. Yields its URL."""
    admin = BrokerProcess(BASE_URL)
    try:
        with admin.client() as c:
            c.exec(f"DROP DATABASE IF EXISTS `{DB_NAME}`")
            c.exec(f"CREATE DATABASE `{DB_NAME}`")
        yield database_url(DB_NAME)
        with admin.client() as c:
            c.exec(f"DROP DATABASE IF EXISTS `{DB_NAME}`")
    finally:
        admin.stop()


def direct_url(driver: str, name: str) -> str:
    """A SQLAlchemy URL straight to the MariaDB of BASE_URL (``mysql+pymysql``...)."""
    rest = BASE_URL.partition("://")[2].partition("?")[0]
    return f"mysql+{driver}://{rest.split('/', 1)[0]}/{name}"


@pytest.fixture(scope="session")
def database_name(database):
    """The private database's name."""
    return DB_NAME


@pytest.fixture(scope="session")
def broker(database):
    """The shared broker, default settings (short lock wait so failures are quick)."""
    process = BrokerProcess(database, lock_wait_timeout_ms=5000)
    yield process
    code = process.stop()
    assert code == 0, "the broker did not exit 0 on SIGTERM:\n" + "\n".join(process.log[-20:])


@pytest.fixture
def start_broker(database):
    """Factory for brokers with a particular config; stopped at the end of the test."""
    started: List[BrokerProcess] = []

    def start(**config: Any) -> BrokerProcess:
        process = BrokerProcess(database, **config)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def client(broker):
    with broker.client() as c:
        yield c


@pytest.fixture
def table_name(request):
    """A table name unique to the test."""
    name = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    return ("t_" + name)[:60]
