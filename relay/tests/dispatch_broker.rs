//! Integration tests of `tributary-relay dispatch`: the real binary against the real broker,
//! delivering to an HTTP sink served by the test (axum on hyper); dead letters are read back with an
//! independent consumer. They need `scripts/test.sh` (broker) and skip with a message without it.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::{create_topics, since, test_env, topic_name, Collector, Received, Relay, TestEnv, XorShift};
use tributary_relay::dispatch::dead_letter;
use tributary_relay::producer::{EventProducer, OutgoingRecord, Partitioner, ProducerSettings, RdKafkaProducer};

/// librdkafka settings of every dispatcher here: quick group joins (Tansu completes a join after
/// about half the session timeout).
const CONSUMER_PROPERTIES: &str = "session.timeout.ms=2000\nheartbeat.interval.ms=300\n";

// ---------------------------------------------------------------------------------------------
// The sink

/// One request as the sink saw it.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    /// `ce-id`.
    id: String,
    /// The record's key and sequence number, from the JSON body.
    key: String,
    seq: u64,
    /// 1 for the first request with this `ce-id`.
    attempt: u32,
    /// The query of the URL posted to (tells dispatchers apart).
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

/// The sink's answer.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: &'static str,
    /// How long this answer takes, on top of the sink's delay.
    after: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply { status, retry_after: None, body: "", after: Duration::ZERO }
    }

    fn after(self, after: Duration) -> Reply {
        Reply { after, ..self }
    }
}

type Behaviour = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

#[derive(Default)]
struct SinkLog {
    /// Every request, with the status answered and when the answer went out.
    requests: Vec<(Request, u16, Instant)>,
    attempts: HashMap<String, u32>,
    in_flight_by_key: HashMap<String, usize>,
    in_flight: usize,
    max_in_flight_per_key: usize,
    max_in_flight: usize,
}

struct SinkShared {
    behaviour: Behaviour,
    /// How long each request takes to answer.
    delay: Duration,
    log: Mutex<SinkLog>,
}

/// An HTTP sink on a loopback port that can go down and come back on the same port. Down, it
/// behaves like a consumer container that crashed or has not started: connections are refused
/// and the ones it had are closed, requests in flight on them unanswered.
struct TestSink {
    address: SocketAddr,
    shared: Arc<SinkShared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TestSink {
    async fn start(delay: Duration, behaviour: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> TestSink {
        let sink = TestSink::down(delay, behaviour);
        sink.serve().await;
        sink
    }

    /// Not serving yet: its address is reserved (bound, then released) for [`TestSink::serve`].
    fn down(delay: Duration, behaviour: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> TestSink {
        let shared = Arc::new(SinkShared { behaviour: Arc::new(behaviour), delay, log: Mutex::default() });
        TestSink { address: support::free_address(), shared, server: Mutex::default() }
    }

    /// Starts accepting connections on its address.
    async fn serve(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.address).expect("bind the sink");
        let listener = socket.listen(1024).expect("listen");
        let app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state(self.shared.clone());
        let server = tokio::spawn(async move {
            // Dropped with this task when the sink goes down: every connection closes.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        if let Some(old) = self.server.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).replace(server) {
            old.abort();
        }
    }

    /// Goes down: refuses connections and closes the ones it has.
    async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.address)
    }

    fn log(&self) -> MutexGuard<'_, SinkLog> {
        self.shared.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn requests(&self) -> Vec<(Request, u16, Instant)> {
        self.log().requests.clone()
    }

    /// `ce-id`s answered with a 2xx.
    fn delivered(&self) -> HashSet<String> {
        self.log().requests.iter().filter(|(_, status, _)| (200..300).contains(status)).map(|(request, _, _)| request.id.clone()).collect()
    }

    /// Waits until every id was delivered; returns those still missing after `timeout`.
    async fn wait_delivered(&self, ids: &HashSet<String>, timeout: Duration) -> HashSet<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing: HashSet<String> = ids.difference(&self.delivered()).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            server.abort();
        }
    }
}

async fn receive(State(sink): State<Arc<SinkShared>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let at = Instant::now();
    let query = uri.query().unwrap_or_default().to_owned();
    let id = headers.get("ce-id").and_then(|id| id.to_str().ok()).unwrap_or_default().to_owned();
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = payload.get("key").and_then(|key| key.as_str()).unwrap_or_default().to_owned();
    let seq = payload.get("seq").and_then(serde_json::Value::as_u64).unwrap_or_default();
    let request = {
        let mut log = sink.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let attempt = log.attempts.entry(id.clone()).or_default();
        *attempt += 1;
        let request = Request { at, id, key: key.clone(), seq, attempt: *attempt, query, headers, body };
        let per_key = log.in_flight_by_key.entry(key.clone()).or_default();
        *per_key += 1;
        let per_key = *per_key;
        log.in_flight += 1;
        log.max_in_flight_per_key = log.max_in_flight_per_key.max(per_key);
        log.max_in_flight = log.max_in_flight.max(log.in_flight);
        request
    };
    let reply = (sink.behaviour)(&request);
    let delay = sink.delay + reply.after;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    {
        let mut log = sink.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *log.in_flight_by_key.entry(key).or_default() -= 1;
        log.in_flight -= 1;
        log.requests.push((request, reply.status, Instant::now()));
    }
    let mut headers = HeaderMap::new();
    if let Some(retry_after) = &reply.retry_after {
        headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from_str(retry_after).expect("header value"));
    }
    (StatusCode::from_u16(reply.status).expect("status"), headers, reply.body)
}

// ---------------------------------------------------------------------------------------------
// Records, the dispatcher process, offsets

/// A CloudEvents record of `key` with sequence number `seq`; `ce_id` = `<key>-<seq>`.
fn event(topic: &str, key: &str, seq: u64, event_type: &str, subject: &str) -> OutgoingRecord {
    let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    OutgoingRecord {
        topic: topic.to_owned(),
        key: key.as_bytes().to_vec(),
        payload: Some(serde_json::json!({ "key": key, "seq": seq }).to_string().into_bytes()),
        headers: vec![
            header("ce_specversion", "1.0"),
            header("ce_id", &format!("{key}-{seq}")),
            header("ce_type", event_type),
            header("ce_source", "/tests/dispatch"),
            header("ce_subject", subject),
            header("content-type", "application/json"),
        ],
    }
}

fn producer(env: &TestEnv) -> RdKafkaProducer {
    RdKafkaProducer::new(&ProducerSettings {
        bootstrap_servers: env.bootstrap_servers.clone(),
        properties_file: None,
        delivery_timeout: Duration::from_secs(30),
        max_record_bytes: 1_000_000,
        partitioner: Partitioner::default(),
    })
    .expect("producer")
}

