//! Group execution (protocol 1.1). A `tx` granted its keys after waiting, whose statements
//! all lock or change rows and touch no session state, leads a group: requests of the same
//! isolation level queued on its keys join it (the coordinator decides who, see `locks.rs`),
//! and it runs them one after another inside its own database transaction, each member
//! between a `SAVEPOINT` and, when one of its statements fails, a `ROLLBACK TO SAVEPOINT`,
//! with one `COMMIT` for all. A hot row then pays one commit flush per group, not per request.
//!
//! Each request keeps its own results, `attempts`, errors, `statement` index and retries: a
//! member whose statement fails is rolled back to its savepoint and answered its error while
//! the others go on; a 1205 reruns that member alone; a 1213 (the database rolled the whole
//! transaction back) reruns every request that had run, each within its own retries. Every
//! request is answered only after the group's `COMMIT` has answered, and shares its fate: a
//! connection lost during it is `commit_unknown` for each of them.
//!
//! A member's own session only waits: its request runs on the leader's connection and the
//! leader sends it the answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::ending::TxEnd;
use super::idempotent::Lookup;
use super::start::TxShape;
use super::tx::{retry_backoff, TxFailure};
use super::SessionEngine;
use crate::coordinator::{GroupRequest, Member};
use crate::db::DbError;
use crate::error::{BrokerError, CommitCarrier, Conflict, DbFailure};
use crate::idempotency::Claim;
use crate::protocol::{QueryResult, Reply, TxRequest};
use crate::txn::TxMode;

/// The savepoint before the member at `index`. Each has its own name: a failed `SAVEPOINT`
/// must not leave a rollback to it undoing the member before.
fn savepoint(index: usize) -> String {
    format!("txbroker_member_{index}")
}

type Answer = oneshot::Sender<Result<Reply, BrokerError>>;

/// One request of a group: the leader's own (first) or a member's.
struct Entry {
    tx: Arc<TxRequest>,
    /// Its idempotency key and request hash, made once: they are read before it first runs
    /// and again when the group records.
    claim: Option<Claim>,
    /// Whether its record has been looked at (a keyed request's, before it first runs).
    record: RecordLook,
    retries: u32,
    attempts: u32,
    state: EntryState,
    /// Where a member's answer goes; `None` for the leader's own request.
    answer: Option<Answer>,
}

/// A keyed request's record is read before the request first runs in a group: run first, as
/// alone, a replay's record `INSERT` would fail the group's `COMMIT` and with it every other
/// request (promise 3). Requests without a key have nothing to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordLook {
    Pending,
    Done,
}

impl RecordLook {
    fn of(claim: &Option<Claim>) -> RecordLook {
        match claim {
            Some(_) => RecordLook::Pending,
            None => RecordLook::Done,
        }
    }
}

enum EntryState {
    /// To run in the transaction in progress.
    ToRun,
    /// Running now, or ran in this transaction.
    Ran(Vec<QueryResult>),
    /// Will not commit; this is its answer.
    Failed(BrokerError),
    /// Its idempotency key's record answers it: it committed earlier and does not run.
    Replayed(Reply),
    /// Its idempotency key is that of the earlier request at this position in the group,
    /// whose record is not written until the group's `COMMIT`: it does not run, and is
    /// answered from that request's outcome, as it would be from its record.
    SameKeyAs(usize),
    /// A member whose client left before it ran: it never runs and is not answered.
    Abandoned,
}

/// Whether the group's `COMMIT` has been sent, for the answers of a group dropped unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitStage {
    NotSent,
    Sent,
}

struct Group {
    entries: Vec<Entry>,
    inbox: mpsc::UnboundedReceiver<Member>,
    commit: CommitStage,
}

/// Requests that run together: each with its script part (savepoint and statements written
/// out), or a lone one with `None` that runs as prepared statements; `after` is the position
/// the pass goes on from once all ran.
struct Batch {
    parts: Vec<(usize, Option<Vec<String>>)>,
    after: usize,
}

