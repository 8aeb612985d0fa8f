//! Statements the broker will not pass to the database, because they would start, end or
//! reconfigure a transaction behind the session's back: after a client's `COMMIT` sent through
//! `exec`, the session would believe a transaction is open while the next statement runs in
//! autocommit mode. Transactions are driven by `begin`/`commit`/`rollback` and `tx` only.
//!
//! It also tells which statements are a whole transaction on their own in autocommit mode
//! (`is_single_data_change`), for the one-statement `tx` shortcut.
//!
//! This is a cheap look at the statement's first words, not a parser. The session also checks
//! the server's in-transaction status flag after every statement, which catches whatever
//! slips past this list.

use crate::txn::TxMode;

/// Why a statement is refused, for the `bad_request` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Starts, ends or configures transactions: use the protocol's ops instead.
    TransactionControl(&'static str),
    /// Commits implicitly (DDL and friends): allowed only outside a transaction.
    ImplicitCommit(&'static str),
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Refusal::TransactionControl(what) => format!(
                "{what} is not allowed through exec or tx: use the begin, commit and rollback ops"
            ),
            Refusal::ImplicitCommit(what) => format!(
                "{what} commits implicitly and would end the open transaction: run it outside a transaction"
            ),
        }
    }
}

/// Session variables that change how the next transactions behave; the session keeps its own
/// record of them.
const TRANSACTION_VARIABLES: [&str; 7] = [
    "autocommit",
    "transaction",
    "tx_isolation",
    "transaction_isolation",
    "tx_read_only",
    "transaction_read_only",
    "completion_type",
];

/// Checks `sql`, to be run in `mode`.
pub fn check(sql: &str, mode: TxMode) -> Result<(), Refusal> {
    let mut next_words = words(sql).map(|(word, _)| word);
    let Some(first) = next_words.next() else {
        return Ok(());
    };
    let control = |what| Err(Refusal::TransactionControl(what));
    let implicit = |what| {
        if mode == TxMode::InTransaction {
            Err(Refusal::ImplicitCommit(what))
        } else {
            Ok(())
        }
    };
    match first.as_str() {
        "begin" | "start" => control("starting a transaction"),
        "commit" => control("COMMIT"),
        "rollback" => match next_words.next().as_deref() {
            Some("to") => Ok(()),
            _ => control("ROLLBACK"),
        },
        "xa" => control("XA"),
        "lock" | "unlock" => control("LOCK/UNLOCK TABLES"),
        // MariaDB's `SET STATEMENT var=value FOR <statement>` runs <statement>. Where `FOR`
        // starts is not certain without parsing the values, so every statement that follows
        // a `for` word is checked; a false alarm only refuses an odd statement.
        "set" if next_words.next().as_deref() == Some("statement") => words_after(sql, "for")
            .into_iter()
            .try_for_each(|rest| check(rest, mode)),
        "set" => {
            if words(sql).any(|(word, _)| TRANSACTION_VARIABLES.contains(&word.as_str())) {
                control("setting transaction variables")
            } else {
                Ok(())
            }
        }
        "create" | "drop" => match next_words.next().as_deref() {
            Some("temporary") => Ok(()),
            _ => implicit("DDL"),
        },
        "alter" | "rename" | "truncate" => implicit("DDL"),
        "grant" | "revoke" => implicit("GRANT/REVOKE"),
        "analyze" | "optimize" | "repair" | "check" | "flush" | "reset" | "cache" | "load"
        | "install" | "uninstall" => implicit("an administrative statement"),
        _ => Ok(()),
    }
}

/// Whether `sql` is one `INSERT`, `UPDATE`, `DELETE` or `REPLACE`: a statement that InnoDB
/// makes atomic and durable on its own, triggers and cascades included, so that in autocommit
/// mode it is a whole transaction. `CALL` is not one (each statement of a procedure commits on
/// its own in autocommit mode), nor is anything this cheap look cannot vouch for: a statement
/// with an executable comment (`/*!50000 ... */`) is left out, because whether the server runs
/// the comment depends on its version.
pub fn is_single_data_change(sql: &str) -> bool {
    matches!(
        vouched_first_word(sql).as_deref(),
        Some("insert" | "update" | "delete" | "replace")
    )
}

