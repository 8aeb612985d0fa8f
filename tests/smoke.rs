mod common;

use common::{TestBroker, TestDb};
use txbroker::protocol::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let db = TestDb::create("smoke").await;
    db.run(&[
        "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
        "INSERT INTO t VALUES (1, 10)",
    ])
    .await;
    let broker = TestBroker::start(db.config());
    let client = broker.client().await;
    let info = client.hello(None).await.expect("hello");
    println!("{info:?}");
    client.ping().await.expect("ping");
    let outcome = client
        .tx()
        .lock("t:1")
        .exec(
            "UPDATE t SET v = v + ? WHERE id = ?",
            vec![5.into(), 1.into()],
        )
        .exec("SELECT v FROM t WHERE id = 1", vec![])
        .run()
        .await
        .expect("tx");
    println!("{outcome:?}");
    assert_eq!(outcome.results[1].rows, vec![vec![Value::Int(15)]]);
    println!("{:?}", client.stats().await);
}
