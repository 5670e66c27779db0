//! Helpers for the relay's integration tests against a real PostgreSQL and a real Kafka-protocol
//! broker: environment, tables, writers, relay processes, an independent consumer and the
//! per-aggregate order checker.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_postgres::Client;
use tributary_relay::outbox::tls::TlsFiles;
use tributary_relay::outbox::{ConnectError, Database};

/// The relay binary under test.
pub const RELAY: &str = env!("CARGO_BIN_EXE_tributary-relay");

/// Serialises the broker restart against every other test of this binary: all tests hold it for
/// reading, the restart test for writing (a restart wipes every topic of Tansu's memory storage).
pub static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Where the tests find the broker and the database.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub bootstrap_servers: String,
    pub database_url: String,
    /// `scripts/broker.sh`, for `restart`.
    pub broker_ctl: Option<String>,
}

/// The environment `scripts/test.sh` sets, or `None` (after a skip line) when it is missing and
/// the run is not strict. `needs_ctl`: the test also needs `TRIBUTARY_BROKER_CTL`.
pub fn test_env(test: &str, needs_ctl: bool) -> Option<TestEnv> {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let bootstrap_servers = var("TRIBUTARY_BOOTSTRAP_SERVERS");
    let database_url = var("TRIBUTARY_TEST_DATABASE_URL");
    let broker_ctl = var("TRIBUTARY_BROKER_CTL");
    let mut missing = Vec::new();
    if bootstrap_servers.is_none() {
        missing.push("TRIBUTARY_BOOTSTRAP_SERVERS");
    }
    if database_url.is_none() {
        missing.push("TRIBUTARY_TEST_DATABASE_URL");
    }
    if needs_ctl && broker_ctl.is_none() {
        missing.push("TRIBUTARY_BROKER_CTL");
    }
    if !missing.is_empty() {
        tributary_testkit::prerequisite::skip(test, &format!("{} not set (scripts/test.sh sets it)", missing.join(", ")));
        return None;
    }
    Some(TestEnv { bootstrap_servers: bootstrap_servers?, database_url: database_url?, broker_ctl })
}

/// `it_<test>_<pid>`: no other test (or test binary running at the same time) uses it.
pub fn table_name(test: &str) -> String {
    format!("it_{test}_{}", std::process::id())
}

/// A topic name used by this test only (the broker outlives test runs).
pub fn topic_name(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("it.{test}.{}.{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub fn since(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A connection to the test database at `url`, TLS as its `sslmode` says (the relay's own way of
/// connecting, so that tests of a TLS-only server can set up their tables too).
pub async fn pg(url: &str) -> Client {
    connect(url).await.expect("connect to the test database")
}

async fn connect(url: &str) -> Result<Client, ConnectError> {
    Database::new(url, TlsFiles::default())?.connect().await
}

/// The TLS-only PostgreSQL of `scripts/postgres-tls.sh` (see there): its port and the directory of
/// its certificates.
pub struct TlsDatabase {
    port: u16,
    dir: PathBuf,
}

/// The TLS-only PostgreSQL `scripts/test.sh` starts, or `None` (after a skip line) when its
/// variables are missing and the run is not strict.
pub fn tls_database(test: &str) -> Option<TlsDatabase> {
    use tributary_testkit::prerequisite::required_env;
    let url = required_env(test, "TRIBUTARY_TEST_TLS_DATABASE_URL")?;
    let dir = required_env(test, "TRIBUTARY_TEST_TLS_DIR")?;
    let config: tokio_postgres::Config = url.parse().expect("TRIBUTARY_TEST_TLS_DATABASE_URL is a PostgreSQL URL");
    let port = *config.get_ports().first().expect("TRIBUTARY_TEST_TLS_DATABASE_URL names a port");
    Some(TlsDatabase { port, dir: dir.into() })
}

impl TlsDatabase {
    /// `postgres://postgres@<host>:<port>/<database>?<query>`.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{database}?{query}", self.port)
    }

    /// One of its files by name: `ca.crt`, `client.crt`, `client.key`, `other-ca.crt`.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// Drops the outbox table, its failed-rows table and its trigger function when dropped (also when
/// the test panics).
pub struct TableGuard {
    pub url: String,
    pub table: String,
}

impl TableGuard {
    pub fn new(url: &str, table: &str) -> Self {
        let guard = TableGuard { url: url.to_owned(), table: table.to_owned() };
        guard.drop_all();
        guard
    }

    fn drop_all(&self) {
        let url = self.url.clone();
        let table = self.table.clone();
        // A thread of its own: Drop may run inside (or outside) a runtime, also while unwinding.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let Ok(client) = connect(&url).await else { return };
                let sql = format!(
                    "SET client_min_messages = warning; DROP TABLE IF EXISTS \"{table}\", \"{table}_failed\" CASCADE; \
                     DROP FUNCTION IF EXISTS \"{table}_notify\"() CASCADE;"
                );
                if let Err(error) = client.batch_execute(&sql).await {
                    eprintln!("cleanup of {table} failed: {error}");
                }
            });
        });
        let _ = dropper.join();
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        self.drop_all();
    }
}

