//! Shared plumbing for the end-to-end tests: they run against the cluster `KUBECONFIG` names
//! (kind in CI, via `kind-config.yaml` and `scripts/e2e.sh`) with the chart installed, and skip
//! with a clear message when no cluster answers.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;

/// A client for the cluster under test, or `None` (after printing why) when there is none.
/// With `TRIBUTARY_E2E_REQUIRED=1` a missing cluster fails instead.
pub async fn cluster() -> Option<Client> {
    let reason = match tokio::time::timeout(Duration::from_secs(10), connect()).await {
        Ok(Ok(client)) => return Some(client),
        Ok(Err(error)) => error,
        Err(_) => "the API server did not answer within 10s".to_owned(),
    };
    if std::env::var("TRIBUTARY_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("no Kubernetes cluster reachable ({reason}) and TRIBUTARY_E2E_REQUIRED=1");
    }
    eprintln!("skipping e2e test: no Kubernetes cluster reachable via KUBECONFIG ({reason})");
    None
}

async fn connect() -> Result<Client, String> {
    let client = Client::try_default().await.map_err(|error| error.to_string())?;
    client.apiserver_version().await.map_err(|error| error.to_string())?;
    Ok(client)
}

/// A name no earlier run used, so reruns against one cluster do not collide.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    format!("{prefix}-{nanos:x}")
}

/// The namespace e2e objects live in (created by `scripts/e2e.sh`).
pub fn namespace() -> String {
    std::env::var("TRIBUTARY_E2E_NAMESPACE").unwrap_or_else(|_| "tributary-e2e".into())
}

/// Polls `check` every 500 ms until it returns `Some`, for at most `timeout`; panics naming `what`
/// and the last thing `check` saw.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what} not within {timeout:?}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// `(status, reason)` of the condition of `type_`.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
    conditions.iter().find(|condition| condition.type_ == type_).map(|condition| (condition.status.as_str(), condition.reason.as_str()))
}

/// A manifest of one of our kinds in the e2e namespace.
pub fn manifest<K: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: serde_json::Value) -> K {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace() },
        "spec": spec,
    }))
    .unwrap_or_else(|error| panic!("invalid {kind} manifest: {error}"))
}

/// Polls until the EventTopic's Ready condition has `status`, returning the object.
pub async fn wait_event_topic(api: &kube::Api<tributary_api::EventTopic>, name: &str, status: &str) -> tributary_api::EventTopic {
    eventually(&format!("EventTopic {name} Ready={status}"), Duration::from_secs(60), || async {
        let topic = api.get(name).await.map_err(|error| error.to_string())?;
        let conditions = topic.status.as_ref().map(|status| status.conditions.as_slice()).unwrap_or_default();
        match condition(conditions, "Ready") {
            Some((seen, _)) if seen == status => Ok(topic),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}