/// How one pass over the group, in one database transaction, ended.
enum Pass {
    /// Every request ran or failed on its own.
    Complete,
    /// The database rolled the whole transaction back (1213, SQLSTATE 40001) while the
    /// request at this index ran.
    RolledBack { index: usize, failure: TxFailure },
    /// The connection is gone or the deadline passed: nothing of the group was committed.
    Lost(DbError),
}

/// What the group's `COMMIT` came to.
enum GroupOutcome {
    Committed,
    Unknown(BrokerError),
    Failed(BrokerError),
}

impl SessionEngine {
    /// Runs the leader's `tx` and its members, then commits them together.
    pub(super) async fn lead_group(
        &mut self,
        GroupRequest { tx, claim }: GroupRequest,
        shape: TxShape,
        retries: u32,
        inbox: mpsc::UnboundedReceiver<Member>,
    ) -> Result<Reply, BrokerError> {
        let mut group = Group {
            entries: vec![Entry {
                record: RecordLook::of(&claim),
                claim,
                tx: tx.clone(),
                retries,
                attempts: 0,
                state: EntryState::ToRun,
                answer: None,
            }],
            inbox,
            commit: CommitStage::NotSent,
        };
        // A single write leads in a transaction like the rest: its own commit would flush
        // while it holds the keys. Nor has a one-trip `tx` begun one: it sends its own.
        if shape != TxShape::Explicit {
            if let Err(error) = self.db.begin(tx.options.isolation, false).await {
                return self.lose_group(&mut group, error).await;
            }
        }
        loop {
            match self.run_group_pass(&mut group).await {
                Pass::Complete => return self.commit_group(&mut group).await,
                Pass::Lost(error) => return self.lose_group(&mut group, error).await,
                Pass::RolledBack { index, failure } => {
                    if let Err(error) = self.restart_group(&mut group, index, failure).await {
                        return self.lose_group(&mut group, error).await;
                    }
                }
            }
        }
    }

    /// Runs, in order, every request still to run, taking members as they come; members stop
    /// coming once the inbox is empty and the group is closed. Requests go in scripts, several
    /// to a round trip, the leader's first.
    async fn run_group_pass(&mut self, group: &mut Group) -> Pass {
        let mut index = 0;
        loop {
            let Some(next) = self.next_to_run(group, index).await else {
                return Pass::Complete;
            };
            let batch = self.batch_from(group, next);
            for &(position, _) in &batch.parts {
                group.entries[position].attempts += 1;
                group.entries[position].state = EntryState::Ran(Vec::new());
            }
            let (ran, failure) = self.run_batch(group, &batch).await;
            for (position, results) in ran {
                group.entries[position].state = EntryState::Ran(results);
            }
            index = match failure {
                None => batch.after,
                Some((position, failure)) => {
                    for &(untouched, _) in batch.parts.iter().filter(|(at, _)| *at > position) {
                        group.entries[untouched].attempts -= 1;
                        group.entries[untouched].state = EntryState::ToRun;
                    }
                    match self.after_failure(group, position, failure).await {
                        Ok(next) => next,
                        Err(pass) => return pass,
                    }
                }
            };
        }
    }

    /// The first request at or after `from` still to run, taking the members that have
    /// arrived; once none is left, asks the coordinator to close the group, which it does
    /// unless more may join now, and waits for those.
    async fn next_to_run(&mut self, group: &mut Group, mut from: usize) -> Option<usize> {
        loop {
            while let Ok(member) = group.inbox.try_recv() {
                self.take_member(group, member);
            }
            for position in from..group.entries.len() {
                let entry = &mut group.entries[position];
                if !matches!(entry.state, EntryState::ToRun) {
                    continue;
                }
                if entry.attempts == 0 && entry.answer.as_ref().is_some_and(Answer::is_closed) {
                    entry.state = EntryState::Abandoned;
                    continue;
                }
                if entry.record == RecordLook::Pending {
                    self.look_up_records(group, position).await;
                    if !matches!(group.entries[position].state, EntryState::ToRun) {
                        continue;
                    }
                }
                return Some(position);
            }
            if let Some(revived) = revive_same_key(group) {
                from = revived;
                continue;
            }
            from = group.entries.len();
            // The coordinator drops the inbox's sender when it closes the group, so the
            // receive below ends once no one else can join.
            self.keys.close_group();
            let member = group.inbox.recv().await?;
            self.take_member(group, member);
        }
    }

