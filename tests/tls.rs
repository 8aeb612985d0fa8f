//! Client TLS: a broker with `tls_cert`/`tls_key` speaks the protocol over TLS only.

mod common;

use std::time::Duration;

use common::raw::{req, RawConn};
use common::{TestBroker, TestDb};
use txbroker::client::Client;
use txbroker::protocol::Value;
use txbroker::{Broker, Config};

/// A self-signed certificate for `localhost`, written as PEM files; returns (cert, key, cert PEM).
fn certificate(label: &str) -> (String, String, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate a certificate");
    let directory = std::env::temp_dir();
    let cert_path = directory.join(format!("txbroker-{label}-{}.crt", std::process::id()));
    let key_path = directory.join(format!("txbroker-{label}-{}.key", std::process::id()));
    let cert_pem = certified.cert.pem();
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
        cert_pem.into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_broker_serves_tls_clients_and_drops_plain_ones() {
    let db = TestDb::create("tls_serve").await;
    db.run(&["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let (cert, key, cert_pem) = certificate("serve");
    let broker = TestBroker::start(Config {
        tls_cert: Some(cert),
        tls_key: Some(key),
        client_read_timeout_ms: 2_000,
        ..db.config()
    });
    let connector = txbroker::tls::connector(&cert_pem).expect("connector");
    let client = Client::connect_tls(broker.addr, "localhost", &connector)
        .await
        .expect("TLS handshake");
    let outcome = client
        .tx()
        .lock("t:1")
        .exec("INSERT INTO t VALUES (?)", vec![1.into()])
        .exec("SELECT COUNT(*) FROM t", vec![])
        .run()
        .await
        .expect("tx over TLS");
    assert_eq!(outcome.results[1].rows, vec![vec![Value::Int(1)]]);

    // A client speaking plain frames to a TLS port gets no answer and is closed; others go on.
    let mut plain = RawConn::connect(broker.addr).await;
    plain.send_value(&req(1, "ping", vec![])).await;
    assert!(plain.is_closed_by_server().await);
    // A client that connects and says nothing is dropped after client_read_timeout_ms.
    let mut silent = RawConn::connect(broker.addr).await;
    assert!(silent.is_closed_by_server().await);
    client.ping().await.expect("the TLS client is unaffected");

    // A client that does not trust the certificate refuses the server.
    let (_, _, other_pem) = certificate("other");
    let stranger = txbroker::tls::connector(&other_pem).expect("connector");
    assert!(Client::connect_tls(broker.addr, "localhost", &stranger)
        .await
        .is_err());
    common::stats_until(&client, "only the TLS session is left", |s| s.sessions == 1).await;
}

#[actix_rt::test]
async fn a_missing_certificate_is_a_start_error() {
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        Broker::start(
            Config {
                listen: "127.0.0.1:0".into(),
                tls_cert: Some("/nonexistent/cert.pem".into()),
                tls_key: Some("/nonexistent/key.pem".into()),
                ..Config::default()
            },
            txbroker::logging::discard(),
        ),
    )
    .await
    .expect("answers at once");
    let error = result.err().expect("no certificate, no broker");
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}
