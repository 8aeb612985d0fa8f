//! The broker's errors: one enum whose variants map one to one onto the protocol's error
//! codes, so that every failure a client can see has exactly one spelling on the wire.
//!
//! The lower layers' errors are defined here too (`DbError` for `db`, `LockFailure` for the
//! coordinator; `frame::FrameError` stays with the codec), so that this module depends on no
//! other. Every translation of a lower layer's error into what a client
//! is told lives here, once: `From<DbError>` and `From<LockFailure>` for `BrokerError`,
//! `AbortReason::caused_by` for what a database error does to an interactive transaction,
//! `BrokerError::commit_unknown` for a connection lost while a commit was in flight, and
//! `DbFailure::conflict` for the errors that ask for the whole transaction to run again.

use std::fmt;

use thiserror::Error;

/// MySQL error numbers the broker reacts to.
pub mod mysql_codes {
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const DEADLOCK: u16 = 1213;
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const CONNECTION_KILLED: u16 = 1927;
    pub const UNSUPPORTED_IN_PREPARED: u16 = 1295;
    pub const SERIALIZATION_FAILURE_STATE: &str = "40001";
}

/// The `code` strings of protocol v1, in the order of the contract's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    FrameTooLarge,
    Unauthenticated,
    Busy,
    ShuttingDown,
    Sql,
    Deadlock,
    DbLockTimeout,
    LockTimeout,
    LockConflict,
    TxActive,
    NoTransaction,
    TxAborted,
    DbUnavailable,
    CommitUnknown,
    IdempotencyMismatch,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::Busy,
        ErrorCode::ShuttingDown,
        ErrorCode::Sql,
        ErrorCode::Deadlock,
        ErrorCode::DbLockTimeout,
        ErrorCode::LockTimeout,
        ErrorCode::LockConflict,
        ErrorCode::TxActive,
        ErrorCode::NoTransaction,
        ErrorCode::TxAborted,
        ErrorCode::DbUnavailable,
        ErrorCode::CommitUnknown,
        ErrorCode::IdempotencyMismatch,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Sql => "sql",
            ErrorCode::Deadlock => "deadlock",
            ErrorCode::DbLockTimeout => "db_lock_timeout",
            ErrorCode::LockTimeout => "lock_timeout",
            ErrorCode::LockConflict => "lock_conflict",
            ErrorCode::TxActive => "tx_active",
            ErrorCode::NoTransaction => "no_transaction",
            ErrorCode::TxAborted => "tx_aborted",
            ErrorCode::DbUnavailable => "db_unavailable",
            ErrorCode::CommitUnknown => "commit_unknown",
            ErrorCode::IdempotencyMismatch => "idempotency_mismatch",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// Whether the same request may succeed if sent again, as the contract's table says.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy
                | ErrorCode::ShuttingDown
                | ErrorCode::Deadlock
                | ErrorCode::DbLockTimeout
                | ErrorCode::LockTimeout
                | ErrorCode::LockConflict
                | ErrorCode::DbUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the database said, kept for the `mysql_code`, `sqlstate` and `statement` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbFailure {
    pub mysql_code: u16,
    pub sqlstate: String,
    pub message: String,
    /// Index of the failing statement in a `tx`, when a statement failed.
    pub statement: Option<usize>,
}

/// A database error that asks for the whole transaction to run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// 1213, or SQLSTATE 40001: the database rolled the whole transaction back.
    Deadlock,
    /// 1205: only the statement was rolled back; the transaction is still open.
    LockWaitTimeout,
}

impl DbFailure {
    pub fn at_statement(mut self, index: usize) -> DbFailure {
        self.statement = Some(index);
        self
    }

    pub fn conflict(&self) -> Option<Conflict> {
        if self.mysql_code == mysql_codes::DEADLOCK
            || self.sqlstate == mysql_codes::SERIALIZATION_FAILURE_STATE
        {
            Some(Conflict::Deadlock)
        } else if self.mysql_code == mysql_codes::LOCK_WAIT_TIMEOUT {
            Some(Conflict::LockWaitTimeout)
        } else {
            None
        }
    }
}

impl fmt::Display for DbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (mysql {}, sqlstate {})",
            self.message, self.mysql_code, self.sqlstate
        )
    }
}

/// What went wrong with the database, as `db.rs` sees it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DbError {
    /// The server answered with an error; the connection is fine.
    #[error("{0}")]
    Server(DbFailure),
    /// No connection could be made.
    #[error("{0}")]
    Unavailable(String),
    /// The connection broke while in use; whatever was open on it is gone.
    #[error("{0}")]
    ConnectionLost(String),
    /// The statement was refused before it ran (wrong parameter count), or an autocommit
    /// statement opened a transaction and was rolled back; the connection is fine.
    #[error("{0}")]
    Rejected(String),
    /// The statement succeeded but the server no longer has the transaction open: something
    /// committed or rolled back implicitly.
    #[error("the statement ended the transaction on the database")]
    TransactionEnded,
    /// The transaction's deadline passed during this operation; the connection was dropped
    /// and its query killed, so the server rolls the transaction back.
    #[error("the transaction ran past its deadline")]
    DeadlineExceeded,
}