    /// Looks at the records of every keyed request from `from` on that has not run yet, in
    /// one query. One whose key has no record but is the key of a request before it in the
    /// group waits for that request (`SameKeyAs`), whose record is written only at the
    /// group's `COMMIT`. Same-key requests are otherwise serialized by their broker key, so no
    /// other can record between this look and the group's `COMMIT`.
    async fn look_up_records(&mut self, group: &mut Group, from: usize) {
        let pending: Vec<usize> = (from..group.entries.len())
            .filter(|&position| {
                let entry = &group.entries[position];
                entry.claim.is_some()
                    && entry.record == RecordLook::Pending
                    && matches!(entry.state, EntryState::ToRun)
            })
            .collect();
        let claims: Vec<&Claim> = pending
            .iter()
            .filter_map(|&position| group.entries[position].claim.as_ref())
            .collect();
        if claims.is_empty() {
            return;
        }
        let lookups = match self.look_up_all_in(&claims, TxMode::InTransaction).await {
            Ok(lookups) => lookups,
            Err(error) => pending.iter().map(|_| Err(error.clone())).collect(),
        };
        for (position, lookup) in pending.into_iter().zip(lookups) {
            group.entries[position].record = RecordLook::Done;
            group.entries[position].state = match lookup {
                Ok(Lookup::Run | Lookup::RunAfterExpiry) => {
                    match same_key_before(group, position) {
                        Some(first) => EntryState::SameKeyAs(first),
                        None => continue,
                    }
                }
                Ok(Lookup::Replay(reply)) => EntryState::Replayed(reply),
                Err(error) => EntryState::Failed(error),
            };
        }
    }

    /// What runs next from `first`: consecutive requests, each as its statements written out
    /// (after its savepoint, for a member), up to one whose last statement returns rows (the
    /// rows of a statement are lost when the next one in the script fails) or a keyed one yet
    /// to be looked up; or one whose values have no literal, alone with prepared statements.
    fn batch_from(&mut self, group: &Group, first: usize) -> Batch {
        let alone = |position| Batch {
            parts: vec![(position, None)],
            after: position + 1,
        };
        let mut batch = Batch {
            parts: Vec::new(),
            after: first,
        };
        for (position, entry) in group.entries.iter().enumerate().skip(first) {
            batch.after = position;
            if !matches!(entry.state, EntryState::ToRun) {
                continue;
            }
            // Arrived after the last look at the records: `next_to_run` looks first.
            if entry.record == RecordLook::Pending {
                return batch;
            }
            let Some(script) = self.script_part(position, &entry.tx) else {
                if batch.parts.is_empty() {
                    return alone(position);
                }
                return batch;
            };
            batch.parts.push((position, Some(script)));
            batch.after = position + 1;
            if self.returns_rows(&entry.tx) {
                return batch;
            }
        }
        batch
    }

    fn returns_rows(&mut self, tx: &TxRequest) -> bool {
        let isolation = self.current.isolation;
        tx.statements
            .last()
            .is_some_and(|last| self.classes.classify(&last.sql, isolation).returns_rows)
    }