async fn produce(producer: &RdKafkaProducer, records: Vec<OutgoingRecord>) {
    for result in producer.send_all(records).await {
        result.expect("record acknowledged");
    }
}

fn ids(records: &[OutgoingRecord]) -> HashSet<String> {
    records
        .iter()
        .filter_map(|record| record.headers.iter().find(|(name, _)| name == "ce_id"))
        .map(|(_, id)| String::from_utf8_lossy(id).into_owned())
        .collect()
}

/// Produces a batch of records every 20 ms until stopped.
struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<HashSet<String>>,
}

impl Writer {
    /// `batch(topic, round)`: the records of round 0, 1, 2…
    fn spawn(env: &TestEnv, topic: &str, batch: impl Fn(&str, u64) -> Vec<OutgoingRecord> + Send + 'static) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (producer, topic, stopped) = (producer(env), topic.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut produced = HashSet::new();
            let mut round = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let records = batch(&topic, round);
                round += 1;
                produced.extend(ids(&records));
                produce(&producer, records).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            produced
        });
        Writer { stop, task }
    }

    /// Stops after the batch under way; the `ce_id`s of every record produced.
    async fn stop(self) -> HashSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("writer")
    }
}

/// A topic of `partitions` partitions and its dead-letter topic, both fresh.
async fn topics(env: &TestEnv, test: &str, partitions: i32) -> (String, String) {
    let topic = topic_name(test);
    let dead_letters = format!("{topic}.dlq");
    create_topics(&env.bootstrap_servers, &[topic.clone(), dead_letters.clone()], partitions).await;
    (topic, dead_letters)
}

/// A properties file with [`CONSUMER_PROPERTIES`], removed with the returned directory.
fn properties_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kafka.properties");
    std::fs::write(&path, CONSUMER_PROPERTIES).expect("properties file");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

