//! The wire, byte by byte: framing errors, authentication, the session limit, and hostile
//! input that no well-behaved client would send.

mod common;

use common::answers::response_error;
use common::raw::{encode, exec_req, framed, map, req, statement, RawConn};
use common::requests::with_keys;
use common::{TestBroker, TestDb};
use rand::{Rng, SeedableRng};
use rmpv::Value as Msgpack;
use txbroker::error::ErrorCode;
use txbroker::protocol::Reply;
use txbroker::Config;

async fn broker(label: &str, adjust: impl FnOnce(Config) -> Config) -> (TestDb, TestBroker) {
    let db = TestDb::create(label).await;
    let broker = TestBroker::start(adjust(db.config()));
    (db, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_length_frame_is_bad_request_and_closes_the_connection() {
    let (_db, broker) = broker("wire_zero", |c| c).await;
    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_bytes(&[0, 0, 0, 0]).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response.id, None);
    assert_eq!(response_error(&response).code, ErrorCode::BadRequest);
    assert!(conn.is_closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_without_waiting_for_its_body() {
    let (_db, broker) = broker("wire_too_large", |c| Config {
        max_frame_bytes: 1024,
        ..c
    })
    .await;
    let mut conn = RawConn::connect(broker.addr).await;
    // Only the length is sent: the answer must not wait for 1025 bytes that never come.
    conn.send_bytes(&1025u32.to_be_bytes()).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response.id, None);
    assert_eq!(response_error(&response).code, ErrorCode::FrameTooLarge);
    assert!(!response.outcome.as_ref().expect_err("error").retryable);
    assert!(conn.is_closed_by_server().await);

    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_bytes(&u32::MAX.to_be_bytes()).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response_error(&response).code, ErrorCode::FrameTooLarge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_at_the_limit_is_accepted() {
    let (_db, broker) = broker("wire_at_limit", |c| Config {
        max_frame_bytes: 1024,
        ..c
    })
    .await;
    let mut conn = RawConn::connect(broker.addr).await;
    let padding = "x".repeat(1024);
    let body = encode(&req(
        1,
        "ping",
        vec![("pad", Msgpack::from(padding.as_str()))],
    ));
    let excess = body.len() - 1024;
    let body = encode(&req(
        1,
        "ping",
        vec![("pad", Msgpack::from(&padding[excess..]))],
    ));
    assert_eq!(body.len(), 1024);
    conn.send_frame(&body).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response.outcome, Ok(Reply::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_messagepack_is_bad_request_and_the_connection_stays_open() {
    let (_db, broker) = broker("wire_garbage", |c| c).await;
    let mut conn = RawConn::connect(broker.addr).await;
    for body in [
        &[0x92u8, 0x01][..],
        b"hello",
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
    ] {
        conn.send_frame(body).await;
        let response = conn.read_response().await.expect("an answer");
        assert_eq!(response.id, None);
        assert_eq!(response_error(&response).code, ErrorCode::BadRequest);
    }
    conn.send_value(&req(3, "ping", vec![])).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!((response.id, response.outcome), (Some(3), Ok(Reply::Done)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_first_request_must_be_hello_with_a_valid_token() {
    let (_db, broker) = broker("wire_auth", |c| Config {
        auth_tokens: vec!["s3cret".into(), "other-token".into()],
        ..c
    })
    .await;

    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_value(&req(5, "ping", vec![])).await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response.id, Some(5));
    assert_eq!(response_error(&response).code, ErrorCode::Unauthenticated);
    assert!(conn.is_closed_by_server().await);

    for token in ["s3cre", "s3cret ", "S3CRET", ""] {
        let mut conn = RawConn::connect(broker.addr).await;
        conn.send_value(&req(6, "hello", vec![("token", Msgpack::from(token))]))
            .await;
        let response = conn.read_response().await.expect("an answer");
        assert_eq!(
            response_error(&response).code,
            ErrorCode::Unauthenticated,
            "token {token:?}"
        );
        assert!(conn.is_closed_by_server().await);
    }

    let (client, info) = txbroker::client::Client::connect_with_token(broker.addr, "other-token")
        .await
        .expect("valid token");
    assert_eq!(info.protocol, 1);
    client.ping().await.expect("authenticated session works");
    client.exec("SELECT 1", vec![]).await.expect("exec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_sessions_a_client_gets_busy_at_accept_and_is_closed() {
    let (_db, broker) = broker("wire_busy", |c| Config {
        max_sessions: 2,
        ..c
    })
    .await;
    let first = broker.client().await;
    let second = broker.client().await;
    first.ping().await.expect("first");
    second.ping().await.expect("second");

    let mut refused = RawConn::connect(broker.addr).await;
    // Busy is sent before any request.
    let response = refused.read_response().await.expect("busy");
    assert_eq!(response.id, None);
    assert_eq!(response_error(&response).code, ErrorCode::Busy);
    assert!(response.outcome.as_ref().expect_err("error").retryable);
    assert!(refused.is_closed_by_server().await);
    first
        .ping()
        .await
        .expect("sessions already open are unaffected");

    drop(second);
    common::stats_until(&first, "the second session ended", |s| s.sessions == 1).await;
    let third = broker.client().await;
    third.ping().await.expect("a slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_in_order_even_when_they_fail() {
    let (_db, broker) = broker("wire_order", |c| c).await;
    let mut conn = RawConn::connect(broker.addr).await;
    let mut bytes = Vec::new();
    for id in 0..10u64 {
        let request = if id % 3 == 0 {
            req(id, "nope", vec![])
        } else if id % 3 == 1 {
            exec_req(id, "SELECT ?", vec![Msgpack::from(id)])
        } else {
            req(id, "ping", vec![])
        };
        bytes.extend_from_slice(&framed(&request));
    }
    conn.send_bytes(&bytes).await;
    for id in 0..10u64 {
        let response = conn.read_response().await.expect("an answer");
        assert_eq!(response.id, Some(id));
        match id % 3 {
            0 => assert_eq!(response_error(&response).code, ErrorCode::BadRequest),
            1 => {
                let Ok(Reply::Exec { result }) = response.outcome else {
                    panic!("exec reply expected: {response:?}");
                };
                assert_eq!(result.rows[0][0].as_i64(), Some(id as i64));
            }
            _ => assert_eq!(response.outcome, Ok(Reply::Done)),
        }
    }
}

/// Random bytes, random frames and random maps from a seeded generator: every connection gets
/// answers or a close, never a crash, and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_input_never_takes_the_broker_down() {
    let (_db, broker) = broker("wire_random", |c| Config {
        max_frame_bytes: 4096,
        ..c
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7b_0b_0e_c5);
    let ops = [
        "hello", "ping", "tx", "begin", "exec", "lock", "commit", "rollback", "stats", "x",
    ];
    let fields = [
        "id",
        "op",
        "sql",
        "params",
        "statements",
        "locks",
        "read_locks",
        "isolation",
        "read_only",
        "retries",
        "token",
    ];
    for _ in 0..150 {
        let mut conn = RawConn::connect(broker.addr).await;
        let mut bytes = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            if rng.gen_bool(0.3) {
                let length: usize = rng.gen_range(0..64);
                let junk: Vec<u8> = (0..length).map(|_| rng.gen()).collect();
                bytes.extend_from_slice(&junk);
                continue;
            }
            let mut entries = Vec::new();
            for _ in 0..rng.gen_range(0..6) {
                let name = fields[rng.gen_range(0..fields.len())];
                let value = match rng.gen_range(0..7) {
                    0 => Msgpack::from(rng.gen::<u32>()),
                    1 => Msgpack::from(ops[rng.gen_range(0..ops.len())]),
                    2 => Msgpack::Nil,
                    3 => Msgpack::Array(vec![Msgpack::from("k"), Msgpack::from(-1)]),
                    4 => Msgpack::Array(vec![statement("SELECT 1")]),
                    5 => Msgpack::Binary(vec![0xff; 3]),
                    _ => Msgpack::from(rng.gen::<bool>()),
                };
                entries.push((name, value));
            }
            bytes.extend_from_slice(&framed(&map(entries)));
        }
        conn.send_bytes(&bytes).await;
        drop(conn);
    }
    let client = broker.client().await;
    client.ping().await.expect("the broker still serves");
    let stats =
        common::stats_until(&client, "every random session ended", |s| s.sessions == 1).await;
    assert_eq!((stats.locks_held, stats.lock_waiters), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_behind_a_running_request_is_answered_after_it() {
    let (_db, broker) = broker("wire_fatal_in_flight", |c| c).await;
    let holder = broker.client().await;
    let observer = broker.client().await;
    holder.begin(with_keys(&["k"])).await.expect("begin");
    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_value(&req(
        1,
        "begin",
        vec![("locks", Msgpack::Array(vec![Msgpack::from("k")]))],
    ))
    .await;
    conn.send_value(&req(2, "ping", vec![])).await;
    common::stats_until(&observer, "the begin waits for k", |s| s.lock_waiters == 1).await;
    conn.send_bytes(&[0, 0, 0, 0]).await;
    holder.rollback().await.expect("rollback");
    let begin = conn.read_response().await.expect("begin answered");
    assert_eq!((begin.id, begin.outcome), (Some(1), Ok(Reply::Done)));
    let ping = conn.read_response().await.expect("ping answered");
    assert_eq!((ping.id, ping.outcome), (Some(2), Ok(Reply::Done)));
    let fatal = conn
        .read_response()
        .await
        .expect("the framing error is answered");
    assert_eq!(fatal.id, None);
    assert_eq!(response_error(&fatal).code, ErrorCode::BadRequest);
    assert!(conn.is_closed_by_server().await);
    common::stats_until(&observer, "the open transaction was rolled back", |s| {
        s.locks_held == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_an_unreadable_first_request_is_unauthenticated() {
    let (_db, broker) = broker("wire_auth_garbage", |c| Config {
        auth_tokens: vec!["s3cret".into()],
        ..c
    })
    .await;
    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_value(&req(4, "hello", vec![("token", Msgpack::from(12))]))
        .await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response.id, Some(4));
    assert_eq!(response_error(&response).code, ErrorCode::Unauthenticated);
    assert!(conn.is_closed_by_server().await);

    let mut conn = RawConn::connect(broker.addr).await;
    conn.send_frame(b"junk").await;
    let response = conn.read_response().await.expect("an answer");
    assert_eq!(response_error(&response).code, ErrorCode::Unauthenticated);
    assert!(conn.is_closed_by_server().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_mid_frame_is_closed_and_holds_up_nobody() {
    let (_db, broker) = broker("wire_stalled", |c| Config {
        client_read_timeout_ms: 200,
        ..c
    })
    .await;
    let mut stalled = RawConn::connect(broker.addr).await;
    stalled.send_bytes(&[0, 0, 0, 40, 0x82]).await;
    let other = broker.client().await;
    other.ping().await.expect("others are served meanwhile");
    assert!(
        stalled.is_closed_by_server().await,
        "the stalled client is disconnected"
    );
    let stats = common::stats_until(&other, "the stalled session ended", |s| s.sessions == 1).await;
    assert_eq!(stats.locks_held, 0);

    // A quiet client with no partial frame stays connected past the timeout.
    let mut quiet = RawConn::connect(broker.addr).await;
    quiet.send_value(&req(1, "ping", vec![])).await;
    assert!(quiet.read_response().await.is_some());
    // Being quiet for longer than the timeout is the behaviour under test, not a wait for
    // an event.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    quiet.send_value(&req(2, "ping", vec![])).await;
    let response = quiet.read_response().await.expect("still connected");
    assert_eq!(response.id, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_configured_limits_are_bad_requests_and_run_nothing() {
    let (db, broker) = broker("wire_limits", |c| Config {
        max_keys_per_request: 3,
        max_statements_per_tx: 2,
        max_sql_bytes: 64,
        ..c
    })
    .await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let client = broker.client().await;
    let too_many_keys = client
        .tx()
        .lock("a")
        .lock("b")
        .read_lock("c")
        .lock("d")
        .exec("INSERT INTO t VALUES (1)", vec![])
        .run()
        .await
        .expect_err("4 keys");
    assert_eq!(too_many_keys.code(), Some(ErrorCode::BadRequest));
    assert!(too_many_keys.to_string().contains("max_keys_per_request"));
    let too_many_statements = client
        .tx()
        .exec("INSERT INTO t VALUES (2)", vec![])
        .exec("INSERT INTO t VALUES (3)", vec![])
        .exec("INSERT INTO t VALUES (4)", vec![])
        .run()
        .await
        .expect_err("3 statements");
    assert!(too_many_statements
        .to_string()
        .contains("max_statements_per_tx"));
    let long_sql = format!("SELECT 1 /* {} */", "x".repeat(64));
    let error = client.exec(&long_sql, vec![]).await.expect_err("long sql");
    assert_eq!(error.code(), Some(ErrorCode::BadRequest));
    assert!(error.to_string().contains("max_sql_bytes"));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM t").await, 0, "nothing ran");
    client
        .tx()
        .lock("a")
        .lock("b")
        .read_lock("c")
        .exec("INSERT INTO t VALUES (5)", vec![])
        .exec("INSERT INTO t VALUES (6)", vec![])
        .run()
        .await
        .expect("at the limits is fine");
}
