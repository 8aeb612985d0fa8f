"""txbroker.dbapi (PEP 249) against a real txbroker and MariaDB."""

import threading

import pytest

from conftest import wait_for
from txbroker import dbapi
from txbroker.dbapi.implicit_commit import commits_implicitly


def make_accounts(broker, table, balances):
    with broker.dbapi(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.executemany(f"INSERT INTO {table} (id, balance) VALUES (?, ?)",
                        list(enumerate(balances, start=1)))


def balances(broker, table):
    with broker.dbapi(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, balance FROM {table} ORDER BY id")
        return dict(cur.fetchall())


# ------------------------------------------------------------------ the module


def test_module_globals_and_exception_hierarchy():
    assert (dbapi.apilevel, dbapi.threadsafety, dbapi.paramstyle) == ("2.0", 1, "qmark")
    assert issubclass(dbapi.Error, Exception) and issubclass(dbapi.Warning, Exception)
    assert issubclass(dbapi.InterfaceError, dbapi.Error)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(dbapi, name), dbapi.DatabaseError), name


@pytest.mark.parametrize("sql, expected", [
    ("CREATE TABLE t (id INT)", True),
    ("  /* why */ drop table t", True),
    ("-- note\nALTER TABLE t ADD c INT", True),
    ("TRUNCATE t", True),
    ("CREATE TEMPORARY TABLE t (id INT)", False),
    ("DROP TEMPORARY TABLE t", False),
    ("SELECT 'CREATE TABLE'", False),
    ("INSERT INTO t VALUES (1)", False),
    ("", False),
])
def test_commits_implicitly(sql, expected):
    assert commits_implicitly(sql) is expected


def test_error_classes_follow_codes_and_mysql_numbers():
    from txbroker.dbapi.errors import error_class

    assert error_class("sql", 1062) is dbapi.IntegrityError
    assert error_class("sql", 1452) is dbapi.IntegrityError
    assert error_class("sql", 1064) is dbapi.ProgrammingError
    assert error_class("sql", 1406) is dbapi.DataError
    assert error_class("sql", 1792) is dbapi.OperationalError
    for code in ("deadlock", "db_lock_timeout", "lock_timeout", "lock_conflict",
                 "db_unavailable", "tx_aborted", "busy", "shutting_down", "commit_unknown"):
        assert error_class(code, None) is dbapi.OperationalError, code
    assert error_class("bad_request", None) is dbapi.ProgrammingError
    assert error_class("internal", None) is dbapi.InternalError


# ------------------------------------------------------------------ connecting


def test_database_is_checked_not_chosen(broker, database_name):
    with broker.dbapi(database=database_name) as conn:
        assert not conn.closed
    with pytest.raises(dbapi.ProgrammingError) as info:
        broker.dbapi(database="not_the_brokers_database")
    assert info.value.code == "wrong_database"
    assert database_name in str(info.value)


def test_refused_connection_is_an_operational_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect("127.0.0.1", port, timeout=5)
    assert info.value.code == "connection"


# ------------------------------------------------------------------ transactions


def test_transaction_opens_lazily_and_commits_or_rolls_back(broker, table_name):
    make_accounts(broker, table_name, [100])
    with broker.dbapi() as conn, broker.dbapi() as other:
        assert not conn.in_transaction
        conn.commit()  # nothing open: a no-op
        cur = conn.cursor()
        assert cur.execute(f"UPDATE {table_name} SET balance = 50 WHERE id = ?", [1]) == 1
        assert conn.in_transaction
        assert balances(broker, table_name) == {1: 100}  # not committed yet
        conn.rollback()
        assert not conn.in_transaction
        assert balances(broker, table_name) == {1: 100}
        cur.execute(f"UPDATE {table_name} SET balance = 60 WHERE id = ?", [1])
        conn.commit()
        assert balances(broker, table_name) == {1: 60}
        other_cur = other.cursor()
        other_cur.execute(f"SELECT balance FROM {table_name} WHERE id = 1")
        assert other_cur.fetchone() == (60,)


def test_autocommit_runs_each_statement_alone(broker, table_name):
    make_accounts(broker, table_name, [100])
    with broker.dbapi(autocommit=True) as conn:
        conn.cursor().execute(f"UPDATE {table_name} SET balance = 7 WHERE id = 1")
        assert not conn.in_transaction
        assert balances(broker, table_name) == {1: 7}
        conn.autocommit = False
        conn.cursor().execute(f"UPDATE {table_name} SET balance = 8 WHERE id = 1")
        assert conn.in_transaction
        conn.autocommit = True  # commits the open transaction, as SET autocommit = 1 does
        assert not conn.in_transaction
        assert balances(broker, table_name) == {1: 8}


def test_ddl_inside_a_transaction_commits_it_first_as_mysql_does(broker, table_name):
    make_accounts(broker, table_name, [100])
    with broker.dbapi() as conn:
        cur = conn.cursor()
        cur.execute(f"UPDATE {table_name} SET balance = 1 WHERE id = 1")
        cur.execute(f"CREATE TABLE {table_name}_x (id INT)")
        assert not conn.in_transaction
        assert balances(broker, table_name) == {1: 1}
        cur.execute(f"DROP TABLE {table_name}_x")


def test_commit_after_the_session_was_lost_raises(broker, table_name):
    make_accounts(broker, table_name, [100])
    conn = broker.dbapi()
    conn.cursor().execute(f"UPDATE {table_name} SET balance = 1 WHERE id = 1")
    conn.client.close()  # the session ends: the broker rolls back
    with pytest.raises(dbapi.OperationalError) as info:
        conn.commit()
    assert info.value.code == "connection"
    assert balances(broker, table_name) == {1: 100}


# ------------------------------------------------------------------ cursors


def test_cursor_results(broker, table_name):
    with broker.dbapi() as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table_name} (id INT AUTO_INCREMENT PRIMARY KEY, "
                    "name VARCHAR(20), amount DECIMAL(10,2))")
        assert cur.description is None
        cur.execute(f"INSERT INTO {table_name} (name, amount) VALUES (?, ?)", ["a", "1.50"])
        assert (cur.rowcount, cur.lastrowid, cur.description) == (1, 1, None)
        assert cur.executemany(f"INSERT INTO {table_name} (name, amount) VALUES (?, ?)",
                               [("b", 2), ("c", 3), ("d", 4)]) == 3
        cur.execute(f"SELECT id, name, amount FROM {table_name} WHERE id > ? ORDER BY id", [9])
        assert [d[0] for d in cur.description] == ["id", "name", "amount"]
        assert cur.rowcount == 0 and cur.fetchall() == []
        cur.execute(f"SELECT id, name, amount FROM {table_name} ORDER BY id")
        assert cur.rowcount == 4
        assert cur.fetchone() == (1, "a", "1.50")
        cur.arraysize = 2
        assert cur.fetchmany() == [(2, "b", "2.00"), (3, "c", "3.00")]
        assert list(cur) == [(4, "d", "4.00")]
        assert cur.fetchone() is None
        with pytest.raises(dbapi.ProgrammingError):
            cur.execute("SELECT ?", {"named": 1})
        cur.close()
        with pytest.raises(dbapi.InterfaceError):
            cur.fetchall()
        conn.commit()
    conn2 = broker.dbapi()
    conn2.close()
    with pytest.raises(dbapi.InterfaceError):
        conn2.cursor()