/// `tributary-relay dispatch` for `topic` posting to `sink`, plus `extra` flags; from the earliest
/// offset unless `extra` says otherwise.
fn spawn_dispatcher(env: &TestEnv, topic: &str, dead_letters: &str, group: &str, sink: &str, properties: &str, extra: &[&str]) -> Relay {
    let mut args: Vec<String> = [
        "dispatch",
        "--bootstrap-servers",
        &env.bootstrap_servers,
        "--topics",
        topic,
        "--group",
        group,
        "--sink",
        sink,
        "--dead-letter-topic",
        dead_letters,
        "--kafka-properties-file",
        properties,
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    if !extra.contains(&"--start-from") {
        args.extend(["--start-from".to_owned(), "earliest".to_owned()]);
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    Relay::spawn_command(&args, &[])
}

/// The group's committed offset of each partition (-1: none).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("offsets client");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).expect("committed offsets");
    (0..partitions)
        .map(|partition| match committed.find_partition(topic, partition).map(|element| element.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => -1,
        })
        .collect()
}

/// Waits until the group committed every partition of `topic` past its last record (read back
/// with an independent consumer: Tansu's high watermarks are not reliable), an empty one at 0 (its
/// start, committed when it was assigned); panics if not.
async fn assert_committed_to_end(env: &TestEnv, group: &str, topic: &str, partitions: i32, ids: &HashSet<String>) {
    let records = Collector::read_back(&env.bootstrap_servers, &[topic.to_owned()], ids, Duration::from_secs(10)).await.records();
    let ends: Vec<i64> = (0..partitions)
        .map(|partition| records.iter().filter(|record| record.partition == partition).map(|record| record.offset + 1).max().unwrap_or(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (bootstrap, group_id, topic_id) = (env.bootstrap_servers.clone(), group.to_owned(), topic.to_owned());
        let committed =
            tokio::task::spawn_blocking(move || committed(&bootstrap, &group_id, &topic_id, partitions)).await.expect("offsets");
        if committed == ends {
            return;
        }
        assert!(Instant::now() < deadline, "group {group} committed {committed:?} of {topic}, its ends are {ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the process to exit; its exit code.
async fn exit_code(relay: &mut Relay, limit: Duration) -> Option<i32> {
    match tokio::time::timeout(limit, relay.child.wait()).await {
        Ok(status) => status.expect("wait for the dispatcher").code(),
        Err(_) => panic!("the dispatcher did not exit within {limit:?}:\n{}", relay.log_tail(30)),
    }
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|value| value.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Configured through environment variables only (as the operator does), the dispatcher POSTs
/// every record in CloudEvents binary mode, commits everything, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_cloudevents_configured_by_environment_and_exits_0_on_sigterm() {
    let Some(env) = test_env("delivers_cloudevents_configured_by_environment_and_exits_0_on_sigterm", false) else { return };
    let started = Instant::now();
    let (topic, dead_letters) = topics(&env, "dispatch-env", 2).await;
    let mut records: Vec<OutgoingRecord> =
        (0..30).map(|seq| event(&topic, &format!("k{}", seq % 5), seq, "orders.created", "o-eu")).collect();
    records[0].headers.push(("traceparent".into(), b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()));
    records[0].headers.push(("transfer-encoding".into(), b"chunked".to_vec()));
    let expected = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |_| Reply::status(202)).await;
    let (_dir, properties) = properties_file();
    let group = format!("{topic}.group");
    let vars = [
        ("TRIBUTARY_BOOTSTRAP_SERVERS", env.bootstrap_servers.clone()),
        ("TRIBUTARY_TOPICS", topic.clone()),
        ("TRIBUTARY_GROUP", group.clone()),
        ("TRIBUTARY_SINK", sink.url()),
        ("TRIBUTARY_DEAD_LETTER_TOPIC", dead_letters.clone()),
        ("TRIBUTARY_START_FROM", "earliest".into()),
        ("TRIBUTARY_ORDERING", "unordered".into()),
        ("TRIBUTARY_CONCURRENCY", "4".into()),
        ("TRIBUTARY_FILTERS", "type=prefix:orders.\n".into()),
        ("TRIBUTARY_KAFKA_PROPERTIES_FILE", properties.clone()),
    ];
    let mut dispatcher = Relay::spawn_command(&["dispatch".to_owned()], &vars);

    let missing = sink.wait_delivered(&expected, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered after {}: {missing:?}\n{}", since(started), dispatcher.log_tail(30));
    let requests = sink.requests();
    let (first, _, _) = requests.iter().find(|(request, _, _)| request.id == "k0-0").expect("k0-0 delivered");
    assert_eq!(header(first, "ce-specversion"), Some("1.0"));
    assert_eq!(header(first, "ce-type"), Some("orders.created"));
    assert_eq!(header(first, "ce-source"), Some("/tests/dispatch"));
    assert_eq!(header(first, "ce-subject"), Some("o-eu"));
    assert_eq!(header(first, "content-type"), Some("application/json"));
    assert_eq!(header(first, "traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert_eq!(header(first, "transfer-encoding"), None, "framing headers of the record are not passed on");
    assert_eq!(header(first, "content-length"), Some("20"));
    assert_eq!(&first.body[..], br#"{"key":"k0","seq":0}"#);

    assert_eq!(dispatcher.readyz().await, Some(200), "ready once it has its assignment");
    assert_eq!(dispatcher.metric("tributary_dispatch_delivered_total").await, Some(30.0));
    assert_committed_to_end(&env, &group, &topic, 2, &expected).await;

    dispatcher.sigterm();
    assert_eq!(exit_code(&mut dispatcher, Duration::from_secs(20)).await, Some(0), "{}", dispatcher.log_tail(20));
    eprintln!("delivered 30 records and stopped in {}", since(started));
}

/// The contract between the Subscription controller and the dispatcher: the sidecar exactly as
/// the controller renders it for a push-mode Subscription (its arguments and environment, the
/// workload Kafka Secret mounted as the kubelet would) delivers to the sink the Subscription names
/// and applies its filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_the_subscription_controller_renders_delivers() {
    use tributary_api::{relay_contract, Subscription};
    use tributary_operator::relay_container::CONTAINER_NAME;
    use tributary_operator::subscription::desired::deployment;
    use tributary_operator::subscription::resolve::{workload, ResolvedTopic};
    use tributary_operator::workload::WorkloadSettings;

    let Some(env) = test_env("the_sidecar_the_subscription_controller_renders_delivers", false) else { return };
    let started = Instant::now();
    let (topic, _) = topics(&env, "dispatch-rendered", 2).await;
    let records: Vec<OutgoingRecord> = (0..20)
        .map(|seq| event(&topic, &format!("k{}", seq % 4), seq, if seq % 2 == 0 { "orders.created" } else { "payments.settled" }, "s"))
        .collect();
    let wanted: HashSet<String> = ids(&records)
        .into_iter()
        .filter(|id| id.split('-').nth(1).and_then(|seq| seq.parse::<u64>().ok()).is_some_and(|seq| seq % 2 == 0))
        .collect();
    produce(&producer(&env), records).await;
    let sink = TestSink::start(Duration::ZERO, |_| Reply::status(200)).await;

    let subscription: Subscription = serde_json::from_value(serde_json::json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Subscription",
        "metadata": {"name": topic.replace('.', "-"), "namespace": "shop"},
        "spec": {
            "topics": [{"name": "orders"}],
            "template": {"image": "shop/billing:1"},
            "startFrom": "earliest",
            "delivery": {
                "mode": "Push",
                "sink": {"port": sink.address.port(), "path": "/events"},
                "ordering": "Unordered",
                "concurrency": 4,
                "filters": [{"attribute": "type", "operator": "Prefix", "value": "orders."}],
            },
        },
    }))
    .expect("a valid Subscription");
    let resolved =
        vec![ResolvedTopic { name: "orders".into(), kafka_topic: topic.clone(), dead_letter_topic: None, max_message_bytes: None }];
    let workload = workload(&subscription, resolved).expect("a runnable Subscription");
    let settings = WorkloadSettings {
        bootstrap_servers: env.bootstrap_servers.clone(),
        relay_image: "not used".into(),
        kafka_properties_secret: Some("kafka-auth".into()),
    };
    let rendered = deployment(&workload, &settings, Some(1));
    let pod = rendered.spec.and_then(|spec| spec.template.spec).expect("a pod template");
    let sidecar = pod.containers.iter().find(|container| container.name == CONTAINER_NAME).expect("the dispatcher sidecar");
    let (dir, properties) = properties_file();
    let mut vars: Vec<(&str, String)> = Vec::new();
    for var in sidecar.env.iter().flatten() {
        let value = var.value.clone().unwrap_or_else(|| panic!("{} is not a literal value", var.name));
        let value = match var.name.as_str() {
            // Another test may hold the rendered port; the address is not part of the contract.
            relay_contract::env::LISTEN_ADDRESS => continue,
            // The Secret volume, mounted from a directory as the kubelet would.
            relay_contract::env::KAFKA_PROPERTIES_FILE => {
                let mounted = sidecar
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|mount| value.starts_with(&mount.mount_path) && mount.read_only == Some(true));
                assert!(mounted, "{value} is in a read-only mount");
                properties.clone()
            }
            _ => value,
        };
        vars.push((var.name.as_str(), value));
    }
    assert!(
        vars.iter().any(|(name, value)| *name == "TRIBUTARY_SINK" && *value == sink.url()),
        "the sink the Subscription names: {vars:?}"
    );
    let mut dispatcher = Relay::spawn_command(sidecar.args.as_deref().unwrap_or_default(), &vars);

    let missing = sink.wait_delivered(&wanted, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered after {}: {missing:?}\n{}", since(started), dispatcher.log_tail(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.delivered(), wanted, "only the records the filter lets through");
    dispatcher.sigterm();
    assert_eq!(exit_code(&mut dispatcher, Duration::from_secs(20)).await, Some(0), "{}", dispatcher.log_tail(20));
    drop(dir);
}

/// 5xx answers are retried with backoff until the sink accepts; a Retry-After (seconds or HTTP
/// date) longer than the backoff is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_server_errors_and_honours_retry_after() {
    let Some(env) = test_env("retries_server_errors_and_honours_retry_after", false) else { return };
    let (topic, dead_letters) = topics(&env, "dispatch-retry", 1).await;
    let records = vec![event(&topic, "a", 0, "t", "s"), event(&topic, "b", 0, "t", "s"), event(&topic, "c", 0, "t", "s")];
    let expected = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |request| match (request.id.as_str(), request.attempt) {
        ("a-0", 1) => Reply { retry_after: Some("1".into()), body: "busy", ..Reply::status(503) },
        ("b-0", 1 | 2) => Reply::status(500),
        ("c-0", 1) => Reply {
            retry_after: Some(httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2))),
            body: "slow down",
            ..Reply::status(429)
        },
        _ => Reply::status(200),
    })
    .await;
    let (_dir, properties) = properties_file();
    let extra = ["--initial-delay", "50ms", "--max-delay", "5s", "--max-attempts", "5"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &format!("{topic}.group"), &sink.url(), &properties, &extra);

    let missing = sink.wait_delivered(&expected, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}\n{}", dispatcher.log_tail(30));
    let requests = sink.requests();
    let times = |id: &str| -> Vec<(Instant, Instant)> {
        requests.iter().filter(|(request, _, _)| request.id == id).map(|(request, _, answered)| (request.at, *answered)).collect()
    };
    let gap = |attempts: &[(Instant, Instant)], retry: usize| attempts[retry].0.duration_since(attempts[retry - 1].1);
    let a = times("a-0");
    assert_eq!(a.len(), 2);
    assert!(gap(&a, 1) >= Duration::from_millis(990) && gap(&a, 1) < Duration::from_millis(2500), "Retry-After: 1 → {:?}", gap(&a, 1));
    let b = times("b-0");
    assert_eq!(b.len(), 3, "two 500s, then accepted");
    assert!(gap(&b, 1) >= Duration::from_millis(45) && gap(&b, 2) >= Duration::from_millis(95), "backoff 50 ms, 100 ms: {b:?}");
    assert!(gap(&b, 2) < Duration::from_millis(900), "no Retry-After, no long wait: {:?}", gap(&b, 2));
    let c = times("c-0");
    assert_eq!(c.len(), 2);
    // An HTTP date has whole seconds: "2 s from now" is 1 to 2 s away.
    assert!(gap(&c, 1) >= Duration::from_millis(950), "Retry-After as an HTTP date → {:?}", gap(&c, 1));
    assert_eq!(dispatcher.metric("tributary_dispatch_retries_total").await, Some(4.0));
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total").await, None, "nothing dead-lettered");
}

/// A 400 is dead-lettered at once, a record that keeps failing after its last attempt; the dead
/// letter is the original record plus the failure headers, and the originals are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_dead_lettered_with_the_original_record_and_failure_headers() {
    let Some(env) = test_env("failures_are_dead_lettered_with_the_original_record_and_failure_headers", false) else { return };
    let test_started = SystemTime::now();
    let (topic, dead_letters) = topics(&env, "dispatch-dlq", 2).await;
    let records: Vec<OutgoingRecord> =
        ["bad", "down", "fine", "other"].iter().map(|key| event(&topic, key, 0, "orders.created", "o-1")).collect();
    let produced = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |request| match request.id.as_str() {
        "bad-0" => Reply { body: "no such order", ..Reply::status(400) },
        "down-0" => Reply::status(500),
        _ => Reply::status(200),
    })
    .await;
    let (_dir, properties) = properties_file();
    let group = format!("{topic}.group");
    let extra = ["--initial-delay", "20ms", "--max-attempts", "3"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);

    let letters = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&dead_letters));
    let wanted: HashSet<String> = ["bad-0".to_owned(), "down-0".to_owned()].into();
    let missing = letters.wait_for(&wanted, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "no dead letter for {missing:?}\n{}", dispatcher.log_tail(30));
    let originals = Collector::read_back(&env.bootstrap_servers, std::slice::from_ref(&topic), &wanted, Duration::from_secs(10)).await;
    let original =
        |id: &str| -> Received { originals.records().into_iter().find(|record| record.ce_id() == Some(id)).expect("original read back") };
    let letter = |id: &str| -> Received { letters.records().into_iter().find(|record| record.ce_id() == Some(id)).expect("dead letter") };

    for (id, attempts, error) in [("bad-0", "1", "HTTP 400 Bad Request: no such order"), ("down-0", "3", "HTTP 500 Internal Server Error")]
    {
        let (letter, original) = (letter(id), original(id));
        assert_eq!(letter.key, original.key, "{id}: key");
        assert_eq!(letter.payload, original.payload, "{id}: value");
        for (name, value) in &original.headers {
            assert_eq!(letter.header(name), value.as_deref(), "{id}: original header {name}");
        }
        assert_eq!(letter.header(dead_letter::ERROR), Some(error), "{id}");
        assert_eq!(letter.header(dead_letter::ATTEMPTS), Some(attempts), "{id}");
        assert_eq!(letter.header(dead_letter::ORIGINAL_TOPIC), Some(topic.as_str()), "{id}");
        assert_eq!(letter.header(dead_letter::ORIGINAL_PARTITION), Some(original.partition.to_string().as_str()), "{id}");
        assert_eq!(letter.header(dead_letter::ORIGINAL_OFFSET), Some(original.offset.to_string().as_str()), "{id}");
        let first_failure: jiff::Timestamp =
            letter.header(dead_letter::FIRST_FAILURE_TIME).expect("first failure time").parse().expect("RFC 3339");
        let first_failure = SystemTime::from(first_failure);
        assert!(first_failure >= test_started - Duration::from_millis(1) && first_failure <= SystemTime::now(), "{id}: {first_failure:?}");
    }
    let attempts = |id: &str| sink.requests().iter().filter(|(request, _, _)| request.id == id).count();
    assert_eq!((attempts("bad-0"), attempts("down-0")), (1, 3), "400 is not retried; 500 is, up to --max-attempts");
    assert_eq!(sink.delivered(), HashSet::from(["fine-0".to_owned(), "other-0".to_owned()]));
    assert_committed_to_end(&env, &group, &topic, 2, &produced).await;
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total{reason=\"not_retryable\"}").await, Some(1.0));
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total{reason=\"attempts_exhausted\"}").await, Some(1.0));
}

