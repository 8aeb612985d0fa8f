//! The value mapping between MessagePack and MariaDB: every column type through parameters and
//! result rows with the Rust client, and on the wire as a client in another language sees it
//! (binary columns as bin; text, DECIMAL, dates and JSON as str; NULL as nil).
//!
//! Every test has its own database (label `ops_*`) and its own broker, so rows and counters
//! are the test's alone; what the broker claims is checked directly in the database where
//! it matters.

mod common;

use common::answers::{bytes, float, int, text};
use common::raw::{assert_raw_ok, call_raw, exec_req, field, RawConn};
use common::setup;
use rmpv::Value as Msgpack;
use txbroker::protocol::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_through_params_and_rows() {
    let (_db, broker, client) = setup(
        "ops_values",
        &["CREATE TABLE v (
            id INT PRIMARY KEY,
            n INT NULL,
            b TINYINT,
            i BIGINT,
            u BIGINT UNSIGNED,
            f FLOAT,
            d DOUBLE,
            s VARCHAR(50),
            txt TEXT,
            vb VARBINARY(20),
            bl BLOB,
            amount DECIMAL(20,6),
            dt DATE,
            dtm DATETIME(6),
            ts TIMESTAMP(6) NULL DEFAULT NULL,
            tm TIME,
            e ENUM('red','green'),
            j JSON
        ) DEFAULT CHARSET = utf8mb4"],
    )
    .await;

    let long_text = format!("{}✓", "x".repeat(1000));
    let json = r#"{"a": [1, 2.5, "três"], "b": null}"#;
    let insert = "INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    client
        .tx()
        .exec(
            insert,
            vec![
                1.into(),
                Value::Null,
                true.into(),
                i64::MIN.into(),
                u64::MAX.into(),
                1.5f32.into(),
                0.1f64.into(),
                "héllo ✓".into(),
                long_text.clone().into(),
                vec![0u8, 255, 1, 128].into(),
                vec![1u8, 2, 3, 0, 254].into(),
                "1.5".into(),
                "2024-02-29".into(),
                "2024-02-29 13:45:07.123456".into(),
                "2030-06-15 08:09:10.000250".into(),
                "-838:59:59".into(),
                "green".into(),
                json.into(),
            ],
        )
        .exec(
            insert,
            vec![
                2.into(),
                42.into(),
                false.into(),
                i64::MAX.into(),
                0u64.into(),
                (-2.25f32).into(),
                (-1.0e300f64).into(),
                "".into(),
                "".into(),
                Vec::<u8>::new().into(),
                Vec::<u8>::new().into(),
                "12345678901234.123456".into(),
                "1000-01-01".into(),
                "9999-12-31 23:59:59.999999".into(),
                Value::Null,
                "100:00:00".into(),
                "red".into(),
                "[]".into(),
            ],
        )
        .exec(
            "INSERT INTO v (id, amount, tm) VALUES (3, ?, ?)",
            vec!["-0.000001".into(), "-01:02:03".into()],
        )
        .run()
        .await
        .expect("insert values");

    let result = client
        .exec(
            "SELECT id, n, b, i, u, f, d, s, txt, vb, bl, amount, dt, dtm, ts, tm, e, j \
             FROM v ORDER BY id",
            vec![],
        )
        .await
        .expect("select values");
    assert_eq!(
        result.columns,
        [
            "id", "n", "b", "i", "u", "f", "d", "s", "txt", "vb", "bl", "amount", "dt", "dtm",
            "ts", "tm", "e", "j"
        ]
        .map(String::from)
        .to_vec()
    );
    assert_eq!(result.rows.len(), 3);

    let row = &result.rows[0];
    assert_eq!(int(&row[0]), 1);
    assert_eq!(row[1], Value::Null, "NULL is nil");
    assert_eq!(int(&row[2]), 1, "bool true is read back as the integer 1");
    assert_eq!(int(&row[3]), i128::from(i64::MIN));
    assert_eq!(int(&row[4]), i128::from(u64::MAX));
    assert_eq!(float(&row[5]), 1.5);
    assert_eq!(float(&row[6]), 0.1);
    assert_eq!(text(&row[7]), "héllo ✓");
    assert_eq!(text(&row[8]), long_text);
    assert_eq!(bytes(&row[9]), &[0u8, 255, 1, 128]);
    assert_eq!(bytes(&row[10]), &[1u8, 2, 3, 0, 254]);
    assert_eq!(text(&row[11]), "1.500000", "DECIMAL keeps its scale");
    assert_eq!(text(&row[12]), "2024-02-29");
    assert_eq!(text(&row[13]), "2024-02-29 13:45:07.123456");
    assert_eq!(text(&row[14]), "2030-06-15 08:09:10.000250");
    assert_eq!(text(&row[15]), "-838:59:59");
    assert_eq!(text(&row[16]), "green");
    let stored: serde_json::Value = serde_json::from_str(text(&row[17])).expect("JSON text");
    let sent: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(stored, sent);

    let row = &result.rows[1];
    assert_eq!(int(&row[1]), 42);
    assert_eq!(int(&row[2]), 0, "bool false is read back as the integer 0");
    assert_eq!(int(&row[3]), i128::from(i64::MAX));
    assert_eq!(int(&row[4]), 0);
    assert_eq!(float(&row[5]), -2.25);
    assert_eq!(float(&row[6]), -1.0e300);
    assert_eq!(text(&row[7]), "");
    assert_eq!(text(&row[8]), "");
    assert_eq!(bytes(&row[9]), b"");
    assert_eq!(bytes(&row[10]), b"");
    assert_eq!(
        text(&row[11]),
        "12345678901234.123456",
        "DECIMAL is exact text, never through a float"
    );
    assert_eq!(text(&row[12]), "1000-01-01");
    assert_eq!(text(&row[13]), "9999-12-31 23:59:59.999999");
    assert_eq!(row[14], Value::Null);
    assert_eq!(text(&row[15]), "100:00:00", "TIME beyond 24 hours");
    assert_eq!(text(&row[16]), "red");
    assert_eq!(text(&row[17]), "[]");

    let row = &result.rows[2];
    assert_eq!(text(&row[11]), "-0.000001");
    assert_eq!(
        text(&row[15]),
        "-01:02:03",
        "negative TIME, two-digit hours"
    );

    // Parameters come back as they went, without a table in between.
    let result = client
        .exec(
            "SELECT ? AS flag, ? AS nothing, ? AS big, ? AS small, ? AS word",
            vec![
                true.into(),
                Value::Null,
                u64::MAX.into(),
                i64::MIN.into(),
                "plain".into(),
            ],
        )
        .await
        .expect("select params");
    let row = &result.rows[0];
    assert_eq!(int(&row[0]), 1, "a bool param is 1");
    assert_eq!(row[1], Value::Null);
    assert_eq!(int(&row[2]), i128::from(u64::MAX));
    assert_eq!(int(&row[3]), i128::from(i64::MIN));
    assert_eq!(text(&row[4]), "plain");

    // On the wire: binary columns are msgpack bin, text, DECIMAL and dates msgpack str.
    let mut raw = RawConn::connect(broker.addr).await;
    let response = call_raw(
        &mut raw,
        exec_req(
            5,
            "SELECT vb, bl, s, amount, dt, tm, j, n FROM v WHERE id = ?",
            vec![Msgpack::from(1)],
        ),
    )
    .await;
    assert_raw_ok(&response, 5);
    let rows = field(field(&response, "result").expect("result"), "rows")
        .and_then(Msgpack::as_array)
        .expect("rows");
    let cells = rows[0].as_array().expect("a row is an array");
    assert_eq!(cells[0], Msgpack::Binary(vec![0, 255, 1, 128]));
    assert_eq!(cells[1], Msgpack::Binary(vec![1, 2, 3, 0, 254]));
    assert_eq!(cells[2], Msgpack::from("héllo ✓"));
    assert_eq!(cells[3], Msgpack::from("1.500000"));
    assert_eq!(cells[4], Msgpack::from("2024-02-29"));
    assert_eq!(cells[5], Msgpack::from("-838:59:59"));
    assert!(cells[6].is_str(), "JSON is a str: {}", cells[6]);
    assert!(cells[7].is_nil());
    // A bin parameter goes into a binary column byte for byte.
    let response = call_raw(
        &mut raw,
        exec_req(
            6,
            "SELECT COUNT(*) FROM v WHERE vb = ?",
            vec![Msgpack::Binary(vec![0, 255, 1, 128])],
        ),
    )
    .await;
    assert_raw_ok(&response, 6);
    let rows = field(field(&response, "result").expect("result"), "rows").unwrap();
    assert_eq!(
        rows,
        &Msgpack::Array(vec![Msgpack::Array(vec![Msgpack::from(1)])])
    );
}
