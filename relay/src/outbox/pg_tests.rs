//! `process_batch` against the real PostgreSQL (`TRIBUTARY_TEST_DATABASE_URL`) with the in-memory
//! producer: ordering, locking, cleanup and failure handling at the SQL level. Skipped without a
//! database unless `TRIBUTARY_TEST_STRICT=1`.

use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_postgres::{Client, NoTls};
use tributary_common::server::Readiness;

use super::batch::recheck;
use super::record::OutboxRow;
use super::record::{RecordSettings, Routing};
use super::schema::{Columns, Ident, PayloadFormat, Statements, Table};
use super::{decode_row, migrate, process_batch, BatchOutcome, Cleanup, FailurePolicy, OutboxSettings, Session, Shard};
use crate::metrics::RelayMetrics;
use crate::producer::FakeProducer;

async fn database() -> Option<Client> {
    let url = tributary_testkit::prerequisite::required_env("PostgreSQL test", "TRIBUTARY_TEST_DATABASE_URL")?;
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
        synchronous_cleanup: true,
        delivery_timeout: Duration::from_secs(30),
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
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    for n in 0..5 {
        table.insert(&client, "Order", "a", n).await;
        table.insert(&client, "Order", "b", n).await;
    }
    let producer = FakeProducer::default();
    let outcome = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
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
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    let again = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!(again.claimed, 0);
    assert_eq!(producer.sent().len(), 1);
    assert_eq!(table.count(&client, "tributary_published_at IS NOT NULL").await, 1);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn kafka_outage_removes_nothing() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "outage", Cleanup::Delete, FailurePolicy::Block).await;
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    producer.set_unavailable(true);
    let outcome = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert!(outcome.kafka_unavailable && outcome.published == 0);
    assert_eq!(table.count(&client, "tributary_attempts = 0").await, 1, "an outage is not the row's fault");
    producer.set_unavailable(false);
    assert_eq!(process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch").published, 1);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn failing_row_blocks_its_aggregate_until_it_fails_for_good() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "block", Cleanup::Delete, FailurePolicy::Block).await;
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    table.insert(&client, "Unknown", "a", 0).await; // unroutable: no route, no prefix
    table.insert(&client, "Order", "a", 1).await;
    table.insert(&client, "Order", "b", 1).await;
    let producer = FakeProducer::default();
    let first = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!((first.published, first.retrying), (1, 1));
    assert_eq!(sent(&producer), vec![("b".to_owned(), 1)], "a's later row waits behind its failing head");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!((second.published, second.failed), (0, 1));
    assert_eq!(
        table.count(&client, "tributary_failed_at IS NOT NULL AND tributary_last_error LIKE '%no topic for aggregate type%'").await,
        1
    );

    let third = process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!(third.claimed, 0, "a blocked aggregate stays blocked");
    table.drop_table(&client).await;
}