/// Per-key ordering: one delivery per key at a time, in offset order, while a key whose first
/// record keeps failing for a while does not hold up the others of its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_and_a_failing_key_does_not_block_the_others() {
    let Some(env) = test_env("per_key_order_holds_and_a_failing_key_does_not_block_the_others", false) else { return };
    let (topic, dead_letters) = topics(&env, "dispatch-order", 1).await;
    const KEYS: u64 = 8;
    const PER_KEY: u64 = 25;
    let records: Vec<OutgoingRecord> = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |key| (key, seq)))
        .map(|(key, seq)| event(&topic, &format!("k{key}"), seq, "t", "s"))
        .collect();
    let expected = ids(&records);
    produce(&producer(&env), records).await;

    // k3's first record fails 4 times (about 1.5 s of backoff); everything takes 2 ms to answer.
    let sink = TestSink::start(Duration::from_millis(2), |request| {
        if request.id == "k3-0" && request.attempt <= 4 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let (_dir, properties) = properties_file();
    let extra = ["--ordering", "per-key", "--max-keys-in-flight", "16", "--initial-delay", "100ms", "--max-attempts", "6"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &format!("{topic}.group"), &sink.url(), &properties, &extra);

    let missing = sink.wait_delivered(&expected, Duration::from_secs(40)).await;
    assert!(missing.is_empty(), "not delivered: {} records, e.g. {:?}\n{}", missing.len(), missing.iter().next(), dispatcher.log_tail(30));
    let requests = sink.requests();
    assert_per_key_order(&requests);
    let log = sink.log();
    assert_eq!(log.max_in_flight_per_key, 1, "one delivery per key at a time");
    assert!(log.max_in_flight > 1, "keys are delivered in parallel");
    drop(log);
    // The other keys were all through while k3 still waited for its first record's retries.
    let k3_first_delivered = requests
        .iter()
        .find(|(request, status, _)| request.id == "k3-0" && *status == 200)
        .map(|(_, _, answered)| *answered)
        .expect("k3-0");
    let others_done =
        requests.iter().filter(|(request, _, _)| request.key != "k3").map(|(_, _, answered)| *answered).max().expect("others");
    assert!(others_done < k3_first_delivered, "other keys waited for the failing key");
}

/// Per key, in arrival order: seq never goes back except to repeat one already accepted, and a
/// seq is sent only after the previous one was accepted.
fn assert_per_key_order(requests: &[(Request, u16, Instant)]) {
    let mut by_key: HashMap<&str, Vec<&(Request, u16, Instant)>> = HashMap::new();
    for entry in requests {
        by_key.entry(entry.0.key.as_str()).or_default().push(entry);
    }
    for (key, mut entries) in by_key {
        entries.sort_by_key(|(request, _, _)| request.at);
        // The highest seq accepted so far, and when.
        let mut accepted: Option<(u64, Instant)> = None;
        for (request, status, answered) in entries {
            match accepted {
                None => assert_eq!(request.seq, 0, "{key}: starts at seq {}", request.seq),
                Some((last, at)) if request.seq == last + 1 => {
                    assert!(request.at >= at, "{key}: seq {} sent before seq {last} was accepted", request.seq);
                }
                Some((last, _)) => assert!(request.seq <= last, "{key}: seq {} after seq {last}", request.seq),
            }
            if (200..300).contains(status) && accepted.is_none_or(|(last, _)| request.seq > last) {
                accepted = Some((request.seq, *answered));
            }
        }
    }
}

/// A second dispatcher joining the group takes over partitions while records are delivered, some
/// slowly: the first finishes its deliveries of those partitions before giving them up, so no
/// key ever has two deliveries at once and no record overtakes an earlier one of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_keeps_per_key_order() {
    let Some(env) = test_env("a_rebalance_keeps_per_key_order", false) else { return };
    let started = Instant::now();
    let (topic, dead_letters) = topics(&env, "dispatch-rebalance", 4).await;
    let group = format!("{topic}.group");
    // Every 25th record takes 800 ms: deliveries are in flight when partitions move.
    let slow = TestSink::start(Duration::from_millis(2), |request| {
        if request.seq % 25 == 24 {
            std::thread::sleep(Duration::from_millis(800));
        }
        Reply::status(200)
    })
    .await;
    let (_dir, properties) = properties_file();

    // Every 20 ms one record for each of 16 keys.
    let writer =
        Writer::spawn(&env, &topic, |topic, round| (0..16).map(|key| event(topic, &format!("key{key}"), round, "t", "s")).collect());
    let url = |name: &str| format!("{}?dispatcher={name}", slow.url());
    let first = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("a"), &properties, &["--ordering", "per-key"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow.requests().is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered\n{}", first.log_tail(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("b"), &properties, &["--ordering", "per-key"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !slow.requests().iter().any(|(request, _, _)| request.query == "dispatcher=b") {
        assert!(Instant::now() < deadline, "the second dispatcher never delivered\n{}", second.log_tail(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let produced = writer.stop().await;
    let missing = slow.wait_delivered(&produced, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "{} records never delivered\n{}\n{}", missing.len(), first.log_tail(20), second.log_tail(20));

    let requests = slow.requests();
    assert_per_key_order(&requests);
    assert_eq!(slow.log().max_in_flight_per_key, 1, "a key had two deliveries at once");
    let by = |name: &str| requests.iter().filter(|(request, _, _)| request.query == format!("dispatcher={name}")).count();
    assert!(by("a") > 0 && by("b") > 0, "both dispatchers delivered: a {}, b {}", by("a"), by("b"));
    eprintln!("{} records, {} requests (a {}, b {}), {}", produced.len(), requests.len(), by("a"), by("b"), since(started));
}

/// Only records whose CloudEvents attributes match every filter are POSTed; the others are
/// counted and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_matching_records_and_commit_the_rest() {
    let Some(env) = test_env("filters_deliver_only_matching_records_and_commit_the_rest", false) else { return };
    let (topic, dead_letters) = topics(&env, "dispatch-filter", 2).await;
    let types = ["orders.created", "orders.cancelled", "payments.captured", "orders.created.v2"];
    let records: Vec<OutgoingRecord> = (0..40)
        .map(|seq| {
            let subject = if seq % 3 == 0 { "o-us" } else { "o-eu" };
            event(&topic, &format!("k{}", seq % 4), seq, types[usize::try_from(seq).expect("small") % types.len()], subject)
        })
        .collect();
    let matching: HashSet<String> = records
        .iter()
        .filter(|record| {
            let header = |name: &str| record.headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            header("ce_type").is_some_and(|t| t.starts_with("orders.")) && header("ce_subject").is_some_and(|s| s.ends_with("-eu"))
        })
        .flat_map(|record| ids(std::slice::from_ref(record)))
        .collect();
    let produced = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |_| Reply::status(200)).await;
    let (_dir, properties) = properties_file();
    let group = format!("{topic}.group");
    let extra = ["--filter", "type=prefix:orders.", "--filter", "subject=suffix:-eu"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);

    let missing = sink.wait_delivered(&matching, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}\n{}", dispatcher.log_tail(30));
    assert_committed_to_end(&env, &group, &topic, 2, &produced).await;
    assert_eq!(sink.delivered(), matching, "only matching records are delivered");
    let filtered = 40 - matching.len();
    assert_eq!(dispatcher.metric("tributary_dispatch_filtered_total").await, Some(filtered as f64));
}

/// kill -9 under load, again and again: every record produced is delivered or dead-lettered at
/// least once (duplicates allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing() {
    let Some(env) = test_env("kill_9_under_load_loses_nothing", false) else { return };
    let started = Instant::now();
    const PARTITIONS: i32 = 4;
    let (topic, dead_letters) = topics(&env, "dispatch-kill", PARTITIONS).await;
    let group = format!("{topic}.group");
    // Every 97th record is refused (dead-lettered), every 13th fails once (retried).
    let sink = TestSink::start(Duration::ZERO, |request| {
        let n: u64 = request.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or_default();
        match (n % 97, n % 13, request.attempt) {
            (0, _, _) => Reply::status(400),
            (_, 0, 1) => Reply::status(503),
            _ => Reply::status(200),
        }
    })
    .await;
    let (_dir, properties) = properties_file();

    // Every 20 ms 20 records, over 50 keys.
    let writer = Writer::spawn(&env, &topic, |topic, round| {
        (round * 20..round * 20 + 20).map(|n| event(topic, &format!("key{}", n % 50), n, "t", "s")).collect()
    });

    let mut random = XorShift::from_time();
    eprintln!("kill -9 test seed {}", random.seed());
    let extra = ["--ordering", "per-key", "--initial-delay", "20ms", "--max-attempts", "3"];
    const KILLS: usize = 10;
    for round in 0..KILLS {
        let mut dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);
        // Until it delivers something (it has joined), then a little longer.
        let before = sink.requests().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.requests().len() == before {
            assert!(Instant::now() < deadline, "round {round}: nothing delivered\n{}", dispatcher.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Long enough, mostly, for some commits (every second) to land in between.
        tokio::time::sleep(Duration::from_millis(random.between(300, 2500))).await;
        dispatcher.kill9().await;
        eprintln!("round {round}: killed after {} requests ({})", sink.requests().len(), since(started));
    }
    let produced = writer.stop().await;

    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);
    let refused: HashSet<String> = produced
        .iter()
        .filter(|id| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n % 97 == 0))
        .cloned()
        .collect();
    let accepted: HashSet<String> = produced.difference(&refused).cloned().collect();
    let missing = sink.wait_delivered(&accepted, Duration::from_secs(60)).await;
    assert!(
        missing.is_empty(),
        "{} of {} records never delivered, e.g. {:?}\n{}",
        missing.len(),
        accepted.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        dispatcher.log_tail(30)
    );
    let letters =
        Collector::read_back(&env.bootstrap_servers, std::slice::from_ref(&dead_letters), &refused, Duration::from_secs(30)).await;
    let dead_lettered = letters.seen_ids();
    let missing: HashSet<&String> = refused.difference(&dead_lettered).collect();
    assert!(missing.is_empty(), "{} refused records never dead-lettered: {missing:?}", missing.len());
    let requests = sink.requests().len();
    eprintln!(
        "{KILLS} kills: {} records produced, {} dead-lettered, {requests} requests ({} beyond one per record and retry), {}",
        produced.len(),
        refused.len(),
        requests.saturating_sub(produced.len() + produced.len() / 13),
        since(started)
    );
}