def test_errors_keep_the_broker_fields(broker, table_name):
    with broker.dbapi() as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table_name} (id INT PRIMARY KEY, "
                    f"parent INT, FOREIGN KEY (parent) REFERENCES {table_name} (id))")
        cur.execute(f"INSERT INTO {table_name} (id) VALUES (1)")
        with pytest.raises(dbapi.IntegrityError) as info:
            cur.execute(f"INSERT INTO {table_name} (id) VALUES (1)")
        error = info.value
        assert (error.code, error.mysql_code, error.sqlstate, error.retryable) == (
            "sql", 1062, "23000", False)
        assert error.args[0] == 1062
        with pytest.raises(dbapi.IntegrityError) as info:
            cur.execute(f"INSERT INTO {table_name} (id, parent) VALUES (2, 99)")
        assert info.value.mysql_code == 1452
        with pytest.raises(dbapi.ProgrammingError) as info:
            cur.execute("SELEC 1")
        assert info.value.mysql_code == 1064
        with pytest.raises(dbapi.ProgrammingError) as info:
            cur.execute(f"SELECT * FROM {table_name}_missing")
        assert info.value.mysql_code == 1146
        with pytest.raises(dbapi.ProgrammingError) as info:
            cur.execute("COMMIT")  # the broker's guard: use commit()
        assert info.value.code == "bad_request"
        # An SQL error leaves the transaction open, as MySQL does: the first row commits.
        conn.commit()
        cur.execute(f"SELECT COUNT(*) FROM {table_name}")
        assert cur.fetchone() == (1,)


