//! What a statement does to row locks and to the session, for hand-over at COMMIT and group
//! execution. A statement that **locks** every row it reads (an `INSERT`, `UPDATE`, `DELETE`
//! or `REPLACE` of one table with no subquery, a `SELECT ... FOR UPDATE`/`FOR SHARE`, a plain
//! `SELECT` at SERIALIZABLE) may run while the previous holder of its keys is still
//! committing, because InnoDB makes it wait for that commit; anything else **reads** without
//! locking (or cannot be vouched for) and must wait until that commit has answered.
//!
//! The question is answered by parsing with `sqlparser` (MySQL dialect) and looking at the
//! tree, and it errs on the side of waiting: a statement that does not parse, has a subquery
//! or a CTE, names more than one table in an `UPDATE` or `DELETE`, asks for `NOWAIT` or `SKIP
//! LOCKED`, calls a function not known to be a pure built-in, or runs at READ COMMITTED or
//! READ UNCOMMITTED (where InnoDB's semi-consistent read lets an `UPDATE` skip a locked row
//! by its last committed version) counts as reading.
//!
//! Session state matters for groups, whose members run on another session's connection: a
//! statement that reads it (`LAST_INSERT_ID()`, `FOUND_ROWS()`, `@variables`...) is never
//! grouped, and one that changes it (`SET`, `USE`, temporary tables, named locks, `PREPARE`,
//! a procedure or unknown function) also marks its session as one that never joins or leads
//! a group again.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArguments, Query, Select, SetExpr, Statement as Ast,
    TableFactor, Visit, Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::protocol::Isolation;

/// How a statement reaches the rows it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every row it reads, it locks (or waits for): InnoDB orders it after a commit in flight.
    Locking,
    /// It reads some rows without locking them, or the broker cannot tell.
    Reading,
}

/// What a statement does with its session's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum SessionUse {
    #[default]
    Untouched,
    /// Reads session state: the result depends on the connection it runs on.
    Reads,
    /// Changes session state (or may): the session is no longer like any other.
    Changes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatementClass {
    pub access: Access,
    pub session: SessionUse,
    /// It may answer with a result set (a query, or anything not parsed).
    pub returns_rows: bool,
}

impl StatementClass {
    /// Whether it may run inside another request's group (protocol 1.1: it locks or changes
    /// rows and touches no session state).
    pub fn may_be_grouped(self) -> bool {
        self.access == Access::Locking && self.session == SessionUse::Untouched
    }

    const UNKNOWN: StatementClass = StatementClass {
        access: Access::Reading,
        session: SessionUse::Changes,
        returns_rows: true,
    };
}

/// Classifies `sql` run inside a transaction at `isolation`.
pub fn classify(sql: &str, isolation: Isolation) -> StatementClass {
    let Ok(mut statements) = Parser::parse_sql(&MySqlDialect {}, sql) else {
        return StatementClass::UNKNOWN;
    };
    let (Some(statement), None) = (statements.pop(), statements.pop()) else {
        return StatementClass::UNKNOWN;
    };
    let mut look = Look::default();
    let _ = statement.visit(&mut look);
    let session = look.session.max(session_use_of_kind(&statement));
    let locking = match isolation {
        // Semi-consistent reads (an UPDATE evaluating WHERE on the last committed version of
        // a locked row) and statement-level snapshots: nothing can be vouched for.
        Isolation::ReadCommitted | Isolation::ReadUncommitted => false,
        Isolation::RepeatableRead | Isolation::Serializable => {
            !look.unknown_function && locks_every_row_it_reads(&statement, &look, isolation)
        }
    };
    StatementClass {
        access: if locking {
            Access::Locking
        } else {
            Access::Reading
        },
        session,
        returns_rows: match &statement {
            Ast::Insert(insert) => insert.returning.is_some(),
            Ast::Update(update) => update.returning.is_some(),
            Ast::Delete(delete) => delete.returning.is_some(),
            _ => true,
        },
    }
}

/// The shape rules: one table written, no nested query; or a single `SELECT` that locks.
fn locks_every_row_it_reads(statement: &Ast, look: &Look, isolation: Isolation) -> bool {
    match statement {
        Ast::Update(update) => {
            look.queries == 0
                && look.tables == 1
                && update.table.joins.is_empty()
                && update.from.is_none()
        }
        Ast::Delete(delete) => {
            let single_from = match &delete.from {
                FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                    from.len() == 1 && from[0].joins.is_empty()
                }
            };
            look.queries == 0
                && look.tables == 1
                && delete.tables.is_empty()
                && delete.using.is_none()
                && single_from
        }
        Ast::Insert(insert) => match &insert.source {
            Some(source) => look.queries == 1 && matches!(*source.body, SetExpr::Values(_)),
            None => look.queries == 0,
        },
        Ast::Query(query) => locking_select(query, look, isolation),
        _ => false,
    }
}

