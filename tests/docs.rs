//! Docs that a test keeps true: `actors.md` names the broker's types, messages, functions and
//! files, and this test checks that each one it names exists, so that the document cannot
//! drift from the code unnoticed. It checks existence only; what the document says about a
//! name (who sends a message, who owns what) is still for a reader to keep true.
//!
//! The extraction rule, kept simple on purpose: every inline code span of `actors.md`
//! outside fenced blocks is read, and
//! - a span starting with `src/` or `tests/` is a path that must exist in the repository;
//! - a span starting with a CamelCase name, alone or as a path (`Acquire { owner }`,
//!   `Ready(engine)`, `Broker::start`, `TxShape::SingleWrite`), names a type, message or
//!   variant, and each segment after the first a function or variant: each must be defined in
//!   `src/` (`struct`, `enum`, `type`, `trait` or `fn NAME`, or a line starting `NAME` inside
//!   an enum or a constructor);
//! - a span of the form `name()` names a function, which must be defined in `src/`;
//! - anything else (config keys, protocol ops and codes, SQL, log events) is not checked.

use std::path::{Path, PathBuf};

/// Names `actors.md` may use that come from other crates: std (`Arc`), tokio
/// (`TcpListener`) and actix (`System`).
const FROM_OTHER_CRATES: &[&str] = &["Arc", "System", "TcpListener"];

#[test]
fn every_type_message_function_and_file_that_actors_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let document = std::fs::read_to_string(root.join("actors.md")).expect("read actors.md");
    let mut source = String::new();
    for file in rust_files(&root.join("src")) {
        source.push_str(&std::fs::read_to_string(&file).expect("read a source file"));
        source.push('\n');
    }

    let mut checked = 0;
    let mut missing = Vec::new();
    for span in code_spans(&document) {
        let names = match Mention::of(span) {
            Mention::File(path) => {
                checked += 1;
                if !root.join(path).exists() {
                    missing.push(format!("`{span}`: no such file"));
                }
                continue;
            }
            Mention::Names(names) => names,
            Mention::Unchecked => continue,
        };
        for name in names {
            checked += 1;
            if !FROM_OTHER_CRATES.contains(&name) && !is_defined(&source, name) {
                missing.push(format!("`{span}`: `{name}` is defined nowhere in src/"));
            }
        }
    }
    assert!(
        checked >= 50,
        "the extraction found only {checked} names in actors.md: has its format changed?"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "actors.md names {} thing(s) that do not exist (fix the document, or the code):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// What one code span of the document mentions.
#[derive(Debug, PartialEq)]
enum Mention<'a> {
    /// A path relative to the repository root.
    File(&'a str),
    /// Rust names: a type, message or variant, then functions or variants of it.
    Names(Vec<&'a str>),
    Unchecked,
}

impl<'a> Mention<'a> {
    fn of(span: &'a str) -> Mention<'a> {
        let span = span.trim();
        if span.starts_with("src/") || span.starts_with("tests/") {
            return Mention::File(span);
        }
        // The leading path: identifiers joined by `::`, up to a space, `(`, `{`, `<`, `.`.
        let end = span
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(span.len());
        let path = &span[..end];
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let Some(first) = segments.first() else {
            return Mention::Unchecked;
        };
        let camel_case = first.starts_with(|c: char| c.is_ascii_uppercase())
            && first.contains(|c: char| c.is_ascii_lowercase());
        let function_call = segments.len() == 1 && span == format!("{first}()");
        if camel_case || function_call {
            Mention::Names(segments)
        } else {
            Mention::Unchecked
        }
    }
}

/// The inline code spans of a Markdown text, outside fenced blocks.
fn code_spans(markdown: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Between the 1st and 2nd backtick, the 3rd and 4th, ...
        spans.extend(line.split('`').skip(1).step_by(2));
    }
    spans
}

/// Whether `name` is defined in `source`: after `struct`, `enum`, `type`, `trait` or `fn`, or
/// at the start of a line (an enum variant, or a struct message built in place).
fn is_defined(source: &str, name: &str) -> bool {
    source.lines().any(|line| {
        let line = line.trim_start();
        if line.starts_with("//") {
            return false;
        }
        if line
            .strip_prefix(name)
            .is_some_and(|rest| ends_name(rest) && rest.trim_start().starts_with([',', '(', '{']))
        {
            return true;
        }
        line.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|pair| {
                matches!(pair[0], "struct" | "enum" | "type" | "trait" | "fn")
                    && pair[1].strip_prefix(name).is_some_and(ends_name)
            })
    })
}

/// Whether the text after a name ends it (the name is not a prefix of a longer one).
fn ends_name(rest: &str) -> bool {
    !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
}

/// Every `.rs` file below `directory`.
fn rust_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_extraction_rule_reads_each_kind_of_mention() {
    assert_eq!(Mention::of("src/engine.rs"), Mention::File("src/engine.rs"));
    assert_eq!(
        Mention::of("Acquire { owner, request, reply }"),
        Mention::Names(vec!["Acquire"])
    );
    assert_eq!(Mention::of("Ready(engine)"), Mention::Names(vec!["Ready"]));
    assert_eq!(
        Mention::of("Broker::shutdown()"),
        Mention::Names(vec!["Broker", "shutdown"])
    );
    assert_eq!(
        Mention::of("TxShape::SingleWrite"),
        Mention::Names(vec!["TxShape", "SingleWrite"])
    );
    assert_eq!(Mention::of("Arc<Config>"), Mention::Names(vec!["Arc"]));
    assert_eq!(Mention::of("stopped()"), Mention::Names(vec!["stopped"]));
    for unchecked in [
        "max_sessions",
        "tx_aborted",
        "START TRANSACTION",
        "COMMIT",
        "session start",
        "coordinator_thread = \"own\"",
        "()",
        "ctx.wait",
    ] {
        assert_eq!(Mention::of(unchecked), Mention::Unchecked, "{unchecked}");
    }
    let source = "pub enum Phase {\n    Serving,\n    Closing { at: u8 },\n}\n\
                  pub struct Drain;\nfn stopped(&mut self) {}\n/// Gone, only in a comment\n";
    for name in ["Phase", "Serving", "Closing", "Drain", "stopped"] {
        assert!(is_defined(source, name), "{name}");
    }
    for name in ["Gone", "Serv", "Phases", "stop"] {
        assert!(!is_defined(source, name), "{name}");
    }
    assert_eq!(
        code_spans("a `x` b `y`\n```\n`z`\n```\n`w`"),
        vec!["x", "y", "w"]
    );
}