    /// Runs a batch: the results of the requests that ran whole, and the failure of the one
    /// that did not, if any (those after it did not run).
    async fn run_batch(
        &mut self,
        group: &Group,
        batch: &Batch,
    ) -> (Vec<(usize, Vec<QueryResult>)>, Option<(usize, TxFailure)>) {
        if let [(position, None)] = batch.parts.as_slice() {
            let tx = group.entries[*position].tx.clone();
            return match self.run_entry(*position, &tx).await {
                Ok(results) => (vec![(*position, results)], None),
                Err(failure) => (Vec::new(), Some((*position, failure))),
            };
        }
        let script: Vec<String> = batch
            .parts
            .iter()
            .flat_map(|(_, part)| part.iter().flatten().cloned())
            .collect();
        let (mut results, error) = self.db.execute_script(&script).await;
        let mut ran = Vec::new();
        for (position, part) in &batch.parts {
            let length = part.as_ref().map_or(0, Vec::len);
            // A member's part starts with its savepoint; the leader's has none.
            let savepoints = usize::from(*position > 0);
            if results.len() >= length {
                let rest = results.split_off(length);
                ran.push((*position, results.split_off(savepoints)));
                results = rest;
                continue;
            }
            // The failing statement's index in the request is the count of the part's
            // statements that ran, not counting its savepoint.
            let failure = TxFailure {
                statement: results.len().checked_sub(savepoints),
                error: error.unwrap_or_else(|| {
                    DbError::Rejected("a statement of the group's script gave no answer".into())
                }),
            };
            return (ran, Some((*position, failure)));
        }
        (ran, None)
    }

    /// What a request's failure does: a deadlock reruns the group, a lost connection ends it;
    /// otherwise the request is undone and runs again (1205, within its retries) or is
    /// answered its error. The position to go on from, or how the pass ends.
    async fn after_failure(
        &mut self,
        group: &mut Group,
        position: usize,
        failure: TxFailure,
    ) -> Result<usize, Pass> {
        match failure.error.conflict() {
            Some(Conflict::Deadlock) => {
                return Err(Pass::RolledBack {
                    index: position,
                    failure,
                })
            }
            _ if is_lost(&failure.error) => return Err(Pass::Lost(failure.error)),
            _ => {}
        }
        let tx = group.entries[position].tx.clone();
        if let Err(error) = self.undo_entry(position, &tx).await {
            return Err(Pass::Lost(error));
        }
        let entry = &mut group.entries[position];
        let conflict = failure
            .error_failure()
            .filter(|failure| failure.conflict().is_some());
        if let Some(conflict) = conflict.filter(|_| entry.attempts <= entry.retries) {
            // 1205: the request alone runs again.
            self.metrics.retried(conflict.mysql_code);
            entry.state = EntryState::ToRun;
            Ok(position)
        } else {
            entry.state = EntryState::Failed(failure.into_answer());
            Ok(position + 1)
        }
    }

    /// The statements of the request at `index`, as prepared statements; a member's after
    /// its savepoint.
    async fn run_entry(
        &mut self,
        index: usize,
        tx: &TxRequest,
    ) -> Result<Vec<QueryResult>, TxFailure> {
        if index > 0 {
            self.db
                .savepoint(&savepoint(index))
                .await
                .map_err(|error| TxFailure {
                    statement: None,
                    error,
                })?;
        }
        let mut results = Vec::with_capacity(tx.statements.len());
        for (statement_index, statement) in tx.statements.iter().enumerate() {
            let result = self
                .db
                .execute(statement, TxMode::InTransaction)
                .await
                .map_err(|error| TxFailure {
                    statement: Some(statement_index),
                    error,
                })?;
            results.push(result);
        }
        Ok(results)
    }

    /// A request's statements with their values written in, for a script; a member's after
    /// its savepoint.
    fn script_part(&mut self, index: usize, tx: &TxRequest) -> Option<Vec<String>> {
        let mut script = Vec::with_capacity(tx.statements.len() + 1);
        if index > 0 {
            script.push(format!("SAVEPOINT {}", savepoint(index)));
        }
        for statement in &tx.statements {
            let placeholders = self.classes.placeholders(&statement.sql)?;
            script.push(self.db.render(statement, &placeholders)?);
        }
        Some(script)
    }