def test_a_database_deadlock_is_a_retryable_operational_error(broker, table_name):
    make_accounts(broker, table_name, [100, 100])
    with broker.dbapi() as first, broker.dbapi() as second:
        first.cursor().execute(f"UPDATE {table_name} SET balance = 1 WHERE id = 1")
        second.cursor().execute(f"UPDATE {table_name} SET balance = 2 WHERE id = 2")
        outcomes = {}

        def cross(name, conn, row):
            try:
                conn.cursor().execute(f"UPDATE {table_name} SET balance = 3 WHERE id = ?",
                                      [row])
                outcomes[name] = "ok"
            except dbapi.Error as error:
                outcomes[name] = error

        waiter = threading.Thread(target=cross, args=("first", first, 2))
        waiter.start()
        wait_for(lambda: _lock_waits(broker) > 0, what="the first update to wait for row 2")
        cross("second", second, 1)
        waiter.join(30)
        errors = [o for o in outcomes.values() if isinstance(o, dbapi.Error)]
        assert len(errors) == 1, outcomes
        assert isinstance(errors[0], dbapi.OperationalError)
        assert (errors[0].code, errors[0].mysql_code, errors[0].retryable) == (
            "deadlock", 1213, True)
        for conn in (first, second):
            conn.rollback()


def _lock_waits(broker):
    with broker.dbapi(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.innodb_trx "
                    "WHERE trx_state = 'LOCK WAIT'")
        return cur.fetchone()[0]


# ------------------------------------------------------------------ keys


def test_keys_declared_before_the_first_statement_go_with_begin(start_broker, table_name):
    broker = start_broker(lock_wait_timeout_ms=300)
    make_accounts(broker, table_name, [100])
    with broker.dbapi() as holder, broker.dbapi() as late, broker.dbapi(autocommit=True) as auto:
        holder.lock("accounts:1")
        holder.cursor().execute(f"SELECT balance FROM {table_name} WHERE id = 1")
        assert holder.client.stats()["locks_held"] == 1
        late.lock("accounts:1")
        with pytest.raises(dbapi.OperationalError) as info:
            late.cursor().execute(f"UPDATE {table_name} SET balance = 0 WHERE id = 1")
        assert (info.value.code, info.value.retryable) == ("lock_timeout", True)
        assert not late.in_transaction  # a failed begin opens nothing
        late.rollback()
        # In autocommit mode the declared keys make the next statement a one-statement tx.
        auto.lock("accounts:1")
        with pytest.raises(dbapi.OperationalError) as info:
            auto.cursor().execute(f"UPDATE {table_name} SET balance = 0 WHERE id = 1")
        assert info.value.code == "lock_timeout"
        holder.commit()
        auto.lock("accounts:1")
        auto.cursor().execute(f"UPDATE {table_name} SET balance = 5 WHERE id = 1")
        assert balances(broker, table_name) == {1: 5}


def test_lock_inside_a_transaction_follows_the_extension_rule(broker, table_name):
    make_accounts(broker, table_name, [100, 100, 100])
    with broker.dbapi() as conn, broker.dbapi() as other:
        other.lock("accounts:1")
        other.cursor().execute(f"SELECT 1 FROM {table_name} WHERE id = 1")

        conn.lock("accounts:2")
        cur = conn.cursor()
        cur.execute(f"UPDATE {table_name} SET balance = balance - 1 WHERE id = 2")
        conn.lock("accounts:3")  # above every key held: waited for, granted
        cur.execute(f"UPDATE {table_name} SET balance = balance + 1 WHERE id = 3")
        with pytest.raises(dbapi.OperationalError) as info:
            conn.lock("accounts:1")  # below a key held, and taken: only tried
        assert (info.value.code, info.value.retryable) == ("lock_conflict", True)
        with pytest.raises(dbapi.OperationalError) as info:
            cur.execute("SELECT 1")
        assert info.value.code == "tx_aborted"
        conn.rollback()
        other.commit()
        cur.execute("SELECT 1")  # a fresh transaction
        conn.commit()
    assert balances(broker, table_name) == {1: 100, 2: 100, 3: 100}


def test_next_transaction_options_reach_begin(broker, table_name):
    make_accounts(broker, table_name, [100])
    with broker.dbapi() as conn:
        conn.next_transaction(read_only=True)
        cur = conn.cursor()
        cur.execute(f"SELECT balance FROM {table_name}")
        with pytest.raises(dbapi.OperationalError) as info:
            cur.execute(f"UPDATE {table_name} SET balance = 0")
        assert info.value.mysql_code == 1792  # cannot execute in a READ ONLY transaction
        conn.rollback()
        cur.execute(f"UPDATE {table_name} SET balance = 1")  # the option was for one begin
        conn.commit()