/// `--start-from <time>`: a group without committed offsets starts at the first record at or
/// after that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_the_given_time() {
    let Some(env) = test_env("a_new_group_starts_at_the_given_time", false) else { return };
    let (topic, dead_letters) = topics(&env, "dispatch-start", 2).await;
    let producer = producer(&env);
    let before: Vec<OutgoingRecord> = (0..10).map(|seq| event(&topic, &format!("k{}", seq % 3), seq, "t", "s")).collect();
    let before_ids = ids(&before);
    produce(&producer, before).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let start = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after: Vec<OutgoingRecord> = (10..20).map(|seq| event(&topic, &format!("k{}", seq % 3), seq, "t", "s")).collect();
    let after_ids = ids(&after);
    produce(&producer, after).await;

    let sink = TestSink::start(Duration::ZERO, |_| Reply::status(200)).await;
    let (_dir, properties) = properties_file();
    let start = format!("{start:.3}");
    let dispatcher =
        spawn_dispatcher(&env, &topic, &dead_letters, &format!("{topic}.group"), &sink.url(), &properties, &["--start-from", &start]);
    let missing = sink.wait_delivered(&after_ids, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}\n{}", dispatcher.log_tail(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early: Vec<String> = sink.delivered().intersection(&before_ids).cloned().collect();
    assert!(early.is_empty(), "records from before {start} were delivered: {early:?}");
}