impl DbError {
    /// Whether this error asks for the whole transaction to run again.
    pub fn conflict(&self) -> Option<Conflict> {
        match self {
            DbError::Server(failure) => failure.conflict(),
            _ => None,
        }
    }
}

/// Why keys were not granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockFailure {
    /// Not granted within `lock_wait_timeout_ms`; every key of the owner was released.
    Timeout { key: String, waited_ms: u64 },
    /// An out-of-order key was busy (try-only rule); keys granted so far are still held.
    Conflict { key: String },
    /// The wait was cancelled (the session is going away), or the coordinator is gone.
    Cancelled,
    /// The request joined a group whose leader had just gone away; nothing of it ran, and it
    /// holds nothing: ask again.
    GroupGone,
}

/// Why the broker or the database ended an interactive transaction behind its client's back.
/// The session stays in the aborted state, naming this reason, until the client rolls back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbortReason {
    Deadlock,
    DbLockWaitTimeout,
    LockConflict {
        key: String,
    },
    LockTimeout {
        key: String,
    },
    IdleTimeout {
        idle_ms: u64,
    },
    ConnectionLost,
    /// A statement ended the transaction itself (an implicit commit the broker did not foresee).
    EndedByStatement,
    CommitFailed,
    /// Open longer than `max_tx_duration_ms`; a statement still running was killed.
    MaxDuration,
    /// A `begin` whose idempotency key's transaction had already committed was answered with
    /// that outcome: no transaction was opened, and none may be used as if it were.
    AlreadyCommitted,
}

impl AbortReason {
    /// What `error`, met inside an open interactive transaction, does to it: `None` when the
    /// transaction stays open (an ordinary SQL error, as in MySQL), else why it is over.
    pub fn caused_by(error: &DbError) -> Option<AbortReason> {
        match error {
            DbError::Server(failure) => failure.conflict().map(|conflict| match conflict {
                Conflict::Deadlock => AbortReason::Deadlock,
                Conflict::LockWaitTimeout => AbortReason::DbLockWaitTimeout,
            }),
            DbError::ConnectionLost(_) | DbError::Unavailable(_) => {
                Some(AbortReason::ConnectionLost)
            }
            DbError::TransactionEnded => Some(AbortReason::EndedByStatement),
            DbError::DeadlineExceeded => Some(AbortReason::MaxDuration),
            DbError::Rejected(_) => None,
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Deadlock => f.write_str("the database reported a deadlock"),
            AbortReason::DbLockWaitTimeout => {
                f.write_str("the database reported a lock wait timeout")
            }
            AbortReason::LockConflict { key } => write!(f, "lock conflict on key {key:?}"),
            AbortReason::LockTimeout { key } => write!(f, "lock wait timeout on key {key:?}"),
            AbortReason::IdleTimeout { idle_ms } => {
                write!(f, "idle for more than {idle_ms} ms")
            }
            AbortReason::ConnectionLost => f.write_str("the database connection was lost"),
            AbortReason::EndedByStatement => {
                f.write_str("a statement ended the transaction on the database")
            }
            AbortReason::CommitFailed => f.write_str("commit failed"),
            AbortReason::MaxDuration => {
                f.write_str("the transaction was open longer than max_tx_duration_ms")
            }
            AbortReason::AlreadyCommitted => f.write_str(
                "its idempotency key's transaction had already committed; the begin was a replay",
            ),
        }
    }
}