/// Runs `tributary-relay migrate` for the default (Debezium) layout.
pub async fn migrate(env: &TestEnv, table: &str) {
    let output = tokio::process::Command::new(RELAY)
        .args(["migrate", "--database-url", &env.database_url, "--table", table])
        .env_clear_tributary()
        .output()
        .await
        .expect("run migrate");
    assert!(output.status.success(), "migrate failed: {}", String::from_utf8_lossy(&output.stderr));
}

pub async fn count_rows(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.expect("count rows").get(0)
}

/// Ids (as text) of the rows still in the table.
pub async fn remaining_ids(client: &Client, table: &str) -> HashSet<String> {
    client.query(&format!("SELECT id::text FROM \"{table}\""), &[]).await.expect("remaining ids").iter().map(|row| row.get(0)).collect()
}

/// Waits until the table is empty; false after `timeout`.
pub async fn wait_until_empty(client: &Client, table: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if count_rows(client, table).await == 0 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Inserts one row by hand: payload `{"aggregate", "seq", "pad"}` with `pad` bytes of padding.
pub async fn insert(db: &Client, table: &str, aggregate_type: &str, aggregate: &str, seq: u64, pad: usize) -> Inserted {
    let event_type = format!("{}.updated", aggregate_type.to_lowercase());
    let payload = serde_json::json!({ "aggregate": aggregate, "seq": seq, "pad": "p".repeat(pad) }).to_string();
    let row = db
        .query_one(
            &format!(
                "INSERT INTO \"{table}\" (id, aggregatetype, aggregateid, type, payload) \
                 VALUES (gen_random_uuid(), $1, $2, $3, $4::text::jsonb) RETURNING id::text"
            ),
            &[&aggregate_type, &aggregate, &event_type, &payload],
        )
        .await
        .expect("insert");
    Inserted { id: row.get(0), aggregate_type: aggregate_type.to_owned(), aggregate: aggregate.to_owned(), event_type, seq }
}

/// One committed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate: String,
    pub event_type: String,
    pub seq: u64,
}

/// What a writer task does.
#[derive(Debug, Clone)]
pub struct WriterPlan {
    pub table: String,
    pub aggregate_type: String,
    pub aggregates: Vec<String>,
    /// Stop after this many rows per aggregate (or when `stop` is set).
    pub rows_per_aggregate: u64,
    /// Pause between inserts.
    pub pause: Duration,
}

/// Every row the writers committed so far, as they go.
pub type Sink = Arc<Mutex<Vec<Inserted>>>;

pub fn committed_so_far(sink: &Sink) -> Vec<Inserted> {
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
}

