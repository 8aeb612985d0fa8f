"""The example service (examples/python/bank_service.py) under concurrent load, the same
code straight to MariaDB (mysql+pymysql) and through the broker (mysql+txbroker with
declared keys): deadlocks and failed requests directly, none through the broker, and the
money invariant kept in both."""

import http.client
import json
import random
import sys
import threading

import pytest

from conftest import REPO, direct_url

sys.path.insert(0, str(REPO / "examples" / "python"))
from bank_service import Bank, serve  # noqa: E402

THREADS = 16
REQUESTS_PER_THREAD = 20
HOT_ACCOUNTS = 3  # few rows and both directions: opposite lock orders meet often
BALANCE = 1000


def load(server):
    """THREADS clients, each sending transfers between random hot accounts in random
    direction; returns the status and body of every response."""
    host, port = server.server_address[:2]
    answers = []
    lock = threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for _ in range(REQUESTS_PER_THREAD):
            source, target = rng.sample(range(1, HOT_ACCOUNTS + 1), 2)
            body = json.dumps({"from": source, "to": target, "amount": rng.randint(1, 9)})
            conn.request("POST", "/transfer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = (response.status, json.loads(response.read()))
            with lock:
                answers.append(answer)
        conn.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == THREADS * REQUESTS_PER_THREAD
    return answers


def run_bank(url, declare_keys):
    bank = Bank(url, declare_keys=declare_keys, pool_size=THREADS)
    bank.open_accounts(HOT_ACCOUNTS, BALANCE)
    server = serve(bank)
    try:
        answers = load(server)
        balances = bank.balances()
    finally:
        server.shutdown()
        server.server_close()
        bank.close()
    failed = [body for status, body in answers if status != 200]
    deadlocks = [body for body in failed if body.get("deadlock")]
    return failed, deadlocks, balances


def test_straight_to_mariadb_opposite_transfers_deadlock(database_name):
    pytest.importorskip("pymysql")
    failed, deadlocks, balances = run_bank(direct_url("pymysql", database_name), False)
    assert len(deadlocks) > 0, "the direct run saw no deadlock: the load is too gentle"
    assert len(failed) >= len(deadlocks)
    assert sum(balances.values()) == HOT_ACCOUNTS * BALANCE


def test_through_the_broker_with_keys_nothing_fails(start_broker, database_name):
    broker = start_broker()
    failed, deadlocks, balances = run_bank(broker.url(database_name), True)
    assert failed == [], failed[:3]
    assert sum(balances.values()) == HOT_ACCOUNTS * BALANCE
    with broker.client() as client:
        stats = client.stats()
    assert stats["deadlocks"] == 0, stats
    assert stats["lock_waits"] > 0, stats  # the requests did contend, and queued
    assert stats["locks_held"] == 0, stats