fn locking_select(query: &Query, look: &Look, isolation: Isolation) -> bool {
    let SetExpr::Select(select) = &*query.body else {
        return false;
    };
    let lock_clause_ok = match query.locks.as_slice() {
        // A plain SELECT inside a SERIALIZABLE transaction is a locking read.
        [] => isolation == Isolation::Serializable,
        // NOWAIT and SKIP LOCKED would fail on, or skip, a row whose commit is in flight.
        [lock] => lock.nonblock.is_none(),
        _ => false,
    };
    lock_clause_ok && query.with.is_none() && look.queries == 1 && select.into.is_none()
}

fn session_use_of_kind(statement: &Ast) -> SessionUse {
    match statement {
        Ast::Query(_) | Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_) => SessionUse::Untouched,
        Ast::CreateTable(create) if !create.temporary => SessionUse::Untouched,
        Ast::Drop { temporary, .. } if !temporary => SessionUse::Untouched,
        Ast::ShowVariables { .. } | Ast::ShowStatus { .. } => SessionUse::Reads,
        _ => SessionUse::Changes,
    }
}

/// What a walk over the statement's tree found.
#[derive(Default)]
struct Look {
    /// Query nodes, nested ones and the `VALUES` of an insert included.
    queries: usize,
    /// Table references.
    tables: usize,
    unknown_function: bool,
    session: SessionUse,
}

