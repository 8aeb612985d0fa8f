"""The Python client against a real txbroker and MariaDB."""

import datetime
import socket
import threading
from decimal import Decimal
from pathlib import Path

import pytest

import txbroker
from conftest import wait_for
from txbroker import (
    AuthenticationError,
    BadRequestError,
    BusyError,
    DeadlockError,
    FrameTooLargeError,
    LockConflictError,
    LockTimeoutError,
    NoTransactionError,
    SqlError,
    TxAbortedError,
    TxActiveError,
    TxbrokerConnectionError,
    TxbrokerError,
)


def count(client, table, where="1=1", params=()):
    return client.exec(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).scalar()


def make_accounts(client, table, balances):
    client.exec(f"DROP TABLE IF EXISTS {table}")
    client.exec(f"CREATE TABLE {table} (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
    for i, balance in enumerate(balances, start=1):
        client.exec(f"INSERT INTO {table} (id, balance) VALUES (?, ?)", [i, balance])


# ------------------------------------------------------------------ session basics


def test_hello_ping_stats(broker, client):
    assert isinstance(client.session, int)
    assert client.server.startswith("txbroker")
    assert client.protocol == 1
    client.ping()
    stats = client.stats()
    for key in ("sessions", "transactions_committed", "transactions_rolled_back", "retries",
                "deadlocks", "lock_waits", "lock_timeouts", "locks_held", "lock_waiters"):
        assert isinstance(stats[key], int) and stats[key] >= 0, key
    assert stats["sessions"] >= 1
    with broker.client() as other:
        assert other.session != client.session
        assert client.stats()["sessions"] >= 2


def test_connect_refused_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError) as info:
        txbroker.Client("127.0.0.1", port, timeout=5)
    assert isinstance(info.value, TxbrokerConnectionError)
    assert isinstance(info.value, TxbrokerError)
    assert info.value.code == "connection"


def test_closed_client_raises_connection_error(broker):
    c = broker.client()
    c.close()
    with pytest.raises(TxbrokerConnectionError):
        c.ping()


# ------------------------------------------------------------------ one-shot tx


def test_tx_moves_money_with_locks(client, table_name):
    make_accounts(client, table_name, [100, 50])
    result = client.tx(
        [
            (f"UPDATE {table_name} SET balance = balance - ? WHERE id = ?", [30, 1]),
            {"sql": f"UPDATE {table_name} SET balance = balance + ? WHERE id = ?",
             "params": [30, 2]},
            f"SELECT id, balance FROM {table_name} ORDER BY id",
        ],
        locks=[f"{table_name}:1", f"{table_name}:2"],
    )
    assert result.attempts == 1
    assert [r.affected for r in result.results[:2]] == [1, 1]
    assert result.results[0].columns == [] and result.results[0].rows == []
    assert result.results[2].columns == ["id", "balance"]
    assert result.results[2].rows == [[1, 70], [2, 80]]
    assert client.exec(f"SELECT SUM(balance) FROM {table_name}").scalar() in (150, "150")
    assert client.stats()["locks_held"] == 0


def test_tx_statement_forms_isolation_and_read_only(client, table_name):
    make_accounts(client, table_name, [1])
    assert client.tx(f"SELECT balance FROM {table_name}").results[0].rows == [[1]]
    assert client.tx((f"SELECT balance FROM {table_name} WHERE id = ?", [1]))[0].rows == [[1]]
    assert client.tx([{"sql": "SELECT 2"}, ("SELECT ?", ["x"]), ("SELECT 3",)])[2].rows == [[3]]
    for level in txbroker.ISOLATION_LEVELS:
        assert client.tx("SELECT 1", isolation=level, read_locks=["r"]).results[0].rows == [[1]]
    with pytest.raises(SqlError):
        client.tx(f"INSERT INTO {table_name} VALUES (9, 9)", read_only=True)
    assert count(client, table_name, "id = 9") == 0


def test_statement_error_names_statement_and_rolls_back(client, table_name):
    make_accounts(client, table_name, [])
    with pytest.raises(SqlError) as info:
        client.tx(
            [
                (f"INSERT INTO {table_name} VALUES (?, ?)", [1, 10]),
                (f"INSERT INTO {table_name} VALUES (?, ?)", [2, 10]),
                (f"INSERT INTO {table_name} VALUES (?, ?)", [1, 10]),
            ],
            locks=["dup"],
        )
    error = info.value
    assert error.code == "sql"
    assert error.mysql_code == 1062
    assert error.sqlstate == "23000"
    assert error.statement == 2
    assert error.retryable is False
    assert "Duplicate" in error.message
    assert count(client, table_name) == 0
    assert client.stats()["locks_held"] == 0


