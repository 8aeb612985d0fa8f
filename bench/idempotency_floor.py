"""What MariaDB itself pays for an idempotency record, without the broker (issue 14).

Eight threads, each on its own PyMySQL connection straight to the server, run one-row updates
on random rows of 100 000, in three ways, and the script reads the server's own CPU time
(/proc/PID/stat of the local mariadbd) around each:

- ``autocommit``: the plain update alone, its own transaction (what the broker sends for a
  one-write ``tx`` without a key);
- ``transaction``: ``START TRANSACTION``, the update, ``COMMIT`` in one multi-statement
  query;
- ``recorded``: the same with the record ``INSERT`` the broker writes for a keyed ``tx``
  (random 32-byte key in hex, SHA-256-sized hash, a 70-byte response, row counts from
  ``ROW_COUNT()``, timestamps) before the ``COMMIT``: what a keyed one-row update costs the
  database in the broker's one-trip form.

It prints throughput and the server's CPU per transaction for each, in rounds (the ways
alternate), and the medians. On a machine where the database's CPU is what limits throughput,
the ratio of CPU per transaction bounds what any broker can make of a keyed update against a
plain one.

Usage: .venv-python/bin/python bench/idempotency_floor.py [--rounds 3] [--per-thread 3000]
(the server at 127.0.0.1:3306, root without a password; the database
txbench_idempotency_floor is made there).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import threading
import time

import pymysql
from pymysql.constants import CLIENT

DATABASE = "txbench_idempotency_floor"
ROWS = 100_000
THREADS = 8

SETUP = [
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"USE {DATABASE}",
    "DROP TABLE IF EXISTS accounts, outcomes",
    "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, "
    "updates BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
    f"INSERT INTO accounts (id, balance) SELECT seq, 1000 FROM seq_1_to_{ROWS}",
    # The broker's outcomes table, as src/idempotency.rs creates it.
    "CREATE TABLE outcomes (idempotency_key VARBINARY(128) NOT NULL PRIMARY KEY, "
    "request_hash BINARY(32) NOT NULL, response MEDIUMBLOB NOT NULL, "
    "results_omitted BOOL NOT NULL, row_counts TEXT CHARACTER SET ascii NULL, "
    "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "expires_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "KEY expires_at (expires_at)) ENGINE=InnoDB",
]


def connect() -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1",
        user="root",
        client_flag=CLIENT.MULTI_STATEMENTS,
        autocommit=True,
    )


def server_pid() -> int:
    for name in ("mariadbd", "mysqld"):
        found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
        if found.stdout.split():
            return int(found.stdout.split()[0])
    raise SystemExit("no local mariadbd or mysqld to read the CPU time of")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def statement(way: str) -> str:
    row = random.randint(1, ROWS)
    update = f"UPDATE accounts SET updates = updates + 1 WHERE id = {row}"
    if way == "autocommit":
        return update
    if way == "transaction":
        return f"START TRANSACTION;\n{update};\nCOMMIT"
    key, digest, response = os.urandom(32).hex(), os.urandom(32).hex(), os.urandom(70).hex()
    record = (
        "INSERT INTO outcomes (idempotency_key, request_hash, response, results_omitted, "
        "row_counts, created_at, expires_at) VALUES "
        f"(X'{key}', X'{digest}', X'{response}', 0, CONCAT_WS(',', ROW_COUNT()), NOW(6), "
        "NOW(6) + INTERVAL 86400 SECOND)"
    )
    return f"START TRANSACTION;\n{update};\n{record};\nCOMMIT"


def worker(way: str, transactions: int) -> None:
    connection = connect()
    with connection.cursor() as cursor:
        cursor.execute(f"USE {DATABASE}")
        for _ in range(transactions):
            cursor.execute(statement(way))
            while cursor.nextset():
                pass
    connection.close()


def measure(way: str, per_thread: int, pid: int) -> tuple[float, float]:
    threads = [threading.Thread(target=worker, args=(way, per_thread)) for _ in range(THREADS)]
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    transactions = per_thread * THREADS
    return transactions / elapsed, cpu * 1e6 / transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-thread", type=int, default=3000)
    arguments = parser.parse_args()
    connection = connect()
    with connection.cursor() as cursor:
        for sql in SETUP:
            cursor.execute(sql)
    connection.close()
    pid = server_pid()
    ways = ["autocommit", "transaction", "recorded"]
    figures: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for round_number in range(1, arguments.rounds + 1):
        for way in ways if round_number % 2 else list(reversed(ways)):
            throughput, cpu = measure(way, arguments.per_thread, pid)
            figures[way].append((throughput, cpu))
            print(f"round {round_number} {way}: {throughput:.0f} tx/s, server CPU {cpu:.1f} µs/tx")
    base = statistics.median(cpu for _, cpu in figures["autocommit"])
    for way in ways:
        throughput = statistics.median(t for t, _ in figures[way])
        cpu = statistics.median(c for _, c in figures[way])
        print(
            f"{way}: median {throughput:.0f} tx/s, server CPU {cpu:.1f} µs/tx "
            f"({cpu / base:.2f}x the autocommit update's)"
        )


if __name__ == "__main__":
    main()
