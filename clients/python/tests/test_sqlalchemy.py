"""The mysql+txbroker SQLAlchemy dialect against a real txbroker and MariaDB: Core, the ORM,
Session and scoped_session, reflection, the pool (reuse after an error, pre-ping), and the
key and unit-of-work helpers."""

import datetime
import decimal
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy import exc, func, select
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    scoped_session,
    sessionmaker,
)

from conftest import BrokerProcess, wait_for
from txbroker.sqlalchemy import broker_connection, lock, run_in_transaction, run_tx
from txbroker.sqlalchemy.dialect import TxbrokerDialect, TxbrokerMariaDBDialect


@pytest.fixture
def engine(broker, database_name):
    engine = sa.create_engine(broker.url(database_name), pool_size=2)
    yield engine
    engine.dispose()


def make_table(engine, table_name, *columns):
    metadata = sa.MetaData()
    table = sa.Table(table_name, metadata, *columns)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    return table


def test_the_entry_point_names_the_dialect(broker, database_name):
    assert isinstance(sa.create_engine(broker.url(database_name)).dialect, TxbrokerDialect)
    mariadb = sa.create_engine(broker.url(database_name).replace("mysql+", "mariadb+"))
    assert isinstance(mariadb.dialect, TxbrokerMariaDBDialect)


def test_first_connect_detects_the_server(engine):
    with engine.connect() as conn:
        assert conn.execute(select(1)).scalar() == 1
    assert engine.dialect.is_mariadb
    assert engine.dialect.server_version_info >= (10,)
    assert engine.dialect.default_isolation_level == "REPEATABLE READ"


def test_a_database_other_than_the_brokers_is_refused(broker):
    engine = sa.create_engine(broker.url("some_other_database"))
    with pytest.raises(exc.ProgrammingError, match="database_url"):
        engine.connect()


def test_a_password_in_the_url_is_refused(broker, database_name):
    url = broker.url(database_name).replace("://", "://app:secret@")
    with pytest.raises(exc.ArgumentError, match="token"):
        sa.create_engine(url).connect()


def test_core_round_trips_values_as_their_types(engine, table_name):
    table = make_table(
        engine, table_name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("amount", sa.Numeric(20, 6)),
        sa.Column("ratio", sa.Float),
        sa.Column("at", mysql.DATETIME(fsp=6)),
        sa.Column("day", sa.Date),
        sa.Column("clock", sa.Time),
        sa.Column("flag", sa.Boolean),
        sa.Column("doc", sa.JSON),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("name", sa.String(20)),
    )
    row = {"amount": decimal.Decimal("12.345678"), "ratio": 0.5,
           "at": datetime.datetime(2026, 12, 6, 10, 11, 12, 345000),
           "day": datetime.date(2026, 12, 6), "clock": datetime.time(23, 59, 58),
           "flag": True, "doc": {"a": [1, 2]}, "blob": b"\x00\xff", "name": "ünï"}
    with engine.begin() as conn:
        result = conn.execute(table.insert(), row)
        assert result.inserted_primary_key == (1,)
        conn.execute(table.insert(), [dict(row, name=f"n{i}") for i in range(3)])
    with engine.connect() as conn:
        got = conn.execute(select(table).where(table.c.id == 1)).mappings().one()
        assert {k: got[k] for k in row} == row
        assert conn.execute(select(func.sum(table.c.id))).scalar() == 10  # DECIMAL text
        assert conn.execute(select(func.count()).select_from(table)).scalar() == 4
        changed = conn.execute(table.update().where(table.c.id > 2).values(name="x"))
        assert changed.rowcount == 2
        conn.execute(table.delete().where(table.c.id == 4))
        conn.commit()
        assert conn.execute(select(func.count()).select_from(table)).scalar() == 3