def test_bad_request_keeps_the_connection(client):
    with pytest.raises(BadRequestError) as info:
        client.tx("SELECT 1", isolation="chaos")
    assert info.value.code == "bad_request" and not info.value.retryable
    with pytest.raises(BadRequestError):
        client.tx([])
    client.ping()


def test_exec_results(client, table_name):
    client.exec(f"DROP TABLE IF EXISTS {table_name}")
    ddl = client.exec(
        f"CREATE TABLE {table_name} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20))")
    assert ddl.columns == [] and ddl.rows == []
    first = client.exec(f"INSERT INTO {table_name} (name) VALUES (?)", ["a"])
    assert first.affected == 1 and first.last_insert_id == 1
    second = client.exec(f"INSERT INTO {table_name} (name) VALUES (?), (?)", ["b", "c"])
    assert second.affected == 2 and second.last_insert_id == 2
    rows = client.exec(f"SELECT id, name FROM {table_name} ORDER BY id")
    assert rows.last_insert_id is None
    assert rows.dicts() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


# ------------------------------------------------------------------ values


def test_values_round_trip(client, table_name):
    client.exec(f"DROP TABLE IF EXISTS {table_name}")
    client.exec(
        f"""CREATE TABLE {table_name} (
            id INT PRIMARY KEY, bin VARBINARY(64), blb BLOB, dec6 DECIMAL(20,6),
            txt TEXT, dt DATETIME(6), d DATE, tm TIME(6), big BIGINT UNSIGNED,
            neg BIGINT, dbl DOUBLE, flag BOOL, maybe INT NULL
        ) DEFAULT CHARSET=utf8mb4"""
    )
    binary = bytes(range(256))[:64]
    values = [
        1,
        b"\x00\xff\xfe raw",
        binary,
        Decimal("12345678901234.500000"),
        "h\u00e9llo \U0001F600",
        datetime.datetime(2024, 2, 29, 13, 45, 1, 250000),
        datetime.date(1999, 12, 31),
        datetime.timedelta(hours=100, minutes=2, seconds=3),
        2**64 - 1,
        -(2**63),
        0.1,
        True,
        None,
    ]
    client.exec(f"INSERT INTO {table_name} VALUES ({', '.join('?' * len(values))})", values)
    client.exec(f"INSERT INTO {table_name} (id, dec6, tm) VALUES (?, ?, ?)",
                [2, "-0.5", "-838:59:59"])
    row = client.exec(f"SELECT * FROM {table_name} WHERE id = 1").rows[0]
    assert row[0] == 1
    assert row[1] == b"\x00\xff\xfe raw" and isinstance(row[1], bytes)
    assert row[2] == binary and isinstance(row[2], bytes)
    assert row[3] == "12345678901234.500000"
    assert row[4] == "h\u00e9llo \U0001F600"
    assert row[5] == "2024-02-29 13:45:01.250000"
    assert row[6] == "1999-12-31"
    assert row[7] in ("100:02:03", "100:02:03.000000")
    assert row[8] == 2**64 - 1
    assert row[9] == -(2**63)
    assert row[10] == 0.1
    assert row[11] == 1
    assert row[12] is None
    other = client.exec(f"SELECT dec6, tm, bin, maybe FROM {table_name} WHERE id = 2").rows[0]
    assert other[0] == "-0.500000"
    assert other[1] in ("-838:59:59", "-838:59:59.000000")
    assert other[2] is None and other[3] is None
    # Exact decimal arithmetic stays exact text.
    assert client.exec("SELECT CAST(? AS DECIMAL(30,10)) + 0", [Decimal("0.1")]).scalar() == \
        "0.1000000000"
    with pytest.raises(TypeError):
        client.exec("SELECT ?", [object()])
    client.ping()  # a value the client cannot encode sends nothing


# ------------------------------------------------------------------ interactive


def test_interactive_commit(broker, client, table_name):
    make_accounts(client, table_name, [100, 0])
    with client.transaction(locks=[f"{table_name}:1"], isolation="read_committed") as t:
        assert t.active
        balance = t.exec(f"SELECT balance FROM {table_name} WHERE id = ?", [1]).scalar()
        t.lock([f"{table_name}:2"])  # above every held key: waited for as usual
        t.exec(f"UPDATE {table_name} SET balance = ? WHERE id = ?", [balance - 40, 1])
        t.exec(f"UPDATE {table_name} SET balance = balance + ? WHERE id = ?", [40, 2])
        assert client.stats()["locks_held"] >= 2
    assert not t.active
    with broker.client() as other:
        assert other.exec(f"SELECT balance FROM {table_name} ORDER BY id").rows == [[60], [40]]
    assert client.stats()["locks_held"] == 0