/// Inserts the plan's rows, one committed row at a time, round-robin over its aggregates: row n+1
/// of an aggregate is only written after row n committed. The payload carries the aggregate and
/// its sequence number. Returns every committed row (and adds it to `sink` right after commit).
pub async fn write(url: String, plan: WriterPlan, stop: Arc<AtomicBool>, sink: Sink) -> Vec<Inserted> {
    let client = pg(&url).await;
    let insert = client
        .prepare(&format!(
            "INSERT INTO \"{}\" (id, aggregatetype, aggregateid, type, payload) \
             VALUES (gen_random_uuid(), $1, $2, $3, $4::text::jsonb) RETURNING id::text",
            plan.table
        ))
        .await
        .expect("prepare insert");
    let mut inserted = Vec::new();
    'rounds: for seq in 0..plan.rows_per_aggregate {
        for aggregate in &plan.aggregates {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            let event_type = if seq == 0 { "created" } else { "updated" };
            let event_type = format!("{}.{event_type}", plan.aggregate_type.to_lowercase());
            let payload = serde_json::json!({ "aggregate": aggregate, "seq": seq, "note": "x".repeat(40) }).to_string();
            let row = match client.query_one(&insert, &[&plan.aggregate_type, aggregate, &event_type, &payload]).await {
                Ok(row) => row,
                // (After a failed assertion the table guard may drop the table under a writer.)
                Err(error) => panic!("insert into {} failed: {error}: {:?}", plan.table, error.as_db_error().map(|e| e.message())),
            };
            let row =
                Inserted { id: row.get(0), aggregate_type: plan.aggregate_type.clone(), aggregate: aggregate.clone(), event_type, seq };
            sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(row.clone());
            inserted.push(row);
            if !plan.pause.is_zero() {
                tokio::time::sleep(plan.pause).await;
            }
        }
    }
    inserted
}

/// Concurrent writer tasks, each owning aggregates of its own (`<type>-w<writer>-a<n>`).
pub struct Writers {
    pub tasks: Vec<tokio::task::JoinHandle<Vec<Inserted>>>,
    pub stop: Arc<AtomicBool>,
    pub sink: Sink,
}

impl Writers {
    /// `writers` tasks × `aggregates` aggregates each × up to `rows` rows per aggregate, with
    /// `pause` after each insert.
    pub fn spawn(url: &str, table: &str, writers: usize, aggregates: usize, rows: u64, pause: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let sink: Sink = Arc::default();
        let tasks = (0..writers)
            .map(|writer| {
                let plan = WriterPlan {
                    table: table.to_owned(),
                    aggregate_type: "Order".to_owned(),
                    aggregates: (0..aggregates).map(|a| format!("Order-w{writer}-a{a}")).collect(),
                    rows_per_aggregate: rows,
                    pause,
                };
                tokio::spawn(write(url.to_owned(), plan, stop.clone(), sink.clone()))
            })
            .collect();
        Writers { tasks, stop, sink }
    }

    pub fn finished(&self) -> bool {
        self.tasks.iter().all(tokio::task::JoinHandle::is_finished)
    }

    /// Stops them (after their current insert) and returns every committed row.
    pub async fn stop(self) -> Vec<Inserted> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits for them to finish their rows; returns every committed row.
    pub async fn join(self) -> Vec<Inserted> {
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("writer task"));
        }
        all
    }
}

// ---------------------------------------------------------------------------------------------
// The relay process

pub trait ClearTributaryEnv {
    fn env_clear_tributary(&mut self) -> &mut Self;
}

impl ClearTributaryEnv for tokio::process::Command {
    /// Flags only: no TRIBUTARY_* variable of the test environment leaks into the relay.
    fn env_clear_tributary(&mut self) -> &mut Self {
        for (name, _) in std::env::vars() {
            if name.starts_with("TRIBUTARY_") {
                self.env_remove(name);
            }
        }
        // IT_RELAY_LOG: a log filter for the relays, when debugging a test.
        self.env("RUST_LOG", std::env::var("IT_RELAY_LOG").unwrap_or_else(|_| "info".into()))
    }
}