/// Configuration the dispatcher cannot run with: exit code 2 and a message naming the cause.
#[tokio::test]
async fn bad_configuration_exits_2_naming_the_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cooperative = dir.path().join("cooperative.properties").to_str().expect("utf-8 path").to_owned();
    std::fs::write(&cooperative, "partition.assignment.strategy=cooperative-sticky\n").expect("properties file");
    // Required flags, replaced by the same flag in `extra`.
    let base = |extra: &[&str]| -> Vec<String> {
        let mut flags: Vec<(&str, &str)> = vec![
            ("--bootstrap-servers", "127.0.0.1:9"),
            ("--topics", "t"),
            ("--group", "g"),
            ("--sink", "http://127.0.0.1:9/"),
            ("--dead-letter-topic", "t.dlq"),
        ];
        for pair in extra.chunks(2) {
            match flags.iter_mut().find(|(flag, _)| *flag == pair[0]) {
                Some(known) => known.1 = pair[1],
                None => flags.push((pair[0], pair[1])),
            }
        }
        std::iter::once("dispatch").chain(flags.into_iter().flat_map(|(flag, value)| [flag, value])).map(str::to_owned).collect()
    };
    for (extra, cause) in [
        (&["--filter", "type=orders"][..], "type=orders"),
        (&["--sink", "https://consumer/"][..], "only http://"),
        (&["--ordering", "per-key", "--concurrency", "8"][..], "needs --ordering unordered"),
        (&["--dead-letter-topic", "t"][..], "also consumed"),
        (&["--start-from", "yesterday"][..], "yesterday"),
        (&["--kafka-properties-file", "/nonexistent/kafka.properties"][..], "/nonexistent/kafka.properties"),
        (&["--kafka-properties-file", &cooperative][..], "eager strategy"),
    ] {
        let (code, stderr) = support::run_relay_to_exit(&base(extra), Duration::from_secs(20)).await;
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(cause), "{extra:?}: stderr does not name {cause:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sink outages, rebalances, dead letters Kafka refuses, shutdown

/// Produces `records` to one `partition` of their topic (the test picks where they land).
async fn produce_to_partition(env: &TestEnv, partition: i32, records: Vec<OutgoingRecord>) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &env.bootstrap_servers).create().expect("producer");
    for record in &records {
        let headers =
            record.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| headers.insert(Header { key, value: Some(value) }));
        let mut outgoing = FutureRecord::to(&record.topic).partition(partition).key(&record.key).headers(headers);
        if let Some(payload) = &record.payload {
            outgoing = outgoing.payload(payload);
        }
        producer.send(outgoing, Duration::from_secs(10)).await.map_err(|(error, _)| error).expect("record acknowledged");
    }
}

