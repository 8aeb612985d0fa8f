"""txbroker.aio.Client against a real txbroker and MariaDB."""

import asyncio

import pytest

import txbroker
from txbroker import (
    BadRequestError,
    LockConflictError,
    NoTransactionError,
    SqlError,
    TxAbortedError,
    TxbrokerConnectionError,
    aio,
)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def connect(broker, **kwargs):
    kwargs.setdefault("timeout", 30)
    return aio.Client(broker.host, broker.port, **kwargs)


def test_hello_ping_stats(broker):
    async def main():
        async with connect(broker) as client:
            assert client.protocol == 1 and isinstance(client.session, int)
            assert client.server.startswith("txbroker")
            await client.ping()
            assert (await client.stats())["sessions"] >= 1
        assert client.closed
    run(main())


def test_pipelined_requests_are_answered_in_order(broker, table_name):
    async def main():
        async with connect(broker) as client:
            await client.exec(f"CREATE TABLE {table_name} (id INT PRIMARY KEY, n INT)")
            inserts = [client.tx([(f"INSERT INTO {table_name} VALUES (?, ?)", [i, i * i])],
                                 locks=[f"rows:{i:03d}"])
                       for i in range(50)]
            results = await asyncio.gather(*inserts)
            assert all(r.results[0].affected == 1 for r in results)
            reads = await asyncio.gather(*[
                client.exec(f"SELECT n FROM {table_name} WHERE id = ?", [i])
                for i in range(50)])
            assert [r.scalar() for r in reads] == [i * i for i in range(50)]
            # An error answers its own request and leaves the others alone.
            mixed = await asyncio.gather(client.exec("SELECT 1"), client.exec("SELEC 1"),
                                         client.exec("SELECT 2"), return_exceptions=True)
            assert mixed[0].scalar() == 1 and mixed[2].scalar() == 2
            assert isinstance(mixed[1], SqlError) and mixed[1].mysql_code == 1064
    run(main())


def test_interactive_transactions(broker, table_name):
    async def main():
        async with connect(broker) as client, connect(broker) as other:
            await client.exec(f"CREATE TABLE {table_name} (id INT PRIMARY KEY, n INT)")
            async with client.transaction(locks=["t:2"]) as t:
                await t.exec(f"INSERT INTO {table_name} VALUES (1, 1)")
            with pytest.raises(NoTransactionError):
                await t.exec("SELECT 1")
            with pytest.raises(RuntimeError):
                async with client.transaction() as t:
                    await t.exec(f"INSERT INTO {table_name} VALUES (2, 2)")
                    raise RuntimeError("rolled back")
            assert (await client.exec(f"SELECT COUNT(*) FROM {table_name}")).scalar() == 1

            held = await other.begin(locks=["t:1"])
            t = await client.begin(locks=["t:2"])
            with pytest.raises(LockConflictError):
                await t.lock(["t:1"])
            with pytest.raises(TxAbortedError):
                await t.exec("SELECT 1")
            await t.rollback()
            await held.rollback()
            with pytest.raises(BadRequestError):
                await client.exec("COMMIT")
    run(main())


def test_requests_waiting_when_the_connection_closes_fail(broker):
    async def main():
        client = await aio.connect(broker.host, broker.port, timeout=30)
        sleeper = asyncio.ensure_future(client.exec("SELECT SLEEP(5)"))
        follower = asyncio.ensure_future(client.ping())
        await asyncio.sleep(0)  # let both start; either way they must fail, not hang
        await client.close()
        for task in (sleeper, follower):
            with pytest.raises(TxbrokerConnectionError):
                await task
        with pytest.raises(TxbrokerConnectionError):
            await client.ping()
    run(main())


def test_a_keyed_tx_runs_once_and_its_retry_is_replayed(broker, table_name):
    async def main():
        async with connect(broker) as client:
            await client.exec(f"CREATE TABLE {table_name} (id INT PRIMARY KEY, n INT)")
            await client.exec(f"INSERT INTO {table_name} VALUES (1, 0)")
            key = txbroker.new_idempotency_key()
            bump = [(f"UPDATE {table_name} SET n = n + 1 WHERE id = 1", [])]
            first = await client.tx(bump, locks=["rows:1"], idempotency_key=key)
            again = await client.tx(bump, locks=["rows:1"], idempotency_key=key)
            assert not first.replayed and again.replayed
            assert again.results[0].affected == first.results[0].affected == 1
            n = await client.exec(f"SELECT n FROM {table_name} WHERE id = 1")
            assert n.scalar() == 1
    run(main())
