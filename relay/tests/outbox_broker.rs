//! `tributary-relay outbox` against a real PostgreSQL and a real Kafka-protocol broker (Tansu in
//! the test rig): order per aggregate with concurrent writers and two relays (and against a
//! competing lock holder), crash safety under SIGKILL, a broker restart, poison rows, bad input,
//! and SIGTERM.
//!
//! Every test runs the real binary (`env!("CARGO_BIN_EXE_tributary-relay")`) on a table and
//! topic of its own, and checks what reached Kafka with an independent consumer: every committed
//! row, key = aggregate id, the CloudEvents headers, and order per aggregate (`check_order`:
//! duplicates only as re-sends of the same `ce_id`). Environment (set by `scripts/test.sh`):
//! `TRIBUTARY_BOOTSTRAP_SERVERS`, `TRIBUTARY_TEST_DATABASE_URL`, `TRIBUTARY_BROKER_CTL`; without
//! them the tests print a skip line, unless `TRIBUTARY_TEST_STRICT=1`, where they fail.
//! `IT_RELAY_LOG=<filter>` sets the relays' `RUST_LOG` when debugging.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::*;

/// Tansu auto-creates topics with 4 partitions: the tests create theirs with as many, so a
/// topic auto-created by the relay (after a broker restart) maps keys to the same partitions.
const PARTITIONS: i32 = 4;
const SOURCE: &str = "/tributary/it";