    /// Takes back what the request at `index` did: a member to its savepoint; the leader,
    /// which runs first and has none, by rolling back and starting the transaction again.
    async fn undo_entry(&mut self, index: usize, tx: &TxRequest) -> Result<(), DbError> {
        if index > 0 {
            return self.db.rollback_to_savepoint(&savepoint(index)).await;
        }
        self.db.rollback().await?;
        self.db.begin(tx.options.isolation, false).await
    }

    fn take_member(&mut self, group: &mut Group, member: Member) {
        let Member {
            request: GroupRequest { tx, claim },
            outcome,
        } = member;
        group.entries.push(Entry {
            retries: tx.retries.unwrap_or(self.config.default_retries),
            record: RecordLook::of(&claim),
            claim,
            tx,
            attempts: 0,
            state: EntryState::ToRun,
            answer: Some(outcome),
        });
    }

    /// After the database rolled the whole transaction back: every request that had run runs
    /// again, within its own retries, in a new transaction.
    async fn restart_group(
        &mut self,
        group: &mut Group,
        index: usize,
        failure: TxFailure,
    ) -> Result<(), DbError> {
        self.db.rollback().await?;
        let Some(collateral) = failure.error_failure() else {
            return Err(failure.error);
        };
        let mut longest = 0;
        for (position, entry) in group.entries.iter_mut().enumerate() {
            if !matches!(entry.state, EntryState::Ran(_)) {
                continue;
            }
            if entry.attempts > entry.retries {
                let answer = if position == index {
                    failure.answer_ref()
                } else {
                    BrokerError::Deadlock(collateral.clone())
                };
                entry.state = EntryState::Failed(answer);
            } else {
                self.metrics.retried(collateral.mysql_code);
                entry.state = EntryState::ToRun;
                longest = longest.max(entry.attempts);
            }
        }
        tokio::time::sleep(retry_backoff(longest.max(1))).await;
        let isolation = group.entries[0].tx.options.isolation;
        self.db.begin(isolation, false).await
    }

    /// Commits the group (keys handed over as `COMMIT` is sent) and answers every request.
    async fn commit_group(&mut self, group: &mut Group) -> Result<Reply, BrokerError> {
        let ran = group
            .entries
            .iter()
            .filter(|entry| matches!(entry.state, EntryState::Ran(_)))
            .count();
        let outcome = if ran == 0 {
            GroupOutcome::Failed(BrokerError::Internal("nothing of the group ran".into()))
        } else {
            self.hand_over_keys();
            group.commit = CommitStage::Sent;
            self.commit_group_recording(group).await
        };
        let leader_ran = matches!(group.entries[0].state, EntryState::Ran(_));
        let end = match (&outcome, leader_ran) {
            (GroupOutcome::Committed, true) => TxEnd::Committed,
            (GroupOutcome::Committed, false) => TxEnd::CommittedWithoutOwn,
            (GroupOutcome::Unknown(_), _) => TxEnd::CommitUnknown,
            (GroupOutcome::Failed(_), _) => TxEnd::RolledBack,
        };
        if matches!(outcome, GroupOutcome::Committed) && ran >= 2 {
            self.metrics.group_committed(ran as u64);
        }
        let leader_answer = answer_all(group, &outcome);
        self.end_transaction(end).await;
        leader_answer
    }

    /// The group's `COMMIT`, with the records of its keyed requests that ran written just
    /// before it. A record refused (a duplicate of a member committed meanwhile) fails the
    /// whole group before its `COMMIT`: every request is answered `db_unavailable`, which it
    /// is, since nothing committed, and a retry of the duplicated one replays its duplicate.
    async fn commit_group_recording(&mut self, group: &Group) -> GroupOutcome {
        let replies: Vec<(&Claim, Reply)> = group
            .entries
            .iter()
            .filter_map(|entry| match &entry.state {
                EntryState::Ran(results) => Some((
                    entry.claim.as_ref()?,
                    Reply::Tx {
                        results: results.clone(),
                        attempts: entry.attempts,
                    },
                )),
                _ => None,
            })
            .collect();
        let records: Vec<(&Claim, &Reply)> = replies
            .iter()
            .map(|(claim, reply)| (*claim, reply))
            .collect();
        match self.commit_recording(&records).await {
            Ok(()) => GroupOutcome::Committed,
            Err(error) => match BrokerError::commit_unknown(error, CommitCarrier::Commit) {
                Ok(unknown) => GroupOutcome::Unknown(unknown),
                Err(DbError::Server(failure)) if !records.is_empty() && failure.conflict().is_none() => {
                    GroupOutcome::Failed(BrokerError::DbUnavailable(format!(
                        "recording the group's idempotency keys failed ({failure}); nothing was committed"
                    )))
                }
                Err(error) => GroupOutcome::Failed(BrokerError::from(error)),
            },
        }
    }

