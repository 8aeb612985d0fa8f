//! The transaction state of one session, as its client sees it, and the rules of protocol v1
//! about which request is allowed in which state. Pure: no I/O, no actors; the session
//! engine asks `admit` before doing anything and moves the state after doing it.

use crate::error::{AbortReason, BrokerError};
use crate::protocol::Request;

/// Where a session's interactive transaction stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxState {
    /// No transaction is open; `exec` runs in autocommit mode.
    Idle,
    /// `begin` succeeded; statements run inside the database transaction.
    Active,
    /// The broker or the database ended the transaction behind the client's back. Nothing is
    /// open on the database and no key is held; the client must `rollback` before going on.
    Aborted(AbortReason),
}

/// Whether a statement is meant to run inside the open transaction or on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxMode {
    InTransaction,
    Autocommit,
}

/// Whether the server is draining for shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPhase {
    Serving,
    Draining,
}

impl TxState {
    /// Checks that `request` may run now. `Ok` means the engine goes ahead; an error is the
    /// answer, and the state does not change.
    pub fn admit(&self, request: &Request, phase: ServerPhase) -> Result<(), BrokerError> {
        let starts_work_outside_tx = match request {
            Request::Hello { .. } | Request::Ping | Request::Stats | Request::Rollback => {
                return Ok(())
            }
            Request::Tx(_) | Request::Begin(_) => true,
            Request::Exec(_) => matches!(self, TxState::Idle),
            Request::Lock(_) | Request::Commit => false,
        };
        match self {
            TxState::Aborted(reason) => Err(BrokerError::TxAborted(reason.clone())),
            TxState::Active if matches!(request, Request::Tx(_) | Request::Begin(_)) => {
                Err(BrokerError::TxActive)
            }
            TxState::Idle if matches!(request, Request::Lock(_) | Request::Commit) => {
                Err(BrokerError::NoTransaction)
            }
            _ if starts_work_outside_tx && phase == ServerPhase::Draining => {
                Err(BrokerError::ShuttingDown)
            }
            _ => Ok(()),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, TxState::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::locks::LockRequest;
    use crate::protocol::{Statement, TxOptions, TxRequest};

    fn every_request() -> Vec<Request> {
        vec![
            Request::Hello {
                token: None,
                client: None,
            },
            Request::Ping,
            Request::Tx(TxRequest {
                statements: vec![Statement::new("SELECT 1", vec![])],
                options: TxOptions::default(),
                retries: None,
            }),
            Request::Begin(TxOptions::default()),
            Request::Exec(Statement::new("SELECT 1", vec![])),
            Request::Lock(LockRequest::new(vec!["k".to_string()], vec![]).expect("one key")),
            Request::Commit,
            Request::Rollback,
            Request::Stats,
        ]
    }

    /// The contract's rules as a table: op → expected outcome in (state, phase).
    fn check(state: TxState, phase: ServerPhase, expected: &[(&str, Option<ErrorCode>)]) {
        for request in every_request() {
            let (_, want) = expected
                .iter()
                .find(|(op, _)| *op == request.op())
                .unwrap_or_else(|| panic!("no expectation for {}", request.op()));
            let got = state.admit(&request, phase).err().map(|error| error.code());
            assert_eq!(got, *want, "{} in {state:?} while {phase:?}", request.op());
        }
    }

    #[test]
    fn idle_serving() {
        use ErrorCode::*;
        check(
            TxState::Idle,
            ServerPhase::Serving,
            &[
                ("hello", None),
                ("ping", None),
                ("tx", None),
                ("begin", None),
                ("exec", None),
                ("lock", Some(NoTransaction)),
                ("commit", Some(NoTransaction)),
                ("rollback", None),
                ("stats", None),
            ],
        );
    }

    #[test]
    fn active_serving_and_draining_behave_alike() {
        use ErrorCode::*;
        for phase in [ServerPhase::Serving, ServerPhase::Draining] {
            check(
                TxState::Active,
                phase,
                &[
                    ("hello", None),
                    ("ping", None),
                    ("tx", Some(TxActive)),
                    ("begin", Some(TxActive)),
                    ("exec", None),
                    ("lock", None),
                    ("commit", None),
                    ("rollback", None),
                    ("stats", None),
                ],
            );
        }
    }

    #[test]
    fn aborted_answers_tx_aborted_until_rollback() {
        use ErrorCode::*;
        for phase in [ServerPhase::Serving, ServerPhase::Draining] {
            check(
                TxState::Aborted(AbortReason::Deadlock),
                phase,
                &[
                    ("hello", None),
                    ("ping", None),
                    ("tx", Some(TxAborted)),
                    ("begin", Some(TxAborted)),
                    ("exec", Some(TxAborted)),
                    ("lock", Some(TxAborted)),
                    ("commit", Some(TxAborted)),
                    ("rollback", None),
                    ("stats", None),
                ],
            );
        }
    }

    #[test]
    fn draining_refuses_only_new_work() {
        use ErrorCode::*;
        check(
            TxState::Idle,
            ServerPhase::Draining,
            &[
                ("hello", None),
                ("ping", None),
                ("tx", Some(ShuttingDown)),
                ("begin", Some(ShuttingDown)),
                ("exec", Some(ShuttingDown)),
                ("lock", Some(NoTransaction)),
                ("commit", Some(NoTransaction)),
                ("rollback", None),
                ("stats", None),
            ],
        );
    }

    #[test]
    fn the_abort_reason_is_named_in_the_message() {
        let state = TxState::Aborted(AbortReason::IdleTimeout { idle_ms: 50 });
        let error = state
            .admit(&Request::Commit, ServerPhase::Serving)
            .expect_err("aborted");
        assert!(error.to_string().contains("idle for more than 50 ms"));
    }
}