/// Waits until `/readyz` answers `status`; panics after `limit`.
async fn wait_readyz(dispatcher: &Relay, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while dispatcher.readyz().await != Some(status) {
        assert!(Instant::now() < deadline, "/readyz never answered {status}\n{}", dispatcher.log_tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sink that does not take connections (its container not started yet, or restarting) is not
/// a failed delivery: the dispatcher waits for it before joining its group, pauses delivery while
/// it is down (not ready, `sink_up` 0, a log line), counts no attempts, dead-letters nothing, and
/// delivers every record once the sink is back. The outage under load lasts 8 s: more than a
/// hundred times what the retries here allow (3 attempts 20 ms apart) and longer than the probe's
/// longest pause, so a longer one only repeats the same probing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_pauses_delivery_and_dead_letters_nothing() {
    let Some(env) = test_env("a_sink_that_is_down_pauses_delivery_and_dead_letters_nothing", false) else { return };
    let started = Instant::now();
    const OUTAGE: Duration = Duration::from_secs(8);
    let (topic, dead_letters) = topics(&env, "dispatch-sink-down", 4).await;
    let group = format!("{topic}.group");
    let sink = TestSink::down(Duration::ZERO, |_| Reply::status(200));
    let (_dir, properties) = properties_file();
    // Every 20 ms 20 records, over 50 keys.
    let writer = Writer::spawn(&env, &topic, |topic, round| {
        (round * 20..round * 20 + 20).map(|n| event(topic, &format!("key{}", n % 50), n / 50, "t", "s")).collect()
    });
    let extra = ["--ordering", "per-key", "--initial-delay", "20ms", "--max-attempts", "3"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);

    // Started before its sink: it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        dispatcher.metric("tributary_dispatch_dead_lettered_total").await,
        None,
        "records were dead-lettered while the sink was not up yet\n{}",
        dispatcher.log_tail(10)
    );
    assert_ne!(dispatcher.readyz().await, Some(200), "ready while its sink is down");
    assert!(!dispatcher.log_text().contains("partitions assigned"), "joined its group before its sink answered");
    sink.serve().await;
    wait_readyz(&dispatcher, 200, Duration::from_secs(30)).await;
    let before = sink.requests().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sink.requests().len() > before, "delivering once the sink is up");

    // Down under load.
    sink.stop().await;
    eprintln!("sink down at {}", since(started));
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(dispatcher.readyz().await, Some(503), "not ready while its sink is down");
    assert_eq!(dispatcher.metric("tributary_dispatch_sink_up").await, Some(0.0));
    assert!(dispatcher.log_text().contains("delivery paused"), "no log line says the sink is down\n{}", dispatcher.log_tail(10));
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total").await, None, "dead-lettered during the outage");
    sink.serve().await;
    eprintln!("sink up again at {}", since(started));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = writer.stop().await;

    let missing = sink.wait_delivered(&produced, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "{} of {} records never delivered\n{}", missing.len(), produced.len(), dispatcher.log_tail(30));
    wait_readyz(&dispatcher, 200, Duration::from_secs(5)).await;
    assert_eq!(dispatcher.metric("tributary_dispatch_sink_up").await, Some(1.0));
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total").await, None);
    assert_eq!(
        dispatcher.metric("tributary_dispatch_failed_attempts_total{kind=\"connect\"}").await,
        None,
        "refused connections are no attempts"
    );
    let letters = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&dead_letters));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(letters.len(), 0, "dead letters written");
    assert_per_key_order(&sink.requests());
    assert_committed_to_end(&env, &group, &topic, 4, &produced).await;
    eprintln!("{} records, {} requests, {}", produced.len(), sink.requests().len(), since(started));
}

/// With `--start-from latest` a partition the group never committed starts where it was when it
/// was assigned, and that start is committed at once: records arriving on it while its dispatcher
/// does not read them (its buffer full behind a slow sink) are delivered by whoever owns it after a
/// rebalance, instead of being skipped by the next owner resolving `latest` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arriving_on_an_idle_partition_are_not_skipped_after_a_rebalance() {
    let Some(env) = test_env("records_arriving_on_an_idle_partition_are_not_skipped_after_a_rebalance", false) else { return };
    let started = Instant::now();
    let (topic, dead_letters) = topics(&env, "dispatch-idle-partition", 2).await;
    let group = format!("{topic}.group");
    // The first dispatcher's deliveries take 5 s each; the second's are immediate.
    let sink = TestSink::start(Duration::ZERO, |request| {
        let slow = if request.query == "dispatcher=a" { Duration::from_secs(5) } else { Duration::ZERO };
        Reply::status(200).after(slow)
    })
    .await;
    let (_dir, properties) = properties_file();
    let url = |name: &str| format!("{}?dispatcher={name}", sink.url());
    let extra = ["--start-from", "latest", "--ordering", "unordered", "--max-buffered-records", "1"];
    let first = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("a"), &properties, &extra);
    wait_readyz(&first, 200, Duration::from_secs(30)).await;
    // Its partitions' start positions are resolved by now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let busy: Vec<OutgoingRecord> = (0..3).map(|seq| event(&topic, "busy", seq, "t", "s")).collect();
    let idle: Vec<OutgoingRecord> = (0..5).map(|seq| event(&topic, "idle", seq, "t", "s")).collect();
    let mut expected = ids(&busy);
    expected.extend(ids(&idle));
    produce_to_partition(&env, 0, busy).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.log().in_flight == 0 {
        assert!(Instant::now() < deadline, "nothing delivered\n{}", first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Partition 1 gets records while the dispatcher's buffer is full; then a member joins.
    produce_to_partition(&env, 1, idle).await;
    let second = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("b"), &properties, &extra);

    let missing = sink.wait_delivered(&expected, Duration::from_secs(45)).await;
    let mut missing: Vec<String> = missing.into_iter().collect();
    missing.sort();
    assert!(missing.is_empty(), "skipped after the rebalance: {missing:?}\n{}\n{}", first.log_tail(15), second.log_tail(15));
    eprintln!("{} records delivered across the rebalance, {}", expected.len(), since(started));
}

/// A dead-letter topic created with max.message.bytes as `size`, beside a fresh one-partition
/// source topic.
async fn topics_with_small_dead_letter_topic(env: &TestEnv, test: &str, size: usize) -> (String, String) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let topic = topic_name(test);
    let dead_letters = format!("{topic}.dlq");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 1).await;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap_servers).create().expect("admin client");
    let size = size.to_string();
    let new = NewTopic::new(&dead_letters, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &size);
    for result in admin.create_topics(&[new], &AdminOptions::new()).await.expect("create the dead-letter topic") {
        result.expect("dead-letter topic created");
    }
    (topic, dead_letters)
}