/// The first word of `sql`, lower-cased, when the statement has no executable comment: what
/// runs of a statement with one depends on the server's version, so this cheap look cannot
/// vouch for it.
fn vouched_first_word(sql: &str) -> Option<String> {
    let versioned_code = sql.contains("/*!") || sql.contains("/*M!");
    if versioned_code {
        return None;
    }
    words(sql).next().map(|(word, _)| word)
}

/// Whether the whole answer to `sql` is its count of affected rows: one `UPDATE` or `DELETE`
/// without `RETURNING` (no rows) and without `LAST_INSERT_ID` (no insert id), so that the
/// server's `ROW_COUNT()` right after it says everything its client will be told. A keyed
/// `tx` of such statements writes its record in the same query as its statements
/// (`crate::idempotency`). The two names are looked for anywhere in the text, in a string or
/// a longer name too: a false alarm only costs the longer way. Checked for every statement of
/// every keyed `tx`, so it reads only the first word as a word.
pub fn answers_with_row_count(sql: &str) -> bool {
    matches!(
        vouched_first_word(sql).as_deref(),
        Some("update" | "delete")
    ) && !contains_ignoring_case(sql, "returning")
        && !contains_ignoring_case(sql, "last_insert_id")
}

/// Whether `text` contains `needle` (ASCII, lower case), whatever the case of its letters.
fn contains_ignoring_case(text: &str, needle: &str) -> bool {
    text.as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The text after each occurrence of the word `word` in `sql`.
fn words_after<'a>(sql: &'a str, word: &str) -> Vec<&'a str> {
    words(sql)
        .filter(|(found, _)| found == word)
        .map(|(_, end)| &sql[end..])
        .collect()
}