def test_interactive_rollback_on_exception(broker, client, table_name):
    make_accounts(client, table_name, [])
    with pytest.raises(ValueError, match="boom"):
        with client.transaction(locks=["rb"]) as t:
            t.exec(f"INSERT INTO {table_name} VALUES (?, ?)", [1, 1])
            t.exec(f"INSERT INTO {table_name} VALUES (?, ?)", [2, 2])
            raise ValueError("boom")
    assert not t.active
    with broker.client() as other:
        assert count(other, table_name) == 0
    assert client.stats()["locks_held"] == 0
    # The session is usable again: a new transaction starts.
    with client.transaction() as t2:
        t2.exec(f"INSERT INTO {table_name} VALUES (?, ?)", [3, 3])
    assert count(client, table_name) == 1


def test_explicit_commit_rollback_and_finished_transaction(client, table_name):
    make_accounts(client, table_name, [])
    t = client.transaction()
    t.exec(f"INSERT INTO {table_name} VALUES (1, 1)")
    t.commit()
    with pytest.raises(NoTransactionError):
        t.exec(f"INSERT INTO {table_name} VALUES (2, 2)")  # never in autocommit by mistake
    t.rollback()  # no-op once finished
    with client.transaction() as t:
        t.exec(f"INSERT INTO {table_name} VALUES (3, 3)")
        t.rollback()
    assert [r[0] for r in client.exec(f"SELECT id FROM {table_name}").rows] == [1]
    with pytest.raises(NoTransactionError) as info:
        client.commit()
    assert info.value.code == "no_transaction"
    client.rollback()  # idempotent on the broker too


def test_sql_error_inside_transaction_keeps_it_open(client, table_name):
    make_accounts(client, table_name, [])
    with client.transaction() as t:
        t.exec(f"INSERT INTO {table_name} VALUES (1, 1)")
        with pytest.raises(SqlError) as info:
            t.exec(f"INSERT INTO {table_name} VALUES (1, 2)")
        assert info.value.mysql_code == 1062
        t.exec(f"INSERT INTO {table_name} VALUES (2, 2)")
    assert count(client, table_name) == 2


def test_tx_active(client):
    with client.transaction():
        with pytest.raises(TxActiveError):
            client.tx("SELECT 1")
        with pytest.raises(TxActiveError):
            client.transaction()
        client.ping()


def test_out_of_order_lock_conflict_aborts(broker, client):
    with broker.client() as other:
        with other.transaction(locks=["conflict:2"]):
            with pytest.raises(LockConflictError) as info:
                with client.transaction(locks=["conflict:3"]) as t:
                    try:
                        t.lock(["conflict:2"])  # below a held key and taken: only tried
                    except LockConflictError as error:
                        assert error.retryable and error.code == "lock_conflict"
                        with pytest.raises(TxAbortedError) as aborted:
                            t.exec("SELECT 1")
                        assert aborted.value.code == "tx_aborted"
                        raise
            assert info.value.retryable
        # The with block rolled back: the session is out of the aborted state.
        assert client.exec("SELECT 1").scalar() == 1
    assert client.stats()["locks_held"] == 0


def test_failed_commit_leaves_the_session_usable(start_broker):
    broker = start_broker(idle_tx_timeout_ms=200)
    with broker.client() as c, broker.client() as watcher:
        with pytest.raises(TxAbortedError):
            with c.transaction(locks=["fc"]):
                wait_for(lambda: watcher.stats()["locks_held"] == 0, what="idle abort")
        assert c.exec("SELECT 1").scalar() == 1


# ------------------------------------------------------------------ broker limits


def test_tx_aborted_after_idle_timeout(start_broker, table_name):
    broker = start_broker(idle_tx_timeout_ms=300)
    with broker.client() as c, broker.client() as watcher:
        make_accounts(c, table_name, [])
        with pytest.raises(TxAbortedError) as info:
            with c.transaction(locks=["idle:1", "idle:2"]) as t:
                t.exec(f"INSERT INTO {table_name} VALUES (1, 1)")
                assert watcher.stats()["locks_held"] == 2
                wait_for(lambda: watcher.stats()["locks_held"] == 0, timeout=10,
                         what="the idle transaction to be aborted")
                t.exec(f"INSERT INTO {table_name} VALUES (2, 2)")
        error = info.value
        assert error.code == "tx_aborted" and not error.retryable
        assert "idle" in error.message.lower(), error.message
        assert count(watcher, table_name) == 0
        # __exit__ sent the rollback: the session works again, in autocommit.
        c.exec(f"INSERT INTO {table_name} VALUES (3, 3)")
        assert count(watcher, table_name) == 1


