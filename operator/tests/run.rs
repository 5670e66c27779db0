//! Integration level "binary": `tributary-operator run` as the chart starts it, against an
//! in-memory API server that speaks the real HTTP protocol (lists, watches, leases), with
//! `/readyz` and `/metrics` read over HTTP as the kubelet and Prometheus read them.
//!
//! Kafka need not answer for these: the controllers only call it once there are objects.

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
