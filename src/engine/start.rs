//! Taking a transaction's keys and starting it, for `tx` and `begin`: the one place where a
//! transaction's deadline is set and its keys are asked for.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::alone::AUTOCOMMIT_PING_AFTER;
use super::ending::TxEnd;
use super::{SessionEngine, TxClock, TxContext};
use crate::config::Config;
use crate::coordinator::{Admission, GroupRequest, Member};
use crate::db::{DbConnection, DbError};
use crate::error::BrokerError;
use crate::locks::Grouping;
use crate::metrics::TxKind;
use crate::protocol::{Reply, TxOptions, TxRequest};
use crate::sql_guard;

/// How a `tx` reaches the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxShape {
    /// `START TRANSACTION`, the statements, `COMMIT`: protocol step 2.
    Explicit,
    /// One `INSERT`, `UPDATE`, `DELETE` or `REPLACE`, run alone in autocommit mode (never with
    /// an idempotency key: its record must commit with it). InnoDB
    /// makes a single statement atomic and durable by itself, so this is the same transaction
    /// in one round trip instead of three. A connection lost while it runs leaves its outcome
    /// unknown (`commit_unknown`, where the explicit shape could say `db_unavailable`), which
    /// is why `single_write_autocommit = false` turns it off.
    SingleWrite,
    /// A keyed `tx` of `UPDATE`s and `DELETE`s whose answer is their row counts
    /// (`sql_guard::answers_with_row_count`): `START TRANSACTION`, the statements, the record
    /// (whose row counts the server writes in) and `COMMIT` go in one multi-statement query,
    /// one round trip instead of three or more. The keys pass on when the last statement has
    /// answered. As with a single write, a connection lost under it leaves the outcome unknown,
    /// which the key's record then answers.
    OneTrip,
}

/// The most statements a one-trip `tx` has; a longer one runs the explicit way.
const ONE_TRIP_MAX_STATEMENTS: usize = 64;

impl TxShape {
    pub(super) fn of(tx: &TxRequest, config: &Config) -> TxShape {
        let keyed = tx.options.idempotency_key.is_some() && !tx.options.read_only;
        if keyed
            && tx.statements.len() <= ONE_TRIP_MAX_STATEMENTS
            && tx
                .statements
                .iter()
                .all(|statement| sql_guard::answers_with_row_count(&statement.sql))
        {
            return TxShape::OneTrip;
        }
        match tx.statements.as_slice() {
            [only]
                if config.single_write_autocommit
                    && !tx.options.read_only
                    && tx.options.idempotency_key.is_none()
                    && sql_guard::is_single_data_change(&only.sql) =>
            {
                TxShape::SingleWrite
            }
            _ => TxShape::Explicit,
        }
    }
}

/// How a transaction was admitted.
pub(super) enum Started {
    /// It holds its keys and runs on its own.
    Alone,
    /// It holds its keys and leads a group: members arrive in the inbox.
    Leading(mpsc::UnboundedReceiver<Member>),
    /// It joined another session's group, which runs it and answers here; it holds nothing.
    Joined(oneshot::Receiver<Result<Reply, BrokerError>>),
}

impl SessionEngine {
    /// Grants the keys and starts the database transaction at the same time: `START
    /// TRANSACTION` takes no row locks and no snapshot, so overlapping it with the wait keeps
    /// one round trip out of the time the keys are held. A single write starts nothing: its
    /// statement carries its own commit, so its connection is checked for life beforehand.
    /// `member` is the request itself when `grouping` lets it join a group; such a request
    /// starts its transaction only once it holds its keys, since under contention it mostly
    /// joins a group and would otherwise start, then roll back, a transaction for nothing.
    /// The transaction's clock starts at `arrived`, when its request came in.
    pub(super) async fn start_transaction(
        &mut self,
        kind: TxKind,
        arrived: Instant,
        options: &TxOptions,
        shape: TxShape,
        grouping: Grouping,
        member: Option<GroupRequest>,
    ) -> Result<Started, BrokerError> {
        self.open_context(kind, arrived, options, shape).await?;
        let begins = match (shape, grouping) {
            (TxShape::SingleWrite | TxShape::OneTrip, _) => Begin::Never,
            (TxShape::Explicit, Grouping::Alone) => Begin::WhileWaiting,
            (TxShape::Explicit, Grouping::Groupable(_)) => Begin::OnceGranted,
        };
        let db = &mut self.db;
        let begin = async move {
            match begins {
                Begin::WhileWaiting => begin_on_live_connection(db, options).await,
                Begin::Never | Begin::OnceGranted => Ok(()),
            }
        };
        let asked = Instant::now();
        let (admitted, begun) = match options.locks.clone() {
            Some(asked) => {
                let keys = &mut self.keys;
                let acquire = async move {
                    let started = Instant::now();
                    let admitted = keys.acquire_as(asked, grouping, member).await;
                    (admitted, started.elapsed())
                };
                let ((admitted, waited), begun) = futures_util::join!(acquire, begin);
                self.metrics.lock_waited(waited);
                self.add_key_wait(waited);
                (admitted, begun)
            }
            None => (Ok(no_keys()), begin.await),
        };
        let outcome = match (admitted, begun) {
            (Ok(admission), Ok(())) => {
                self.begin_if_granted(admission, begins, options, asked)
                    .await
            }
            (_, Err(error)) => Err(BrokerError::from(error)),
            (Err(failure), Ok(())) => Err(BrokerError::from(failure)),
        };
        if outcome.is_err() {
            self.end_transaction(TxEnd::NotStarted).await;
        }
        outcome
    }

