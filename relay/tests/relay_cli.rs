//! The `tributary-relay` binary's commands beside `outbox` itself, and how it starts and fails:
//! `migrate` on an existing table (optional columns added, the rest refused with nothing changed),
//! `outbox-release` of held rows, a listen address already in use, the `/metrics` address in the
//! log, and a fatal error printed once.
//!
//! Tests that touch the database or broker need the environment `scripts/test.sh` sets (see
//! `support::test_env`); the start-up tests run without one (nothing reaches a database there).

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::process::Output;
use std::time::{Duration, Instant};

use support::*;

/// `tributary-relay <args>` run to completion (flags only, as the other tests run it).
async fn relay_output(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(RELAY).args(args).env_clear_tributary().kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("exits within 30 s").expect("runs tributary-relay")
}

fn text(bytes: &[u8]) -> String {
    strip_ansi(&String::from_utf8_lossy(bytes))
}

/// The columns of `table`, in order.
async fn columns_of(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let rows = db
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 \
             ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .expect("columns");
    rows.iter().map(|row| row.get(0)).collect()
}

/// A table as an application made it before it used the relay: Debezium's columns, one row.
async fn application_table(db: &tokio_postgres::Client, table: &str, extra_columns: &str) {
    db.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, \
         type text NOT NULL, payload jsonb{extra_columns}); \
         INSERT INTO \"{table}\" (id, aggregatetype, aggregateid, type, payload) \
         VALUES ('00000000-0000-0000-0000-000000000001', 'Order', 'o-1', 'order.created', '{{\"n\": 1}}')"
    ))
    .await
    .expect("create the application's table");
}

