//! Writes the seed corpus with the crate's own encoders:
//!   corpus/frames/seed-*     [max selector, split selector] + framed requests (see frames.rs)
//!   corpus/responses/seed-*  one response body each
//!
//! Run from fuzz/:  cargo run --example make_seeds
//! (a plain build: it does not need RUSTC_BOOTSTRAP or cargo fuzz).

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use tokio_util::codec::Encoder;
use txbroker::error::{AbortReason, BrokerError, DbFailure};
use txbroker::frame::{FrameCodec, FrameError};
use txbroker::locks::LockRequest;
use txbroker::protocol::{
    Isolation, QueryResult, Reply, Request, RequestFrame, Response, Statement, Stats, TxOptions,
    TxRequest, Value,
};

/// max = 255 * 8 + 1 = 2041 bytes: every seed request fits.
const MAX_SELECTOR: u8 = 255;

fn keys(exclusive: &[&str], shared: &[&str]) -> Option<LockRequest> {
    LockRequest::new(
        exclusive.iter().map(|k| k.to_string()),
        shared.iter().map(|k| k.to_string()),
    )
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "hello",
            Request::Hello {
                token: Some("secret-token".into()),
                client: Some("fuzz-seed/1".into()),
            },
        ),
        ("ping", Request::Ping),
        (
            "tx",
            Request::Tx(TxRequest {
                statements: vec![
                    Statement::new(
                        "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                        vec![Value::Int(-5), Value::UInt(u64::MAX)],
                    ),
                    Statement::new(
                        "INSERT INTO ledger (id, note, raw, f, d, flag) VALUES (?, ?, ?, ?, ?, ?)",
                        vec![
                            Value::Null,
                            Value::Text("transfer".into()),
                            Value::Bytes(vec![0, 1, 0xff]),
                            Value::Float(1.5),
                            Value::Double(-2.25),
                            Value::Bool(true),
                        ],
                    ),
                ],
                options: TxOptions {
                    locks: keys(&["accounts:2", "accounts:1"], &["config:rates"]),
                    isolation: Some(Isolation::ReadCommitted),
                    read_only: false,
                    idempotency_key: Some("seed-1".into()),
                },
                retries: Some(3),
            }),
        ),
        (
            "begin",
            Request::Begin(TxOptions {
                locks: keys(&["k"], &["j"]),
                isolation: Some(Isolation::Serializable),
                read_only: true,
                idempotency_key: None,
            }),
        ),
        (
            "exec",
            Request::Exec(Statement::new("SELECT ?, ?", vec![Value::from("x"), Value::from(7)])),
        ),
        ("lock", Request::Lock(keys(&["z"], &["y"]).expect("keys"))),
        ("commit", Request::Commit),
        ("rollback", Request::Rollback),
        ("stats", Request::Stats),
    ]
}

fn frame<T>(body: T) -> Vec<u8>
where
    FrameCodec: Encoder<T, Error = FrameError>,
{
    let mut out = BytesMut::new();
    FrameCodec::new(usize::MAX)
        .encode(body, &mut out)
        .expect("encodes");
    out.to_vec()
}

fn responses() -> Vec<(&'static str, Response)> {
    let result = QueryResult {
        affected: 1,
        last_insert_id: Some(4),
        columns: vec!["a".into(), "b".into()],
        rows: vec![vec![Value::Text("1.500000".into()), Value::Bytes(vec![255])]],
    };
    vec![
        (
            "hello",
            Response::success(
                1,
                Reply::Hello {
                    server: "txbroker 0.1.0".into(),
                    protocol: 1,
                    session: 3,
                },
            ),
        ),
        ("done", Response::success(2, Reply::Done)),
        (
            "tx",
            Response::success(
                3,
                Reply::Tx {
                    results: vec![result.clone(), QueryResult::default()],
                    attempts: 2,
                },
            ),
        ),
        ("exec", Response::success(4, Reply::Exec { result })),
        (
            "stats",
            Response::success(
                5,
                Reply::Stats(Stats {
                    sessions: 2,
                    locks_held: 3,
                    ..Stats::default()
                }),
            ),
        ),
        (
            "error-deadlock",
            Response::failure(
                Some(6),
                &BrokerError::Deadlock(DbFailure {
                    mysql_code: 1213,
                    sqlstate: "40001".into(),
                    message: "Deadlock found".into(),
                    statement: Some(1),
                }),
            ),
        ),
        (
            "error-bad-request-nil-id",
            Response::failure(None, &BrokerError::bad_request("missing field op")),
        ),
        (
            "error-tx-aborted",
            Response::failure(Some(7), &BrokerError::TxAborted(AbortReason::MaxDuration)),
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("writes seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = root.join("frames");
    let responses_dir = root.join("responses");
    fs::create_dir_all(&frames).expect("mkdir");
    fs::create_dir_all(&responses_dir).expect("mkdir");

    let mut all = vec![MAX_SELECTOR, 7];
    for (id, (name, request)) in requests().into_iter().enumerate() {
        let request = RequestFrame {
            id: id as u64 + 1,
            request,
        };
        let framed = frame(&request);
        // Whole stream at once.
        let mut seed = vec![MAX_SELECTOR, 0];
        seed.extend_from_slice(&framed);
        write(&frames, &format!("req-{name}"), &seed);
        all.extend_from_slice(&framed);
    }
    // Every op pipelined on one connection, fed in chunks of 1..=8 bytes.
    write(&frames, "pipeline-chunked", &all);
    // A bad request (not a map) followed by a good ping: the framing stays in sync.
    let mut seed = vec![MAX_SELECTOR, 3];
    seed.extend_from_slice(&[0, 0, 0, 1, 0x07]);
    seed.extend_from_slice(&frame(&RequestFrame {
        id: 9,
        request: Request::Ping,
    }));
    write(&frames, "bad-then-ping", &seed);
    // Length over a 17-byte limit, length zero, and a partial frame.
    write(&frames, "too-large", &[2, 1, 0, 0, 0, 18, 0x80]);
    write(&frames, "zero-length", &[255, 0, 0, 0, 0, 0]);
    write(&frames, "partial", &[255, 2, 0, 0, 0, 9, 0x82, 0xa2, b'i', b'd']);

    for (name, response) in responses() {
        write(
            &responses_dir,
            name,
            &rmp_serde::to_vec(&response).expect("encodes"),
        );
    }
    println!("seeds written under {}", root.display());
}
