"""FailoverClient against real broker processes: an address that refuses is skipped, a
broker closed while idle is left for the next one without an error, a tx in flight on a
broker killed with SIGKILL raises (it is never sent again) before the client carries on
through the next broker, and one that carries an idempotency key is carried to the next
broker with it and committed there exactly once."""

import socket
import threading

import txbroker
from conftest import wait_for

TRANSFER = [("UPDATE {t} SET balance = balance - 1 WHERE id = 1", []),
            ("UPDATE {t} SET balance = balance + 1 WHERE id = 2", [])]


def refusing_address():
    """A port the system just handed out and took back: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()


def make_accounts(broker, table):
    with broker.client() as c:
        c.exec(f"DROP TABLE IF EXISTS {table}")
        c.exec(f"CREATE TABLE {table} (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        c.exec(f"INSERT INTO {table} VALUES (1, 100), (2, 100)")


def transfer(client, table, **tx_options):
    return client.tx([(sql.format(t=table), params) for sql, params in TRANSFER],
                     locks=[f"{table}:1", f"{table}:2"], **tx_options)


def test_an_address_that_refuses_is_skipped(start_broker, table_name):
    broker = start_broker()
    make_accounts(broker, table_name)
    with txbroker.FailoverClient([refusing_address(), (broker.host, broker.port)],
                                 timeout=30) as client:
        transfer(client, table_name)
        assert client.current_address == (broker.host, broker.port)


def in_flight_when_the_first_broker_is_killed(start_broker, table, **tx_options):
    """Two database-mode brokers; a transfer (``tx_options``) waits on the first for a key
    another client holds, and the first is SIGKILLed under it. Returns what the transfer
    came to (``result`` or ``error``), the client, and the second broker."""
    first = start_broker(coordination="database")
    second = start_broker(coordination="database")
    make_accounts(first, table)
    client = txbroker.FailoverClient([(first.host, first.port), (second.host, second.port)],
                                     timeout=30)
    transfer(client, table)
    assert client.current_address == (first.host, first.port)
    holder = first.client()
    holder.begin(locks=[f"{table}:1"])
    outcome = {}

    def in_flight():
        try:
            outcome["result"] = transfer(client, table, **tx_options)
        except txbroker.TxbrokerError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_for(lambda: holder.stats()["lock_waiters"] >= 1, what="the tx waits for its key")
    first.process.kill()
    first.process.wait(timeout=20)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the tx in flight is answered"
    return outcome, client, second


def balance_of_account_1(broker, table):
    with broker.client() as c:
        return int(c.exec(f"SELECT balance FROM {table} WHERE id = 1").scalar())


def test_a_killed_broker_fails_its_tx_in_flight_and_the_next_broker_takes_over(
        start_broker, table_name):
    outcome, client, second = in_flight_when_the_first_broker_is_killed(start_broker,
                                                                        table_name)
    assert isinstance(outcome.get("error"), txbroker.TxbrokerConnectionError), outcome
    # Not sent again: it waited for its key and never ran. The next goes to the second.
    transfer(client, table_name)
    assert client.current_address == (second.host, second.port)
    assert balance_of_account_1(second, table_name) == 98
    client.close()


def test_a_keyed_tx_in_flight_on_a_killed_broker_commits_once_through_the_next(
        start_broker, table_name):
    outcome, client, second = in_flight_when_the_first_broker_is_killed(
        start_broker, table_name, idempotency_key=txbroker.new_idempotency_key())
    assert "result" in outcome, outcome
    # It never ran on the first broker (it waited for its key): the second ran it, once.
    assert not outcome["result"].replayed
    assert client.current_address == (second.host, second.port)
    assert balance_of_account_1(second, table_name) == 98
    client.close()


def test_a_broker_that_closed_while_idle_is_left_without_an_error(start_broker, table_name):
    first = start_broker()
    second = start_broker()
    make_accounts(first, table_name)
    client = txbroker.FailoverClient([(first.host, first.port), (second.host, second.port)],
                                     timeout=30)
    transfer(client, table_name)
    first.process.kill()
    first.process.wait(timeout=20)
    wait_for(lambda: client._client.closed_by_broker(), what="the client sees the close")
    transfer(client, table_name)
    assert client.current_address == (second.host, second.port)
    client.close()