    /// A new transaction's context and clock, a connection fit for its shape, and its
    /// deadline.
    async fn open_context(
        &mut self,
        kind: TxKind,
        arrived: Instant,
        options: &TxOptions,
        shape: TxShape,
    ) -> Result<(), BrokerError> {
        self.db.take_time_in_database();
        self.current = TxContext::new(options.isolation.unwrap_or(self.config.default_isolation));
        self.current.clock = Some(TxClock::start(kind, arrived));
        match shape {
            TxShape::Explicit => self.db.ensure_connected().await,
            TxShape::SingleWrite | TxShape::OneTrip => {
                self.db.ensure_live(AUTOCOMMIT_PING_AFTER).await
            }
        }?;
        self.db.set_deadline(
            self.config
                .max_tx_duration()
                .map(|limit| Instant::now() + limit),
        );
        Ok(())
    }

    /// What an admitted request starts as; one whose transaction was to begin once its keys
    /// were granted begins it now, unless it joined a group. Keys granted are taken in the
    /// database too, with `coordination = "database"`, before anything runs.
    async fn begin_if_granted(
        &mut self,
        admission: Admission,
        begins: Begin,
        options: &TxOptions,
        asked: Instant,
    ) -> Result<Started, BrokerError> {
        if let Admission::Granted { .. } = admission {
            if begins == Begin::OnceGranted {
                begin_on_live_connection(&mut self.db, options).await?;
            }
            if let Some(keys) = &options.locks {
                self.take_named_locks(keys, asked).await?;
            }
        }
        Ok(self.admitted(admission))
    }

    fn admitted(&mut self, admission: Admission) -> Started {
        match admission {
            Admission::Granted { read_gate, group } => {
                self.current.read_gate = read_gate;
                match group {
                    Some(inbox) => Started::Leading(inbox),
                    None => Started::Alone,
                }
            }
            Admission::Joined(outcome) => Started::Joined(outcome),
        }
    }
}

/// When a transaction sends `START TRANSACTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Begin {
    /// While its keys are awaited.
    WhileWaiting,
    /// Once its keys are held (not at all if it joins a group).
    OnceGranted,
    /// Never: a single write is its own transaction, and a one-trip `tx` sends it with its
    /// statements.
    Never,
}

fn no_keys() -> Admission {
    Admission::Granted {
        read_gate: Default::default(),
        group: None,
    }
}

/// `START TRANSACTION`; if the connection turns out to be dead, nothing has run on it yet, so
/// one reconnect and a second try are safe.
async fn begin_on_live_connection(
    db: &mut DbConnection,
    options: &TxOptions,
) -> Result<(), DbError> {
    match db.begin(options.isolation, options.read_only).await {
        Err(DbError::ConnectionLost(_)) => {
            db.ensure_connected().await?;
            db.begin(options.isolation, options.read_only).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Statement;

    fn tx(statements: &[&str], read_only: bool) -> TxRequest {
        TxRequest {
            statements: statements
                .iter()
                .map(|sql| Statement::new(*sql, Vec::new()))
                .collect(),
            options: TxOptions {
                read_only,
                ..TxOptions::default()
            },
            retries: None,
        }
    }

    #[test]
    fn only_a_lone_data_change_skips_start_transaction() {
        let on = Config::default();
        let off = Config {
            single_write_autocommit: false,
            ..Config::default()
        };
        let update = "UPDATE t SET v = 1 WHERE id = 1";
        assert_eq!(
            TxShape::of(&tx(&[update], false), &on),
            TxShape::SingleWrite
        );
        assert_eq!(TxShape::of(&tx(&[update], false), &off), TxShape::Explicit);
        assert_eq!(TxShape::of(&tx(&[update], true), &on), TxShape::Explicit);
        let mut keyed = tx(&[update], false);
        keyed.options.idempotency_key = Some("k".into());
        assert_eq!(
            TxShape::of(&keyed, &on),
            TxShape::OneTrip,
            "a keyed write records its outcome in its own transaction, in the same query"
        );
        let mut keyed_insert = tx(&["INSERT INTO t VALUES (1)"], false);
        keyed_insert.options.idempotency_key = Some("k".into());
        assert_eq!(
            TxShape::of(&keyed_insert, &on),
            TxShape::Explicit,
            "an insert id is not a row count"
        );
        let mut keyed_with_read = tx(&[update, "SELECT v FROM t"], false);
        keyed_with_read.options.idempotency_key = Some("k".into());
        assert_eq!(TxShape::of(&keyed_with_read, &on), TxShape::Explicit);
        assert_eq!(
            TxShape::of(&tx(&[update, update], false), &on),
            TxShape::Explicit
        );
        for single in ["SELECT v FROM t", "CALL p()", "SELECT v FROM t FOR UPDATE"] {
            assert_eq!(
                TxShape::of(&tx(&[single], false), &on),
                TxShape::Explicit,
                "{single}"
            );
        }
    }
}