/// Lower-cased words of `sql`, each with the byte offset where it ends, skipping comments, with `@@`, `session.` and the like split
/// off so that `SET @@session.autocommit` yields `autocommit`. Executable comments
/// (`/*! ... */`) are read as code, since the server runs them.
fn words(sql: &str) -> impl Iterator<Item = (String, usize)> + '_ {
    let mut rest = sql;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start();
        if let Some(after) = rest
            .strip_prefix("/*!")
            .or_else(|| rest.strip_prefix("/*M!"))
        {
            rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
            continue;
        }
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
            continue;
        }
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.find('\n').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let first = rest.chars().next()?;
        let length = if first.is_alphanumeric() || first == '_' {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        } else {
            first.len_utf8()
        };
        let (word, after) = rest.split_at(length);
        rest = after;
        if first.is_alphanumeric() || first == '_' {
            return Some((word.to_ascii_lowercase(), sql.len() - rest.len()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expected = Option<fn(&'static str) -> Refusal>;

    const IN_TX: TxMode = TxMode::InTransaction;
    const AUTOCOMMIT: TxMode = TxMode::Autocommit;

    fn check_all(cases: &[(&str, TxMode, Expected)]) {
        for (sql, mode, want) in cases {
            let got = check(sql, *mode);
            match want {
                None => assert_eq!(got, Ok(()), "{sql:?} in {mode:?}"),
                Some(kind) => {
                    let refusal = got.expect_err(sql);
                    assert_eq!(
                        std::mem::discriminant(&refusal),
                        std::mem::discriminant(&kind("")),
                        "{sql:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn transaction_control_is_refused_everywhere() {
        let control: Expected = Some(Refusal::TransactionControl);
        let mut cases = Vec::new();
        for sql in [
            "COMMIT",
            "  commit work",
            "ROLLBACK",
            "BEGIN",
            "start transaction read only",
            "/* hi */ START TRANSACTION",
            "-- x\nCOMMIT",
            "# x\ncommit",
            "/*!40101 COMMIT */",
            "SET autocommit = 0",
            "set @@session.autocommit=1",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET tx_isolation = 'READ-COMMITTED'",
            "XA START 'x'",
            "LOCK TABLES t WRITE",
            "SET STATEMENT max_statement_time=100 FOR COMMIT",
            "set statement x='for select' for commit",
            "UNLOCK TABLES",
        ] {
            cases.push((sql, IN_TX, control));
            cases.push((sql, AUTOCOMMIT, control));
        }
        check_all(&cases);
    }

    #[test]
    fn implicit_commits_are_refused_inside_a_transaction_only() {
        let implicit: Expected = Some(Refusal::ImplicitCommit);
        let mut cases = Vec::new();
        for sql in [
            "CREATE TABLE t (id INT)",
            "drop table t",
            "ALTER TABLE t ADD c INT",
            "TRUNCATE t",
            "RENAME TABLE a TO b",
            "GRANT SELECT ON *.* TO x",
            "ANALYZE TABLE t",
            "SET STATEMENT max_statement_time=1 FOR CREATE TABLE x (id INT)",
        ] {
            cases.push((sql, IN_TX, implicit));
            cases.push((sql, AUTOCOMMIT, None));
        }
        check_all(&cases);
    }

    #[test]
    fn only_updates_and_deletes_without_rows_or_ids_answer_with_a_row_count() {
        for sql in [
            "UPDATE t SET v = v + ? WHERE id = ?",
            "/* note */ delete from t where id = 1",
            "UPDATE t JOIN u ON t.id = u.id SET t.v = u.v",
        ] {
            assert!(answers_with_row_count(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "REPLACE INTO t VALUES (1)",
            "DELETE FROM t WHERE id = 1 RETURNING id",
            "UPDATE seq SET id = LAST_INSERT_ID(id + 1)",
            "/*!50000 UPDATE t SET v = 1 */",
            "SELECT v FROM t FOR UPDATE",
            "CALL p()",
            "",
        ] {
            assert!(!answers_with_row_count(sql), "{sql}");
        }
    }

    #[test]
    fn only_plain_data_changes_are_single_data_changes() {
        for sql in [
            "UPDATE t SET v = 1 WHERE id = 2",
            "  insert into t values (1)",
            "/* note */ DELETE FROM t WHERE id = 1",
            "-- note\nREPLACE INTO t VALUES (1)",
            "INSERT INTO t SELECT * FROM u",
        ] {
            assert!(is_single_data_change(sql), "{sql}");
        }
        for sql in [
            "CALL move_money(1, 2)",
            "/*!50000 CALL p() */",
            "/*!99999 UPDATE t SET v = 1 */ CALL p()",
            "SELECT * FROM t FOR UPDATE",
            "WITH x AS (SELECT 1) UPDATE t SET v = 1",
            "EXECUTE IMMEDIATE 'UPDATE t SET v = 1'",
            "BEGIN NOT ATOMIC UPDATE t SET v = 1; END",
            "SET STATEMENT max_statement_time = 1 FOR UPDATE t SET v = 1",
            "DO 1",
            "",
        ] {
            assert!(!is_single_data_change(sql), "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_pass() {
        let mut cases = Vec::new();
        for sql in [
            "SELECT 1",
            "UPDATE accounts SET balance = balance - ? WHERE id = ?",
            "INSERT INTO t VALUES ('commit')",
            "ROLLBACK TO SAVEPOINT s1",
            "SAVEPOINT s1",
            "CREATE TEMPORARY TABLE tmp (id INT)",
            "DROP TEMPORARY TABLE tmp",
            "SET @x = 1",
            "SET NAMES utf8mb4",
            "SET STATEMENT max_statement_time=1 FOR SELECT 1",
            "/* unterminated",
            "",
            "(SELECT 1)",
        ] {
            cases.push((sql, IN_TX, None));
            cases.push((sql, AUTOCOMMIT, None));
        }
        check_all(&cases);
    }
}
