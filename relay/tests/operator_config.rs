//! The relay as the operator configures it, against a real PostgreSQL and a real Kafka-protocol
//! broker: the OutboxRelay controller's own builder renders the `tributary-relay` container; its
//! environment (the database URL resolved from a test Secret, as the kubelet resolves a
//! `secretKeyRef`; the workload Kafka properties Secret mounted from a directory, as the kubelet
//! mounts the volume) and arguments run the real binary; committed rows must arrive in Kafka with
//! the routed topic and the default CloudEvents source, and `GET /status`, read with the
//! operator's client, must report them published. With `spec.database.tls`, the relay reaches the
//! TLS-only PostgreSQL of `scripts/postgres-tls.sh` with the files the operator mounts. Environment
//! as in `outbox_broker.rs` and `outbox_tls.rs`.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Container, Volume};
use kube::core::error_boundary::DeserializeGuard;
use serde_json::json;
use support::*;
use tributary_api::{relay_contract, EventTopic, OutboxRelay};
use tributary_operator::outbox_relay::desired::{
    cloud_events_source, relay_container, relay_workload, RelayWorkload, ResolvedRoute, DATABASE_TLS_VOLUME, KAFKA_PROPERTIES_VOLUME,
};
use tributary_operator::outbox_relay::probe::{HttpRelayStatus, RelayStatusSource};
use tributary_operator::outbox_relay::resolve::{resolve_routes, Routes, TopicLookup};
use tributary_operator::workload::WorkloadSettings;

/// The container's environment as the kubelet would set it: literal values as they are,
/// `secretKeyRef`s from `secrets` (by Secret name and key); anything else fails the test.
fn kubelet_env(container: &Container, secrets: &HashMap<(&str, &str), String>) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, var.value_from.as_ref().and_then(|from| from.secret_key_ref.as_ref())) {
                (Some(value), None) => value.clone(),
                (None, Some(reference)) => secrets
                    .get(&(reference.name.as_str(), reference.key.as_str()))
                    .unwrap_or_else(|| panic!("{}: no Secret {}/{}", var.name, reference.name, reference.key))
                    .clone(),
                other => panic!("{}: unexpected value {other:?}", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// The Secret volume `volume` as the kubelet mounts it, from `dir`: variables that point under
/// the container's mount of it point under `dir` instead.
fn mount_secret(container: &Container, vars: &mut [(String, String)], volume: &str, dir: &Path) {
    let mount = container.volume_mounts.iter().flatten().find(|mount| mount.name == volume).expect("the container mounts the volume");
    assert_eq!(mount.read_only, Some(true), "Secrets are mounted read-only");
    for (_, value) in vars.iter_mut() {
        if let Some(file) = value.strip_prefix(&mount.mount_path) {
            *value = format!("{}{file}", dir.display());
        }
    }
}

/// Secret `volume` of `pod` (a pod spec as JSON) as the kubelet writes it into `dir`: the items
/// it lists, each key's value from `secret` under the item's path.
fn write_secret_volume(pod: &serde_json::Value, volume: &str, secret: &HashMap<&str, Vec<u8>>, dir: &Path) {
    let volumes: Vec<Volume> = serde_json::from_value(pod["volumes"].clone()).expect("the pod's volumes");
    let volume = volumes.into_iter().find(|candidate| candidate.name == volume).expect("the pod has the volume");
    let items = volume.secret.and_then(|source| source.items).expect("a Secret volume of chosen keys");
    for item in items {
        let value = secret.get(item.key.as_str()).unwrap_or_else(|| panic!("the Secret has no key {}", item.key));
        std::fs::write(dir.join(&item.path), value).expect("write a Secret file");
    }
}

/// The OutboxRelay of these tests: a sidecar relaying `table`, its `Order` rows routed to the
/// EventTopic `orders`, serving on `port`.
fn shop_outbox(table: &str, port: u16) -> OutboxRelay {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "OutboxRelay",
        "metadata": {"name": "shop-outbox", "namespace": "shop"},
        "spec": {
            "database": {"urlSecretRef": {"name": "shop-db", "key": "dsn"}},
            "table": table,
            "routing": {"routes": [{"aggregateType": "Order", "eventTopic": "orders"}]},
            "placement": {"sidecar": {"targetRef": {"name": "shop-api"}, "port": port}},
            "batchSize": 50,
            "pollInterval": "200ms",
        },
    }))
    .expect("a valid OutboxRelay")
}