#[tokio::test]
async fn skip_policy_moves_the_failed_row_aside_and_the_aggregate_goes_on() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "skip", Cleanup::Delete, FailurePolicy::Skip).await;
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    table.insert(&client, "Unknown", "a", 0).await;
    table.insert(&client, "Order", "a", 1).await;
    let producer = FakeProducer::default();
    for _ in 0..2 {
        process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
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

/// A column `migrate` adds to a table whose failed-rows table exists comes after the failed
/// table's own columns there: rows move by column name, not position.
#[tokio::test]
async fn skip_policy_moves_rows_by_name_after_migrate_added_a_column() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "skip_added", Cleanup::Delete, FailurePolicy::Skip).await;
    let mut columns = table.settings.statements.columns.clone();
    columns.headers = Some(Ident::new("column", "headers").expect("valid"));
    let statements = Statements::new(table.settings.statements.table.clone(), columns, PayloadFormat::Json).expect("valid");
    assert_eq!(migrate(&mut client, &statements).await.expect("migrates"), ["headers"]);
    let settings = OutboxSettings { statements, max_attempts: 1, ..table.settings.clone() };
    let mut session = Session::prepare(client, &settings).await.expect("prepares");
    table.insert(&session, "Unknown", "a", 7).await;
    session.batch_execute(&format!("UPDATE {} SET headers = '{{\"h\": \"v\"}}'", table.name)).await.expect("headers");
    let outcome = process_batch(&mut session, &settings, Shard::WHOLE, &FakeProducer::default(), &metrics()).await.expect("batch");
    assert_eq!(outcome.failed, 1);
    let moved = session
        .query_one(
            &format!("SELECT headers::text, payload::text, tributary_error, tributary_moved_at IS NOT NULL FROM {}_failed", table.name),
            &[],
        )
        .await
        .expect("the moved row");
    let (headers, payload, error, moved_at): (String, String, String, bool) = (moved.get(0), moved.get(1), moved.get(2), moved.get(3));
    assert_eq!((headers.as_str(), payload.as_str()), (r#"{"h": "v"}"#, r#"{"n": 7}"#));
    assert!(error.contains("no topic for aggregate type") && moved_at, "{error} {moved_at}");
    assert_eq!(table.count(&session, "true").await, 0);
    table.drop_table(&session).await;
}

#[tokio::test]
async fn an_aggregate_in_flight_elsewhere_is_skipped_and_late_commits_are_not_lost() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "locks", Cleanup::Delete, FailurePolicy::Block).await;
    let mut client = Session::prepare(client, &table.settings).await.expect("prepares");
    table.insert(&client, "Order", "a", 1).await;
    table.insert(&client, "Order", "b", 1).await;

    // Another relay holds aggregate "a" in an open transaction.
    let mut other = database().await.expect("second connection");
    let in_flight = other.transaction().await.expect("begin");
    let claimed = in_flight.query(&table.settings.statements.claim, &Shard::WHOLE.claim_parameters(&1)).await.expect("claim");
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
    process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    let keys: Vec<String> = sent(&producer).into_iter().map(|(key, _)| key).collect();
    assert!(!keys.contains(&"a".to_owned()), "aggregate a is in flight in another transaction: {keys:?}");
    assert!(keys.contains(&"d".to_owned()), "{keys:?}");

    late.commit().await.expect("late commit");
    in_flight.rollback().await.expect("rollback");
    process_batch(&mut client, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    let keys: Vec<String> = sent(&producer).into_iter().map(|(key, _)| key).collect();
    assert!(keys.contains(&"c".to_owned()), "a row committed after a later one is still published: {keys:?}");
    assert!(keys.contains(&"a".to_owned()), "{keys:?}");
    assert_eq!(table.count(&client, "true").await, 0);
    table.drop_table(&client).await;
}