def test_lock_timeout(start_broker):
    broker = start_broker(lock_wait_timeout_ms=200)
    with broker.client() as holder, broker.client() as c:
        with holder.transaction(locks=["lt:1"]):
            with pytest.raises(LockTimeoutError) as info:
                c.tx("SELECT 1", locks=["lt:0", "lt:1"])
            assert info.value.code == "lock_timeout" and info.value.retryable
            stats = c.stats()
            assert stats["lock_timeouts"] >= 1
            assert stats["locks_held"] == 1  # lt:0 was released with the timeout
        assert c.tx("SELECT 1", locks=["lt:1"]).attempts == 1


def test_auth_tokens(start_broker):
    broker = start_broker(auth_tokens=["s3cret", "other"])
    with broker.client(token="s3cret") as c:
        c.ping()
        assert c.exec("SELECT 1").scalar() == 1
    for token in ("wrong", "s3cre", None):
        with pytest.raises(AuthenticationError) as info:
            broker.client(token=token)
        assert info.value.code == "unauthenticated"
        assert not info.value.retryable


def test_busy_when_sessions_are_full(start_broker):
    broker = start_broker(max_sessions=1)
    with broker.client() as first:
        with pytest.raises(BusyError) as info:
            broker.client()
        assert info.value.code == "busy" and info.value.retryable
        first.ping()


def test_frame_too_large_closes_the_client(start_broker):
    broker = start_broker(max_frame_bytes=1024)
    c = broker.client()
    with pytest.raises(FrameTooLargeError) as info:
        c.exec("SELECT ?", ["x" * 4096])
    assert info.value.code == "frame_too_large"
    assert c.closed
    with pytest.raises(TxbrokerConnectionError):
        c.ping()


def test_broker_gone_is_a_connection_error(start_broker):
    broker = start_broker()
    c = broker.client()
    c.ping()
    assert broker.stop() == 0
    with pytest.raises(ConnectionError):
        c.ping()
    assert c.closed


# ------------------------------------------------------------------ deadlocks and retry


def test_database_deadlock_in_interactive_transactions(start_broker, table_name):
    broker = start_broker()
    with broker.client() as a, broker.client() as b, broker.client() as watcher:
        make_accounts(a, table_name, [10, 10])
        outcome = {}
        ta = a.transaction()
        tb = b.transaction()
        a_thread_id = ta.exec("SELECT CONNECTION_ID()").scalar()
        ta.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 1")
        tb.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 2")

        def a_crosses():
            try:
                ta.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 2")
                outcome["a"] = "ok"
            except TxbrokerError as error:
                outcome["a"] = error

        thread = threading.Thread(target=a_crosses)
        thread.start()
        wait_for(
            lambda: watcher.exec(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                " WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id = ?",
                [a_thread_id],
            ).scalar() >= 1,
            what="a to wait for row 2",
        )
        try:
            tb.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 1")
            outcome["b"] = "ok"
        except TxbrokerError as error:
            outcome["b"] = error
        thread.join(30)
        errors = [(name, e) for name, e in outcome.items() if isinstance(e, TxbrokerError)]
        assert len(errors) == 1, outcome
        name, error = errors[0]
        assert isinstance(error, DeadlockError)
        assert error.code == "deadlock" and error.retryable and error.mysql_code == 1213
        victim, survivor = (ta, tb) if name == "a" else (tb, ta)
        with pytest.raises(TxAbortedError):
            victim.exec("SELECT 1")
        victim.rollback()
        survivor.commit()
        assert watcher.stats()["deadlocks"] >= 1
        assert watcher.exec(f"SELECT SUM(balance) FROM {table_name}").scalar() in (22, "22")


def test_retry_helper():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise DeadlockError("deadlock", mysql_code=1213)
        return "done"

    assert txbroker.retry(flaky, attempts=5, backoff=0.001) == "done"
    assert len(calls) == 3

    def always():
        raise LockTimeoutError("slow")

    with pytest.raises(LockTimeoutError):
        txbroker.retry(always, attempts=2, backoff=0.001)

    def fatal():
        calls.append(1)
        raise SqlError("bad", mysql_code=1064)

    calls.clear()
    with pytest.raises(SqlError):
        txbroker.retry(fatal, attempts=5, backoff=0.001)
    assert len(calls) == 1


