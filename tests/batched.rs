//! A `tx` of plain data changes goes to MariaDB as one batch (`EXECUTE IMMEDIATE ... USING
//! <literals>; ...; COMMIT`). These tests hold the batch to the promises of the statement-at-a-
//! time path: the same values stored, the failing statement named and nothing after it run,
//! the same results per statement, and every transaction that cannot be spelled as a batch
//! left to the statement path. `stats.transactions_batched` says which path a `tx` took.

mod common;

use common::{TestBroker, TestDb};
use mysql_async::prelude::Queryable;
use txbroker::client::{Client, ClientError};
use txbroker::error::ErrorCode;
use txbroker::protocol::{ErrorReply, Value};
use txbroker::Config;

async fn setup(label: &str, statements: &[&str]) -> (TestDb, TestBroker, Client) {
    let db = TestDb::create(label).await;
    db.run(statements).await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    (db, broker, client)
}

async fn batched(client: &Client) -> u64 {
    client.stats().await.expect("stats").transactions_batched
}

fn server_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorReply {
    match result {
        Err(ClientError::Server(error)) => error,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// The columns of row `id` as the driver reads them (binary protocol), for comparison.
async fn row(db: &TestDb, id: i64) -> Vec<mysql_async::Value> {
    let mut conn = db.conn().await;
    let row: mysql_async::Row = conn
        .exec_first(
            "SELECT i, u, f, d, x, t, b, flag FROM v WHERE id = ?",
            (id,),
        )
        .await
        .expect("select")
        .expect("the row exists");
    conn.disconnect().await.ok();
    row.unwrap()
}

const VALUES_TABLE: &str = "CREATE TABLE v (id INT PRIMARY KEY, i BIGINT NULL, \
    u BIGINT UNSIGNED NULL, f FLOAT NULL, d DOUBLE NULL, x DECIMAL(30,10) NULL, \
    t VARCHAR(100) NULL, b VARBINARY(100) NULL, flag TINYINT NULL)";

const INSERT_VALUES: &str =
    "INSERT INTO v (id, i, u, f, d, x, t, b, flag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Every kind of parameter, written once by a batched `tx` and once by `exec` (a bound
/// parameter of a prepared statement), must come out of the table the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_tx_stores_every_value_as_a_bound_parameter_does() {
    let (db, _broker, client) = setup("batch_values", &[VALUES_TABLE]).await;
    let rows: Vec<Vec<Value>> = vec![
        vec![
            i64::MIN.into(),
            u64::MAX.into(),
            0.1f32.into(),
            0.1f64.into(),
            0.1f64.into(),
            "it's a 'quoted' \"text\"".into(),
            Value::Bytes(b"plain bytes".to_vec()),
            true.into(),
        ],
        vec![
            i64::MAX.into(),
            0u64.into(),
            (-0.0f32).into(),
            1e300f64.into(),
            (-2.5f64).into(),
            "üñí 😀 ? -- /* */ # ;".into(),
            Value::Bytes("x'y ''".as_bytes().to_vec()),
            false.into(),
        ],
        vec![
            (-1i64).into(),
            1u64.into(),
            3.4e38f32.into(),
            f64::MIN_POSITIVE.into(),
            123456789.123456789f64.into(),
            "".into(),
            Value::Bytes(Vec::new()),
            Value::Null,
        ],
        vec![Value::Null; 8],
    ];
    for (n, values) in rows.iter().enumerate() {
        let batched_id = 2 * n as i64;
        let bound_id = batched_id + 1;
        let before = batched(&client).await;
        let mut params = vec![Value::from(batched_id)];
        params.extend(values.iter().cloned());
        let outcome = client
            .tx()
            .exec(INSERT_VALUES, params)
            .run()
            .await
            .unwrap_or_else(|e| panic!("row {n}: {e}"));
        assert_eq!(outcome.results[0].affected, 1);
        assert_eq!(
            batched(&client).await,
            before + 1,
            "row {n} went as a batch"
        );

        let mut params = vec![Value::from(bound_id)];
        params.extend(values.iter().cloned());
        client
            .exec(INSERT_VALUES, params)
            .await
            .unwrap_or_else(|e| panic!("row {n} through exec: {e}"));
        assert_eq!(
            row(&db, batched_id).await,
            row(&db, bound_id).await,
            "row {n}: {values:?}"
        );
    }

    // Parameters in expressions, not only stored: the same arithmetic either way.
    let delta: Vec<Value> = vec![7i64.into(), (-2.25f64).into(), 0.5f32.into()];
    for id in [0i64, 1] {
        client
            .tx()
            .exec(
                "UPDATE v SET i = i + ?, d = d * ?, f = f + ? WHERE id = ?",
                [delta.clone(), vec![id.into()]].concat(),
            )
            .run()
            .await
            .expect("update as a batch");
    }
    assert_eq!(row(&db, 0).await, row(&db, 1).await);
}

/// What a batch cannot spell in every `sql_mode` (a backslash, a NUL, bytes that are not
/// UTF-8), and statements that are not plain data changes, take the statement path, with the
/// same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_batch_cannot_spell_takes_the_statement_path() {
    let (db, _broker, client) = setup("batch_fallback", &[VALUES_TABLE]).await;
    let cases: Vec<(&str, Vec<Value>)> = vec![
        (
            INSERT_VALUES,
            vec![
                1.into(),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                r"C:\dir\n".into(),
                Value::Null,
                Value::Null,
            ],
        ),
        (
            INSERT_VALUES,
            vec![
                2.into(),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                "nul\0inside".into(),
                Value::Null,
                Value::Null,
            ],
        ),
        (
            INSERT_VALUES,
            vec![
                3.into(),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Bytes(vec![0xff, 0x00, 0x27, 0x5c]),
                Value::Null,
            ],
        ),
        ("INSERT INTO v (id, t) VALUES (?, 'a\\\\b')", vec![5.into()]),
        ("SET @not_a_data_change = ?", vec![6.into()]),
    ];
    for (n, (sql, params)) in cases.into_iter().enumerate() {
        let before = batched(&client).await;
        let outcome = client.tx().exec(sql, params.clone()).run().await;
        outcome.unwrap_or_else(|e| panic!("case {n}: {e}"));
        assert_eq!(
            batched(&client).await,
            before,
            "case {n} did not go as a batch"
        );
    }
    let mut conn = db.conn().await;
    let texts: Vec<(i64, Option<Vec<u8>>, Option<Vec<u8>>)> = conn
        .query("SELECT id, t, b FROM v ORDER BY id")
        .await
        .expect("select");
    assert_eq!(
        texts,
        vec![
            (1, Some(br"C:\dir\n".to_vec()), None),
            (2, Some(b"nul\0inside".to_vec()), None),
            (3, None, Some(vec![0xff, 0x00, 0x27, 0x5c])),
            (5, Some(br"a\b".to_vec()), None),
        ]
    );

    // A tx that reads goes statement by statement, and so does a tx with batching off.
    let before = batched(&client).await;
    let outcome = client
        .tx()
        .exec("UPDATE v SET i = 1 WHERE id = ?", vec![1.into()])
        .exec("SELECT i FROM v WHERE id = ?", vec![1.into()])
        .run()
        .await
        .expect("tx with a select");
    assert_eq!(outcome.results[1].rows, vec![vec![Value::Int(1)]]);
    assert_eq!(batched(&client).await, before);

    let unbatched = TestBroker::start(Config {
        batch_transactions: false,
        ..db.config()
    });
    let other = unbatched.client().await;
    other
        .tx()
        .exec("UPDATE v SET i = 2 WHERE id = ?", vec![1.into()])
        .run()
        .await
        .expect("tx with batching off");
    assert_eq!(batched(&other).await, 0);
    assert_eq!(db.scalar("SELECT i FROM v WHERE id = 1").await, 2);
}