async fn the_row(db: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    let rows = db.query(&format!("SELECT id::text, payload::text FROM \"{table}\""), &[]).await.expect("rows");
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adds_the_optional_columns_the_flags_name_to_an_existing_table() {
    let Some(env) = test_env("migrate_adds_the_optional_columns_the_flags_name_to_an_existing_table", false) else { return };
    let table = table_name("migrate_optional");
    let _guard = TableGuard::new(&env.database_url, &table);
    let db = pg(&env.database_url).await;
    application_table(&db, &table, "").await;
    // Migrated once without optional columns (its failed-rows table made then), as a newcomer would.
    migrate(&env, &table).await;
    let before = the_row(&db, &table).await;

    let optional = ["--column-headers", "headers", "--column-topic", "topic", "--column-created-at", "created_at"];
    let args = [&["migrate", "--database-url", &env.database_url, "--table", &table][..], &optional].concat();
    let output = relay_output(&args).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "migrate with optional columns: {stderr}");
    assert!(stderr.contains("headers, topic, created_at"), "the log names the columns added: {stderr}");
    for name in [table.clone(), format!("{table}_failed")] {
        let columns = columns_of(&db, &name).await;
        for column in ["headers", "topic", "created_at"] {
            assert!(columns.iter().any(|c| c == column), "{name} lacks {column}: {columns:?}");
        }
    }
    assert_eq!(the_row(&db, &table).await, before, "the existing row is untouched");
    let created_at_set: bool =
        db.query_one(&format!("SELECT created_at IS NOT NULL FROM \"{table}\""), &[]).await.expect("created_at").get(0);
    assert!(created_at_set, "existing rows get the time of the migration");

    // Idempotent, and the relay accepts the table with those flags (its start-up check passes:
    // it waits for SIGTERM instead of exiting 2).
    assert!(relay_output(&args).await.status.success(), "migrate again");
    let relay = Relay::spawn(&env, &table, &optional.map(str::to_owned));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log_text().contains("relaying outbox") {
        assert!(Instant::now() < deadline, "the relay did not start on the migrated table:\n{}", relay.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_what_it_will_not_do_and_changes_nothing() {
    let Some(env) = test_env("migrate_refuses_what_it_will_not_do_and_changes_nothing", false) else { return };
    let table = table_name("migrate_refuses");
    let _guard = TableGuard::new(&env.database_url, &table);
    let db = pg(&env.database_url).await;
    application_table(&db, &table, ", created_at text").await;
    let columns = columns_of(&db, &table).await;
    let rows = the_row(&db, &table).await;
    let cases: [(&[&str], &[&str]); 2] = [
        // A column the application writes: migrate would have to invent its values.
        (&["--column-payload", "data"], &["data (--column-payload)", "never a column the application writes", "changed nothing"]),
        // A column of a type the relay cannot read: converting it rewrites the data.
        (&["--column-created-at", "created_at"], &["created_at (--column-created-at)", "is text", "never changes a column's type"]),
    ];
    for (flags, needles) in cases {
        let args = [&["migrate", "--database-url", &env.database_url, "--table", &table][..], flags].concat();
        let output = relay_output(&args).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: exit code; stderr: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{flags:?}: stderr does not say {needle:?}: {stderr}");
        }
        assert_eq!(columns_of(&db, &table).await, columns, "{flags:?}: the table's columns changed");
        assert_eq!(the_row(&db, &table).await, rows, "{flags:?}: the rows changed");
        let failed_table: Option<String> =
            db.query_one(&format!("SELECT to_regclass('\"{table}_failed\"')::text"), &[]).await.expect("regclass").get(0);
        assert_eq!(failed_table, None, "{flags:?}: the failed-rows table was made");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_row_is_released_and_then_published() {
    let Some(env) = test_env("a_held_row_is_released_and_then_published", false) else { return };
    let _broker = BROKER.read().await;
    let table = table_name("release");
    let _guard = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let topic = topic_name("release");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 4).await;
    let db = pg(&env.database_url).await;
    // Aggregate a: an Invoice row nothing routes (held for good under block), an Order behind it.
    let held = insert(&db, &table, "Invoice", "a", 0, 0).await;
    let behind = insert(&db, &table, "Order", "a", 1, 0).await;
    let flowing = insert(&db, &table, "Order", "b", 0, 0).await;
    let flags = |routes: &[String]| -> Vec<String> {
        let mut args: Vec<String> =
            ["--failure-policy", "block", "--max-attempts", "2", "--retry-initial-delay", "50ms", "--poll-interval", "200ms"]
                .map(str::to_owned)
                .into();
        args.extend(routes.iter().flat_map(|route| ["--route".to_owned(), route.clone()]));
        args
    };
    let order_only = Relay::spawn(&env, &table, &flags(&[format!("Order={topic}")]));
    let live = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
    let missing = live.wait_for(&HashSet::from([flowing.id.clone()]), Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "aggregate b was not published\n{}", order_only.log_tail(20));
    let failed = format!("SELECT count(*) FROM \"{table}\" WHERE tributary_failed_at IS NOT NULL");
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.query_one(&failed, &[]).await.expect("held rows").get::<_, i64>(0) != 1 {
        assert!(Instant::now() < deadline, "the Invoice row was not held\n{}", order_only.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(order_only);

    // The route is fixed, but a held row stays held: the aggregate waits for a person.
    let fixed = Relay::spawn(&env, &table, &flags(&[format!("Order={topic}"), format!("Invoice={topic}")]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(remaining_ids(&db, &table).await, HashSet::from([held.id.clone(), behind.id.clone()]), "held without a release");

    let release = |extra: &'static [&'static str]| {
        let args = [&["outbox-release", "--database-url", &env.database_url, "--table", &table][..], extra].concat();
        async move { relay_output(&args).await }
    };
    let nothing = release(&["--aggregate", "b"]).await;
    assert!(nothing.status.success(), "release of an aggregate without held rows: {}", text(&nothing.stderr));
    assert!(text(&nothing.stdout).contains("released 0 held row(s)"), "stdout: {}", text(&nothing.stdout));
    let released = release(&["--aggregate", "a"]).await;
    assert!(released.status.success(), "release: {}", text(&released.stderr));
    assert!(text(&released.stdout).contains("released 1 held row(s) of aggregate \"a\""), "stdout: {}", text(&released.stdout));

    let drained = wait_until_empty(&db, &table, Duration::from_secs(30)).await;
    assert!(drained, "the released row and the one behind it were not published\n{}", fixed.log_tail(20));
    let reader = Collector::read_back(
        &env.bootstrap_servers,
        std::slice::from_ref(&topic),
        &HashSet::from([held.id.clone(), behind.id.clone()]),
        Duration::from_secs(30),
    )
    .await;
    let order: Vec<String> =
        reader.records().iter().filter(|r| r.key.as_deref() == Some("a")).filter_map(|r| r.ce_id().map(str::to_owned)).collect();
    assert_eq!(order, [held.id.clone(), behind.id.clone()], "aggregate a, in order, once");
}

/// An address something else listens on.
fn occupied() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = listener.local_addr().expect("address").to_string();
    (listener, address)
}

#[tokio::test]
async fn a_listen_address_in_use_stops_the_relay_at_start() {
    let (_taken, address) = occupied();
    // Nothing else is reachable: only the listen address can stop them at start.
    let outbox =
        ["outbox", "--database-url", "postgres://x@127.0.0.1:1/db", "--bootstrap-servers", "127.0.0.1:9", "--listen-address", &address];
    let dispatch = [
        "dispatch",
        "--bootstrap-servers",
        "127.0.0.1:9",
        "--topics",
        "t",
        "--group",
        "g",
        "--sink",
        "http://127.0.0.1:9/",
        "--dead-letter-topic",
        "dlq",
        "--listen-address",
        &address,
    ];
    for args in [&outbox[..], &dispatch[..]] {
        let output = relay_output(args).await;
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{}: exit status {:?}; stderr: {stderr}", args[0], output.status);
        let message = format!("cannot listen on {address}");
        assert_eq!(stderr.matches(&message).count(), 1, "{}: {message:?} once in stderr: {stderr}", args[0]);
        assert!(!stderr.contains("panicked"), "{}: {stderr}", args[0]);
        assert!(!stderr.contains("librdkafka"), "{}: Kafka clients started before the bind: {stderr}", args[0]);
    }
}

#[tokio::test]
async fn the_relay_logs_the_address_of_its_metrics_at_start() {
    let listen = free_address();
    let args: Vec<String> =
        ["outbox", "--database-url", "postgres://x@127.0.0.1:1/db", "--bootstrap-servers", "127.0.0.1:9", "--listen-address"]
            .iter()
            .map(|arg| (*arg).to_owned())
            .chain([listen.to_string()])
            .collect();
    let relay = Relay::start(&args, &[], listen);
    let url = format!("http://{listen}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.log_text().contains(&url) {
        assert!(Instant::now() < deadline, "no log line names {url}:\n{}", relay.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_status(listen, "/metrics").await, Some(200), "served where the log says");
    let lines: Vec<String> = relay.log_text().lines().filter(|line| line.contains(&url)).map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].contains("INFO"), "an info line: {}", lines[0]);
    // The producer exists by now; librdkafka has nothing to warn about in the relay's settings.
    assert!(!relay.log_text().contains("CONFWARN"), "a configuration warning at start:\n{}", relay.log_tail(20));
}

#[tokio::test]
async fn a_fatal_error_is_printed_once() {
    let output = relay_output(&["migrate", "--database-url", "postgres://x@127.0.0.1:1/db", "--table", "not-a-name"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.matches("\"not-a-name\" is not a plain SQL identifier").count(), 1, "once: {stderr}");
    let output = relay_output(&["migrate", "--database-url", "postgres://x@127.0.0.1:1/db"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.matches("cannot connect to the database").count(), 1, "once: {stderr}");
}
