"""Several processes move money concurrently through the broker with declared keys."""

import multiprocessing

from transfer_worker import transfer

PROCESSES = 4
TRANSFERS = 60
ACCOUNTS = 6
INITIAL = 1000


def test_concurrent_transfers_keep_the_sum_and_never_deadlock(start_broker):
    broker = start_broker()  # its own broker: its counters are this test's alone
    table = "accounts_concurrency"
    with broker.client() as c:
        c.exec(f"DROP TABLE IF EXISTS {table}")
        c.exec(f"CREATE TABLE {table} (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
        for i in range(1, ACCOUNTS + 1):
            c.exec(f"INSERT INTO {table} VALUES (?, ?)", [i, INITIAL])

        jobs = [(broker.host, broker.port, table, ACCOUNTS, TRANSFERS, seed)
                for seed in range(PROCESSES)]
        with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
            outcomes = pool.map(transfer, jobs)

        assert [done for done, _ in outcomes] == [TRANSFERS] * PROCESSES
        rows = c.exec(f"SELECT COUNT(*), SUM(balance) FROM {table}").rows[0]
        assert int(rows[0]) == ACCOUNTS
        assert int(rows[1]) == ACCOUNTS * INITIAL
        stats = c.stats()
        assert stats["deadlocks"] == 0, stats
        assert stats["transactions_committed"] >= PROCESSES * TRANSFERS, stats
        assert stats["locks_held"] == 0 and stats["lock_waiters"] == 0, stats
        assert stats["lock_timeouts"] == 0, stats
        assert stats["lock_waits"] > 0, stats  # the processes did contend for keys
