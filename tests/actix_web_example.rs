//! Drives the actix-web example (`examples/actix_web_transfer.rs`) over real HTTP, with the
//! broker embedded in the same actix system and a real database behind it.

mod common;

#[path = "../examples/actix_web_transfer.rs"]
#[allow(dead_code)]
mod example;

use actix_web::{web, App, HttpServer};
use common::TestDb;
use txbroker::Broker;

async fn post_transfer(
    address: std::net::SocketAddr,
    from: u64,
    to: u64,
    amount: i64,
) -> (u16, String) {
    let body = format!(r#"{{"from":{from},"to":{to},"amount":{amount}}}"#);
    let request = format!(
        "POST /transfer HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    common::http::exchange(address, &request).await
}

#[actix_rt::test]
async fn concurrent_transfers_over_http_keep_the_total_and_never_go_negative() {
    let db = TestDb::create("example_actix_web").await;
    db.run(&[
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
        "INSERT INTO accounts VALUES (1, 100), (2, 100), (3, 100)",
    ])
    .await;
    let broker = Broker::builder(db.config())
        .without_listener()
        .start()
        .await
        .expect("broker");
    let sessions = web::Data::new(example::Sessions::new(broker));
    let app_sessions = sessions.clone();
    let monitor = sessions.monitor();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_sessions.clone())
            .configure(example::routes)
            .configure(|routes| monitor.configure(routes))
    })
    .workers(2)
    .bind("127.0.0.1:0")
    .expect("bind");
    let address = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let transfers = (0..60u64).map(|n| {
        let from = n % 3 + 1;
        let to = (n + 1) % 3 + 1;
        post_transfer(address, from, to, 7)
    });
    let answers = futures_util::future::join_all(transfers).await;
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 422, "{status}: {body}");
    }
    assert!(answers.iter().any(|(status, _)| *status == 200));
    assert_eq!(db.scalar("SELECT SUM(balance) FROM accounts").await, 300);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM accounts WHERE balance < 0")
            .await,
        0
    );

    let (status, body) = post_transfer(address, 1, 2, 1_000_000).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = post_transfer(address, 1, 1, 5).await;
    assert_eq!(status, 400);

    // The broker's monitoring, mounted in the application's own App, counts its transfers.
    let (status, metrics) = common::http::get(address, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let committed = answers.iter().filter(|(status, _)| *status == 200).count();
    let counted = metrics
        .lines()
        .find_map(|line| line.strip_prefix("txbroker_transactions_committed_total "))
        .expect("the committed counter");
    assert_eq!(counted, committed.to_string(), "{metrics}");
    assert_eq!(
        common::http::get(address, "/readyz").await,
        (200, "ready\n".to_string())
    );

    handle.stop(true).await;
    if let Ok(sessions) = std::sync::Arc::try_unwrap(sessions.into_inner()) {
        sessions.shutdown().await;
    }
}