def test_reflection_goes_through_exec(engine, table_name):
    metadata = sa.MetaData()
    sa.Table(f"{table_name}_p", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(table_name, metadata,
             sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("parent_id", sa.Integer, sa.ForeignKey(f"{table_name}_p.id")),
             sa.Column("code", sa.String(10), index=True, unique=True))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    inspector = sa.inspect(engine)
    assert {table_name, f"{table_name}_p"} <= set(inspector.get_table_names())
    assert [c["name"] for c in inspector.get_columns(table_name)] == ["id", "parent_id", "code"]
    assert inspector.get_pk_constraint(table_name)["constrained_columns"] == ["id"]
    (fk,) = inspector.get_foreign_keys(table_name)
    assert (fk["referred_table"], fk["referred_columns"]) == (f"{table_name}_p", ["id"])
    assert any(ix["column_names"] == ["code"] for ix in inspector.get_indexes(table_name))
    reflected = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
    assert isinstance(reflected.c.code.type, sa.String)
    assert sa.inspect(engine).has_table(table_name)


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "sa_owners"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    accounts: Mapped[list["Account"]] = relationship(back_populates="owner")


class Account(Base):
    __tablename__ = "sa_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("sa_owners.id"))
    balance: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(12, 2))
    owner: Mapped[Owner] = relationship(back_populates="accounts")


@pytest.fixture
def orm_engine(engine):
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine


def test_orm_flush_relationships_and_rollback_on_exception(orm_engine):
    with Session(orm_engine) as session:
        ann = Owner(name="ann", accounts=[Account(balance=decimal.Decimal("10.00")),
                                          Account(balance=decimal.Decimal("5.50"))])
        session.add(ann)
        session.flush()
        assert ann.id is not None and all(a.id is not None for a in ann.accounts)
        session.commit()
    with pytest.raises(RuntimeError):
        with Session(orm_engine) as session, session.begin():
            session.add(Owner(name="bob"))
            session.flush()
            raise RuntimeError("the request failed")
    with Session(orm_engine) as session:
        assert session.scalars(select(Owner.name)).all() == ["ann"]
        owner = session.scalars(select(Owner)).one()
        assert sorted(a.balance for a in owner.accounts) == [decimal.Decimal("5.50"),
                                                              decimal.Decimal("10.00")]
        session.add(Owner(name="ann"))
        with pytest.raises(exc.IntegrityError) as info:
            session.flush()
        assert info.value.orig.mysql_code == 1062
        session.rollback()
        account = owner.accounts[0]
        account.balance = account.balance  # no net change: no UPDATE, no stale-row error
        account.balance += 1
        session.commit()


def test_the_pool_reuses_a_session_after_an_error(broker, database_name, table_name):
    engine = sa.create_engine(broker.url(database_name), pool_size=1, max_overflow=0)
    make_table(engine, table_name, sa.Column("id", sa.Integer, primary_key=True))
    with broker.dbapi() as other:
        other.lock("k:1")
        other.cursor().execute("SELECT 1")
        with Session(engine) as session:
            first = broker_connection(session).client.session
            lock(session, "k:2")
            session.execute(sa.text("SELECT 1"))
            with pytest.raises(exc.OperationalError) as info:
                lock(session, "k:1")  # below k:2 and taken: lock_conflict aborts
            assert info.value.orig.code == "lock_conflict"
            with pytest.raises(exc.OperationalError):
                session.execute(sa.text("SELECT 1"))  # tx_aborted until the rollback
        other.rollback()
    with Session(engine) as session:  # the pool rolled the session back when it came home
        assert broker_connection(session).client.session == first
        session.execute(sa.insert(sa.table(table_name, sa.column("id"))).values(id=1))
        session.commit()
    engine.dispose()


def test_pool_pre_ping_replaces_a_session_the_broker_lost(database, database_name):
    broker = BrokerProcess(database)
    engine = sa.create_engine(broker.url(database_name), pool_pre_ping=True, pool_size=1)
    try:
        with engine.connect() as conn:
            before = conn.connection.dbapi_connection
        broker.stop()
        broker = BrokerProcess(database, listen=f"{broker.host}:{broker.port}")
        with engine.connect() as conn:  # the ping failed: a new session, no error
            assert conn.execute(select(1)).scalar() == 1
            assert conn.connection.dbapi_connection is not before
        assert before.closed
    finally:
        engine.dispose()
        broker.stop()


def test_isolation_levels_travel_in_begin(engine, table_name):
    table = make_table(engine, table_name, sa.Column("id", sa.Integer, primary_key=True))
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
        assert conn.get_isolation_level() == "READ COMMITTED"
        level = conn.execute(sa.text("SELECT @@tx_isolation")).scalar()
        assert level == "READ-COMMITTED"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(table.insert().values(id=1))
        assert not conn.connection.dbapi_connection.in_transaction
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table)).scalar() == 1
        assert conn.execute(sa.text("SELECT @@tx_isolation")).scalar() == "REPEATABLE-READ"