/// The server stops a batch at its first error: the statement is named, the ones before it
/// are rolled back, the ones after it (and `COMMIT`) never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_stops_the_batch_and_is_named() {
    let (db, _broker, client) = setup(
        "batch_failure",
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, n INT NOT NULL, CHECK (n >= 0))",
            "INSERT INTO t VALUES (1, 10)",
            "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20))",
        ],
    )
    .await;
    for (failing, mysql_code) in [(0usize, 4025u16), (1, 1062), (2, 4025)] {
        let mut statements: Vec<(&str, Vec<Value>)> = vec![
            ("INSERT INTO log (note) VALUES (?)", vec!["before".into()]),
            ("INSERT INTO t VALUES (?, ?)", vec![2.into(), 0.into()]),
            (
                "UPDATE t SET n = n - ? WHERE id = ?",
                vec![1.into(), 1.into()],
            ),
            ("INSERT INTO log (note) VALUES (?)", vec!["after".into()]),
        ];
        statements[failing] = match mysql_code {
            1062 => ("INSERT INTO t VALUES (?, ?)", vec![1.into(), 0.into()]),
            _ => (
                "UPDATE t SET n = n - ? WHERE id = ?",
                vec![11.into(), 1.into()],
            ),
        };
        let mut tx = client.tx().lock("t:1");
        for (sql, params) in statements {
            tx = tx.exec(sql, params);
        }
        let before = batched(&client).await;
        let error = server_error(tx.run().await);
        assert_eq!(batched(&client).await, before + 1, "went as a batch");
        assert_eq!(error.code, ErrorCode::Sql, "{error:?}");
        assert_eq!(error.mysql_code, Some(mysql_code), "{error:?}");
        assert_eq!(error.statement, Some(failing), "{error:?}");
        assert_eq!(db.scalar("SELECT COUNT(*) FROM log").await, 0);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM t").await, 1);
        assert_eq!(db.scalar("SELECT n FROM t WHERE id = 1").await, 10);
    }
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.locks_held, 0, "{stats:?}");
    assert_eq!(stats.transactions_rolled_back, 3, "{stats:?}");

    // The session is fine afterwards, and a read-only batch refuses its first write.
    let error = server_error(
        client
            .tx()
            .read_only()
            .exec("UPDATE t SET n = ? WHERE id = ?", vec![0.into(), 1.into()])
            .run()
            .await,
    );
    assert_eq!((error.mysql_code, error.statement), (Some(1792), Some(0)));
    client
        .tx()
        .exec("UPDATE t SET n = ? WHERE id = ?", vec![5.into(), 1.into()])
        .run()
        .await
        .expect("a later batch");
    assert_eq!(db.scalar("SELECT n FROM t WHERE id = 1").await, 5);
}

