//! Leader election against the in-memory API server (real HTTP, real resourceVersion
//! conflicts): decisions with a fixed clock, then the election loop with real time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use prometheus_client::registry::Registry;
use serde_json::json;
use tributary_testkit::{FakeApiServer, ResourceKey};

use super::*;
use crate::clock::FixedClock;

const NAMESPACE: &str = "tributary-system";

fn leases() -> ResourceKey {
    ResourceKey::new("coordination.k8s.io", "v1", "leases")
}

fn candidate(server: &FakeApiServer, identity: &str, clock: &Arc<FixedClock>) -> LeaderElector {
    LeaderElector::new(server.client(), LeaseSettings::new(NAMESPACE, identity), clock.clone())
}

fn holder(server: &FakeApiServer) -> Option<String> {
    server.get(&leases(), NAMESPACE, "tributary-operator").and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn fixed_clock() -> Arc<FixedClock> {
    Arc::new(FixedClock::new(Timestamp::from_second(1_800_000_000).expect("timestamp")))
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease_and_renews_it() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    let mut a = candidate(&server, "a", &clock);

    assert!(a.try_acquire_or_renew().await.expect("answers"));
    let created = server.get(&leases(), NAMESPACE, "tributary-operator").expect("lease created");
    assert_eq!(created["spec"]["holderIdentity"], json!("a"));
    assert_eq!(created["spec"]["leaseDurationSeconds"], json!(15));
    assert_eq!(created["spec"]["leaseTransitions"], json!(0));

    clock.advance(Duration::from_secs(2));
    assert!(a.try_acquire_or_renew().await.expect("answers"), "the holder renews");
    let renewed = server.get(&leases(), NAMESPACE, "tributary-operator").expect("lease");
    assert_ne!(renewed["spec"]["renewTime"], created["spec"]["renewTime"]);
    assert_eq!(renewed["spec"]["acquireTime"], created["spec"]["acquireTime"], "a renewal keeps the acquire time");
    assert_eq!(renewed["spec"]["leaseTransitions"], json!(0));
}

#[tokio::test]
async fn a_standby_waits_while_the_leader_renews_and_takes_over_once_it_stops() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    let (mut a, mut b) = (candidate(&server, "a", &clock), candidate(&server, "b", &clock));
    assert!(a.try_acquire_or_renew().await.expect("answers"));

    // The leader renews every few seconds: the standby never gets it, however long it tries.
    for _ in 0..10 {
        clock.advance(Duration::from_secs(5));
        assert!(!b.try_acquire_or_renew().await.expect("answers"), "standby took a renewed lease");
        assert!(a.try_acquire_or_renew().await.expect("answers"));
    }
    // The leader stops renewing: 14 s after the standby last saw a change it still waits, at
    // 15 s (the lease duration) it takes over.
    clock.advance(Duration::from_secs(1));
    assert!(!b.try_acquire_or_renew().await.expect("answers"));
    clock.advance(Duration::from_secs(14));
    assert!(!b.try_acquire_or_renew().await.expect("answers"), "took the lease before it expired");
    clock.advance(Duration::from_secs(1));
    assert!(b.try_acquire_or_renew().await.expect("answers"), "did not take an expired lease");
    assert_eq!(holder(&server).as_deref(), Some("b"));
    let lease = server.get(&leases(), NAMESPACE, "tributary-operator").expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));

    // The old leader, back, finds the lease held and stays a standby.
    assert!(!a.try_acquire_or_renew().await.expect("answers"));
}

#[tokio::test]
async fn expiry_is_measured_on_the_candidates_own_clock_not_the_holders_renew_time() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    // A holder whose clock runs an hour behind ours: its renewTime looks long expired.
    let behind = Timestamp::from_second(1_800_000_000 - 3600).expect("timestamp");
    server.put(
        &leases(),
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": "tributary-operator", "namespace": NAMESPACE },
            "spec": { "holderIdentity": "skewed", "leaseDurationSeconds": 15, "renewTime": behind.to_string(), "acquireTime": behind.to_string() },
        }),
    );
    let mut b = candidate(&server, "b", &clock);
    assert!(!b.try_acquire_or_renew().await.expect("answers"), "a lease seen for the first time is not expired");
    clock.advance(Duration::from_secs(15));
    assert!(b.try_acquire_or_renew().await.expect("answers"));
}