#[tokio::test]
async fn recheck_sees_what_the_previous_lock_holder_did_after_the_claims_snapshot() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "recheck", Cleanup::Delete, FailurePolicy::Block).await;
    for (aggregate, n) in [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2), ("d", 1)] {
        table.insert(&client, "Order", aggregate, n).await;
    }
    let other = database().await.expect("second connection");
    let transaction = client.transaction().await.expect("begin");
    let claimed = transaction.query(&table.settings.statements.claim, &Shard::WHOLE.claim_parameters(&100)).await.expect("claim");
    let claimed: Vec<OutboxRow> = claimed.iter().map(|row| decode_row(row, PayloadFormat::Json).expect("decodes")).collect();
    let seq_of = |aggregate: &str, nth: usize| {
        claimed.iter().filter(|row| row.aggregate_id.as_deref() == Some(aggregate)).nth(nth).expect("claimed").seq
    };
    let (a1, a2, b1, b2, c1, c2, d1) =
        (seq_of("a", 0), seq_of("a", 1), seq_of("b", 0), seq_of("b", 1), seq_of("c", 0), seq_of("c", 1), seq_of("d", 0));

    // As if the scan had met a1 while another relay still held "a", and that relay had meanwhile
    // published b1, given up on c1 and rescheduled d1 after a failed attempt.
    let rows: Vec<OutboxRow> = claimed.iter().filter(|row| row.seq != a1).cloned().collect();
    other.execute(&format!("DELETE FROM {} WHERE tributary_seq = $1", table.name), &[&b1]).await.expect("publish b1");
    other
        .execute(&format!("UPDATE {} SET tributary_failed_at = now(), tributary_attempts = 2 WHERE tributary_seq = $1", table.name), &[&c1])
        .await
        .expect("fail c1");
    other
        .execute(
            &format!(
                "UPDATE {} SET tributary_next_attempt_at = now() + interval '1 hour', tributary_attempts = 1 WHERE tributary_seq = $1",
                table.name
            ),
            &[&d1],
        )
        .await
        .expect("reschedule d1");

    let recheck_statement = transaction.prepare(&table.settings.statements.recheck).await.expect("prepares");
    let current = recheck(&transaction, &recheck_statement, &rows).await.expect("recheck");
    let state = |seq: i64| current.get(&seq).map(|now| (now.sendable, now.behind));
    assert_eq!(state(a2), Some((true, true)), "a1 is unpublished and not claimed: a2 must wait");
    assert_eq!(state(b1), None, "b1 was published by the previous holder");
    assert_eq!(state(b2), Some((true, false)));
    assert_eq!(state(c1), None, "c1 failed meanwhile");
    assert_eq!(state(c2), Some((true, true)), "c2 must wait behind the failed c1");
    assert_eq!(state(d1), Some((false, false)), "d1 waits for its retry");
    assert_eq!(current.get(&d1).map(|now| now.attempts), Some(1), "attempts as they are now, not as claimed");
    transaction.rollback().await.expect("rollback");
    table.drop_table(&client).await;
}

#[tokio::test]
async fn the_workers_shards_split_the_aggregates_between_them() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "shards", Cleanup::Delete, FailurePolicy::Block).await;
    let aggregates: Vec<String> = (0..40).map(|n| format!("order-{n}")).collect();
    for aggregate in &aggregates {
        table.insert(&client, "Order", aggregate, 1).await;
    }
    let mut claimed_by_shard = Vec::new();
    for index in 0..3 {
        let transaction = client.transaction().await.expect("begin");
        let rows =
            transaction.query(&table.settings.statements.claim, &Shard::of_worker(index, 3).claim_parameters(&100)).await.expect("claim");
        claimed_by_shard.push(rows.iter().map(|row| row.get::<_, String>(2)).collect::<Vec<_>>());
        transaction.rollback().await.expect("rollback");
    }
    let mut all: Vec<&String> = claimed_by_shard.iter().flatten().collect();
    all.sort();
    let mut expected: Vec<&String> = aggregates.iter().collect();
    expected.sort();
    assert_eq!(all, expected, "every aggregate is in exactly one shard");
    assert!(claimed_by_shard.iter().all(|shard| !shard.is_empty()), "40 aggregates spread over 3 shards: {claimed_by_shard:?}");
    table.drop_table(&client).await;
}

/// Inserts a row of aggregate `aggregate_id` whose topic column names `topic` (NULL: routed).
async fn insert_with_topic(client: &Client, table: &TestTable, aggregate_id: &str, n: i32, topic: Option<&str>) {
    client
        .execute(
            &format!(
                "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, topic) \
                 VALUES (gen_random_uuid(), 'Order', $1, 'test', jsonb_build_object('n', $2::int), $3)",
                table.name
            ),
            &[&aggregate_id, &n, &topic],
        )
        .await
        .expect("insert");
}