def test_scoped_sessions_declare_keys_per_thread(broker, orm_engine):
    with Session(orm_engine) as session:
        session.add(Owner(name="pool", accounts=[Account(balance=0)]))
        session.commit()
    factory = scoped_session(sessionmaker(orm_engine))
    errors = []

    def deposit(times):
        try:
            for _ in range(times):
                lock(factory, "accounts:1")
                account = factory.get(Account, 1, with_for_update=False)
                account.balance += 1  # read-modify-write: a lost update without the key
                factory.commit()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            factory.remove()

    threads = [threading.Thread(target=deposit, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with Session(orm_engine) as session:
        assert session.get(Account, 1).balance == 100


def test_run_tx_sends_recorded_core_statements_as_one_tx(broker, engine, table_name):
    table = make_table(engine, table_name, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("balance", sa.Integer))
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": 1, "balance": 100}, {"id": 2, "balance": 0}])
    with broker.client() as observer:
        committed = observer.stats()["transactions_committed"]

        def move(conn):
            conn.execute(table.update().where(table.c.id == 1)
                         .values(balance=table.c.balance - 30))
            conn.execute(table.update().where(table.c.id == 2)
                         .values(balance=table.c.balance + 30))
            conn.execute(select(table.c.balance).order_by(table.c.id))

        result = run_tx(engine, move, keys=["accounts:1", "accounts:2"])
        assert result.attempts == 1
        assert [r.affected for r in result.results[:2]] == [1, 1]
        assert result.results[2].rows == [[70], [30]]
        assert observer.stats()["transactions_committed"] == committed + 1


def test_run_in_transaction_reruns_after_a_retryable_error(start_broker, database_name,
                                                           orm_engine):
    broker = start_broker(lock_wait_timeout_ms=200)
    engine = sa.create_engine(broker.url(database_name))
    with Session(engine) as session:
        session.add(Owner(name="retry", accounts=[Account(balance=0)]))
        session.commit()
    holder = broker.dbapi()
    holder.lock("accounts:1")
    holder.cursor().execute("SELECT 1")
    runs = []

    def release_after_first_timeout():
        wait_for(lambda: broker.client().stats()["lock_timeouts"] >= 1,
                 what="the first run to time out on the held key")
        holder.rollback()

    releaser = threading.Thread(target=release_after_first_timeout)
    releaser.start()

    def deposit(session):
        runs.append(1)
        session.get(Account, 1).balance += 5

    with Session(engine) as session:
        run_in_transaction(session, deposit, keys=["accounts:1"], attempts=5, backoff=0.05)
    releaser.join(30)
    holder.close()
    assert len(runs) >= 2
    with Session(engine) as session:
        assert session.get(Account, 1).balance == 5
    engine.dispose()


def test_lock_needs_a_txbroker_connection():
    engine = sa.create_engine("sqlite://")
    with Session(engine) as session, pytest.raises(TypeError):
        lock(session, "k")


def test_tls_and_token_from_the_url(start_broker, database_name):
    """The URL's query carries the token and TLS settings to the DB-API connect."""
    from pathlib import Path

    tls = Path(__file__).parent / "tls"
    broker = start_broker(tls_cert=str(tls / "localhost.crt"), tls_key=str(tls / "localhost.key"),
                          auth_tokens=["s3cret"])
    url = broker.url(database_name, token="s3cret", tls="true", tls_ca=str(tls / "localhost.crt"),
                     server_hostname="localhost")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(41 + 1)).scalar() == 42
    engine.dispose()
    wrong = sa.create_engine(url.replace("s3cret", "wrong"))
    with pytest.raises(exc.OperationalError) as info:
        wrong.connect()
    assert info.value.orig.code == "unauthenticated"


def test_run_in_transaction_passes_begin_options_and_raises_what_is_not_retryable(
        orm_engine):
    with Session(orm_engine) as session:
        session.add(Owner(name="ro", accounts=[Account(balance=1)]))
        session.commit()
    runs = []

    def write(session):
        runs.append(1)
        session.get(Account, 1).balance += 1
        session.flush()

    with Session(orm_engine) as session:
        with pytest.raises(exc.OperationalError) as info:
            run_in_transaction(session, write, keys=["accounts:000001"], read_only=True)
    assert info.value.orig.mysql_code == 1792  # a write in a READ ONLY transaction
    assert runs == [1]  # not retryable: run once