def test_retry_helper_with_real_lock_conflicts(broker, client):
    attempts = []
    with broker.client() as holder:
        t = holder.transaction(locks=["retry:1"])

        def move():
            attempts.append(1)
            if len(attempts) == 2:
                t.commit()  # the holder lets go before the second run
            with client.transaction(locks=["retry:2"]) as mine:
                mine.lock(["retry:1"])
                return mine.exec("SELECT 42").scalar()

        assert txbroker.retry(move, attempts=3, backoff=0.001) == 42
    assert len(attempts) == 2


TLS_DIR = Path(__file__).parent / "tls"


def test_tls_connection(start_broker):
    """A broker with tls_cert/tls_key serves clients that trust its certificate, and refuses
    plain ones. The certificate is a self-signed test certificate for localhost."""
    import ssl

    broker = start_broker(
        tls_cert=str(TLS_DIR / "localhost.crt"), tls_key=str(TLS_DIR / "localhost.key")
    )
    context = ssl.create_default_context(cafile=str(TLS_DIR / "localhost.crt"))
    with broker.client(ssl_context=context, server_hostname="localhost") as c:
        assert c.protocol == 1
        c.ping()
        assert c.exec("SELECT ?", [41]).rows == [[41]]
    with pytest.raises(txbroker.TxbrokerConnectionError):
        broker.client(timeout=5)


# ------------------------------------------------------------------ idempotency keys


def _transfer(client, table, key, amount=10):
    return client.tx(
        [(f"UPDATE {table} SET balance = balance - ? WHERE id = 1", [amount]),
         (f"UPDATE {table} SET balance = balance + ? WHERE id = 2", [amount]),
         f"SELECT balance FROM {table} ORDER BY id"],
        locks=[f"{table}:1", f"{table}:2"],
        idempotency_key=key,
    )


def test_a_keyed_tx_is_answered_again_replayed_and_a_mismatch_is_refused(
        broker, client, table_name):
    make_accounts(client, table_name, [100, 50])
    key = txbroker.new_idempotency_key()
    first = _transfer(client, table_name, key)
    assert not first.replayed
    with broker.client() as other:
        again = _transfer(other, table_name, key)
    assert again.replayed and not again.results_omitted
    assert again.results[2].rows == first.results[2].rows == [[90], [60]]
    assert client.exec(f"SELECT balance FROM {table_name} WHERE id = 1").scalar() == 90
    with pytest.raises(txbroker.IdempotencyMismatchError) as refused:
        _transfer(client, table_name, key, amount=11)
    assert not refused.value.retryable
    assert client.exec(f"SELECT balance FROM {table_name} WHERE id = 1").scalar() == 90


def test_retry_idempotent_keeps_its_key_across_a_lost_answer_and_a_reconnect(broker, table_name):
    with broker.client() as setup:
        make_accounts(setup, table_name, [100, 50])
    keys, answers = [], []

    def transfer(key):
        keys.append(key)
        with broker.client() as client:
            result = _transfer(client, table_name, key)
        answers.append(result.replayed)
        if len(keys) == 1:
            # The answer of the first run is lost with its connection, as in a crash.
            raise TxbrokerConnectionError("connection lost before the answer")
        return result

    result = txbroker.retry_idempotent(transfer, backoff=0.001)
    assert len(set(keys)) == 1 and len(keys) == 2
    assert answers == [False, True]
    assert result.replayed
    with broker.client() as check:
        assert check.exec(f"SELECT balance FROM {table_name} WHERE id = 1").scalar() == 90

    explicit = []
    txbroker.retry_idempotent(lambda key: explicit.append(key), key="mine")
    assert explicit == ["mine"]


def test_a_later_begin_with_a_committed_key_opens_nothing(broker, client, table_name):
    make_accounts(client, table_name, [100])
    key = txbroker.new_idempotency_key()
    with client.transaction(locks=[f"{table_name}:1"], idempotency_key=key) as t:
        assert not t.replayed
        t.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 1")
    with broker.client() as later:
        t = later.transaction(locks=[f"{table_name}:1"], idempotency_key=key)
        assert t.replayed
        with pytest.raises(NoTransactionError):
            t.exec(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 1")
        t.commit()  # acknowledges: nothing was open
        assert later.exec(f"SELECT balance FROM {table_name} WHERE id = 1").scalar() == 101