    /// The connection is gone (or the deadline passed) before `COMMIT`: nothing committed.
    async fn lose_group(
        &mut self,
        group: &mut Group,
        error: DbError,
    ) -> Result<Reply, BrokerError> {
        let lost = BrokerError::from(error);
        for entry in &mut group.entries {
            if matches!(entry.state, EntryState::ToRun | EntryState::Ran(_)) {
                entry.state = EntryState::Failed(lost.clone());
            }
        }
        // Members that had not arrived yet are dropped with the group's inbox below; the
        // coordinator's release of the keys fails none of them, since they hold nothing.
        let leader_answer = answer_all(group, &GroupOutcome::Failed(lost));
        self.end_transaction(TxEnd::RolledBack).await;
        leader_answer
    }

    /// Waits, as a member, for the answer of the group that runs this session's `tx`.
    pub(super) async fn run_as_member(
        &mut self,
        answer: oneshot::Receiver<Result<Reply, BrokerError>>,
    ) -> Result<Reply, BrokerError> {
        let client_gone = self.keys.cancellation();
        let answer = tokio::select! {
            // The leader answers every request it took; one it drops unanswered never ran.
            answer = answer => answer.unwrap_or_else(|_| Err(BrokerError::DbUnavailable(
                "the session running this request's group stopped before running it; nothing was committed".into(),
            ))),
            // Dropping the receiver tells the leader to skip the request if it has not run
            // yet; if it has, it commits with the group, and nobody is left to tell.
            () = client_gone.cancelled() => Err(BrokerError::CommitUnknown(
                "the client left while its request waited in a group".into(),
            )),
        };
        let end = match &answer {
            Ok(_) => TxEnd::Committed,
            Err(BrokerError::CommitUnknown(_)) => TxEnd::CommitUnknown,
            Err(_) => TxEnd::RolledBack,
        };
        // The request's own end, counted in this session like any `tx` of its own.
        self.end_transaction(end).await;
        answer
    }
}

/// The position of the request before `position` in `group` that carries the same
/// idempotency key and runs (or ran) in this transaction: two requests with one key share a
/// group when the second joins the group its broker key's holder leads.
fn same_key_before(group: &Group, position: usize) -> Option<usize> {
    let key = &group.entries[position].claim.as_ref()?.key;
    group.entries[..position].iter().position(|entry| {
        matches!(entry.state, EntryState::ToRun | EntryState::Ran(_))
            && entry
                .claim
                .as_ref()
                .is_some_and(|earlier| &earlier.key == key)
    })
}

/// Requests that waited for a same-key request which then did not run to the end (it failed
/// on its own, or its client left): nothing of that key is recorded, so they run now. The
/// first of them, if any.
fn revive_same_key(group: &mut Group) -> Option<usize> {
    let mut first_revived = None;
    for position in 0..group.entries.len() {
        let EntryState::SameKeyAs(first) = group.entries[position].state else {
            continue;
        };
        if matches!(
            group.entries[first].state,
            EntryState::Failed(_) | EntryState::Abandoned
        ) {
            group.entries[position].state = EntryState::ToRun;
            first_revived.get_or_insert(position);
        }
    }
    first_revived
}