/// A dead letter larger than its topic accepts is written truncated — key, CloudEvents and
/// failure headers, no value, and `tributary_truncated` saying why — and the partition moves on.
/// The dead-letter topic's max.message.bytes is 2000, and the dispatcher's producer is given the
/// same limit (`--max-dead-letter-bytes`): Tansu 0.6 stores the setting but accepts larger
/// records, so here librdkafka refuses the write (MSG_SIZE_TOO_LARGE, the code a Kafka broker
/// answers with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_its_topic_is_written_truncated() {
    let Some(env) = test_env("a_dead_letter_too_large_for_its_topic_is_written_truncated", false) else { return };
    let (topic, dead_letters) = topics_with_small_dead_letter_topic(&env, "dispatch-dlq-size", 2000).await;
    let mut big = event(&topic, "big", 0, "orders.created", "o-1");
    big.payload = Some(serde_json::json!({ "key": "big", "seq": 0, "pad": "x".repeat(5000) }).to_string().into_bytes());
    let mut records = vec![big];
    records.extend((0..5).map(|seq| event(&topic, "fine", seq, "orders.created", "o-2")));
    let produced = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |request| if request.key == "big" { Reply::status(400) } else { Reply::status(200) }).await;
    let (_dir, properties) = properties_file();
    let group = format!("{topic}.group");
    let extra = ["--max-dead-letter-bytes", "2000"];
    let dispatcher = spawn_dispatcher(&env, &topic, &dead_letters, &group, &sink.url(), &properties, &extra);

    let letters = Collector::start(&env.bootstrap_servers, std::slice::from_ref(&dead_letters));
    let wanted = HashSet::from(["big-0".to_owned()]);
    let missing = letters.wait_for(&wanted, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "no dead letter for big-0\n{}", dispatcher.log_tail(30));
    let letter = letters.records().into_iter().find(|record| record.ce_id() == Some("big-0")).expect("dead letter");
    assert_eq!(letter.payload, None, "the value is left out");
    assert_eq!(letter.key.as_deref(), Some("big"));
    assert!(letter.header("tributary_truncated").is_some_and(|why| why.contains("too large")), "{:?}", letter.headers);
    assert_eq!(letter.header("ce_type"), Some("orders.created"));
    assert_eq!(letter.header("content-type"), None, "it described the value");
    assert_eq!(letter.header(dead_letter::ORIGINAL_OFFSET), Some("0"));
    assert_eq!(letter.header(dead_letter::ERROR), Some("HTTP 400 Bad Request"));
    assert_committed_to_end(&env, &group, &topic, 1, &produced).await;
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_letters_truncated_total").await, Some(1.0));
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_lettered_total{reason=\"not_retryable\"}").await, Some(1.0));
}

/// A dead-letter write Kafka refuses for good does not wedge its partition: after the truncated
/// dead letter is refused too, the record is dropped with a trace (a metric, and an error log
/// naming its topic, partition and offset) and the partition is committed past it. Here the
/// broker answers INVALID_TOPIC for the dead-letter topic's name (Tansu has no ACLs to refuse a
/// write otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_kafka_refuses_for_good_does_not_wedge_the_partition() {
    let Some(env) = test_env("a_dead_letter_kafka_refuses_for_good_does_not_wedge_the_partition", false) else { return };
    let topic = topic_name("dispatch-dlq-refused");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 1).await;
    let records: Vec<OutgoingRecord> = (0..6).map(|seq| event(&topic, if seq == 1 { "bad" } else { "fine" }, seq, "t", "s")).collect();
    let produced = ids(&records);
    produce(&producer(&env), records).await;

    let sink = TestSink::start(Duration::ZERO, |request| if request.key == "bad" { Reply::status(400) } else { Reply::status(200) }).await;
    let (_dir, properties) = properties_file();
    let group = format!("{topic}.group");
    let dispatcher = spawn_dispatcher(&env, &topic, "not a topic name!", &group, &sink.url(), &properties, &[]);

    let fine: HashSet<String> = produced.iter().filter(|id| id.starts_with("fine")).cloned().collect();
    let missing = sink.wait_delivered(&fine, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}\n{}", dispatcher.log_tail(30));
    assert_committed_to_end(&env, &group, &topic, 1, &produced).await;
    assert_eq!(dispatcher.metric("tributary_dispatch_dead_letters_refused_total").await, Some(1.0));
    let log = dispatcher.log_text();
    let line = log.lines().find(|line| line.contains("dropping")).unwrap_or_else(|| panic!("no log line for the dropped record:\n{log}"));
    for part in [topic.as_str(), "partition=0", "offset=1"] {
        assert!(line.contains(part), "the log line does not name {part}: {line}");
    }
}

/// SIGTERM while deliveries are in flight, as a new member joins (a rollout): the dispatcher
/// keeps its partitions until its deliveries in flight are done and committed, so the new member
/// never delivers them again, nor any key while it is still in flight here; it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_deliveries_in_flight_before_giving_up_partitions() {
    let Some(env) = test_env("sigterm_finishes_deliveries_in_flight_before_giving_up_partitions", false) else { return };
    let started = Instant::now();
    let (topic, dead_letters) = topics(&env, "dispatch-sigterm", 2).await;
    let group = format!("{topic}.group");
    // One record for each of 8 keys: all in flight at once, for 6 s each at the first dispatcher.
    let records: Vec<OutgoingRecord> = (0..8).map(|key| event(&topic, &format!("key{key}"), 0, "t", "s")).collect();
    let expected = ids(&records);
    produce(&producer(&env), records).await;
    let sink = TestSink::start(Duration::ZERO, |request| {
        let slow = if request.query == "dispatcher=a" { Duration::from_secs(6) } else { Duration::ZERO };
        Reply::status(200).after(slow)
    })
    .await;
    let (_dir, properties) = properties_file();
    let url = |name: &str| format!("{}?dispatcher={name}", sink.url());
    let extra = ["--ordering", "per-key"];
    let mut first = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("a"), &properties, &extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.log().in_flight < expected.len() {
        assert!(Instant::now() < deadline, "not all in flight: {}\n{}", sink.log().in_flight, first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.sigterm();
    let second = spawn_dispatcher(&env, &topic, &dead_letters, &group, &url("b"), &properties, &extra);
    assert_eq!(exit_code(&mut first, Duration::from_secs(30)).await, Some(0), "{}", first.log_tail(20));
    wait_readyz(&second, 200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let requests = sink.requests();
    let by_second: Vec<&str> =
        requests.iter().filter(|(request, _, _)| request.query == "dispatcher=b").map(|(request, _, _)| request.id.as_str()).collect();
    assert!(by_second.is_empty(), "delivered again by the next owner: {by_second:?}\n{}", first.log_tail(20));
    assert_eq!(sink.delivered(), expected, "the deliveries in flight completed");
    assert_eq!(sink.log().max_in_flight_per_key, 1, "a key had two deliveries at once");
    assert_committed_to_end(&env, &group, &topic, 2, &expected).await;
    eprintln!("8 deliveries in flight finished and committed across SIGTERM and a rebalance, {}", since(started));
}