/// Each statement of a batch reports its own affected rows and generated id, exactly as the
/// statement path reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batched_statement_reports_what_the_statement_path_reports() {
    let db = TestDb::create("batch_results").await;
    db.run(&["CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL)"])
        .await;
    let mut summaries = Vec::new();
    for batch_transactions in [true, false] {
        db.run(&["TRUNCATE t"]).await;
        let broker = TestBroker::start(Config {
            batch_transactions,
            ..db.config()
        });
        let client = broker.client().await;
        let outcome = client
            .tx()
            .exec("INSERT INTO t (n) VALUES (?)", vec![1.into()])
            .exec(
                "INSERT INTO t (n) VALUES (?), (?)",
                vec![2.into(), 3.into()],
            )
            .exec("UPDATE t SET n = n + 1 WHERE n > ?", vec![0.into()])
            .exec("DELETE FROM t WHERE n > ?", vec![100.into()])
            .exec(
                "REPLACE INTO t (id, n) VALUES (?, ?)",
                vec![1.into(), 9.into()],
            )
            .exec(
                "INSERT INTO t (n) SELECT n FROM t WHERE id = ?",
                vec![1.into()],
            )
            .run()
            .await
            .expect("tx");
        assert_eq!(batched(&client).await, u64::from(batch_transactions));
        assert!(outcome
            .results
            .iter()
            .all(|r| r.columns.is_empty() && r.rows.is_empty()));
        summaries.push(
            outcome
                .results
                .iter()
                .map(|r| (r.affected, r.last_insert_id))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(summaries[0], summaries[1]);
    assert_eq!(
        summaries[0][..4],
        [(1, Some(1)), (2, Some(2)), (3, None), (0, None)]
    );
}
