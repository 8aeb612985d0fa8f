//! Idempotency keys in the engine (`docs/protocol.md` §19): before a keyed `tx` or `begin`
//! runs, its key's record is looked up and, when there is one, its answer is sent again
//! instead; a keyed transaction that commits writes its record just before its `COMMIT`, in
//! the same round trip; and a keyed request that failed looks again, since a duplicate that
//! committed meanwhile (sent concurrently, or run by a broker that died) is what made it fail,
//! and that duplicate's answer is the truth.

use super::SessionEngine;
use crate::db::DbError;
use crate::error::BrokerError;
use crate::idempotency::{Claim, Recorded};
use crate::protocol::Reply;
use crate::txn::TxMode;

impl SessionEngine {
    /// The recorded answer for `claim`, or `None` when the request is to run. An expired
    /// record is deleted first, so that the request can record its own. Runs outside any
    /// transaction, on the session's connection.
    pub(super) async fn recorded_answer(
        &mut self,
        claim: &Claim,
    ) -> Result<Option<Reply>, BrokerError> {
        self.db.ensure_connected().await?;
        let found = self
            .db
            .execute(&self.outcomes.lookup(claim), TxMode::Autocommit)
            .await?;
        match self.outcomes.read(&found, claim) {
            Recorded::Live(reply) => Ok(Some(reply)),
            Recorded::OtherRequest => Err(BrokerError::IdempotencyMismatch {
                key: claim.key.clone(),
            }),
            Recorded::Expired => {
                self.db
                    .execute(&self.outcomes.forget_expired(claim), TxMode::Autocommit)
                    .await?;
                Ok(None)
            }
            Recorded::Absent => Ok(None),
        }
    }

    /// The answer to a keyed request that ended in `failure`: the answer of a request with
    /// the same key that committed meanwhile, if one did, or else the failure itself (also
    /// when the database cannot be asked).
    pub(super) async fn replayed_instead_of(
        &mut self,
        claim: &Claim,
        failure: BrokerError,
    ) -> Result<Reply, BrokerError> {
        match self.recorded_answer(claim).await {
            Ok(Some(reply)) => Ok(reply),
            Err(mismatch @ BrokerError::IdempotencyMismatch { .. }) => Err(mismatch),
            Ok(None) | Err(_) => Err(failure),
        }
    }

    /// `COMMIT`, with a record for each of `records` (a claim and the reply its request will
    /// be answered) written just before it, in the same round trip.
    pub(super) async fn commit_recording(
        &mut self,
        records: &[(&Claim, &Reply)],
    ) -> Result<(), DbError> {
        if records.is_empty() {
            return self.db.commit().await;
        }
        let insert = self.outcomes.insert(records);
        self.db.commit_after(&insert).await
    }
}
