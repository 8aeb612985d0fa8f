"""The DB-API overhead of txbroker.dbapi against PyMySQL straight to MariaDB, on uncontended
single-row updates (issue 13).

Each of ``--threads`` threads opens its own connection and updates rows of its own (no two
threads touch one row), one transaction per update, for ``--duration`` seconds; targets run
alternately for ``--rounds`` rounds and each is quoted as the median of its rounds, with
the ratio to PyMySQL in the same mode. Targets:

- ``pymysql-autocommit``: PyMySQL, ``autocommit=True``, one ``execute`` per update;
- ``dbapi-autocommit``: txbroker.dbapi with ``autocommit = True``: one ``exec``;
- ``client-autocommit``: the plain ``txbroker.Client.exec``, to tell the DB-API layer's
  cost from the broker's hop;
- ``dbapi-keyed``: the same as ``dbapi-autocommit`` with the row's key declared
  (``lock``), which makes each update a one-statement ``tx`` holding the key;
- ``pymysql-commit``: PyMySQL, ``execute`` then ``commit()``;
- ``dbapi-commit``: txbroker.dbapi, ``execute`` then ``commit()`` (the broker's ``begin``,
  ``exec``, ``commit``).

The script starts its own broker (``--broker-bin``, a release build) against its own database
(``--database``, created if missing; never ``test``), over TCP:

    cargo build --release --bin txbroker
    .venv-python/bin/python bench/python_dbapi.py --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pymysql

from txbroker import Client, dbapi

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_THREAD = 100


def start_broker(binary: str, database_url: str,
                 session_threads: int) -> "tuple[subprocess.Popen[str], int]":
    fd, config = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        # info: the line with the address
        f.write(f'log_level = "info"\nsession_threads = {session_threads}\n')
    process = subprocess.Popen(
        [binary, "--config", config, "--listen", "127.0.0.1:0", "--database-url", database_url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addresses: "queue.Queue[str]" = queue.Queue()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if "address: " in line:
                addresses.put(line.split("address: ", 1)[1].replace(",", " ").split()[0])

    threading.Thread(target=read_log, daemon=True).start()
    return process, int(addresses.get(timeout=30).rpartition(":")[2])


def prepare(database: str, threads: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        cur.execute(f"DROP TABLE IF EXISTS `{database}`.bench_rows")
        cur.execute(f"CREATE TABLE `{database}`.bench_rows (id INT PRIMARY KEY, n BIGINT)")
        rows = ",".join(f"({i}, 0)" for i in range(threads * ROWS_PER_THREAD))
        cur.execute(f"INSERT INTO `{database}`.bench_rows VALUES {rows}")
    conn.close()


Update = Callable[[int], None]


def pymysql_updater(database: str, autocommit: bool) -> "tuple[Update, Callable[[], None]]":
    conn = pymysql.connect(host="127.0.0.1", user="root", database=database,
                           autocommit=autocommit)
    cur = conn.cursor()

    def update(row: int) -> None:
        cur.execute("UPDATE bench_rows SET n = n + 1 WHERE id = %s", (row,))
        if not autocommit:
            conn.commit()

    return update, conn.close


def client_updater(port: int) -> "tuple[Update, Callable[[], None]]":
    client = Client("127.0.0.1", port)

    def update(row: int) -> None:
        client.exec("UPDATE bench_rows SET n = n + 1 WHERE id = ?", (row,))

    return update, client.close


def dbapi_updater(port: int, database: str, mode: str) -> "tuple[Update, Callable[[], None]]":
    conn = dbapi.connect("127.0.0.1", port, database=database, autocommit=mode != "commit")
    cur = conn.cursor()

    def update(row: int) -> None:
        if mode == "keyed":
            conn.lock(f"bench_rows:{row:06d}")
        cur.execute("UPDATE bench_rows SET n = n + 1 WHERE id = ?", (row,))
        if mode == "commit":
            conn.commit()

    return update, conn.close


def run_target(make: Callable[[], "tuple[Update, Callable[[], None]]"], threads: int,
               duration: float) -> float:
    """Updates per second over all threads."""
    counts: List[int] = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        update, close = make()
        rows = range(index * ROWS_PER_THREAD, (index + 1) * ROWS_PER_THREAD)
        start.wait()
        done = 0
        while not stop.is_set():
            update(rows[done % ROWS_PER_THREAD])
            done += 1
        counts[index] = done
        close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.monotonic()
    time.sleep(duration)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-bin", default=str(REPO / "target/release/txbroker"))
    prefix = os.environ.get("TXBROKER_TEST_DB_PREFIX", "txb")
    parser.add_argument("--database", default=f"{prefix}_pybench")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--session-threads", type=int, default=1,
                        help="the broker's session_threads (its default: 1)")
    args = parser.parse_args()
    if args.database == "test":
        sys.exit("use a database of the benchmark's own, not test")
    prepare(args.database, args.threads)
    broker, port = start_broker(
        args.broker_bin, f"mysql://root@127.0.0.1:3306/{args.database}?prefer_socket=false",
        args.session_threads)
    db = args.database
    targets: Dict[str, Callable[[], Any]] = {
        "pymysql-autocommit": lambda: pymysql_updater(db, True),
        "dbapi-autocommit": lambda: dbapi_updater(port, db, "autocommit"),
        "client-autocommit": lambda: client_updater(port),
        "dbapi-keyed": lambda: dbapi_updater(port, db, "keyed"),
        "pymysql-commit": lambda: pymysql_updater(db, False),
        "dbapi-commit": lambda: dbapi_updater(port, db, "commit"),
    }
    figures: Dict[str, List[float]] = {name: [] for name in targets}
    try:
        for round_ in range(1, args.rounds + 1):
            for name, make in targets.items():
                rate = run_target(make, args.threads, args.duration)
                figures[name].append(rate)
                print(f"round {round_} {name:20s} {rate:8.0f} updates/s", flush=True)
    finally:
        broker.terminate()
        broker.wait(15)
    median = {name: statistics.median(rates) for name, rates in figures.items()}
    print(f"\nmedians over {args.rounds} rounds, {args.threads} threads, "
          f"{args.duration:.0f} s each")
    for name, rate in median.items():
        base = "pymysql-autocommit" if "autocommit" in name or "keyed" in name \
            else "pymysql-commit"
        print(f"{name:20s} {rate:8.0f} updates/s  {rate / median[base]:.2f}x {base}")


if __name__ == "__main__":
    main()
