//! `process_batch` against the real PostgreSQL (`TRIBUTARY_TEST_DATABASE_URL`) with the in-memory
//! producer: ordering, locking, cleanup and failure handling at the SQL level. Skipped without a
//! database unless `TRIBUTARY_TEST_STRICT=1`.

use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_postgres::{Client, NoTls};
use tributary_common::server::Readiness;

use super::record::{RecordSettings, Routing};
use super::schema::{Columns, Ident, PayloadFormat, Statements, Table};
use super::{migrate, process_batch, BatchOutcome, Cleanup, FailurePolicy, OutboxSettings};
use crate::metrics::RelayMetrics;
use crate::producer::FakeProducer;

async fn database() -> Option<Client> {
    let url = match std::env::var("TRIBUTARY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("TRIBUTARY_TEST_STRICT").as_deref() == Ok("1") => {
            panic!("TRIBUTARY_TEST_DATABASE_URL is not set; scripts/test.sh sets it")
        }
        _ => {
            eprintln!("skipping PostgreSQL test: TRIBUTARY_TEST_DATABASE_URL is not set (run scripts/test.sh)");
            return None;
        }
    };
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connects to the test database");
    tokio::spawn(connection);
    Some(client)
}

/// A migrated, empty outbox table of its own for one test, dropped when the guard goes.
struct TestTable {
    settings: OutboxSettings,
    name: String,
}

async fn fresh_table(client: &mut Client, test: &str, cleanup: Cleanup, failure_policy: FailurePolicy) -> TestTable {
    let name = format!("ut_{test}_{}", std::process::id());
    client.batch_execute(&format!("DROP TABLE IF EXISTS {name}, {name}_failed CASCADE")).await.expect("drop");
    let column = |n: &str| Ident::new("column", n).expect("valid");
    let columns = Columns {
        id: column("id"),
        aggregate_type: column("aggregatetype"),
        aggregate_id: column("aggregateid"),
        event_type: column("type"),
        payload: column("payload"),
        headers: None,
        topic: Some(column("topic")),
        created_at: Some(column("created_at")),
    };
    let statements = Statements::new(Table::parse(&name).expect("valid"), columns, PayloadFormat::Json).expect("valid");
    migrate(client, &statements).await.expect("migrates");
    let settings = OutboxSettings {
        statements,
        record: RecordSettings {
            routing: Routing { routes: [("Order".to_owned(), "orders".to_owned())].into(), topic_prefix: None },
            format: PayloadFormat::Json,
            source: "/test".into(),
            max_record_bytes: 1_000_000,
        },
        batch_size: 100,
        poll_interval: Duration::from_secs(1),
        cleanup,
        failure_policy,
        max_attempts: 2,
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(1),
    };
    TestTable { settings, name }
}

impl TestTable {
    async fn insert(&self, client: &Client, aggregate_type: &str, aggregate_id: &str, n: i32) {
        client
            .execute(
                &format!("INSERT INTO {} (id, aggregatetype, aggregateid, type, payload) VALUES (gen_random_uuid(), $1, $2, 'test', jsonb_build_object('n', $3::int))", self.name),
                &[&aggregate_type, &aggregate_id, &n],
            )
            .await
            .expect("insert");
    }

    async fn count(&self, client: &Client, condition: &str) -> i64 {
        client.query_one(&format!("SELECT count(*) FROM {} WHERE {condition}", self.name), &[]).await.expect("count").get(0)
    }

    async fn drop_table(self, client: &Client) {
        client.batch_execute(&format!("DROP TABLE IF EXISTS {0}, {0}_failed CASCADE", self.name)).await.expect("drop");
    }
}

fn metrics() -> RelayMetrics {
    RelayMetrics::register(&mut Registry::default(), Readiness::default())
}

/// `(aggregate id, n)` of every record sent, in send order.
fn sent(producer: &FakeProducer) -> Vec<(String, i64)> {
    producer
        .sent()
        .iter()
        .map(|record| {
            let payload: serde_json::Value = serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("json");
            (String::from_utf8_lossy(&record.key).into_owned(), payload["n"].as_i64().unwrap_or(-1))
        })
        .collect()
}

