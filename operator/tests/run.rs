//! Integration level "binary": `tributary-operator run` as the chart starts it, against an
//! in-memory API server that speaks the real HTTP protocol (lists, watches, leases), with
//! `/readyz` and `/metrics` read over HTTP as the kubelet and Prometheus read them.
//!
//! Kafka need not answer for these: the controllers only call it once there are objects.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tributary_testkit::http::{free_address, get, wait_for_status};
use tributary_testkit::{FakeApiServer, ResourceKey};

/// An operator process, killed when dropped.
struct Operator {
    child: Child,
    address: SocketAddr,
    _kubeconfig: tempfile::TempDir,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_operator(api: &FakeApiServer, extra_args: &[&str], env: &[(&str, &str)]) -> Operator {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig written");
    let address = free_address();
    let child = Command::new(env!("CARGO_BIN_EXE_tributary-operator"))
        .args(["run", "--bootstrap-servers", "127.0.0.1:9", "--listen-address", &address.to_string()])
        .args(extra_args)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("the operator starts");
    Operator { child, address, _kubeconfig: dir }
}

#[tokio::test]
async fn run_turns_ready_once_every_controller_has_synced() {
    let api = FakeApiServer::start().await.expect("fake API server");
    let operator = start_operator(&api, &["--leader-election=false"], &[]);

    let answer = wait_for_status(operator.address, "/readyz", 200, Duration::from_secs(20)).await;
    assert_eq!(answer.as_ref().map(|(status, _)| *status), Some(200), "/readyz never answered 200: last answer {answer:?}");
    let watched = ResourceKey::new("tributary.dev", "v1alpha1", "eventtopics");
    assert!(api.requests("GET", &watched) > 0, "ready without having listed EventTopics");
}

#[tokio::test]
async fn run_with_leader_election_takes_the_lease_and_says_it_leads() {
    let api = FakeApiServer::start().await.expect("fake API server");
    let operator = start_operator(&api, &[], &[("POD_NAME", "operator-0"), ("POD_NAMESPACE", "tributary-system")]);

    let answer = wait_for_status(operator.address, "/readyz", 200, Duration::from_secs(20)).await;
    assert_eq!(answer.as_ref().map(|(status, _)| *status), Some(200), "/readyz never answered 200: last answer {answer:?}");
    let leases = ResourceKey::new("coordination.k8s.io", "v1", "leases");
    let mut holder = None;
    for _ in 0..100 {
        holder = api
            .get(&leases, "tributary-system", "tributary-operator")
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned));
        if holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder.as_deref(), Some("operator-0"));
    let (_, metrics) = get(operator.address, "/metrics").await.expect("metrics answer");
    assert!(metrics.lines().any(|line| line == "tributary_leader 1"), "{metrics}");
}

/// Sends SIGTERM, as the kubelet does, and waits up to `within` for the process to exit (without
/// blocking the runtime that serves the API server it talks to).
async fn terminate(operator: &mut Operator, within: Duration) -> Option<std::process::ExitStatus> {
    let pid = operator.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(sent.success(), "SIGTERM sent to {pid}");
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = operator.child.try_wait().expect("waits") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn lease_holder(api: &FakeApiServer) -> Option<String> {
    let leases = ResourceKey::new("coordination.k8s.io", "v1", "leases");
    api.get(&leases, "tributary-system", "tributary-operator").and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

async fn metric_line(operator: &Operator, line: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok((_, metrics)) = get(operator.address, "/metrics").await {
            if metrics.lines().any(|candidate| candidate == line) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn sigterm_ends_a_leader_that_releases_the_lease_and_a_former_leader_standing_by() {
    let api = FakeApiServer::start().await.expect("fake API server");
    let fast = ["--lease-retry-period", "200ms"];
    let mut leader = start_operator(&api, &fast, &[("POD_NAME", "operator-0"), ("POD_NAMESPACE", "tributary-system")]);
    assert!(metric_line(&leader, "tributary_leader 1", Duration::from_secs(20)).await, "operator-0 never led");
    let status = terminate(&mut leader, Duration::from_secs(10)).await.expect("the leader exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(lease_holder(&api), None, "the leader released the lease on its way out");

    // A leader that lost the lease stands by; SIGTERM still ends it.
    let mut former = start_operator(&api, &fast, &[("POD_NAME", "operator-1"), ("POD_NAMESPACE", "tributary-system")]);
    assert!(metric_line(&former, "tributary_leader 1", Duration::from_secs(20)).await, "operator-1 never led");
    let leases = ResourceKey::new("coordination.k8s.io", "v1", "leases");
    let mut lease = api.get(&leases, "tributary-system", "tributary-operator").expect("lease");
    lease["spec"]["holderIdentity"] = serde_json::json!("intruder");
    api.put(&leases, lease);
    assert!(metric_line(&former, "tributary_leader 0", Duration::from_secs(10)).await, "operator-1 kept leading");
    let status = terminate(&mut former, Duration::from_secs(10)).await.expect("a standby exits on SIGTERM");
    assert!(status.success(), "{status}");
}