/// Kafka refuses a record for good (here: its topic, as a broker refuses an invalid topic name)
/// while later rows of its aggregate go elsewhere: none of them may be acknowledged before it is.
/// Rows of an aggregate that change topic are different partitions, which no producer setting
/// keeps in order: the next one is sent only once the earlier ones were acknowledged.
#[tokio::test]
async fn a_refused_record_keeps_the_rows_after_it_in_its_aggregate_unsent() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "refused", Cleanup::Delete, FailurePolicy::Block).await;
    let mut session = Session::prepare(client, &table.settings).await.expect("prepares");
    insert_with_topic(&session, &table, "a", 0, None).await;
    insert_with_topic(&session, &table, "a", 1, Some("refused")).await;
    insert_with_topic(&session, &table, "a", 2, None).await;
    insert_with_topic(&session, &table, "b", 0, None).await;
    let producer = FakeProducer::default();
    producer.reject_topic("refused");
    let first = process_batch(&mut session, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!((first.published, first.retrying, first.kafka_unavailable), (2, 1, false));
    assert_eq!(sent(&producer), vec![("a".to_owned(), 0), ("b".to_owned(), 0)], "a:2 went out while a:1 was refused");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = process_batch(&mut session, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!((second.published, second.failed), (0, 1), "a:1 fails for good and holds a:2");
    assert_eq!(sent(&producer).len(), 2);
    assert_eq!(table.count(&session, "tributary_failed_at IS NOT NULL AND tributary_last_error LIKE '%refused%'").await, 1);
    table.drop_table(&session).await;
}

/// Rows the relay cannot read a required value of (NULL where the application's table allows it)
/// go through the failure policy like any row that cannot be published: the batch goes on, the
/// row's aggregate waits behind it, a row without an aggregate is claimed all the same.
#[tokio::test]
async fn rows_with_null_values_go_through_the_failure_policy() {
    for policy in [FailurePolicy::Block, FailurePolicy::Skip] {
        let Some(mut client) = database().await else { return };
        let test = format!("nulls_{policy}");
        let table = fresh_table(&mut client, &test, Cleanup::Delete, policy).await;
        client
            .batch_execute(&format!(
                "ALTER TABLE {0} DROP CONSTRAINT {0}_pkey, ALTER COLUMN id DROP NOT NULL, ALTER COLUMN aggregatetype DROP NOT NULL, \
                 ALTER COLUMN aggregateid DROP NOT NULL, ALTER COLUMN type DROP NOT NULL, ALTER COLUMN created_at DROP NOT NULL",
                table.name
            ))
            .await
            .expect("nullable columns");
        // As the application would after changing its table: the failed table follows.
        migrate(&mut client, &table.settings.statements).await.expect("migrates");
        let mut session = Session::prepare(client, &table.settings).await.expect("prepares");
        table.insert(&session, "Order", "a", 0).await;
        table.insert(&session, "Order", "a", 1).await;
        table.insert(&session, "Order", "a", 2).await;
        table.insert(&session, "Order", "b", 0).await;
        table.insert(&session, "Order", "c", 0).await;
        table.insert(&session, "Order", "d", 0).await;
        table.insert(&session, "Order", "e", 0).await;
        table.insert(&session, "Order", "f", 0).await;
        table.insert(&session, "Order", "g", 0).await;
        let null = |column: &str, aggregate: &str| format!("UPDATE {} SET {column} = NULL WHERE aggregateid = '{aggregate}'", table.name);
        session
            .batch_execute(&format!(
                "UPDATE {} SET type = NULL WHERE aggregateid = 'a' AND payload->>'n' = '1'; {}; {}; {}; {}",
                table.name,
                null("id", "c"),
                null("aggregatetype", "d"),
                null("created_at", "e"),
                null("aggregateid", "f"),
            ))
            .await
            .expect("NULLs");
        let producer = FakeProducer::default();
        let first = process_batch(&mut session, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
        assert_eq!((first.published, first.retrying), (3, 5), "{policy}: {first:?}");
        let mut published = sent(&producer);
        published.sort();
        assert_eq!(published, [("a".to_owned(), 0), ("b".to_owned(), 0), ("g".to_owned(), 0)], "{policy}");

        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = process_batch(&mut session, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
        assert_eq!(second.failed, 5, "{policy}: {second:?}");
        let errors: Vec<String> = match policy {
            FailurePolicy::Block => {
                let query = format!("SELECT tributary_last_error FROM {} WHERE tributary_failed_at IS NOT NULL", table.name);
                session.query(&query, &[]).await.expect("held rows").iter().map(|row| row.get(0)).collect()
            }
            FailurePolicy::Skip => {
                let query = format!("SELECT tributary_error FROM {}_failed", table.name);
                session.query(&query, &[]).await.expect("moved rows").iter().map(|row| row.get(0)).collect()
            }
        };
        assert_eq!(errors.len(), 5, "{policy}: {errors:?}");
        assert!(errors.iter().all(|error| error.contains("NULL")), "{policy}: {errors:?}");
        for what in ["event type", "event id", "aggregate type", "created-at", "aggregate id"] {
            assert!(errors.iter().any(|error| error.contains(what)), "{policy}: no error names the {what}: {errors:?}");
        }
        let third = process_batch(&mut session, &table.settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
        let a: Vec<i64> = sent(&producer).into_iter().filter(|(key, _)| key == "a").map(|(_, n)| n).collect();
        match policy {
            FailurePolicy::Block => assert_eq!((a, third.published), (vec![0], 0), "a:2 waits behind the held a:1"),
            FailurePolicy::Skip => assert_eq!((a, third.published), (vec![0, 2], 1), "a:1 moved aside, a:2 goes on"),
        }
        table.drop_table(&session).await;
    }
}

/// The relay's transactions span a Kafka round trip; a relay that stops in one (frozen, cut off)
/// must not keep its aggregates' locks for ever: PostgreSQL ends such a session.
#[tokio::test]
async fn worker_sessions_end_transactions_left_idle() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "idle", Cleanup::Delete, FailurePolicy::Block).await;
    let url = tributary_testkit::prerequisite::required_env("PostgreSQL test", "TRIBUTARY_TEST_DATABASE_URL").expect("checked");
    let database = super::Database::new(&url, super::tls::TlsFiles::default()).expect("a valid URL");
    let worker = super::connect_worker(&super::connector(database), &table.settings).await.expect("connects");
    let timeout: String = worker.query_one("SHOW idle_in_transaction_session_timeout", &[]).await.expect("show").get(0);
    assert_ne!(timeout, "0", "worker sessions never end an idle transaction");
    table.drop_table(&client).await;
}

/// PostgreSQL cuts identifiers at 63 bytes: the indexes of two tables whose long names differ
/// only at the end would get one name, and the second table none.
#[tokio::test]
async fn tables_with_long_names_get_indexes_of_their_own() {
    let Some(mut client) = database().await else { return };
    let prefix = format!("ut_long_{}_", std::process::id());
    let names: Vec<String> = ["a", "b"].iter().map(|end| format!("{prefix}{}{end}", "x".repeat(51 - prefix.len()))).collect();
    let mut counts = Vec::new();
    for name in &names {
        assert_eq!(name.len(), 52);
        client.batch_execute(&format!("DROP TABLE IF EXISTS {name}, {name}_failed CASCADE")).await.expect("drop");
        let statements = Statements::new(Table::parse(name).expect("valid"), super::schema::tests::debezium_columns(), PayloadFormat::Json)
            .expect("valid");
        migrate(&mut client, &statements).await.expect("migrates");
    }
    for name in &names {
        let count: i64 = client
            .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexname LIKE '%tributary%'", &[name])
            .await
            .expect("count")
            .get(0);
        counts.push(count);
        client.batch_execute(&format!("DROP TABLE IF EXISTS {name}, {name}_failed CASCADE")).await.expect("drop");
    }
    assert_eq!(counts, [3, 3], "the relay's indexes of {names:?}");
}

/// An application adds a column to its outbox table after `migrate`: moving a row aside must not
/// drop that column's value on the way.
#[tokio::test]
async fn skip_policy_never_drops_a_column_the_failed_table_lacks() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "skip_app_column", Cleanup::Delete, FailurePolicy::Skip).await;
    client.batch_execute(&format!("ALTER TABLE {} ADD COLUMN tenant text", table.name)).await.expect("the application's column");
    let settings = OutboxSettings { max_attempts: 1, ..table.settings.clone() };
    let mut session = Session::prepare(client, &settings).await.expect("prepares");
    table.insert(&session, "Unknown", "a", 7).await;
    session.batch_execute(&format!("UPDATE {} SET tenant = 'acme'", table.name)).await.expect("tenant");
    process_batch(&mut session, &settings, Shard::WHOLE, &FakeProducer::default(), &metrics()).await.expect("batch");
    let moved: i64 = session.query_one(&format!("SELECT count(*) FROM {}_failed", table.name), &[]).await.expect("count").get(0);
    let held = table.count(&session, "tributary_failed_at IS NOT NULL AND tenant = 'acme'").await;
    assert_eq!((moved, held), (0, 1), "moved without its tenant, or not held");
    let error: String = session.query_one(&format!("SELECT tributary_last_error FROM {}", table.name), &[]).await.expect("error").get(0);
    assert!(error.contains("tenant") && error.contains("migrate"), "{error}");

    // `migrate` gives the failed table the column; released, the row moves with its value.
    let mut client = database().await.expect("connects");
    migrate(&mut client, &settings.statements).await.expect("migrates");
    super::release_held(&mut client, &settings.statements, None).await.expect("releases");
    let mut session = Session::prepare(client, &settings).await.expect("prepares");
    process_batch(&mut session, &settings, Shard::WHOLE, &FakeProducer::default(), &metrics()).await.expect("batch");
    let tenant: Option<String> =
        session.query_one(&format!("SELECT tenant FROM {}_failed", table.name), &[]).await.expect("the moved row").get(0);
    assert_eq!(tenant.as_deref(), Some("acme"));
    table.drop_table(&session).await;
}