impl Visitor for Look {
    type Break = ();

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.queries += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        // `SELECT ... INTO @x` sets a variable.
        if select.into.is_some() {
            self.note(SessionUse::Changes);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.tables += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(ident) if ident.value.starts_with('@') => self.note(SessionUse::Reads),
            Expr::CompoundIdentifier(parts)
                if parts
                    .first()
                    .is_some_and(|part| part.value.starts_with('@')) =>
            {
                self.note(SessionUse::Reads)
            }
            // MySQL's `@x := value`.
            Expr::BinaryOp {
                op: BinaryOperator::Assignment,
                ..
            } => self.note(SessionUse::Changes),
            Expr::Function(function) => {
                let name = function.name.to_string().to_ascii_lowercase();
                let has_arguments = match &function.args {
                    FunctionArguments::List(list) => !list.args.is_empty(),
                    FunctionArguments::None => false,
                    FunctionArguments::Subquery(_) => true,
                };
                match function_kind(&name, has_arguments) {
                    FunctionKind::Pure => {}
                    FunctionKind::ReadsSession => self.note(SessionUse::Reads),
                    FunctionKind::ChangesSession => self.note(SessionUse::Changes),
                    FunctionKind::Unknown => {
                        // A stored function may read tables without locking and set
                        // variables: nothing about it can be vouched for.
                        self.unknown_function = true;
                        self.note(SessionUse::Changes);
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Look {
    fn note(&mut self, session: SessionUse) {
        self.session = self.session.max(session);
    }
}

enum FunctionKind {
    Pure,
    ReadsSession,
    ChangesSession,
    Unknown,
}

/// Built-ins that read no table and no session state: their result depends on their
/// arguments (and the clock) only.
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "truncate",
    "mod",
    "sign",
    "greatest",
    "least",
    "coalesce",
    "ifnull",
    "nullif",
    "if",
    "concat",
    "concat_ws",
    "substring",
    "substr",
    "left",
    "right",
    "length",
    "char_length",
    "character_length",
    "lower",
    "upper",
    "lcase",
    "ucase",
    "trim",
    "ltrim",
    "rtrim",
    "replace",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "locate",
    "instr",
    "position",
    "now",
    "current_timestamp",
    "utc_timestamp",
    "sysdate",
    "curdate",
    "current_date",
    "curtime",
    "current_time",
    "unix_timestamp",
    "from_unixtime",
    "date",
    "time",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "date_add",
    "date_sub",
    "adddate",
    "subdate",
    "timestampadd",
    "timestampdiff",
    "datediff",
    "date_format",
    "str_to_date",
    "json_set",
    "json_insert",
    "json_replace",
    "json_remove",
    "json_extract",
    "json_object",
    "json_array",
    "json_array_append",
    "json_merge_patch",
    "json_value",
    "json_unquote",
    "json_quote",
    "hex",
    "unhex",
    "md5",
    "sha1",
    "sha2",
    "crc32",
    "uuid",
    "uuid_short",
    "rand",
    "to_base64",
    "from_base64",
    "inet_aton",
    "inet_ntoa",
    "bin",
    "oct",
    "conv",
    "format",
    "pow",
    "power",
    "sqrt",
    "exp",
    "ln",
    "log",
    "log2",
    "log10",
    // The inserted row's value in ON DUPLICATE KEY UPDATE.
    "values",
    "value",
    // Aggregates over the rows the statement itself reads (and locks).
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "group_concat",
];

fn function_kind(name: &str, has_arguments: bool) -> FunctionKind {
    match name {
        // LAST_INSERT_ID(expr) sets the session's value; without an argument it reads it.
        "last_insert_id" if has_arguments => FunctionKind::ChangesSession,
        "last_insert_id" | "found_rows" | "row_count" | "connection_id" | "database" | "schema"
        | "user" | "current_user" | "session_user" | "system_user" | "lastval" => {
            FunctionKind::ReadsSession
        }
        "get_lock" | "release_lock" | "release_all_locks" | "is_used_lock" | "is_free_lock"
        | "nextval" | "setval" => FunctionKind::ChangesSession,
        pure if PURE_FUNCTIONS.contains(&pure) => FunctionKind::Pure,
        _ => FunctionKind::Unknown,
    }
}

/// The byte offsets of the `?` placeholders of `sql`, as MySQL reads it (not those in
/// strings, quoted names or comments), for sending it as text with its values written in;
/// `None` when the tokenizer cannot vouch for them.
pub fn placeholder_offsets(sql: &str) -> Option<Vec<usize>> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    // Locations are lines and columns, counted in characters from 1.
    let mut line_starts = vec![0];
    line_starts.extend(sql.match_indices('\n').map(|(at, _)| at + 1));
    let mut offsets = Vec::new();
    for token in tokens {
        match &token.token {
            Token::Placeholder(text) if text == "?" => {
                let location = token.span.start;
                let line_start =
                    *line_starts.get(usize::try_from(location.line).ok()?.checked_sub(1)?)?;
                let column = usize::try_from(location.column).ok()?.checked_sub(1)?;
                let (offset, _) = sql[line_start..].char_indices().nth(column)?;
                let offset = line_start + offset;
                (sql.as_bytes().get(offset) == Some(&b'?')).then_some(())?;
                offsets.push(offset);
            }
            // Numbered placeholders are not MySQL's; a `;` would end the statement early in a
            // multi-statement query.
            Token::Placeholder(_) | Token::SemiColon => return None,
            _ => {}
        }
    }
    Some(offsets)
}

/// Statement classes (and placeholders) a session has met, by SQL text and isolation:
/// statements repeat (they are prepared statements with parameters), and a parse costs some
/// ten microseconds.
#[derive(Default)]
pub struct ClassCache {
    classes: HashMap<Box<str>, [Option<StatementClass>; 4]>,
    placeholders: HashMap<Box<str>, Option<Arc<[usize]>>>,
}

/// Past this many entries the cache starts over, so that a client sending ever new SQL text
/// cannot grow it without bound.
const CLASS_CACHE_ENTRIES: usize = 512;

impl ClassCache {
    pub fn classify(&mut self, sql: &str, isolation: Isolation) -> StatementClass {
        let slot = match isolation {
            Isolation::ReadUncommitted => 0,
            Isolation::ReadCommitted => 1,
            Isolation::RepeatableRead => 2,
            Isolation::Serializable => 3,
        };
        if let Some(class) = self.classes.get(sql).and_then(|classes| classes[slot]) {
            return class;
        }
        let class = classify(sql, isolation);
        if self.classes.len() >= CLASS_CACHE_ENTRIES && !self.classes.contains_key(sql) {
            self.classes.clear();
        }
        self.classes.entry(sql.into()).or_default()[slot] = Some(class);
        class
    }

    /// `placeholder_offsets(sql)`, remembered.
    pub fn placeholders(&mut self, sql: &str) -> Option<Arc<[usize]>> {
        if let Some(offsets) = self.placeholders.get(sql) {
            return offsets.clone();
        }
        let offsets: Option<Arc<[usize]>> = placeholder_offsets(sql).map(Arc::from);
        if self.placeholders.len() >= CLASS_CACHE_ENTRIES {
            self.placeholders.clear();
        }
        self.placeholders.insert(sql.into(), offsets.clone());
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Locking, Reading};
    use Isolation::{ReadCommitted, RepeatableRead, Serializable};

    fn check(isolation: Isolation, cases: &[(&str, Access)]) {
        for (sql, access) in cases {
            assert_eq!(classify(sql, isolation).access, *access, "{sql}");
        }
    }

    #[test]
    fn single_table_data_changes_and_locking_selects_lock() {
        check(
            RepeatableRead,
            &[
                (
                    "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                    Locking,
                ),
                (
                    "update t set v = greatest(v - 1, 0), at = now() where id = 1",
                    Locking,
                ),
                ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)", Locking),
                (
                    "INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = VALUES(a) + 1",
                    Locking,
                ),
                ("INSERT IGNORE INTO t SET a = 1", Locking),
                ("REPLACE INTO t VALUES (1, 'x')", Locking),
                ("DELETE FROM t WHERE id = ? LIMIT 1", Locking),
                (
                    "SELECT balance FROM accounts WHERE id = ? FOR UPDATE",
                    Locking,
                ),
                (
                    "SELECT * FROM accounts WHERE id IN (1, 2) FOR SHARE",
                    Locking,
                ),
                (
                    "/* leading comment */ SELECT v FROM t WHERE id = 1 FOR UPDATE",
                    Locking,
                ),
                (
                    "SELECT v FROM t WHERE id = 1 -- trailing\n FOR UPDATE",
                    Locking,
                ),
                ("SELECT count(*) FROM t WHERE k = 1 FOR UPDATE", Locking),
            ],
        );
    }

    #[test]
    fn plain_reads_and_anything_unvouched_for_read() {
        check(
            RepeatableRead,
            &[
                ("SELECT balance FROM accounts WHERE id = ?", Reading),
                // The words are in a string or a comment, not a lock clause.
                ("SELECT 'for update' FROM t", Reading),
                ("SELECT * FROM t -- FOR UPDATE", Reading),
                ("SELECT * FROM t /* FOR UPDATE */", Reading),
                // Executable comments run on the server: never vouched for.
                (
                    "UPDATE t SET v = 1 WHERE id = 1 /*!50000 , w = (SELECT 1) */",
                    Reading,
                ),
                // Subqueries read other rows without locking (or with, depending on the
                // isolation level and the binary log): wait.
                (
                    "UPDATE t SET v = (SELECT max(v) FROM u) WHERE id = 1",
                    Reading,
                ),
                ("DELETE FROM t WHERE id IN (SELECT id FROM u)", Reading),
                ("INSERT INTO t SELECT * FROM u", Reading),
                ("INSERT INTO t (a) VALUES ((SELECT max(a) FROM u))", Reading),
                (
                    "SELECT * FROM t WHERE id = (SELECT id FROM u LIMIT 1) FOR UPDATE",
                    Reading,
                ),
                (
                    "WITH x AS (SELECT 1 AS id) SELECT * FROM t JOIN x USING (id) FOR UPDATE",
                    Reading,
                ),
                ("WITH x AS (SELECT 1) UPDATE t SET v = 1", Reading),
                ("SELECT v FROM t UNION SELECT v FROM u FOR UPDATE", Reading),
                // More than one table written or read.
                ("UPDATE a, b SET a.x = b.y WHERE a.id = b.id", Reading),
                ("UPDATE a JOIN b ON a.id = b.id SET a.x = b.y", Reading),
                ("DELETE a FROM a JOIN b ON a.id = b.id", Reading),
                ("DELETE FROM a USING a, b WHERE a.id = b.id", Reading),
                // Locks that do not wait would fail on, or skip, a row whose commit is in flight.
                ("SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT", Reading),
                (
                    "SELECT v FROM t WHERE id = 1 FOR UPDATE SKIP LOCKED",
                    Reading,
                ),
                // Not parsed: wait.
                ("SELECT v FROM t WHERE id = 1 LOCK IN SHARE MODE", Reading),
                ("SELECT v FROM t WHERE id = 1 FOR UPDATE WAIT 5", Reading),
                ("this is not sql", Reading),
                ("", Reading),
                ("SELECT 1; SELECT 2", Reading),
                // A stored function may read any table.
                ("UPDATE t SET v = my_function(1) WHERE id = 1", Reading),
                ("CALL move_money(1, 2)", Reading),
                ("DO 1", Reading),
            ],
        );
    }

    #[test]
    fn the_isolation_level_decides_for_plain_selects_and_semi_consistent_reads() {
        check(
            Serializable,
            &[
                ("SELECT balance FROM accounts WHERE id = ?", Locking),
                ("SELECT * FROM t WHERE id IN (SELECT id FROM u)", Reading),
                ("UPDATE t SET v = v + 1 WHERE id = 1", Locking),
            ],
        );
        check(
            ReadCommitted,
            &[
                ("UPDATE t SET v = v + 1 WHERE id = 1", Reading),
                ("SELECT v FROM t WHERE id = 1 FOR UPDATE", Reading),
                ("INSERT INTO t VALUES (1)", Reading),
            ],
        );
        check(
            Isolation::ReadUncommitted,
            &[("UPDATE t SET v = v + 1 WHERE id = 1", Reading)],
        );
    }

    #[test]
    fn session_state_is_seen_and_keeps_a_statement_out_of_groups() {
        let cases = [
            ("UPDATE t SET v = v + 1 WHERE id = 1", SessionUse::Untouched),
            ("SELECT LAST_INSERT_ID()", SessionUse::Reads),
            ("SELECT FOUND_ROWS()", SessionUse::Reads),
            (
                "INSERT INTO log (n) VALUES (ROW_COUNT())",
                SessionUse::Reads,
            ),
            ("UPDATE t SET v = @x WHERE id = 1", SessionUse::Reads),
            ("SELECT @@session.sql_mode", SessionUse::Reads),
            (
                "UPDATE seq SET id = LAST_INSERT_ID(id + 1)",
                SessionUse::Changes,
            ),
            (
                "SELECT @x := v FROM t WHERE id = 1 FOR UPDATE",
                SessionUse::Changes,
            ),
            (
                "SELECT v INTO @x FROM t WHERE id = 1 FOR UPDATE",
                SessionUse::Changes,
            ),
            ("SET @x = 1", SessionUse::Changes),
            ("SET time_zone = '+00:00'", SessionUse::Changes),
            ("USE other", SessionUse::Changes),
            ("CREATE TEMPORARY TABLE tmp (id INT)", SessionUse::Changes),
            ("DROP TEMPORARY TABLE tmp", SessionUse::Changes),
            ("SELECT GET_LOCK('x', 1)", SessionUse::Changes),
            ("CREATE TABLE t (id INT)", SessionUse::Untouched),
        ];
        for (sql, session) in cases {
            let class = classify(sql, RepeatableRead);
            assert_eq!(class.session, session, "{sql}");
            if session != SessionUse::Untouched {
                assert!(!class.may_be_grouped(), "{sql}");
            }
        }
        assert!(classify("UPDATE t SET v = v + 1 WHERE id = 1", RepeatableRead).may_be_grouped());
        assert!(!classify("SELECT v FROM t WHERE id = 1", RepeatableRead).may_be_grouped());
    }

    #[test]
    fn placeholders_are_found_where_mysql_reads_them() {
        let sql = "UPDATE t SET a = ?, b = '?', `c?` = ? -- ?\n WHERE /* ? */ id = ? AND s = \"?\"";
        let offsets = placeholder_offsets(sql).expect("tokenizes");
        assert_eq!(offsets.len(), 3, "{offsets:?}");
        assert!(offsets.iter().all(|&at| &sql[at..at + 1] == "?"));
        assert_eq!(
            placeholder_offsets("SELECT 'é', ?").map(|o| o.len()),
            Some(1)
        );
        assert_eq!(placeholder_offsets("SELECT ?1"), None);
        assert_eq!(placeholder_offsets("UPDATE t SET v = ?;"), None);
        assert_eq!(
            placeholder_offsets("UPDATE t SET v = ';'").map(|o| o.len()),
            Some(0)
        );
        assert_eq!(placeholder_offsets("SELECT 'unterminated"), None);
    }

    #[test]
    fn the_cache_answers_like_the_classifier_and_stays_bounded() {
        let mut cache = ClassCache::default();
        for isolation in [RepeatableRead, ReadCommitted, Serializable] {
            let sql = "SELECT v FROM t WHERE id = 1";
            assert_eq!(cache.classify(sql, isolation), classify(sql, isolation));
            assert_eq!(cache.classify(sql, isolation), classify(sql, isolation));
        }
        for n in 0..CLASS_CACHE_ENTRIES * 2 {
            cache.classify(&format!("UPDATE t SET v = {n}"), RepeatableRead);
        }
        assert!(cache.classes.len() <= CLASS_CACHE_ENTRIES);
    }
}