/// The relay's routes as the controller resolves them, with `orders` a Ready EventTopic of the
/// Kafka topic `topic`.
fn routes_to(relay: &OutboxRelay, topic: &str) -> Vec<ResolvedRoute> {
    let orders: EventTopic = serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "EventTopic",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"topicName": topic},
        // As the EventTopic controller writes it: Ready, with the real Kafka topic name.
        "status": {
            "topicName": topic,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Created", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    }))
    .expect("a valid EventTopic");
    let orders = DeserializeGuard(Ok(orders));
    let Routes::Ready(routes) = resolve_routes(relay, |name| TopicLookup::of((name == "orders").then_some(&orders))) else {
        panic!("the route to a Ready EventTopic resolves")
    };
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_with_the_configuration_the_operator_renders() {
    let Some(env) = test_env("the_relay_runs_with_the_configuration_the_operator_renders", false) else { return };
    let _broker = BROKER.read().await;
    let started = Instant::now();
    let table = table_name("operator_config");
    let _table = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let topic = topic_name("operator_config");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 4).await;

    let port = free_address().port();
    let relay = shop_outbox(&table, port);
    let routes = routes_to(&relay, &topic);
    let settings = WorkloadSettings {
        bootstrap_servers: env.bootstrap_servers.clone(),
        relay_image: "not used".into(),
        kafka_properties_secret: Some("kafka-auth".into()),
    };
    let container = relay_container(&relay, &routes, &settings, None);
    let secrets = HashMap::from([(("shop-db", "dsn"), env.database_url.clone())]);
    let mut vars = kubelet_env(&container, &secrets);
    // The test broker has no SASL: a client id is all the properties file can carry, and the
    // relay fails to start if the file its variable names is not there.
    let kafka_secret = tempfile::tempdir().expect("temp dir");
    std::fs::write(kafka_secret.path().join("kafka.properties"), "client.id=tributary-operator-config-test\n").expect("write");
    mount_secret(&container, &mut vars, KAFKA_PROPERTIES_VOLUME, kafka_secret.path());
    let properties_file =
        vars.iter().find(|(name, _)| name == relay_contract::env::KAFKA_PROPERTIES_FILE).map(|(_, value)| Path::new(value));
    assert_eq!(properties_file.and_then(Path::parent), Some(kafka_secret.path()), "the file is in the mounted Secret");
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let relay_process = Relay::start(container.args.as_deref().unwrap_or_default(), &vars, listen);

    let plan = WriterPlan {
        table: table.clone(),
        aggregate_type: "Order".into(),
        aggregates: (0..5).map(|a| format!("Order-{a}")).collect(),
        rows_per_aggregate: 20,
        pause: Duration::ZERO,
    };
    let written_after = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (inserted, reader) = relayed(&env, plan, &topic, &relay_process).await;
    let topic_of = |_: &str| topic.clone();
    let source = cloud_events_source(&relay);
    assert_eq!(source, "/tributary/shop/shop-outbox");
    let verdict = verify(&reader.records(), &inserted, &Expect { topic_of: &topic_of, source: &source, absent_ok: &HashSet::new() });
    verdict.assert_clean("relay configured by the operator");

    // The relay counts pending rows every few seconds; wait for a count after the drain.
    let client = HttpRelayStatus { timeout: Duration::from_secs(2) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let answer = client.fetch(listen).await;
        if let Ok(report) = &answer {
            if report.pending_rows == Some(0) && report.last_published_time.is_some() {
                break report.clone();
            }
        }
        assert!(Instant::now() < deadline, "GET /status never reported the drained table: {answer:?}\n{}", relay_process.log_tail(25));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let published = report.last_published_time.expect("a publish time").0.as_second();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    assert!((written_after as i64..=now as i64).contains(&published), "last publish {published} not within [{written_after}, {now}]");
    eprintln!("{} rows relayed with the operator's configuration in {}", inserted.len(), since(started));
}

/// A relay the operator runs never exits over its table (a sidecar that exited would restart-loop
/// the application's pods): started before the table exists, it stays up, says why on
/// `GET /status` (which the operator copies into the OutboxRelay's status), and relays once the
/// table is migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_the_operator_renders_waits_for_its_table_and_reports_why() {
    let Some(env) = test_env("the_relay_the_operator_renders_waits_for_its_table_and_reports_why", false) else { return };
    let _broker = BROKER.read().await;
    let table = table_name("operator_wait");
    let _table = TableGuard::new(&env.database_url, &table);
    let topic = topic_name("operator_wait");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 4).await;
    let port = free_address().port();
    let relay = shop_outbox(&table, port);
    let settings = WorkloadSettings {
        bootstrap_servers: env.bootstrap_servers.clone(),
        relay_image: "not used".into(),
        kafka_properties_secret: None,
    };
    let container = relay_container(&relay, &routes_to(&relay, &topic), &settings, None);
    let vars = kubelet_env(&container, &HashMap::from([(("shop-db", "dsn"), env.database_url.clone())]));
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut relay_process = Relay::start(container.args.as_deref().unwrap_or_default(), &vars, listen);

    let deadline = Instant::now() + Duration::from_secs(20);
    let problem = loop {
        let report = status_report(listen).await;
        if let Some(problem) = report["schemaProblem"].as_str() {
            break problem.to_owned();
        }
        let exited = relay_process.child.try_wait().expect("relay status");
        assert!(exited.is_none(), "the relay exited ({exited:?}) over its missing table\n{}", relay_process.log_tail(25));
        assert!(Instant::now() < deadline, "GET /status never named the problem: {report:?}\n{}", relay_process.log_tail(25));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(problem.contains(&table) && problem.contains("does not exist"), "{problem}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(relay_process.child.try_wait().expect("relay status").is_none(), "the relay exited\n{}", relay_process.log_tail(25));

    // The application's migration runs; the relay finds the table and relays.
    migrate(&env, &table).await;
    let plan = WriterPlan {
        table: table.clone(),
        aggregate_type: "Order".into(),
        aggregates: vec!["Order-0".into()],
        rows_per_aggregate: 5,
        pause: Duration::ZERO,
    };
    let (inserted, reader) = relayed(&env, plan, &topic, &relay_process).await;
    assert_eq!(reader.seen_ids(), inserted.iter().map(|row| row.id.clone()).collect());
    let db = pg(&env.database_url).await;
    let report = status_report(listen).await;
    assert!(report.get("schemaProblem").is_none(), "the problem is still reported: {report}");

    // The table goes away under the running relay: it says so, and goes on once it is back.
    db.batch_execute(&format!("ALTER TABLE \"{table}\" RENAME TO \"{table}_away\"")).await.expect("rename");
    let deadline = Instant::now() + Duration::from_secs(20);
    let problem = loop {
        if let Some(problem) = status_report(listen).await["schemaProblem"].as_str() {
            break problem.to_owned();
        }
        assert!(Instant::now() < deadline, "GET /status never named the vanished table\n{}", relay_process.log_tail(25));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(problem.contains(&table) && problem.contains("does not exist"), "{problem}");
    db.batch_execute(&format!("ALTER TABLE \"{table}_away\" RENAME TO \"{table}\"")).await.expect("rename back");
    let deadline = Instant::now() + Duration::from_secs(40);
    while status_report(listen).await.get("schemaProblem").is_some() {
        assert!(Instant::now() < deadline, "the problem stays reported after the table came back\n{}", relay_process.log_tail(25));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(relay_process.child.try_wait().expect("relay status").is_none(), "the relay exited\n{}", relay_process.log_tail(25));
}

/// The database TLS files come from a Secret the operator mounts: the relay it renders checks the
/// server (`verify-full` in the URL) against the mounted CA, and shows the mounted client
/// certificate to a database that takes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_a_tls_database_with_the_files_the_operator_mounts() {
    let test = "the_relay_reaches_a_tls_database_with_the_files_the_operator_mounts";
    let Some(env) = test_env(test, false) else { return };
    let Some(tls) = tls_database(test) else { return };
    let _broker = BROKER.read().await;
    // The tests' own connections name the files in the URL, as libpq users do.
    let files = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        tls.file("ca.crt"),
        tls.file("client.crt"),
        tls.file("client.key")
    );
    let env = TestEnv { database_url: tls.url("localhost", "certdb", &files), ..env };
    let table = table_name("operator_tls");
    let _table = TableGuard::new(&env.database_url, &table);
    migrate(&env, &table).await;
    let topic = topic_name("operator_tls");
    create_topics(&env.bootstrap_servers, std::slice::from_ref(&topic), 4).await;

    let port = free_address().port();
    let mut relay = shop_outbox(&table, port);
    relay.spec.database.tls = Some(
        serde_json::from_value(json!({"secretRef": {"name": "shop-db-tls"}, "certKey": "tls.crt", "keyKey": "tls.key"})).expect("valid"),
    );
    let routes = routes_to(&relay, &topic);
    let settings = WorkloadSettings {
        bootstrap_servers: env.bootstrap_servers.clone(),
        relay_image: "not used".into(),
        kafka_properties_secret: None,
    };
    let container = relay_container(&relay, &routes, &settings, None);
    let RelayWorkload::Sidecar { body, .. } = relay_workload(&relay, &routes, &settings, None) else { panic!("a sidecar") };
    let read = |name: &str| std::fs::read(tls.file(name)).expect("a certificate file of scripts/postgres-tls.sh");
    // A cert-manager Certificate's Secret, say.
    let tls_secret = HashMap::from([("ca.crt", read("ca.crt")), ("tls.crt", read("client.crt")), ("tls.key", read("client.key"))]);
    let mounted = tempfile::tempdir().expect("temp dir");
    write_secret_volume(&body["spec"]["template"]["spec"], DATABASE_TLS_VOLUME, &tls_secret, mounted.path());
    // The URL without files: the operator's mount supplies them.
    let secrets = HashMap::from([(("shop-db", "dsn"), tls.url("localhost", "certdb", "sslmode=verify-full"))]);
    let mut vars = kubelet_env(&container, &secrets);
    mount_secret(&container, &mut vars, DATABASE_TLS_VOLUME, mounted.path());
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let relay_process = Relay::start(container.args.as_deref().unwrap_or_default(), &vars, listen);

    let plan = WriterPlan {
        table: table.clone(),
        aggregate_type: "Order".into(),
        aggregates: (0..3).map(|a| format!("Order-{a}")).collect(),
        rows_per_aggregate: 10,
        pause: Duration::ZERO,
    };
    let (inserted, reader) = relayed(&env, plan, &topic, &relay_process).await;
    let topic_of = |_: &str| topic.clone();
    let source = cloud_events_source(&relay);
    let verdict = verify(&reader.records(), &inserted, &Expect { topic_of: &topic_of, source: &source, absent_ok: &HashSet::new() });
    verdict.assert_clean("relay over TLS configured by the operator");
}

/// Writes the plan's rows, waits until the relay drained the table and reads them back from
/// `topic`.
async fn relayed(env: &TestEnv, plan: WriterPlan, topic: &str, relay: &Relay) -> (Vec<Inserted>, Collector) {
    let table = plan.table.clone();
    let inserted = write(env.database_url.clone(), plan, Arc::new(AtomicBool::new(false)), Sink::default()).await;
    let db = pg(&env.database_url).await;
    assert!(
        wait_until_empty(&db, &table, Duration::from_secs(60)).await,
        "{} row(s) still in {table} after 60 s\n{}",
        count_rows(&db, &table).await,
        relay.log_tail(25)
    );
    let ids: HashSet<String> = inserted.iter().map(|row| row.id.clone()).collect();
    let reader = Collector::read_back(&env.bootstrap_servers, &[topic.to_owned()], &ids, Duration::from_secs(60)).await;
    (inserted, reader)
}

/// `GET /status` as JSON (`null` when there is no answer).
async fn status_report(listen: SocketAddr) -> serde_json::Value {
    let answer = tributary_testkit::http::get(listen, "/status").await.ok();
    answer.and_then(|(_, body)| serde_json::from_str(&body).ok()).unwrap_or_default()
}