#[tokio::test]
async fn a_write_based_on_a_stale_read_loses_the_race() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    let (mut a, mut b) = (candidate(&server, "a", &clock), candidate(&server, "b", &clock));
    assert!(a.try_acquire_or_renew().await.expect("answers"));
    let api: Api<Lease> = Api::namespaced(server.client(), NAMESPACE);
    clock.advance(Duration::from_secs(20));
    // b reads the expired lease; before b writes, a renews it.
    let stale = api.get("tributary-operator").await.expect("lease");
    assert!(a.try_acquire_or_renew().await.expect("answers"));
    assert!(!b.write(Some(stale), clock.now()).await.expect("answers"), "b's write must fail on the old resourceVersion");
    assert_eq!(holder(&server).as_deref(), Some("a"));
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    let (mut a, mut b) = (candidate(&server, "a", &clock), candidate(&server, "b", &clock));
    assert!(a.try_acquire_or_renew().await.expect("answers"));
    assert!(!b.try_acquire_or_renew().await.expect("answers"));
    a.release().await.expect("released");
    assert_eq!(holder(&server), None);
    assert!(b.try_acquire_or_renew().await.expect("answers"), "a released lease has no holder to wait for");
}

/// Two candidates running the election loop with short real timings: `lead` runs in one at a time.
#[tokio::test]
async fn only_one_candidate_leads_and_a_killed_leader_is_replaced_within_the_lease_duration() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let short = |identity: &str| LeaseSettings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseSettings::new(NAMESPACE, identity)
    };
    let counter = LeadingCounter::default();
    let spawn = |identity: &str| counter.spawn(server.client(), short(identity), &mut Registry::default());
    let a = spawn("a");
    wait_until(|| holder(&server).as_deref() == Some("a"), Duration::from_secs(5)).await;
    let b = spawn("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&server).as_deref(), Some("a"), "the standby took a renewed lease");

    a.abort();
    let killed = tokio::time::Instant::now();
    wait_until(|| holder(&server).as_deref() == Some("b"), Duration::from_secs(5)).await;
    let took = killed.elapsed();
    // The lease duration, counted from the standby's last sight of a renewal (up to one retry
    // after it), plus a retry to notice, plus slack for a loaded machine.
    assert!(took <= Duration::from_millis(3500), "took over after {took:?} with a 2 s lease and 200 ms retries");
    assert_eq!(counter.overlap.load(Ordering::SeqCst), 0, "two candidates led at once");
    b.abort();
}

#[tokio::test]
async fn a_leader_that_finds_another_holder_stops_leading_within_a_retry_period() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let settings = LeaseSettings { retry_period: Duration::from_millis(100), ..LeaseSettings::new(NAMESPACE, "a") };
    let mut registry = Registry::default();
    let counter = LeadingCounter::default();
    let task = counter.spawn(server.client(), settings, &mut registry);
    wait_until(|| counter.leading.load(Ordering::SeqCst) == 1, Duration::from_secs(5)).await;

    // Someone else takes the lease (e.g. after this leader was paused past its lease).
    let mut lease = server.get(&leases(), NAMESPACE, "tributary-operator").expect("lease");
    lease["spec"]["holderIdentity"] = json!("intruder");
    lease["spec"]["renewTime"] = json!(Timestamp::now().to_string());
    server.put(&leases(), lease);
    // One retry period (100 ms) is enough; the rest is slack for a loaded machine.
    wait_until(|| counter.leading.load(Ordering::SeqCst) == 0, Duration::from_secs(2)).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("renders");
    assert!(text.lines().any(|line| line == "tributary_leader 0"), "{text}");
    task.abort();
}

#[tokio::test]
async fn a_standby_stops_when_told_to_shut_down() {
    let server = FakeApiServer::start().await.expect("fake API server");
    let clock = fixed_clock();
    assert!(candidate(&server, "a", &clock).try_acquire_or_renew().await.expect("answers"));
    let standby = candidate(&server, "b", &clock);
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_elected(standby, metrics, || async { panic!("the standby must not lead") }, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "the standby keeps waiting for the lease");
    stop.send(()).expect("the standby listens");
    tokio::time::timeout(Duration::from_secs(1), task).await.expect("the standby stopped").expect("without panicking");
}

/// Counts the candidates inside `lead`; notes when there were two.
struct Leading(Arc<AtomicUsize>);

/// Candidates that count themselves while they lead.
#[derive(Clone, Default)]
struct LeadingCounter {
    leading: Arc<AtomicUsize>,
    overlap: Arc<AtomicUsize>,
}

impl LeadingCounter {
    /// A candidate running the election loop with the real clock, leading until aborted.
    fn spawn(&self, client: kube::Client, settings: LeaseSettings, registry: &mut Registry) -> tokio::task::JoinHandle<()> {
        let elector = LeaderElector::new(client, settings, Arc::new(crate::clock::SystemClock));
        let metrics = Arc::new(Metrics::register(registry));
        let counter = self.clone();
        let lead = move || {
            let counter = counter.clone();
            async move {
                if counter.leading.fetch_add(1, Ordering::SeqCst) > 0 {
                    counter.overlap.fetch_add(1, Ordering::SeqCst);
                }
                let _counted = Leading(counter.leading.clone());
                std::future::pending::<()>().await;
            }
        };
        tokio::spawn(run_elected(elector, metrics, lead, std::future::pending()))
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn wait_until(condition: impl Fn() -> bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