/// Every failure a client can be answered with. `code()` is the protocol code.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("frame of {length} bytes is over the limit of {limit} bytes")]
    FrameTooLarge { length: u64, limit: usize },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("the server has reached max_sessions ({max_sessions}); try again later")]
    Busy { max_sessions: usize },
    #[error("the server is shutting down and starts no new transaction")]
    ShuttingDown,
    #[error("{0}")]
    Sql(DbFailure),
    #[error("deadlock: {0}")]
    Deadlock(DbFailure),
    #[error("database lock wait timeout: {0}")]
    DbLockTimeout(DbFailure),
    #[error("key {key:?} was not granted within {waited_ms} ms")]
    LockTimeout { key: String, waited_ms: u64 },
    #[error("key {key:?} is taken and is not above every key this transaction holds")]
    LockConflict { key: String },
    #[error("a transaction is already open")]
    TxActive,
    #[error("no transaction is open")]
    NoTransaction,
    #[error("the transaction was aborted ({0}); send rollback")]
    TxAborted(AbortReason),
    #[error("database unavailable: {0}")]
    DbUnavailable(String),
    #[error("the database connection was lost during commit; the outcome is unknown: {0}")]
    CommitUnknown(String),
    #[error("idempotency key {key:?} was used by a different request")]
    IdempotencyMismatch { key: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What carried the commit whose connection was lost, for the `commit_unknown` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitCarrier {
    /// A `COMMIT` statement.
    Commit,
    /// A statement run alone in autocommit mode, which is its own commit.
    AutocommitStatement,
    /// A one-trip `tx`: its statements, record and `COMMIT` sent in one query.
    Script,
}

impl BrokerError {
    pub fn bad_request(message: impl Into<String>) -> BrokerError {
        BrokerError::BadRequest(message.into())
    }

    /// The answer for `error` met while a commit was in flight: the connection was lost or the
    /// operation killed at the deadline (`commit_unknown`), or `Err(error)` back when the
    /// database answered and so the outcome is known.
    pub fn commit_unknown(error: DbError, carrier: CommitCarrier) -> Result<BrokerError, DbError> {
        let cause = match error {
            DbError::ConnectionLost(message) => message,
            DbError::DeadlineExceeded => match carrier {
                CommitCarrier::Commit => {
                    "COMMIT was still running at max_tx_duration_ms and was killed".to_string()
                }
                CommitCarrier::AutocommitStatement | CommitCarrier::Script => {
                    "the statement was still running at max_tx_duration_ms and was killed"
                        .to_string()
                }
            },
            known => return Err(known),
        };
        Ok(BrokerError::CommitUnknown(match carrier {
            CommitCarrier::Commit => cause,
            CommitCarrier::AutocommitStatement => format!(
                "{cause}; the statement ran as its own autocommit transaction, so it may have committed"
            ),
            CommitCarrier::Script => format!(
                "{cause}; COMMIT went to the server with the statements, in one query, so it may have committed"
            ),
        }))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::BadRequest(_) => ErrorCode::BadRequest,
            BrokerError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            BrokerError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            BrokerError::Busy { .. } => ErrorCode::Busy,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::Sql(_) => ErrorCode::Sql,
            BrokerError::Deadlock(_) => ErrorCode::Deadlock,
            BrokerError::DbLockTimeout(_) => ErrorCode::DbLockTimeout,
            BrokerError::LockTimeout { .. } => ErrorCode::LockTimeout,
            BrokerError::LockConflict { .. } => ErrorCode::LockConflict,
            BrokerError::TxActive => ErrorCode::TxActive,
            BrokerError::NoTransaction => ErrorCode::NoTransaction,
            BrokerError::TxAborted(_) => ErrorCode::TxAborted,
            BrokerError::DbUnavailable(_) => ErrorCode::DbUnavailable,
            BrokerError::CommitUnknown(_) => ErrorCode::CommitUnknown,
            BrokerError::IdempotencyMismatch { .. } => ErrorCode::IdempotencyMismatch,
            BrokerError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }

    /// The database's own report, for the `mysql_code`, `sqlstate` and `statement` fields.
    pub fn db_failure(&self) -> Option<&DbFailure> {
        match self {
            BrokerError::Sql(failure)
            | BrokerError::Deadlock(failure)
            | BrokerError::DbLockTimeout(failure) => Some(failure),
            _ => None,
        }
    }
}

impl From<DbError> for BrokerError {
    fn from(error: DbError) -> BrokerError {
        match error {
            DbError::Server(failure) => match failure.conflict() {
                Some(Conflict::Deadlock) => BrokerError::Deadlock(failure),
                Some(Conflict::LockWaitTimeout) => BrokerError::DbLockTimeout(failure),
                None => BrokerError::Sql(failure),
            },
            DbError::Unavailable(message) | DbError::ConnectionLost(message) => {
                BrokerError::DbUnavailable(message)
            }
            DbError::Rejected(message) => BrokerError::BadRequest(message),
            DbError::DeadlineExceeded => BrokerError::TxAborted(AbortReason::MaxDuration),
            DbError::TransactionEnded => BrokerError::BadRequest(
                "the statement ended the transaction on the database; it was rolled back where possible"
                    .into(),
            ),
        }
    }
}

impl From<LockFailure> for BrokerError {
    fn from(failure: LockFailure) -> BrokerError {
        match failure {
            LockFailure::Timeout { key, waited_ms } => BrokerError::LockTimeout { key, waited_ms },
            LockFailure::Conflict { key } => BrokerError::LockConflict { key },
            LockFailure::Cancelled => BrokerError::Internal("the lock wait was cancelled".into()),
            LockFailure::GroupGone => {
                BrokerError::Internal("the group the request joined went away".into())
            }
        }
    }
}

impl From<&LockFailure> for AbortReason {
    fn from(failure: &LockFailure) -> AbortReason {
        match failure {
            LockFailure::Conflict { key } => AbortReason::LockConflict { key: key.clone() },
            LockFailure::Timeout { key, .. } => AbortReason::LockTimeout { key: key.clone() },
            LockFailure::Cancelled | LockFailure::GroupGone => AbortReason::ConnectionLost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_retryable_matches_the_contract() {
        let retryable = [
            "busy",
            "shutting_down",
            "deadlock",
            "db_lock_timeout",
            "lock_timeout",
            "lock_conflict",
            "db_unavailable",
        ];
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.is_retryable(), retryable.contains(&code.as_str()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