#[tokio::test]
async fn publishes_in_insertion_order_then_deletes() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "order", Cleanup::Delete, FailurePolicy::Block).await;
    for n in 0..5 {
        table.insert(&client, "Order", "a", n).await;
        table.insert(&client, "Order", "b", n).await;
    }
    let producer = FakeProducer::default();
    let outcome = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!(outcome, BatchOutcome { claimed: 10, published: 10, ..BatchOutcome::default() });
    let a: Vec<i64> = sent(&producer).into_iter().filter(|(key, _)| key == "a").map(|(_, n)| n).collect();
    assert_eq!(a, vec![0, 1, 2, 3, 4]);
    assert_eq!(table.count(&client, "true").await, 0);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn mark_cleanup_keeps_rows_but_never_sends_them_again() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "mark", Cleanup::Mark { retention: Duration::from_secs(60) }, FailurePolicy::Block).await;
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    let again = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!(again.claimed, 0);
    assert_eq!(producer.sent().len(), 1);
    assert_eq!(table.count(&client, "tributary_published_at IS NOT NULL").await, 1);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn kafka_outage_removes_nothing() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "outage", Cleanup::Delete, FailurePolicy::Block).await;
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    producer.set_unavailable(true);
    let outcome = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert!(outcome.kafka_unavailable && outcome.published == 0);
    assert_eq!(table.count(&client, "tributary_attempts = 0").await, 1, "an outage is not the row's fault");
    producer.set_unavailable(false);
    assert_eq!(process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch").published, 1);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn failing_row_blocks_its_aggregate_until_it_fails_for_good() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "block", Cleanup::Delete, FailurePolicy::Block).await;
    table.insert(&client, "Unknown", "a", 0).await; // unroutable: no route, no prefix
    table.insert(&client, "Order", "a", 1).await;
    table.insert(&client, "Order", "b", 1).await;
    let producer = FakeProducer::default();
    let first = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!((first.published, first.retrying), (1, 1));
    assert_eq!(sent(&producer), vec![("b".to_owned(), 1)], "a's later row waits behind its failing head");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!((second.published, second.failed), (0, 1));
    assert_eq!(
        table.count(&client, "tributary_failed_at IS NOT NULL AND tributary_last_error LIKE '%no topic for aggregate type%'").await,
        1
    );

    let third = process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!(third.claimed, 0, "a blocked aggregate stays blocked");
    table.drop_table(&client).await;
}

#[tokio::test]
async fn skip_policy_moves_the_failed_row_aside_and_the_aggregate_goes_on() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "skip", Cleanup::Delete, FailurePolicy::Skip).await;
    table.insert(&client, "Unknown", "a", 0).await;
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    for _ in 0..2 {
        process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    assert_eq!(sent(&producer), vec![("a".to_owned(), 1)]);
    let failed: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}_failed WHERE tributary_error LIKE '%no topic%'", table.name), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(failed, 1);
    assert_eq!(table.count(&client, "true").await, 0);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn an_aggregate_in_flight_elsewhere_is_skipped_and_late_commits_are_not_lost() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "locks", Cleanup::Delete, FailurePolicy::Block).await;
    table.insert(&client, "Order", "a", 1).await;
    table.insert(&client, "Order", "b", 1).await;

    // Another relay holds aggregate "a" in an open transaction.
    let mut other = database().await.expect("second connection");
    let in_flight = other.transaction().await.expect("begin");
    let claimed = in_flight.query(&table.settings.statements.claim, &[&1i64]).await.expect("claim");
    assert_eq!(claimed.len(), 1);

    // A writer's row for "c" gets its sequence number now but commits later.
    let mut writer = database().await.expect("writer connection");
    let late = writer.transaction().await.expect("begin");
    late.execute(
        &format!(
            "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload) VALUES (gen_random_uuid(), 'Order', 'c', 't', '{{\"n\":1}}')",
            table.name
        ),
        &[],
    )
    .await
    .expect("insert");
    table.insert(&client, "Order", "d", 1).await;

    let producer = FakeProducer::default();
    process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    let keys: Vec<String> = sent(&producer).into_iter().map(|(key, _)| key).collect();
    assert!(!keys.contains(&"a".to_owned()), "aggregate a is in flight in another transaction: {keys:?}");
    assert!(keys.contains(&"d".to_owned()), "{keys:?}");

    late.commit().await.expect("late commit");
    in_flight.rollback().await.expect("rollback");
    process_batch(&mut client, &table.settings, &producer, &metrics()).await.expect("batch");
    let keys: Vec<String> = sent(&producer).into_iter().map(|(key, _)| key).collect();
    assert!(keys.contains(&"c".to_owned()), "a row committed after a later one is still published: {keys:?}");
    assert!(keys.contains(&"a".to_owned()), "{keys:?}");
    assert_eq!(table.count(&client, "true").await, 0);
    table.drop_table(&client).await;
}