fn relay_args(routes: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["--source".into(), SOURCE.into()];
    for (aggregate_type, topic) in routes {
        args.push("--route".into());
        args.push(format!("{aggregate_type}={topic}"));
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn ids(rows: &[Inserted]) -> HashSet<String> {
    rows.iter().map(|row| row.id.clone()).collect()
}

fn logs(relays: &[&Relay]) -> String {
    relays.iter().enumerate().map(|(i, relay)| format!("--- relay {i} log (tail) ---\n{}\n", relay.log_tail(25))).collect()
}

/// A migrated outbox table, a topic for `Order` rows and a live consumer reading it.
///
/// Topics are not deleted afterwards: a consumer of this process still fetching a deleted topic
/// would crash the test binary (the librdkafka bug described at `Collector::detach`), and the
/// broker is thrown away after the run anyway.
struct Fixture {
    env: TestEnv,
    table: String,
    topic: String,
    db: tokio_postgres::Client,
    /// Reads while the relay publishes: for waiting. Assertions use `read_back` (a fresh consumer
    /// once nothing is being produced), see `Collector::read_back`.
    live: Collector,
    _table: TableGuard,
}

impl Fixture {
    async fn new(env: TestEnv, test: &str) -> Fixture {
        let table = table_name(test);
        let guard = TableGuard::new(&env.database_url, &table);
        migrate(&env, &table).await;
        let topic = topic_name(test);
        create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
        let live = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
        let db = pg(&env.database_url).await;
        Fixture { env, table, topic, db, live, _table: guard }
    }

    fn relay(&self, extra: &[&str]) -> Relay {
        Relay::spawn(&self.env, &self.table, &relay_args(&[("Order", &self.topic)], extra))
    }

    fn writers(&self, writers: usize, aggregates: usize, rows: u64, pause: Duration) -> Writers {
        Writers::spawn(&self.env.database_url, &self.table, writers, aggregates, rows, pause)
    }

    /// A fresh consumer reading the whole topic (call once nothing is being produced).
    async fn read_back(&self, ids: &HashSet<String>) -> Collector {
        Collector::read_back(&self.env.bootstrap_servers, std::slice::from_ref(&self.topic), ids, Duration::from_secs(60)).await
    }

    fn verify(&self, records: &[Received], inserted: &[Inserted], absent_ok: &HashSet<String>) -> Verdict {
        let topic = self.topic.clone();
        let topic_of = move |_: &str| topic.clone();
        verify(records, inserted, &Expect { topic_of: &topic_of, source: SOURCE, absent_ok })
    }

    /// Waits for the table to drain, reads the topic back with a fresh consumer and verifies
    /// every committed row arrived, with its headers and key, in order per aggregate.
    async fn drain_and_verify(&self, inserted: &[Inserted], relays: &[&Relay], what: &str) -> Verdict {
        let drained = wait_until_empty(&self.db, &self.table, Duration::from_secs(60)).await;
        let pending = count_rows(&self.db, &self.table).await;
        assert!(drained, "{what}: {pending} row(s) still in {} after 60 s\n{}", self.table, logs(relays));
        let reader = self.read_back(&ids(inserted)).await;
        let verdict = self.verify(&reader.records(), inserted, &HashSet::new());
        let live_missed = ids(inserted).difference(&self.live.seen_ids()).count();
        if live_missed > 0 {
            eprintln!("{what}: note: the live consumer missed {live_missed} record(s) the read-back found");
        }
        verdict.assert_clean(what);
        assert_eq!(count_rows(&self.db, &format!("{}_failed", self.table)).await, 0, "{what}: rows moved to the failed table");
        verdict
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Order per aggregate

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_per_aggregate_with_concurrent_writers_and_two_relays() {
    let Some(env) = test_env("order_per_aggregate_with_concurrent_writers_and_two_relays", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let fixture = Fixture::new(env, "order").await;

    // 8 writers, each owning 25 aggregates, 20 rows each: 4000 rows. The relays (default batch
    // size, 500) start once a backlog has built up: a batch then covers every aggregate while the
    // backlog is longer than a batch, so the other workers' claims find every aggregate locked
    // and scan the whole backlog, which is where per-aggregate order is at risk.
    let writers = fixture.writers(8, 25, 20, Duration::ZERO);
    while count_rows(&fixture.db, &fixture.table).await < 1000 && !writers.finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog = count_rows(&fixture.db, &fixture.table).await;
    let relays = [fixture.relay(&["--workers", "2"]), fixture.relay(&["--workers", "2"])];
    let inserted = writers.join().await;
    assert_eq!(inserted.len(), 4000);
    let written = started.elapsed();

    let verdict = fixture.drain_and_verify(&inserted, &[&relays[0], &relays[1]], "two relays").await;
    let mut published = Vec::new();
    for relay in &relays {
        published.push(relay.metric("tributary_relay_published_total").await.unwrap_or_default());
    }
    assert!(published.iter().all(|n| *n > 0.0), "both relays publish: {published:?}");
    eprintln!(
        "order_per_aggregate: {} rows ({} aggregates) written in {:.1}s, relays started at a backlog of {backlog}; all in Kafka in \
         order after {}; {} records, {} duplicates; published per relay {published:?}",
        inserted.len(),
        verdict.report.aggregates,
        written.as_secs_f64(),
        since(started),
        verdict.report.records,
        verdict.report.duplicates,
    );
}

/// The same property, provoked on purpose: the test plays a competing relay worker that takes the
/// advisory locks of 10 "hot" aggregates (the relay's key: table name and aggregate id), holds them
/// for a few milliseconds and commits without publishing, over and over, as a replica does whose
/// batch found Kafka unavailable (or that crashed). The real relay drains a backlog in which hot
/// rows are dense; none of them may overtake an earlier row of its aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_per_aggregate_when_a_competitor_releases_locks_mid_claim() {
    let Some(env) = test_env("order_per_aggregate_when_a_competitor_releases_locks_mid_claim", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let fixture = Fixture::new(env, "compete").await;
    let hot: Vec<String> = (0..10).map(|i| format!("Order-hot{i}")).collect();
    let cold: Vec<String> = (0..40).map(|i| format!("Order-cold{i}")).collect();
    // 200 rounds of one row per aggregate (10 000 rows), each round one statement (seq order =
    // round order). The cold rows keep the relay claiming back to back.
    let mut inserted = Vec::new();
    for seq in 0..200u64 {
        let aggregates: Vec<&String> = hot.iter().chain(&cold).collect();
        let payloads: Vec<String> = aggregates.iter().map(|a| serde_json::json!({ "aggregate": a, "seq": seq }).to_string()).collect();
        let rows = fixture
            .db
            .query(
                &format!(
                    "INSERT INTO \"{}\" (id, aggregatetype, aggregateid, type, payload) \
                     SELECT gen_random_uuid(), 'Order', a, 'order.updated', p::jsonb FROM unnest($1::text[], $2::text[]) AS r(a, p) \
                     RETURNING id::text, aggregateid",
                    fixture.table
                ),
                &[&aggregates, &payloads],
            )
            .await
            .expect("insert a round");
        for row in rows {
            let aggregate: String = row.get(1);
            inserted.push(Inserted { id: row.get(0), aggregate_type: "Order".into(), aggregate, event_type: "order.updated".into(), seq });
        }
    }

    // The competitor: the relay's advisory-lock key for each hot aggregate.
    let competitor = pg(&fixture.env.database_url).await;
    let lock_hot = format!(
        "SELECT count(*) FILTER (WHERE pg_try_advisory_xact_lock(hashtext('\"public\".\"{}\"'), hashtext(a))) FROM unnest($1::text[]) a",
        fixture.table
    );
    let hot_pending = format!("SELECT count(*) FROM \"{}\" WHERE aggregateid = ANY($1)", fixture.table);
    competitor.batch_execute("BEGIN").await.expect("begin");
    let held: i64 = competitor.query_one(&lock_hot, &[&hot]).await.expect("lock hot aggregates").get(0);
    assert_eq!(held, 10);
    let relays = [fixture.relay(&["--workers", "2", "--batch-size", "50"]), fixture.relay(&["--workers", "2", "--batch-size", "50"])];
    // While the competitor holds them, hot rows stay (so the keys match) and cold rows flow.
    let deadline = Instant::now() + Duration::from_secs(15);
    while count_rows(&fixture.db, &fixture.table).await == 10_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hot_left: i64 = fixture.db.query_one(&hot_pending, &[&hot]).await.expect("hot rows").get(0);
    assert_eq!(hot_left, 2000, "hot rows were published while their aggregates were locked: the lock key differs\n{}", logs(&[&relays[0]]));
    competitor.batch_execute("COMMIT").await.expect("commit");

    // Now: hold for 1–5 ms, release, pause 0–2 ms, again, until the cold rows are gone.
    let mut random = XorShift::from_time();
    let mut cycles = 0;
    let cold_pending = format!("SELECT count(*) FROM \"{}\" WHERE NOT aggregateid = ANY($1)", fixture.table);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fixture.db.query_one(&cold_pending, &[&hot]).await.expect("cold rows").get::<_, i64>(0) > 0 && Instant::now() < deadline {
        competitor.batch_execute("BEGIN").await.expect("begin");
        competitor.query_one(&lock_hot, &[&hot]).await.expect("lock hot aggregates");
        tokio::time::sleep(Duration::from_millis(random.between(1, 5))).await;
        competitor.batch_execute("COMMIT").await.expect("commit");
        tokio::time::sleep(Duration::from_millis(random.between(0, 2))).await;
        cycles += 1;
    }
    let verdict = fixture.drain_and_verify(&inserted, &[&relays[0], &relays[1]], "competing lock holder").await;
    eprintln!(
        "competing_locks: {} rows, {cycles} lock/release cycles; {} records, {} duplicates; {}",
        inserted.len(),
        verdict.report.records,
        verdict.report.duplicates,
        since(started)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Crash safety

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_safety_kill_9_under_load() {
    let Some(env) = test_env("crash_safety_kill_9_under_load", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let fixture = Fixture::new(env, "kill9").await;

    // 8 writers × 5 aggregates × 80 rows = 3200 rows, paced to last through the kills. Batches
    // of 50 cover every aggregate, and the backlog a kill leaves is larger than a batch.
    let writers = fixture.writers(8, 5, 80, Duration::from_millis(25));
    let mut random = XorShift::from_time();
    let seed = random.seed();
    let (mut kills, mut kills_while_publishing) = (0, 0);
    while kills < 20 || !writers.finished() {
        let mut relay = fixture.relay(&["--workers", "2", "--batch-size", "50"]);
        // A fresh relay needs about a second for its first acknowledged batch (librdkafka's
        // idempotent producer acquires its producer id on a 500 ms timer): every other kill comes
        // 50–400 ms after start, the others 50–400 ms after the relay began publishing.
        if kills % 2 == 1 {
            let deadline = Instant::now() + Duration::from_secs(3);
            while relay.metric("tributary_relay_published_total").await.unwrap_or_default() == 0.0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            kills_while_publishing += usize::from(Instant::now() < deadline);
        }
        tokio::time::sleep(Duration::from_millis(random.between(50, 400))).await;
        relay.kill9().await;
        kills += 1;
        assert!(kills < 200, "writers did not finish");
    }
    let inserted = writers.join().await;
    let pending = count_rows(&fixture.db, &fixture.table).await;

    let last = fixture.relay(&["--workers", "2"]);
    let verdict = fixture.drain_and_verify(&inserted, &[&last], "after kill -9").await;
    eprintln!(
        "crash_safety: {kills} SIGKILLs ({kills_while_publishing} while publishing; seed {seed}), {} rows, {pending} left for the final \
         relay; {} records, {} duplicates (re-sends); {}",
        inserted.len(),
        verdict.report.records,
        verdict.report.duplicates,
        since(started),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Broker restart

/// Tansu keeps records in memory: a restart loses whatever nobody had read yet. So that nothing is
/// lost unseen, the relay is frozen (SIGSTOP) while a consumer reads everything the old broker
/// has (at least every row deleted so far, i.e. acknowledged); the live consumer lets go of its
/// partitions (see `Collector::detach`); the broker restarts; the relay is thawed (SIGCONT) as
/// soon as the old broker's port closes, so it lives through the outage with batches in flight,
/// then an empty broker that knows neither its topic nor its producer id. Writers keep
/// inserting throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_under_load_loses_nothing() {
    let Some(env) = test_env("broker_restart_under_load_loses_nothing", true) else { return };
    // A restart wipes every topic: no other test of this binary may run meanwhile.
    let _broker = BROKER.write().await;
    let started = Instant::now();
    let ctl = env.broker_ctl.clone().expect("checked by test_env");
    let fixture = Fixture::new(env, "restart").await;
    let bootstrap = fixture.env.bootstrap_servers.clone();
    let topics = [fixture.topic.clone()];
    let relay = fixture.relay(&["--workers", "2", "--delivery-timeout", "2s"]);
    let readyz = relay.watch_readyz();
    let writers = fixture.writers(4, 10, 1000, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay.readyz().await, Some(200), "ready before the restart\n{}", logs(&[&relay]));

    // Freeze the relay; read everything the old broker acknowledged.
    signal(relay.pid(), "STOP");
    // Rows committed before the count that are no longer in the table were acknowledged.
    let committed = ids(&committed_so_far(&writers.sink));
    let remaining = remaining_ids(&fixture.db, &fixture.table).await;
    let acknowledged: HashSet<String> = committed.difference(&remaining).cloned().collect();
    let before = Collector::read_back(&bootstrap, &topics, &acknowledged, Duration::from_secs(30)).await;
    let unread = acknowledged.difference(&before.seen_ids()).count();
    assert_eq!(unread, 0, "{unread} acknowledged row(s) not readable from the broker before the restart");
    let old_records = before.records_as_epoch(1);
    drop(before);
    fixture.live.detach().await;

    let restart_began = Instant::now();
    // Not killed on drop: a restart cut short would leave the broker down for everyone.
    let mut restart = tokio::process::Command::new("bash").arg(&ctl).arg("restart").spawn().expect("broker restart");
    let port: u16 = bootstrap.rsplit(':').next().and_then(|p| p.parse().ok()).expect("bootstrap port");
    let thawed_during_outage = loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            break true;
        }
        if restart.try_wait().expect("restart status").is_some() || restart_began.elapsed() > Duration::from_secs(15) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    signal(relay.pid(), "CONT");
    let thawed = Instant::now();
    let status = restart.wait().await.expect("broker restart");
    assert!(status.success(), "broker restart failed");
    let outage = restart_began.elapsed();
    // The relay's metadata requests may auto-create the topic first; either way it has 4 partitions.
    create_topics(&bootstrap, &topics, PARTITIONS).await;
    fixture.live.reassign_from_beginning();

    // Keep writing for a while after the restart, then drain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inserted = writers.stop().await;
    let drained = wait_until_empty(&fixture.db, &fixture.table, Duration::from_secs(45)).await;
    let pending = count_rows(&fixture.db, &fixture.table).await;
    let log = relay.log_text();
    let producer_errors: Vec<&str> =
        log.lines().filter(|line| line.contains("Kafka unavailable") || line.contains("Fatal error")).rev().take(3).collect();
    assert!(
        drained,
        "{pending} row(s) still pending 45 s after the broker restart: the relay did not recover. Its last producer errors: \
         {producer_errors:#?}\n{}",
        logs(&[&relay])
    );

    // Ready again, and not ready at some point after the broker went away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.readyz().await != Some(200) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = readyz.since(thawed);
    let not_ready = statuses.iter().find(|(_, status)| *status == Some(503)).map(|(at, _)| *at);

    // Everything: what the old broker had, then what the new one has.
    let after: HashSet<String> = ids(&inserted).difference(&ids_in(&old_records)).cloned().collect();
    let reader = Collector::read_back(&bootstrap, &topics, &after, Duration::from_secs(60)).await;
    let records: Vec<Received> = old_records.iter().cloned().chain(reader.records_as_epoch(2)).collect();
    let verdict = fixture.verify(&records, &inserted, &HashSet::new());
    let live_after_restart = fixture.live.records().iter().filter(|r| r.epoch > 1).count();
    eprintln!(
        "broker_restart: {} rows; {} records read from the old broker; outage {:.1}s (relay thawed during it: \
         {thawed_during_outage}); /readyz 503 first {not_ready:?} after the thaw; {} records in all, {} duplicates, {} missing; \
         the live consumer read {live_after_restart} records after the restart; {}",
        inserted.len(),
        old_records.len(),
        outage.as_secs_f64(),
        verdict.report.records,
        verdict.report.duplicates,
        verdict.missing.len(),
        since(started),
    );
    verdict.assert_clean("broker restart");
    assert!(live_after_restart > 0, "the live consumer read nothing after the restart: {:?}", fixture.live.errors());
    assert_eq!(relay.readyz().await, Some(200), "/readyz not 200 after recovery\n{}", logs(&[&relay]));
    assert!(not_ready.is_some(), "/readyz never answered 503 during the outage: {statuses:?}");
}

fn ids_in(records: &[Received]) -> HashSet<String> {
    records.iter().filter_map(|record| record.ce_id().map(str::to_owned)).collect()
}

// ---------------------------------------------------------------------------------------------
// 4. Poison rows

/// Rows of three aggregates: `a` has an unroutable row at seq 1, `b` a too-large row at seq 1,
/// `c` is clean. Returns (all rows, the two poison rows).
async fn poison_rows(db: &tokio_postgres::Client, table: &str) -> (Vec<Inserted>, [Inserted; 2]) {
    let mut rows = Vec::new();
    for seq in 0..4 {
        let a_type = if seq == 1 { "Unrouted" } else { "Order" };
        rows.push(insert(db, table, a_type, "a", seq, 0).await);
        rows.push(insert(db, table, "Order", "b", seq, if seq == 1 { 5000 } else { 0 }).await);
        rows.push(insert(db, table, "Order", "c", seq, 0).await);
    }
    let unroutable = rows.iter().find(|r| r.aggregate == "a" && r.seq == 1).cloned().expect("a1");
    let too_large = rows.iter().find(|r| r.aggregate == "b" && r.seq == 1).cloned().expect("b1");
    (rows, [unroutable, too_large])
}

/// (attempts, last error, failed) of a row still in the outbox table.
async fn row_state(db: &tokio_postgres::Client, table: &str, id: &str) -> Option<(i32, Option<String>, bool)> {
    db.query_opt(
        &format!("SELECT tributary_attempts, tributary_last_error, tributary_failed_at IS NOT NULL FROM \"{table}\" WHERE id::text = $1"),
        &[&id],
    )
    .await
    .expect("row state")
    .map(|row| (row.get(0), row.get(1), row.get(2)))
}

/// [`row_state`] once the row is marked failed, or after 20 s.
async fn held_state(db: &tokio_postgres::Client, table: &str, id: &str) -> Option<(i32, Option<String>, bool)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = row_state(db, table, id).await;
        if matches!(state, Some((_, _, true))) || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const POISON_FLAGS: [&str; 6] = ["--max-attempts", "2", "--retry-initial-delay", "100ms", "--max-record-bytes", "1000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_row_block_and_skip() {
    let Some(env) = test_env("poison_row_block_and_skip", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();

    // block: the poison rows stay, marked failed, and hold back the rest of their aggregates.
    let fixture = Fixture::new(env.clone(), "poison_block").await;
    let (rows, [unroutable, too_large]) = poison_rows(&fixture.db, &fixture.table).await;
    let relay = fixture.relay(&[&["--failure-policy", "block"][..], &POISON_FLAGS].concat());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = row_state(&fixture.db, &fixture.table, &unroutable.id).await;
        let b = row_state(&fixture.db, &fixture.table, &too_large.id).await;
        if matches!((&a, &b), (Some((_, _, true)), Some((_, _, true)))) {
            break;
        }
        assert!(Instant::now() < deadline, "poison rows not marked failed: {a:?} {b:?}\n{}", logs(&[&relay]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flowing: Vec<Inserted> = rows.iter().filter(|r| r.aggregate == "c" || r.seq == 0).cloned().collect();
    let missing = fixture.live.wait_for(&ids(&flowing), Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "other aggregates did not flow: {missing:?}\n{}", logs(&[&relay]));
    // Give the relay time to (wrongly) publish what is held back.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (attempts, error, _) = row_state(&fixture.db, &fixture.table, &unroutable.id).await.expect("unroutable row kept");
    let error = error.unwrap_or_default();
    assert_eq!(attempts, 2, "unroutable row: attempts");
    assert!(error.contains("no topic for aggregate type") && error.contains("Unrouted"), "unroutable row: last error {error:?}");
    let (attempts, error, _) = row_state(&fixture.db, &fixture.table, &too_large.id).await.expect("too-large row kept");
    let error = error.unwrap_or_default();
    assert_eq!(attempts, 2, "too-large row: attempts");
    assert!(error.contains("exceeds") && error.contains("1000 bytes"), "too-large row: last error {error:?}");
    let held: Vec<&Inserted> = rows.iter().filter(|r| r.aggregate != "c" && r.seq >= 1).collect();
    let remaining = remaining_ids(&fixture.db, &fixture.table).await;
    for row in &held {
        assert!(remaining.contains(&row.id), "held row {:?} left the table", (&row.aggregate, row.seq));
    }
    assert_eq!(remaining.len(), held.len(), "only the poison rows and what follows them stay");
    let reader = fixture.read_back(&ids(&flowing)).await;
    let seen = reader.seen_ids();
    let leaked: Vec<(&str, u64)> = held.iter().filter(|r| seen.contains(&r.id)).map(|r| (r.aggregate.as_str(), r.seq)).collect();
    assert!(leaked.is_empty(), "rows behind a blocked row were published: {leaked:?}");
    let not_yet: HashSet<String> = held.iter().map(|r| r.id.clone()).collect();
    fixture.verify(&reader.records(), &rows, &not_yet).assert_clean("block policy");
    drop((reader, relay, fixture));

    // skip: the poison rows move to <table>_failed and their aggregates go on.
    let fixture = Fixture::new(env, "poison_skip").await;
    let (rows, [unroutable, too_large]) = poison_rows(&fixture.db, &fixture.table).await;
    let relay = fixture.relay(&[&["--failure-policy", "skip"][..], &POISON_FLAGS].concat());
    let drained = wait_until_empty(&fixture.db, &fixture.table, Duration::from_secs(20)).await;
    assert!(drained, "skip policy: table not drained\n{}", logs(&[&relay]));
    let failed = fixture
        .db
        .query(&format!("SELECT id::text, tributary_error, tributary_moved_at IS NOT NULL FROM \"{}_failed\"", fixture.table), &[])
        .await
        .expect("failed rows");
    assert_eq!(failed.len(), 2, "two rows moved aside");
    for row in &failed {
        let (id, error, moved): (String, Option<String>, bool) = (row.get(0), row.get(1), row.get(2));
        let error = error.unwrap_or_default();
        assert!(moved, "moved_at set");
        if id == unroutable.id {
            assert!(error.contains("no topic for aggregate type"), "unroutable: {error:?}");
        } else if id == too_large.id {
            assert!(error.contains("exceeds"), "too large: {error:?}");
        } else {
            panic!("unexpected row {id} in the failed table");
        }
    }
    let moved: HashSet<String> = [unroutable.id.clone(), too_large.id.clone()].into();
    let expected: HashSet<String> = ids(&rows).difference(&moved).cloned().collect();
    let reader = fixture.read_back(&expected).await;
    let seen = reader.seen_ids();
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "skip policy: rows after the poison rows not published: {missing:?}");
    assert!(!seen.contains(&unroutable.id) && !seen.contains(&too_large.id), "a poison row reached Kafka");
    fixture.verify(&reader.records(), &rows, &moved).assert_clean("skip policy");
    eprintln!("poison_row: block and skip verified in {}", since(started));
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_nothing_deleted() {
    let Some(env) = test_env("bad_input_is_refused_and_nothing_deleted", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let table = table_name("badinput");
    let _guard = TableGuard::new(&env.database_url, &table);
    let db = pg(&env.database_url).await;
    // An application's own table with a text payload column; migrate adds the relay's columns.
    db.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, \
         type text NOT NULL, payload text)"
    ))
    .await
    .expect("create table by hand");
    migrate(&env, &table).await;
    let insert_text = |aggregate: &'static str, payload: &'static str| {
        let (db, table) = (&db, &table);
        async move {
            db.query_one(
                &format!(
                    "INSERT INTO \"{table}\" (id, aggregatetype, aggregateid, type, payload) \
                     VALUES (gen_random_uuid(), 'Order', $1, 'order.updated', $2) RETURNING id::text"
                ),
                &[&aggregate, &payload],
            )
            .await
            .expect("insert")
            .get::<_, String>(0)
        }
    };
    let malformed = insert_text("m", "{not json").await;
    let behind = insert_text("m", r#"{"aggregate":"m","seq":1}"#).await;
    let good = insert_text("g", r#"{"aggregate":"g","seq":0}"#).await;

    // Refused up front: exit code 2, a message naming the problem, nothing touched.
    let outbox = |database_url: &str, bootstrap: &str, table: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["outbox", "--database-url", database_url, "--bootstrap-servers", bootstrap, "--table", table]
            .iter()
            .map(|arg| (*arg).to_owned())
            .collect();
        args.extend(["--listen-address".to_owned(), free_address().to_string()]);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    };
    let (url, servers) = (env.database_url.as_str(), env.bootstrap_servers.as_str());
    let no_such_table = format!("{table}_nosuch");
    let cases = [
        ("missing payload column", outbox(url, servers, &table, &["--column-payload", "nope"]), "nope"),
        ("unknown table", outbox(url, servers, &no_such_table, &[]), no_such_table.as_str()),
        ("malformed database URL", outbox("postgres://x@127.0.0.1:port/db", servers, &table, &[]), "database URL is invalid"),
        ("bootstrap servers without a port", outbox(url, "localhost", &table, &[]), "localhost"),
    ];
    let rows_before = count_rows(&db, &table).await;
    for (what, args, needle) in &cases {
        let (code, stderr) = run_relay_to_exit(args, Duration::from_secs(20)).await;
        assert_eq!(code, Some(2), "{what}: exit code (stderr: {stderr})");
        assert!(stderr.contains(needle), "{what}: message does not name {needle:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(count_rows(&db, &table).await, rows_before, "{what}: rows changed");
    }

    // An unreachable database is waited for (a sidecar must not restart-loop its application's
    // pod): alive, not ready, the cause in the log; SIGTERM still ends it cleanly.
    let args = outbox("postgres://x@127.0.0.1:1/db", servers, &table, &[]);
    let listen =
        args.iter().skip_while(|arg| *arg != "--listen-address").nth(1).and_then(|address| address.parse().ok()).expect("listen address");
    let mut waiting = Relay::start(&args, &[], listen);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(http_status(listen, "/healthz").await, Some(200), "alive while waiting\n{}", logs(&[&waiting]));
    assert_eq!(waiting.readyz().await, Some(503), "not ready while waiting\n{}", logs(&[&waiting]));
    assert!(waiting.log_text().contains("cannot connect to the database"), "the log names the cause\n{}", logs(&[&waiting]));
    waiting.sigterm();
    let status = tokio::time::timeout(Duration::from_secs(10), waiting.child.wait()).await.expect("exits after SIGTERM").expect("status");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM while waiting");
    assert_eq!(count_rows(&db, &table).await, rows_before, "waiting for the database: rows changed");

    // Malformed JSON in a text payload column: held as failed, never published, never deleted.
    let topic = topic_name("badinput");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
    let live = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
    let relay = Relay::spawn(&env, &table, &relay_args(&[("Order", &topic)], &["--max-attempts", "2", "--retry-initial-delay", "100ms"]));
    let missing = live.wait_for(&HashSet::from([good.clone()]), Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "the good row was not published\n{}", logs(&[&relay]));
    let state = held_state(&db, &table, &malformed).await;
    let Some((attempts, error, failed)) = state else { panic!("the malformed row was deleted\n{}", logs(&[&relay])) };
    assert!(failed && attempts == 2, "malformed row: attempts {attempts}, failed {failed}");
    assert!(error.as_deref().unwrap_or_default().contains("payload is not valid JSON"), "malformed row: last error {error:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let remaining = remaining_ids(&db, &table).await;
    assert_eq!(remaining, HashSet::from([malformed.clone(), behind.clone()]), "only the good row may leave the table");
    let reader =
        Collector::read_back(&env.bootstrap_servers, std::slice::from_ref(&topic), &HashSet::from([good.clone()]), Duration::from_secs(30))
            .await;
    let records = reader.records();
    assert!(
        !records.is_empty() && records.iter().all(|r| r.ce_id() == Some(good.as_str())),
        "only the good row reaches Kafka: {records:?}"
    );
    eprintln!("bad_input: 4 refusals (exit 2) and a held malformed row verified in {}", since(started));
}

/// With nothing to send, /readyz follows whether a broker answers, not the last (empty) batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_relay_is_ready_only_when_kafka_answers() {
    let Some(env) = test_env("an_idle_relay_is_ready_only_when_kafka_answers", false) else { return };
    let _broker = BROKER.read().await;
    let table = table_name("idle_ready");
    let _guard = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let nothing_listens = TestEnv { bootstrap_servers: free_address().to_string(), ..env.clone() };
    let relays = [(Relay::spawn(&nothing_listens, &table, &[]), Some(503)), (Relay::spawn(&env, &table, &[]), Some(200))];
    // Several housekeeping rounds (every 5 s; the first at start).
    tokio::time::sleep(Duration::from_secs(7)).await;
    for (relay, expected) in &relays {
        assert_eq!(relay.readyz().await, *expected, "idle relay's /readyz\n{}", logs(&[relay]));
    }
}

// ---------------------------------------------------------------------------------------------
// 6. SIGTERM

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_and_leaves_no_published_row() {
    let Some(env) = test_env("sigterm_under_load_exits_cleanly_and_leaves_no_published_row", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let fixture = Fixture::new(env, "sigterm").await;
    let mut relay = fixture.relay(&["--workers", "2", "--batch-size", "100"]);
    let writers = fixture.writers(4, 10, 1000, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let published_before = relay.metric("tributary_relay_published_total").await.unwrap_or_default();
    assert!(published_before > 0.0, "the relay published nothing before SIGTERM\n{}", logs(&[&relay]));

    relay.sigterm();
    let term_sent = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), relay.child.wait()).await;
    let exit_after = term_sent.elapsed();
    let Ok(status) = status else { panic!("the relay did not exit within 10 s of SIGTERM\n{}", logs(&[&relay])) };
    let status = status.expect("relay status");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM\n{}", logs(&[&relay]));
    let inserted = writers.stop().await;

    // Every row is in exactly one place: still in the table, or in Kafka (and then not in the table).
    let remaining = remaining_ids(&fixture.db, &fixture.table).await;
    let published: HashSet<String> = ids(&inserted).difference(&remaining).cloned().collect();
    let reader = fixture.read_back(&published).await;
    let seen = reader.seen_ids();
    let lost = published.difference(&seen).count();
    assert_eq!(lost, 0, "{lost} deleted row(s) never reached Kafka");
    let published_and_left = remaining.intersection(&seen).count();
    assert_eq!(published_and_left, 0, "{published_and_left} row(s) published but left in the table after SIGTERM");
    drop(reader);

    // A new relay picks up the rest, in order.
    let next = fixture.relay(&["--workers", "2"]);
    let verdict = fixture.drain_and_verify(&inserted, &[&next], "after SIGTERM and restart").await;
    eprintln!(
        "sigterm: exit 0 after {:.2}s; {} rows, {} published before SIGTERM, {} left for the next relay; {} duplicates; {}",
        exit_after.as_secs_f64(),
        inserted.len(),
        published.len(),
        remaining.len(),
        verdict.report.duplicates,
        since(started),
    );
}

// ---------------------------------------------------------------------------------------------
// The order checker

mod checker {
    use super::support::{check_order, Observed};
    use std::collections::HashSet;

    fn records(list: &[(&str, u64)]) -> Vec<Observed> {
        list.iter()
            .map(|(aggregate, seq)| Observed { aggregate: (*aggregate).into(), seq: *seq, ce_id: format!("{aggregate}-{seq}") })
            .collect()
    }

    fn check(list: &[(&str, u64)]) -> Result<(usize, usize), Vec<String>> {
        check_order(&records(list), &HashSet::new()).map(|report| (report.records, report.duplicates))
    }

    #[test]
    fn in_order_interleaved_aggregates_pass() {
        assert_eq!(check(&[("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]), Ok((5, 0)));
    }

    #[test]
    fn re_sends_of_a_published_prefix_are_duplicates_not_errors() {
        assert_eq!(check(&[("a", 0), ("a", 1), ("a", 2), ("a", 1), ("a", 2), ("a", 3)]), Ok((6, 2)));
    }

    #[test]
    fn a_seq_before_its_predecessor_fails() {
        let problems = check(&[("a", 0), ("a", 2), ("a", 1)]).expect_err("out of order");
        assert!(problems[0].contains("seq 2 published before seq 1"), "{problems:?}");
        assert!(check(&[("a", 1)]).is_err(), "seq 0 never published");
        assert!(check(&[("a", 0), ("a", 1), ("a", 1), ("a", 3)]).is_err(), "a re-send does not cover a gap");
    }

    #[test]
    fn a_repeated_seq_with_another_ce_id_is_no_re_send() {
        let mut list = records(&[("a", 0), ("a", 1)]);
        list.push(Observed { aggregate: "a".into(), seq: 1, ce_id: "other".into() });
        assert!(check_order(&list, &HashSet::new()).is_err());
        let mut reused = records(&[("a", 0)]);
        reused.push(Observed { aggregate: "b".into(), seq: 0, ce_id: "a-0".into() });
        assert!(check_order(&reused, &HashSet::new()).is_err(), "one ce_id, two events");
    }

    #[test]
    fn colour_codes_are_stripped_from_relay_logs() {
        assert_eq!(super::support::strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"), "2026  WARN x");
    }

    #[test]
    fn allowed_absences_may_be_skipped_but_not_published_late() {
        let absent = HashSet::from([("a".to_owned(), 1)]);
        assert!(check_order(&records(&[("a", 0), ("a", 2)]), &absent).is_ok());
        assert!(check_order(&records(&[("a", 0), ("a", 2), ("a", 1)]), &absent).is_err(), "skipped row published after its successor");
        assert!(check_order(&records(&[("a", 0), ("a", 3)]), &absent).is_err(), "seq 2 is not excused");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Records Kafka refuses, rows that cannot be read, partitions

/// A topic name the broker refuses for good ("Broker: Invalid topic"; librdkafka then knows the
/// topic as "Local: Unknown topic"): a real permanent produce failure of one record that the test
/// broker gives. Tansu does not enforce a topic's `max.message.bytes` (a 5000-byte record to a
/// topic created with 1000 is accepted), the usual example.
const INVALID_TOPIC: &str = "bad topic!";

/// Whether a row's error is Kafka's refusal of [`INVALID_TOPIC`], naming it.
fn refusal_of_the_invalid_topic(error: Option<&str>) -> bool {
    error.is_some_and(|error| error.contains("Kafka rejected the record") && error.contains(&format!("{INVALID_TOPIC:?}")))
}

/// Rows of aggregate `a`, seq 0..4, the one at `refused_seq` with the topic column naming
/// [`INVALID_TOPIC`]; and of aggregate `c`, seq 0..4, all routed.
async fn rows_with_a_refused_one(db: &tokio_postgres::Client, table: &str, refused_seq: u64) -> (Vec<Inserted>, Inserted) {
    let mut rows = Vec::new();
    for seq in 0..4 {
        rows.push(insert(db, table, "Order", "a", seq, 0).await);
        rows.push(insert(db, table, "Order", "c", seq, 0).await);
    }
    let refused = rows.iter().find(|row| row.aggregate == "a" && row.seq == refused_seq).cloned().expect("a row");
    db.execute(&format!("UPDATE \"{table}\" SET topic = $1 WHERE id::text = $2"), &[&INVALID_TOPIC, &refused.id]).await.expect("topic");
    (rows, refused)
}

/// Kafka refuses a1 for good; a2 and a3 go to the routed topic. None of them may reach Kafka
/// while a1 has not (block: never; skip: only after a1 was moved aside), and c flows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_kafka_refuses_holds_back_the_rest_of_its_aggregate() {
    let Some(env) = test_env("a_record_kafka_refuses_holds_back_the_rest_of_its_aggregate", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    for policy in ["block", "skip"] {
        let test = format!("refused_{policy}");
        let table = table_name(&test);
        let _guard = TableGuard::new(&env.database_url, &table);
        migrate_with(&env, &table, &["--column-topic", "topic"]).await;
        let db = pg(&env.database_url).await;
        let topic = topic_name(&test);
        create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
        let live = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
        let (rows, refused) = rows_with_a_refused_one(&db, &table, 1).await;
        let flags = ["--column-topic", "topic", "--failure-policy", policy, "--max-attempts", "2", "--retry-initial-delay", "500ms"];
        let relay = Relay::spawn(&env, &table, &relay_args(&[("Order", &topic)], &flags));

        let c: Vec<Inserted> = rows.iter().filter(|row| row.aggregate == "c" || row.seq == 0).cloned().collect();
        let missing = live.wait_for(&ids(&c), Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "{policy}: other aggregates did not flow: {missing:?}\n{}", logs(&[&relay]));
        let behind: Vec<&Inserted> = rows.iter().filter(|row| row.aggregate == "a" && row.seq > 1).collect();
        // While a1 is being retried (two attempts 500 ms apart), nothing behind it may go out.
        let deadline = Instant::now() + Duration::from_millis(400);
        while Instant::now() < deadline {
            let seen = live.seen_ids();
            let leaked: Vec<u64> = behind.iter().filter(|row| seen.contains(&row.id)).map(|row| row.seq).collect();
            assert!(leaked.is_empty(), "{policy}: a{leaked:?} reached Kafka while a1 was refused\n{}", logs(&[&relay]));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match policy {
            "block" => {
                let state = held_state(&db, &table, &refused.id).await;
                let (attempts, error, failed) = state.expect("the refused row stays");
                assert!(failed && attempts == 2, "block: refused row attempts {attempts}, failed {failed}\n{}", logs(&[&relay]));
                assert!(refusal_of_the_invalid_topic(error.as_deref()), "block: last error {error:?}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                let remaining = remaining_ids(&db, &table).await;
                let expected: HashSet<String> =
                    rows.iter().filter(|row| row.aggregate == "a" && row.seq >= 1).map(|row| row.id.clone()).collect();
                assert_eq!(remaining, expected, "block: only a1 and what follows it stay");
                let reader =
                    Collector::read_back(&env.bootstrap_servers, std::slice::from_ref(&topic), &ids(&c), Duration::from_secs(30)).await;
                let seen = reader.seen_ids();
                let leaked: Vec<u64> = behind.iter().filter(|row| seen.contains(&row.id)).map(|row| row.seq).collect();
                assert!(leaked.is_empty(), "block: a{leaked:?} reached Kafka behind the held a1");
            }
            _ => {
                let drained = wait_until_empty(&db, &table, Duration::from_secs(20)).await;
                assert!(drained, "skip: table not drained\n{}", logs(&[&relay]));
                let failed =
                    db.query_one(&format!("SELECT id::text, tributary_error FROM \"{table}_failed\""), &[]).await.expect("the moved row");
                let (id, error): (String, Option<String>) = (failed.get(0), failed.get(1));
                assert_eq!(id, refused.id);
                assert!(refusal_of_the_invalid_topic(error.as_deref()), "skip: error {error:?}");
                let absent = HashSet::from([refused.id.clone()]);
                let expected: HashSet<String> = ids(&rows).difference(&absent).cloned().collect();
                let reader =
                    Collector::read_back(&env.bootstrap_servers, std::slice::from_ref(&topic), &expected, Duration::from_secs(30)).await;
                let topic_of = |_: &str| topic.clone();
                verify(&reader.records(), &rows, &Expect { topic_of: &topic_of, source: SOURCE, absent_ok: &absent }).assert_clean("skip");
            }
        }
    }
    eprintln!("refused record: block and skip verified in {}", since(started));
}

/// A refusal that is the record's (here: a route to a topic name the broker refuses) counts the
/// row's attempts and reaches the failure policy; it says nothing about Kafka being reachable,
/// so the relay stays ready and its other rows keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_kafka_errors_count_attempts_and_keep_the_relay_ready() {
    let Some(env) = test_env("permanent_kafka_errors_count_attempts_and_keep_the_relay_ready", false) else { return };
    let _broker = BROKER.read().await;
    let fixture = Fixture::new(env, "permanent").await;
    let refused = insert(&fixture.db, &fixture.table, "Invalid", "x", 0, 0).await;
    let relay = Relay::spawn(
        &fixture.env,
        &fixture.table,
        &relay_args(&[("Order", &fixture.topic), ("Invalid", INVALID_TOPIC)], &["--max-attempts", "3", "--retry-initial-delay", "300ms"]),
    );
    let readyz = relay.watch_readyz();
    let watching = Instant::now();
    let mut flowing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        flowing.push(insert(&fixture.db, &fixture.table, "Order", "y", flowing.len() as u64, 0).await);
        let state = row_state(&fixture.db, &fixture.table, &refused.id).await;
        if matches!(state, Some((_, _, true))) || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (attempts, error, failed) = state.expect("the refused row stays (block)");
    assert!(failed && attempts == 3, "refused row: attempts {attempts}, failed {failed}\n{}", logs(&[&relay]));
    assert!(refusal_of_the_invalid_topic(error.as_deref()), "last error {error:?}");
    let missing = fixture.live.wait_for(&ids(&flowing), Duration::from_secs(20)).await;
    assert!(missing.is_empty(), "{} row(s) of another aggregate did not flow\n{}", missing.len(), logs(&[&relay]));
    // Ready from its first answer on (the first second is the producer starting up).
    let answers = readyz.since(watching);
    let first_ready = answers.iter().position(|(_, status)| *status == Some(200)).expect("ready at some point");
    let not_ready: Vec<&(Duration, Option<u16>)> = answers[first_ready..].iter().filter(|(_, status)| *status != Some(200)).collect();
    assert!(not_ready.is_empty(), "/readyz left 200 over a refused record: {:?}\n{}", not_ready.first(), logs(&[&relay]));
    assert!(!relay.log_text().contains("Kafka unavailable"), "a refusal was logged as an outage\n{}", logs(&[&relay]));
}

/// Nullable columns of the application's own table: the relay warns at start, and a row with a
/// NULL where it needs a value is held (block) with the reason, holding back only its aggregate;
/// a row without an aggregate id is claimed and held all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_with_null_values_are_held_and_the_rest_flows() {
    let Some(env) = test_env("rows_with_null_values_are_held_and_the_rest_flows", false) else { return };
    let _broker = BROKER.read().await;
    let table = table_name("nulls");
    let _guard = TableGuard::new(&env.database_url, &table);
    let db = pg(&env.database_url).await;
    db.batch_execute(&format!("CREATE TABLE \"{table}\" (id uuid, aggregatetype text, aggregateid text, type text, payload jsonb)"))
        .await
        .expect("create table by hand");
    migrate(&env, &table).await;
    let topic = topic_name("nulls");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), PARTITIONS).await;
    let live = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&topic));
    let mut rows = Vec::new();
    for seq in 0..3 {
        rows.push(insert(&db, &table, "Order", "a", seq, 0).await);
        rows.push(insert(&db, &table, "Order", "b", seq, 0).await);
    }
    let no_type = rows.iter().find(|row| row.aggregate == "a" && row.seq == 1).cloned().expect("a1");
    db.execute(&format!("UPDATE \"{table}\" SET type = NULL WHERE id::text = $1"), &[&no_type.id]).await.expect("NULL type");
    let no_aggregate = insert(&db, &table, "Order", "z", 0, 0).await;
    db.execute(&format!("UPDATE \"{table}\" SET aggregateid = NULL WHERE id::text = $1"), &[&no_aggregate.id]).await.expect("NULL id");

    let relay = Relay::spawn(&env, &table, &relay_args(&[("Order", &topic)], &["--max-attempts", "2", "--retry-initial-delay", "100ms"]));
    let flowing: Vec<Inserted> = rows.iter().filter(|row| row.aggregate == "b" || row.seq == 0).cloned().collect();
    let missing = live.wait_for(&ids(&flowing), Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "the readable rows did not flow: {missing:?}\n{}", logs(&[&relay]));
    for (what, row) in [("NULL event type", &no_type), ("NULL aggregate id", &no_aggregate)] {
        let state = held_state(&db, &table, &row.id).await;
        let (attempts, error, failed) = state.unwrap_or_else(|| panic!("{what}: the row left the table"));
        assert!(failed && attempts == 2, "{what}: attempts {attempts}, failed {failed}\n{}", logs(&[&relay]));
        assert!(error.as_deref().unwrap_or_default().contains("NULL"), "{what}: last error {error:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a2 = rows.iter().find(|row| row.aggregate == "a" && row.seq == 2).expect("a2");
    assert!(!live.seen_ids().contains(&a2.id), "a2 reached Kafka behind the held a1");
    let log = relay.log_text();
    for column in ["aggregatetype", "aggregateid", "type"] {
        assert!(
            log.lines().any(|line| line.contains("WARN") && line.contains("nullable") && line.contains(column)),
            "no start-up warning names the nullable column {column}\n{}",
            logs(&[&relay])
        );
    }
}

/// Records land on the partition a Java producer (Debezium, Kafka Connect) picks for their key,
/// so one aggregate stays in one partition whichever of them wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_land_on_the_partition_a_java_producer_picks() {
    let Some(env) = test_env("records_land_on_the_partition_a_java_producer_picks", false) else { return };
    let _broker = BROKER.read().await;
    assert_eq!(java_murmur2(b"kafka") as u32, 0xd067_cf64, "Kafka's murmur2 of \"kafka\"");
    assert_eq!(java_murmur2(b"giberish123456789") as u32, 0x8f55_2b0c);
    assert_eq!(java_murmur2(b"") as u32, 0x106e_08d9);
    let fixture = Fixture::new(env, "partitions").await;
    let writers = fixture.writers(4, 25, 1, Duration::ZERO);
    let relay = fixture.relay(&[]);
    let inserted = writers.join().await;
    fixture.drain_and_verify(&inserted, &[&relay], "partitions").await;
    let reader = fixture.read_back(&ids(&inserted)).await;
    let misplaced: Vec<(String, i32, i32)> = reader
        .records()
        .iter()
        .filter_map(|record| {
            let key = record.key.clone()?;
            let expected = java_partition(key.as_bytes(), PARTITIONS);
            (record.partition != expected).then_some((key, record.partition, expected))
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} of {} records not where Java puts them, e.g. {:?}",
        misplaced.len(),
        inserted.len(),
        &misplaced[..misplaced.len().min(5)]
    );
}