/// A free loopback port (bound, then released).
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A running `tributary-relay outbox`, killed when dropped; its stderr goes to a log file.
pub struct Relay {
    pub child: tokio::process::Child,
    pub listen: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// `tributary-relay outbox --database-url … --bootstrap-servers … --table … --listen-address …`
    /// plus `args`.
    pub fn spawn(env: &TestEnv, table: &str, args: &[String]) -> Relay {
        let listen = free_address();
        let mut all: Vec<String> =
            ["outbox", "--database-url", &env.database_url, "--bootstrap-servers", &env.bootstrap_servers, "--table", table]
                .map(str::to_owned)
                .into();
        all.extend(["--listen-address".to_owned(), listen.to_string()]);
        all.extend_from_slice(args);
        Relay::start(&all, &[], listen)
    }

    /// `tributary-relay <args>` with `vars` as its only TRIBUTARY_* variables and
    /// TRIBUTARY_LISTEN_ADDRESS set to a free port (a `--listen-address` in `args` would win).
    pub fn spawn_command(args: &[String], vars: &[(&str, String)]) -> Relay {
        let listen = free_address();
        let mut all: Vec<(String, String)> = vars.iter().map(|(name, value)| ((*name).to_owned(), value.clone())).collect();
        all.push(("TRIBUTARY_LISTEN_ADDRESS".to_owned(), listen.to_string()));
        Relay::start(args, &all, listen)
    }

    /// `tributary-relay <args>` with `vars` as its only TRIBUTARY_* environment; `listen` is where
    /// its configuration makes it serve HTTP.
    pub fn start(args: &[String], vars: &[(String, String)], listen: SocketAddr) -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("relay.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(RELAY)
            .args(args)
            .env_clear_tributary()
            .envs(vars.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tributary-relay");
        Relay { child, listen, log, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("relay still running")
    }

    /// SIGKILL, and reap it.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("SIGKILL the relay");
    }

    /// SIGTERM (it should finish its in-flight batches and exit 0).
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// The relay's log, without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The status of `GET /readyz`, or None when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        http_status(self.listen, "/readyz").await
    }

    /// Polls `/readyz` every 20 ms in the background, recording (time, status) until dropped.
    pub fn watch_readyz(&self) -> ReadyzLog {
        let address = self.listen;
        let log: Answers = Arc::default();
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let status = tokio::time::timeout(Duration::from_millis(300), http_status(address, "/readyz")).await.ok().flatten();
                    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((Instant::now(), status));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        ReadyzLog { log, task }
    }

    /// The value of one sample of `/metrics` (first line starting with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.listen, "/metrics").await?.1;
        body.lines().find(|line| line.starts_with(name)).and_then(|line| line.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }
}

/// When `/readyz` answered what (None: no answer).
type Answers = Arc<Mutex<Vec<(Instant, Option<u16>)>>>;

/// `/readyz` answers over time.
pub struct ReadyzLog {
    log: Answers,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyzLog {
    pub fn since(&self, start: Instant) -> Vec<(Duration, Option<u16>)> {
        let log = self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        log.iter().filter(|(at, _)| *at >= start).map(|(at, status)| (at.duration_since(start), *status)).collect()
    }
}

impl Drop for ReadyzLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a signal by name with kill(1) (the crate has no libc binding of its own).
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(2), tributary_testkit::http::get(address, path)).await.ok()?.ok()
}

pub async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    http_get(address, path).await.map(|(status, _)| status)
}

/// Runs the relay binary to completion with a time limit: (exit code, stderr).
pub async fn run_relay_to_exit(args: &[String], limit: Duration) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(RELAY)
        .args(args)
        .env_clear_tributary()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tributary-relay");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("relay output");
            (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
        }
        Err(_) => (None, format!("still running after {limit:?} (killed)")),
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

