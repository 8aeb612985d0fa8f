//! Keys as MariaDB named locks, for `coordination = "database"`: what a key is called in the
//! database, the SQL that takes and releases a transaction's keys there, and which keys a
//! session's connection holds. Pure: the engine runs the SQL (`engine/cross_broker.rs`).
//!
//! Every broker on one database takes the keys it granted as named locks, in the same
//! ascending key order, before a transaction's first statement, so brokers order their
//! transactions among themselves as each orders its own. The server has no shared named lock:
//! a shared key is exclusive across brokers.
//!
//! **Invariant:** two distinct keys never map to one lock name (short of a SHA-256 collision),
//! whether the server compares names with or without case (MariaDB's documentation says
//! without; 10.11 compares them with case), so the order the locks are taken in is the keys'.

use std::collections::BTreeSet;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::db::ConnectionIdentity;

/// Longest lock name the server takes, in characters (MySQL's limit; MariaDB's is no shorter).
pub const MAX_LOCK_NAME_CHARS: usize = 64;

/// What every name starts with, so that the broker's locks stand apart from an application's.
const NAME_PREFIX: &str = "txb:";

/// Hex digits of the key's SHA-256 kept in a hashed name: 128 bits.
const HASH_HEX_DIGITS: usize = 32;

/// The named lock that stands for `key`: `txb:` and the key itself when that fits and is
/// unambiguous (lower-case ASCII letters, digits and `:_-./@`), otherwise `txb:`, a readable
/// prefix of the key, `#` and the first 128 bits of its SHA-256 in hex.
pub fn lock_name(key: &str) -> String {
    let readable = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, ':' | '_' | '-' | '.' | '/' | '@')
    };
    if NAME_PREFIX.len() + key.len() <= MAX_LOCK_NAME_CHARS && key.chars().all(readable) {
        return format!("{NAME_PREFIX}{key}");
    }
    let room = MAX_LOCK_NAME_CHARS - NAME_PREFIX.len() - 1 - HASH_HEX_DIGITS;
    let prefix: String = key
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| readable(*c))
        .take(room)
        .collect();
    let digest = Sha256::digest(key.as_bytes());
    let hash = hex::encode(&digest[..HASH_HEX_DIGITS / 2]);
    format!("{NAME_PREFIX}{prefix}#{hash}")
}

/// How long one key's `GET_LOCK` may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedLockWait {
    /// Up to this long: the key is above every key the connection holds.
    Upto(Duration),
    /// Not at all: an out-of-order key of a `lock`, tried as the coordinator tries it.
    Try,
}

/// The script that takes `steps` (lock names in ascending key order) in one round trip, one
/// `SELECT GET_LOCK` per statement: the server runs a multi-statement query in order, where
/// the order of the expressions of one `SELECT` is not guaranteed. Each statement after the
/// first waits only if the one before got its lock, so a timeout ends the waiting at once;
/// each answers 1 (taken), 0 (not taken) or NULL.
pub fn take_script(steps: &[(String, NamedLockWait)]) -> Vec<String> {
    let mut previous: Option<&str> = None;
    steps
        .iter()
        .map(|(name, wait)| {
            let seconds = match wait {
                NamedLockWait::Upto(limit) => format!("{:.3}", limit.as_secs_f64()),
                NamedLockWait::Try => "0".to_string(),
            };
            let timeout = match previous {
                None => seconds,
                Some(before) => {
                    format!("IF(IS_USED_LOCK('{before}') <=> CONNECTION_ID(), {seconds}, 0)")
                }
            };
            previous = Some(name);
            format!("SELECT GET_LOCK('{name}', {timeout})")
        })
        .collect()
}

/// One statement that releases every lock in `names`; the order of release is immaterial.
pub fn release_statement<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let calls: Vec<String> = names
        .into_iter()
        .map(|name| format!("RELEASE_LOCK('{name}')"))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// The keys a session's connection holds as named locks, and which connection that is: a
/// connection replaced or closed took its locks with it (the server releases them).
#[derive(Debug, Default)]
pub struct NamedLockSet {
    connection: Option<ConnectionIdentity>,
    keys: BTreeSet<String>,
}

impl NamedLockSet {
    /// The keys held on `connection`; none when the locks were taken on another one.
    pub fn held_on(&self, connection: Option<ConnectionIdentity>) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        if connection.is_some() && connection == self.connection {
            &self.keys
        } else {
            &NONE
        }
    }

    /// Notes `key` as taken on `connection`, forgetting locks of an earlier connection.
    pub fn taken(&mut self, connection: ConnectionIdentity, key: String) {
        if self.connection != Some(connection) {
            self.keys.clear();
            self.connection = Some(connection);
        }
        self.keys.insert(key);
    }

    /// Forgets every lock, returning the names to release on `connection` (none when they
    /// were taken on another connection, which took them with it).
    pub fn take_all(&mut self, connection: Option<ConnectionIdentity>) -> Vec<String> {
        let keys = std::mem::take(&mut self.keys);
        let same = connection.is_some() && connection == self.connection.take();
        match same {
            true => keys.iter().map(|key| lock_name(key)).collect(),
            false => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_plain_keys_keep_their_name_and_the_rest_are_hashed_within_the_limit() {
        assert_eq!(lock_name("accounts:42"), "txb:accounts:42");
        let long = "k".repeat(200);
        for key in [long.as_str(), "Accounts:42", "accounts:42'", "clé:1"] {
            let name = lock_name(key);
            assert!(name.chars().count() <= MAX_LOCK_NAME_CHARS, "{name}");
            assert!(name.contains('#'), "{key} -> {name}");
            assert!(!name.contains('\''), "{name}");
        }
        assert!(lock_name(&long).starts_with("txb:kkkk"));
        // Keys that differ only in case, or only past the readable prefix, stay apart.
        assert_ne!(lock_name("Accounts:42"), lock_name("accounts:42"));
        assert_ne!(lock_name("ACCOUNTS:42"), lock_name("Accounts:42"));
        let (first, second) = (format!("{long}a"), format!("{long}b"));
        assert_ne!(lock_name(&first), lock_name(&second));
    }

    #[test]
    fn each_lock_after_the_first_waits_only_if_the_one_before_was_taken() {
        let script = take_script(&[
            (
                "txb:a".to_string(),
                NamedLockWait::Upto(Duration::from_millis(1500)),
            ),
            ("txb:b".to_string(), NamedLockWait::Try),
        ]);
        assert_eq!(
            script,
            [
                "SELECT GET_LOCK('txb:a', 1.500)",
                "SELECT GET_LOCK('txb:b', IF(IS_USED_LOCK('txb:a') <=> CONNECTION_ID(), 0, 0))",
            ]
        );
        assert_eq!(
            release_statement(&["txb:a".to_string(), "txb:b".to_string()]),
            "SELECT RELEASE_LOCK('txb:a'), RELEASE_LOCK('txb:b')"
        );
    }
}
