//! Idempotency keys in the engine (`docs/protocol.md` §19): a keyed `tx` runs without
//! looking its key's record up first, and writes its record just before its `COMMIT`, in the
//! same round trip; the record's primary key is the arbiter, so a `tx` whose key has a record
//! fails on it, rolls back, and only then reads the record and is answered from it. A keyed
//! `begin` looks its record up before it opens anything, since a replayed `begin` must open no
//! transaction. Any keyed request that failed looks again, since a duplicate that committed
//! meanwhile (sent concurrently, or run by a broker that died) is what made it fail, and that
//! duplicate's answer is the truth.

use std::sync::Arc;
use std::time::Instant;

use super::SessionEngine;
use crate::db::DbError;
use crate::error::BrokerError;
use crate::idempotency::{Claim, Recorded};
use crate::protocol::{Reply, TxRequest};
use crate::txn::TxMode;

/// What a keyed request is to do, given its key's record.
pub(super) enum Lookup {
    /// Be answered the recorded answer.
    Replay(Reply),
    /// Run: the key has no record.
    Run,
    /// Run as if new: the key's record had expired, and is now deleted.
    RunAfterExpiry,
}

impl SessionEngine {
    /// The recorded answer for `claim`, or `None` when the request is to run.
    pub(super) async fn recorded_answer(
        &mut self,
        claim: &Claim,
    ) -> Result<Option<Reply>, BrokerError> {
        Ok(match self.look_up(claim).await? {
            Lookup::Replay(reply) => Some(reply),
            Lookup::Run | Lookup::RunAfterExpiry => None,
        })
    }

    /// Reads `claim`'s record. An expired record is deleted, so that the request can record
    /// its own. Runs outside any transaction, on the session's connection.
    pub(super) async fn look_up(&mut self, claim: &Claim) -> Result<Lookup, BrokerError> {
        self.db.ensure_connected().await?;
        self.look_up_in(claim, TxMode::Autocommit).await
    }

    /// `look_up` in `mode`: inside a group's transaction, whose `COMMIT` then carries the
    /// deletion of an expired record with everything else.
    pub(super) async fn look_up_in(
        &mut self,
        claim: &Claim,
        mode: TxMode,
    ) -> Result<Lookup, BrokerError> {
        let mut lookups = self.look_up_all_in(&[claim], mode).await?;
        lookups.pop().unwrap_or(Ok(Lookup::Run))
    }

    /// The records of `claims` read in one query (the lookups of a group's keyed members
    /// cost one round trip, not one each): for each claim, what its request is to do, or the
    /// mismatch that refuses it. Expired records are deleted, one by one (rare).
    pub(super) async fn look_up_all_in(
        &mut self,
        claims: &[&Claim],
        mode: TxMode,
    ) -> Result<Vec<Result<Lookup, BrokerError>>, BrokerError> {
        let found = self.db.execute(&self.outcomes.lookup(claims), mode).await?;
        let mut lookups = Vec::with_capacity(claims.len());
        for (claim, recorded) in claims.iter().zip(self.outcomes.read(&found, claims)) {
            lookups.push(match recorded {
                Recorded::Live(reply) => Ok(Lookup::Replay(reply)),
                Recorded::OtherRequest => Err(BrokerError::IdempotencyMismatch {
                    key: claim.key.clone(),
                }),
                Recorded::Expired => {
                    self.db
                        .execute(&self.outcomes.forget_expired(claim), mode)
                        .await?;
                    Ok(Lookup::RunAfterExpiry)
                }
                Recorded::Absent => Ok(Lookup::Run),
            });
        }
        Ok(lookups)
    }

    /// A keyed `tx`, run without a look at its key's record: when the key has one, its
    /// record's `INSERT` fails on the primary key and nothing of the run commits, and then
    /// the record answers. A record found expired is deleted and the `tx` runs once more.
    pub(super) async fn run_keyed_tx(
        &mut self,
        tx: Arc<TxRequest>,
        claim: &Claim,
        arrived: Instant,
    ) -> Result<Reply, BrokerError> {
        let failure = match self.execute_tx(tx.clone(), Some(claim), arrived).await {
            Err(failure) => failure,
            answer => return answer,
        };
        match self.look_up(claim).await {
            Ok(Lookup::Replay(reply)) => Ok(reply),
            Ok(Lookup::RunAfterExpiry) => match self.execute_tx(tx, Some(claim), arrived).await {
                Err(failure) => self.replayed_instead_of(claim, failure).await,
                answer => answer,
            },
            Err(mismatch @ BrokerError::IdempotencyMismatch { .. }) => Err(mismatch),
            Ok(Lookup::Run) | Err(_) => Err(failure),
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
