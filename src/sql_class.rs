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

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArguments, Query, SetExpr, Statement as Ast, TableFactor, Visit,
    Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

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

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<()> {
        self.tables += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(ident) if ident.value.starts_with('@') => {
                self.note(SessionUse::Reads)
            }
            Expr::CompoundIdentifier(parts)
                if parts.first().is_some_and(|part| part.value.starts_with('@')) =>
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
    "abs", "ceil", "ceiling", "floor", "round", "truncate", "mod", "sign", "greatest", "least",
    "coalesce", "ifnull", "nullif", "if", "concat", "concat_ws", "substring", "substr", "left",
    "right", "length", "char_length", "character_length", "lower", "upper", "lcase", "ucase",
    "trim", "ltrim", "rtrim", "replace", "lpad", "rpad", "repeat", "reverse", "locate", "instr",
    "position", "now", "current_timestamp", "utc_timestamp", "sysdate", "curdate",
    "current_date", "curtime", "current_time", "unix_timestamp", "from_unixtime", "date",
    "time", "year", "month", "day", "hour", "minute", "second", "date_add", "date_sub",
    "adddate", "subdate", "timestampadd", "timestampdiff", "datediff", "date_format",
    "str_to_date", "json_set", "json_insert", "json_replace", "json_remove", "json_extract",
    "json_object", "json_array", "json_array_append", "json_merge_patch", "json_value",
    "json_unquote", "json_quote", "hex", "unhex", "md5", "sha1", "sha2", "crc32", "uuid",
    "uuid_short", "rand", "to_base64", "from_base64", "inet_aton", "inet_ntoa", "bin", "oct",
    "conv", "format", "pow", "power", "sqrt", "exp", "ln", "log", "log2", "log10",
    // The inserted row's value in ON DUPLICATE KEY UPDATE.
    "values", "value",
    // Aggregates over the rows the statement itself reads (and locks).
    "count", "sum", "min", "max", "avg", "group_concat",
];

fn function_kind(name: &str, has_arguments: bool) -> FunctionKind {
    match name {
        // LAST_INSERT_ID(expr) sets the session's value; without an argument it reads it.
        "last_insert_id" if has_arguments => FunctionKind::ChangesSession,
        "last_insert_id" | "found_rows" | "row_count" | "connection_id" | "database"
        | "schema" | "user" | "current_user" | "session_user" | "system_user" | "lastval" => {
            FunctionKind::ReadsSession
        }
        "get_lock" | "release_lock" | "release_all_locks" | "is_used_lock" | "is_free_lock"
        | "nextval" | "setval" => FunctionKind::ChangesSession,
        pure if PURE_FUNCTIONS.contains(&pure) => FunctionKind::Pure,
        _ => FunctionKind::Unknown,
    }
}

/// Statement classes a session has met, by SQL text and isolation: statements repeat (they
/// are prepared statements with parameters), and a parse costs some ten microseconds.
#[derive(Default)]
pub struct ClassCache {
    classes: HashMap<Box<str>, [Option<StatementClass>; 4]>,
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
}