/// Creates the topics (or finds them already there), retrying while the broker is starting.
pub async fn create_topics(bootstrap: &str, topics: &[String], partitions: i32) {
    let admin = admin(bootstrap);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5))).operation_timeout(Some(Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new: Vec<NewTopic> = topics.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1))).collect();
        let problems: Vec<String> = match admin.create_topics(&new, &options).await {
            Ok(results) => results
                .into_iter()
                .filter_map(|result| match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                    Err((topic, code)) => Some(format!("{topic}: {code:?}")),
                })
                .collect(),
            Err(error) => vec![error.to_string()],
        };
        if problems.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "cannot create topics {topics:?}: {problems:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One record as the independent consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Increases every time the consumer is reassigned (a broker restart starts a new log).
    pub epoch: u32,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<String>)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).and_then(|(_, value)| value.as_deref())
    }

    pub fn ce_id(&self) -> Option<&str> {
        self.header("ce_id")
    }

    /// (aggregate, seq) from the payload the writers put in.
    pub fn payload_seq(&self) -> Option<(String, u64)> {
        let value: serde_json::Value = serde_json::from_slice(self.payload.as_deref()?).ok()?;
        Some((value.get("aggregate")?.as_str()?.to_owned(), value.get("seq")?.as_u64()?))
    }
}

#[derive(Default)]
struct Shared {
    records: Vec<Received>,
    errors: Vec<String>,
    epoch: u32,
}

/// An independent consumer on its own thread: a fresh group, every partition of the topics
/// assigned from the beginning (no group coordination, no commits), collecting in arrival order.
pub struct Collector {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    reassign: Arc<AtomicBool>,
    detach: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(bootstrap: &str, topics: &[String]) -> Collector {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reassign = Arc::new(AtomicBool::new(true));
        let detach = Arc::new(AtomicBool::new(false));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("it-reader-{}", topic_name("g")))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("consumer");
        let thread = {
            let flags = Flags { stop: stop.clone(), reassign: reassign.clone(), detach: detach.clone() };
            let (shared, topics) = (shared.clone(), topics.to_vec());
            std::thread::spawn(move || consume(&consumer, &topics, &shared, &flags))
        };
        Collector { shared, stop, reassign, detach, thread: Some(thread) }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn records(&self) -> Vec<Received> {
        self.shared().records.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared().errors.clone()
    }

    pub fn len(&self) -> usize {
        self.shared().records.len()
    }

    pub fn seen_ids(&self) -> HashSet<String> {
        self.shared().records.iter().filter_map(|record| record.ce_id().map(str::to_owned)).collect()
    }

    /// Assign every partition again from the beginning (after a broker restart: a new, empty log).
    pub fn reassign_from_beginning(&self) {
        self.reassign.store(true, Ordering::Release);
    }

