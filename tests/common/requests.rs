//! Requests the tests send often, built once: declared keys, and the bank's transfer
//! (`common::bank`).

use txbroker::client::TxBuilder;
use txbroker::locks::LockRequest;
use txbroker::protocol::{TxOptions, TxRequest};

/// Keys to hold exclusively, for `lock` or a transaction's options.
pub fn keys<K: AsRef<str>>(exclusive: &[K]) -> LockRequest {
    LockRequest::new(
        exclusive.iter().map(|key| key.as_ref().to_string()),
        Vec::new(),
    )
    .expect("at least one key")
}

/// Transaction options that declare `exclusive` keys and nothing else.
pub fn with_keys<K: AsRef<str>>(exclusive: &[K]) -> TxOptions {
    TxOptions {
        locks: Some(keys(exclusive)),
        ..TxOptions::default()
    }
}

/// One transfer of `amount` from account `from` to account `to`: both balances and a ledger
/// row with the client-chosen unique `id`, with both accounts' keys declared.
pub fn transfer_tx(id: &str, from: u64, to: u64, amount: i64) -> TxRequest {
    transfer_tx_keyed("", id, from, to, amount)
}

/// `transfer_tx` with keys `{namespace}accounts:{id}`: named locks are server-wide, so tests
/// that take keys in the database (`coordination = "database"`) give them a namespace.
pub fn transfer_tx_keyed(namespace: &str, id: &str, from: u64, to: u64, amount: i64) -> TxRequest {
    money_move(namespace, from, to, amount)
        .exec(
            "INSERT INTO ledger (id, from_id, to_id, amount) VALUES (?, ?, ?, ?)",
            vec![id.into(), from.into(), to.into(), amount.into()],
        )
        .into_request()
}

/// The two balance updates of a transfer, with both accounts' keys
/// `{namespace}accounts:{id}` declared, to which a request may add statements.
pub fn money_move(namespace: &str, from: u64, to: u64, amount: i64) -> TxBuilder<'static> {
    TxBuilder::new()
        .lock(format!("{namespace}accounts:{from}"))
        .lock(format!("{namespace}accounts:{to}"))
        .exec(
            "UPDATE accounts SET balance = balance - ? WHERE id = ?",
            vec![amount.into(), from.into()],
        )
        .exec(
            "UPDATE accounts SET balance = balance + ? WHERE id = ?",
            vec![amount.into(), to.into()],
        )
}

/// `tx` carrying the idempotency key `key`.
pub fn keyed(mut tx: TxRequest, key: &str) -> TxRequest {
    tx.options.idempotency_key = Some(key.to_string());
    tx
}