/// The answer of a request with `claim` that shares its key with an earlier request of the
/// group, with `first_claim`, answered `first`: when that committed, its answer again,
/// replayed, if they ask the same, and a mismatch if not (its record is now the key's);
/// when the group did not commit, the same failure, since nothing of either was committed.
fn answer_of_same_key(
    first: &Result<Reply, BrokerError>,
    first_claim: &Claim,
    claim: &Claim,
) -> Result<Reply, BrokerError> {
    match first {
        Ok(_) if first_claim.hash != claim.hash => Err(BrokerError::IdempotencyMismatch {
            key: claim.key.clone(),
        }),
        Ok(reply @ Reply::Replayed { .. }) => Ok(reply.clone()),
        Ok(reply) => Ok(Reply::Replayed {
            reply: Box::new(reply.clone()),
            results_omitted: false,
        }),
        Err(error) => Err(error.clone()),
    }
}

/// Sends each member its answer and returns the leader's.
fn answer_all(group: &mut Group, outcome: &GroupOutcome) -> Result<Reply, BrokerError> {
    let mut leader_answer = Err(BrokerError::Internal(
        "the leader's request has no answer".into(),
    ));
    // Only the answers a same-key request is answered from are kept.
    let mut kept: Vec<Option<Result<Reply, BrokerError>>> = vec![None; group.entries.len()];
    let mut keeps = vec![false; group.entries.len()];
    for entry in &group.entries {
        if let EntryState::SameKeyAs(first) = entry.state {
            keeps[first] = true;
        }
    }
    for position in 0..group.entries.len() {
        let state = std::mem::replace(&mut group.entries[position].state, EntryState::Abandoned);
        let answer = match (state, outcome) {
            (EntryState::Ran(results), GroupOutcome::Committed) => Ok(Reply::Tx {
                results,
                attempts: group.entries[position].attempts,
            }),
            (EntryState::Ran(_), GroupOutcome::Unknown(error) | GroupOutcome::Failed(error)) => {
                Err(error.clone())
            }
            (EntryState::Failed(error), _) => Err(error),
            (EntryState::Replayed(reply), _) => Ok(reply),
            (EntryState::SameKeyAs(first), _) => {
                let claims = (&group.entries[first].claim, &group.entries[position].claim);
                match (&kept[first], claims) {
                    (Some(first_answer), (Some(first_claim), Some(claim))) => {
                        answer_of_same_key(first_answer, first_claim, claim)
                    }
                    _ => continue,
                }
            }
            (EntryState::ToRun | EntryState::Abandoned, _) => continue,
        };
        if keeps[position] {
            kept[position] = Some(answer.clone());
        }
        match group.entries[position].answer.take() {
            Some(member) => {
                let _ = member.send(answer);
            }
            None => leader_answer = answer,
        }
    }
    leader_answer
}

/// Whether `error` means the group's transaction is gone with its connection.
fn is_lost(error: &DbError) -> bool {
    matches!(
        error,
        DbError::ConnectionLost(_)
            | DbError::Unavailable(_)
            | DbError::DeadlineExceeded
            | DbError::TransactionEnded
    )
}

/// Members a group leaves unanswered (its session stopped in the middle) are told what can be
/// known: nothing committed before `COMMIT` was sent, the outcome unknown after.
impl Drop for Group {
    fn drop(&mut self) {
        for entry in &mut self.entries {
            if let Some(member) = entry.answer.take() {
                let _ = member.send(Err(match self.commit {
                    CommitStage::NotSent => BrokerError::DbUnavailable(
                        "the session running this request's group stopped before committing it; nothing was committed".into(),
                    ),
                    CommitStage::Sent => BrokerError::CommitUnknown(
                        "the session running this request's group stopped while its commit was in flight".into(),
                    ),
                }));
            }
        }
    }
}

impl TxFailure {
    fn error_failure(&self) -> Option<DbFailure> {
        match &self.error {
            DbError::Server(failure) => Some(failure.clone()),
            _ => None,
        }
    }

    fn answer_ref(&self) -> BrokerError {
        TxFailure {
            statement: self.statement,
            error: self.error.clone(),
        }
        .into_answer()
    }
}