    /// Stops fetching (unassigns every partition) and waits until the consumer thread did.
    ///
    /// Needed around a broker restart: librdkafka 2.12 dereferences a NULL topic name
    /// (SIGSEGV in `rd_kafka_metadata_cache_find`, from `rd_kafka_handle_Fetch_metadata_update`)
    /// when a Fetch response carries KIP-951 leader-change tags for a topic it knows by name only,
    /// which Tansu sends for partitions it lost in a restart. `reassign_from_beginning` resumes.
    pub async fn detach(&self) {
        self.detach.store(true, Ordering::Release);
        while self.detach.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The records, each marked as read in `epoch` (for merging reads of two broker lifetimes).
    pub fn records_as_epoch(&self, epoch: u32) -> Vec<Received> {
        self.records().into_iter().map(|record| Received { epoch, ..record }).collect()
    }

    /// Waits until every id has been seen; returns the ids still missing after `timeout`.
    pub async fn wait_for(&self, ids: &HashSet<String>, timeout: Duration) -> HashSet<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen_ids();
            let missing: HashSet<String> = ids.difference(&seen).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fresh consumer reading the topics from the start once nothing is being produced any more
    /// (a consumer reading while records are appended was seen to miss one now and then with
    /// Tansu; a read of a quiet topic never did): waits until it saw `ids` (or `timeout`), then
    /// until nothing new arrives.
    pub async fn read_back(bootstrap: &str, topics: &[String], ids: &HashSet<String>, timeout: Duration) -> Collector {
        let reader = Collector::start(bootstrap, topics);
        reader.wait_for(ids, timeout).await;
        reader.settle(Duration::from_millis(500)).await;
        reader
    }

    /// Waits until no new record arrived for `quiet` (to catch late duplicates).
    pub async fn settle(&self, quiet: Duration) {
        let mut last = self.len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.len();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn assign_all(consumer: &BaseConsumer, topics: &[String]) -> Result<(), String> {
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).map_err(|error| error.to_string())?;
        let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        if partitions == 0 {
            return Err(format!("topic {topic} has no partitions (yet)"));
        }
        for partition in 0..partitions {
            let partition = i32::try_from(partition).expect("partition fits i32");
            assignment.add_partition_offset(topic, partition, Offset::Beginning).map_err(|error| error.to_string())?;
        }
    }
    consumer.assign(&assignment).map_err(|error| error.to_string())
}

struct Flags {
    stop: Arc<AtomicBool>,
    reassign: Arc<AtomicBool>,
    detach: Arc<AtomicBool>,
}

fn consume(consumer: &BaseConsumer, topics: &[String], shared: &Mutex<Shared>, flags: &Flags) {
    let Flags { stop, reassign, detach } = flags;
    let lock = || shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut detached = false;
    while !stop.load(Ordering::Acquire) {
        if detach.load(Ordering::Acquire) {
            if let Err(error) = consumer.unassign() {
                lock().errors.push(format!("unassign: {error}"));
            }
            detached = true;
            detach.store(false, Ordering::Release);
        }
        if reassign.swap(false, Ordering::AcqRel) {
            detached = false;
            match assign_all(consumer, topics) {
                Ok(()) => lock().epoch += 1,
                Err(error) => {
                    lock().errors.push(format!("assign: {error}"));
                    reassign.store(true, Ordering::Release);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        if detached {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers.iter().map(|h| (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()))).collect()
                    })
                    .unwrap_or_default();
                let mut shared = lock();
                let epoch = shared.epoch;
                shared.records.push(Received {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    epoch,
                    key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(error)) => {
                let mut shared = lock();
                if shared.errors.len() < 1000 {
                    shared.errors.push(error.to_string());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking what arrived

/// A record reduced to what the order check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub aggregate: String,
    pub seq: u64,
    pub ce_id: String,
}

/// What the order check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrderReport {
    pub records: usize,
    /// Records that were re-sends of an earlier (aggregate, seq).
    pub duplicates: usize,
    pub aggregates: usize,
}

/// Checks at-least-once, in-order delivery per aggregate. `records` are in the order the consumer
/// received them (each aggregate lives in one partition, so this is its partition's order); every
/// aggregate's seqs start at 0. When seq k of an aggregate appears for the first time, every seq
/// < k of it must have appeared before (a correct relay never publishes n+1 before n was published
/// at least once), unless it is listed in `absent_ok` (a row moved aside, or lost by the broker);
/// a repeated seq is a re-send and must carry the same `ce_id` as its first occurrence; one
/// `ce_id` names one (aggregate, seq).
pub fn check_order<'a>(
    records: impl IntoIterator<Item = &'a Observed>,
    absent_ok: &HashSet<(String, u64)>,
) -> Result<OrderReport, Vec<String>> {
    let mut report = OrderReport::default();
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut ids: HashMap<(&str, u64), &str> = HashMap::new();
    let mut owners: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut problems = Vec::new();
    for (position, record) in records.into_iter().enumerate() {
        report.records += 1;
        let key = (record.aggregate.as_str(), record.seq);
        if let Some(owner) = owners.insert(&record.ce_id, key) {
            if owner != key {
                problems.push(format!("#{position}: ce_id {} is both {owner:?} and {key:?}", record.ce_id));
            }
        }
        let next = next.entry(&record.aggregate).or_insert(0);
        if record.seq < *next {
            report.duplicates += 1;
            match ids.get(&key) {
                Some(first) if *first == record.ce_id => {}
                Some(first) => problems.push(format!("#{position}: {key:?} again with ce_id {} (first {first})", record.ce_id)),
                None => problems.push(format!("#{position}: {key:?} ({}) arrived after later seqs of its aggregate", record.ce_id)),
            }
        } else {
            let skipped: Vec<u64> = (*next..record.seq).filter(|seq| !absent_ok.contains(&(record.aggregate.clone(), *seq))).collect();
            if let Some(first) = skipped.first() {
                problems.push(format!("#{position}: aggregate {} seq {} published before seq {first}", record.aggregate, record.seq));
            }
            *next = record.seq + 1;
            ids.insert(key, &record.ce_id);
        }
    }
    report.aggregates = next.len();
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

/// Everything a test asserts about the records of a run, against the rows the writers committed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub report: OrderReport,
    /// Committed ids no record carried.
    pub missing: Vec<String>,
    pub problems: Vec<String>,
    /// Arrival order of the first aggregate whose order check failed: (epoch, partition, offset,
    /// seq, ce_id).
    pub trace: Vec<(u32, i32, i64, u64, String)>,
}

impl Verdict {
    /// Panics with the first problems (and what is missing) unless everything held.
    pub fn assert_clean(&self, what: &str) {
        let shown: Vec<&String> = self.problems.iter().take(20).collect();
        let trace: Vec<String> = self.trace.iter().map(|(e, p, o, s, id)| format!("e{e} p{p}@{o} seq {s} {id}")).collect();
        assert!(
            self.problems.is_empty(),
            "{what}: {} problem(s), first: {shown:#?}\nfirst failing aggregate, as received: {trace:#?}",
            self.problems.len()
        );
        let shown: Vec<&String> = self.missing.iter().take(10).collect();
        assert!(self.missing.is_empty(), "{what}: {} committed row(s) never reached Kafka, e.g. {shown:?}", self.missing.len());
    }
}

/// What every record must carry.
pub struct Expect<'a> {
    /// Topic of an aggregate type.
    pub topic_of: &'a dyn Fn(&str) -> String,
    /// CloudEvents `source`.
    pub source: &'a str,
    /// Committed ids allowed to be absent from Kafka (moved aside, or lost by the broker).
    pub absent_ok: &'a HashSet<String>,
}

/// Checks every received record against the committed rows: known `ce_id`, key = aggregate,
/// CloudEvents headers, payload seq, topic per route, one partition per aggregate (per consumer
/// epoch); then order per aggregate in arrival order, and which committed ids never arrived.
pub fn verify(records: &[Received], inserted: &[Inserted], expect: &Expect<'_>) -> Verdict {
    let by_id: HashMap<&str, &Inserted> = inserted.iter().map(|row| (row.id.as_str(), row)).collect();
    let mut problems = Vec::new();
    let mut observed = Vec::with_capacity(records.len());
    let mut placement: HashMap<(&str, u32), (&str, i32)> = HashMap::new();
    let mut positions = Vec::with_capacity(records.len());
    for record in records {
        let Some(ce_id) = record.ce_id() else {
            problems.push(format!("record without ce_id at {}/{}@{}", record.topic, record.partition, record.offset));
            continue;
        };
        let Some(row) = by_id.get(ce_id) else {
            problems.push(format!("record {ce_id} is no committed row"));
            continue;
        };
        let mut expect_eq = |what: &str, actual: Option<&str>, expected: &str| {
            if actual != Some(expected) {
                problems.push(format!("record {ce_id}: {what} is {actual:?}, expected {expected:?}"));
            }
        };
        expect_eq("key", record.key.as_deref(), &row.aggregate);
        expect_eq("ce_subject", record.header("ce_subject"), &row.aggregate);
        expect_eq("ce_type", record.header("ce_type"), &row.event_type);
        expect_eq("ce_source", record.header("ce_source"), expect.source);
        expect_eq("ce_specversion", record.header("ce_specversion"), "1.0");
        expect_eq("content-type", record.header("content-type"), "application/json");
        expect_eq("topic", Some(&record.topic), &(expect.topic_of)(&row.aggregate_type));
        if record.header("ce_time").is_none() {
            problems.push(format!("record {ce_id}: no ce_time"));
        }
        match record.payload_seq() {
            Some((aggregate, seq)) if aggregate == row.aggregate && seq == row.seq => {}
            other => problems.push(format!("record {ce_id}: payload says {other:?}, row is ({}, {})", row.aggregate, row.seq)),
        }
        let here = (record.topic.as_str(), record.partition);
        if let Some(before) = placement.insert((row.aggregate.as_str(), record.epoch), here) {
            if before != here {
                problems.push(format!("aggregate {} in two partitions: {before:?} and {here:?}", row.aggregate));
            }
        }
        observed.push(Observed { aggregate: row.aggregate.clone(), seq: row.seq, ce_id: ce_id.to_owned() });
        positions.push((record.epoch, record.partition, record.offset));
    }
    let absent_ok: HashSet<(String, u64)> =
        inserted.iter().filter(|row| expect.absent_ok.contains(&row.id)).map(|row| (row.aggregate.clone(), row.seq)).collect();
    let mut trace = Vec::new();
    let report = match check_order(&observed, &absent_ok) {
        Ok(report) => report,
        Err(order) => {
            problems.extend(order);
            // Which aggregate failed first, and how its records arrived.
            let mut aggregates: Vec<&str> = observed.iter().map(|o| o.aggregate.as_str()).collect();
            aggregates.dedup();
            let failing = aggregates
                .into_iter()
                .find(|aggregate| check_order(observed.iter().filter(|o| o.aggregate == *aggregate), &absent_ok).is_err());
            if let Some(failing) = failing {
                trace = observed
                    .iter()
                    .zip(&positions)
                    .filter(|(o, _)| o.aggregate == failing)
                    .map(|(o, (e, p, off))| (*e, *p, *off, o.seq, o.ce_id.chars().take(8).collect()))
                    .collect();
            }
            OrderReport::default()
        }
    };
    let seen: HashSet<&str> = records.iter().filter_map(Received::ce_id).collect();
    let missing = inserted
        .iter()
        .filter(|row| !seen.contains(row.id.as_str()) && !expect.absent_ok.contains(&row.id))
        .map(|row| row.id.clone())
        .collect();
    Verdict { report, missing, problems, trace }
}

/// A tiny xorshift PRNG seeded from the clock (no extra crates).
pub struct XorShift(u64);

impl XorShift {
    pub fn from_time() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) | 1;
        XorShift(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Partition count of a topic per the broker's metadata (0 when it does not exist).
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client");
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(metadata) => metadata.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Runs `tributary-relay migrate` for the default (Debezium) layout plus `args` (column flags).
pub async fn migrate_with(env: &TestEnv, table: &str, args: &[&str]) {
    let output = tokio::process::Command::new(RELAY)
        .args(["migrate", "--database-url", &env.database_url, "--table", table])
        .args(args)
        .env_clear_tributary()
        .output()
        .await
        .expect("run migrate");
    assert!(output.status.success(), "migrate failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Kafka's Java `Utils.murmur2` (seed 0x9747b28c), the hash of the Java producer's default
/// partitioner and of librdkafka's `murmur2_random`.
pub fn java_murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let length = data.len();
    let mut h: u32 = 0x9747_b28c ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition a Java producer (or Debezium) writes a record with this key to.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}