/// A failed table that refuses a row (here: a NOT NULL the outbox table no longer has, from before
/// the application relaxed it) must not fail the batch, and so every batch after it: the row is
/// held, the error saying why.
#[tokio::test]
async fn a_row_the_failed_table_refuses_is_held_and_the_batch_goes_on() {
    let Some(mut client) = database().await else { return };
    let table = fresh_table(&mut client, "skip_refused", Cleanup::Delete, FailurePolicy::Skip).await;
    client.batch_execute(&format!("ALTER TABLE {} ALTER COLUMN type DROP NOT NULL", table.name)).await.expect("relaxed");
    client.batch_execute(&format!("ALTER TABLE {}_failed ALTER COLUMN type SET NOT NULL", table.name)).await.expect("strict");
    let settings = OutboxSettings { max_attempts: 1, ..table.settings.clone() };
    let mut session = Session::prepare(client, &settings).await.expect("prepares");
    table.insert(&session, "Order", "a", 0).await;
    table.insert(&session, "Order", "b", 0).await;
    session.batch_execute(&format!("UPDATE {} SET type = NULL WHERE aggregateid = 'a'", table.name)).await.expect("NULL type");
    let producer = FakeProducer::default();
    let outcome = process_batch(&mut session, &settings, Shard::WHOLE, &producer, &metrics()).await.expect("batch");
    assert_eq!((outcome.published, outcome.failed), (1, 1));
    let error: String = session
        .query_one(&format!("SELECT tributary_last_error FROM {} WHERE tributary_failed_at IS NOT NULL", table.name), &[])
        .await
        .expect("the held row")
        .get(0);
    assert!(error.contains("event type is NULL") && error.contains("not-null"), "{error}");
    table.drop_table(&session).await;
}
