//! Test fixtures: a mock Kubernetes API server for controller tests (the kube-rs `tower-test`
//! pattern: the test scripts the requests a reconcile must make, in order, and answers each one),
//! the one way every such test builds a controller's context ([`Shared::test`], [`Harness`]), what
//! those tests share about objects and status patches, and the address of the test broker.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};

use crate::clock::FixedClock;
use crate::controller_support::{self, Reconciler, Shared};
use crate::metrics::Metrics;

/// The time every controller test starts at (seconds since the epoch).
pub const NOW: i64 = 1_800_000_000;

impl Shared {
    /// What every mock-API controller test runs with: a client of a fresh mock API server, a
    /// clock standing at [`NOW`] and metrics of their own.
    pub fn test() -> (Shared, ApiServerVerifier, Arc<FixedClock>) {
        let (client, verifier) = mock_client();
        let clock = Arc::new(FixedClock::new(Timestamp::from_second(NOW).expect("timestamp")));
        let reporter = Reporter { controller: crate::FIELD_MANAGER.into(), instance: None };
        let shared = Shared::new(client, reporter, Arc::new(Metrics::register(&mut Registry::default())), clock.clone());
        (shared, verifier, clock)
    }
}

/// A controller's context as a mock-API test drives it: reconciles through the same guarded
/// opening as the controller, a store the test fills as the watch would, the clock, and the test
/// doubles (`fakes`) the context was built with.
pub struct Harness<R: Reconciler, F = ()> {
    pub context: Arc<R>,
    pub fakes: F,
    pub clock: Arc<FixedClock>,
    store: Writer<DeserializeGuard<R::Object>>,
}

impl<R: Reconciler, F> Harness<R, F> {
    /// `build` makes the context (and its test doubles) from [`Shared::test`] and the store.
    pub fn new(build: impl FnOnce(Shared, Store<DeserializeGuard<R::Object>>) -> (R, F)) -> (Self, ApiServerVerifier) {
        let (shared, verifier, clock) = Shared::test();
        let (store, writer) = reflector::store();
        let (context, fakes) = build(shared, store);
        (Harness { context: Arc::new(context), fakes, clock, store: writer }, verifier)
    }

    /// Makes `object` known to the controller's cluster-wide store, as the watch would.
    pub fn seen(&mut self, object: &R::Object) {
        self.store.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(object.clone()))));
    }

    pub async fn reconcile(&self, object: &R::Object) -> crate::error::Result<Action> {
        controller_support::reconcile(Arc::new(DeserializeGuard(Ok(object.clone()))), self.context.clone()).await
    }
}

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The test's side of the mock API server.
pub struct ApiServerVerifier(ApiServerHandle);

/// A request the reconcile made.
#[derive(Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, e.g. `/apis/tributary.dev/v1alpha1/namespaces/default/eventtopics/orders/status?&force=true&fieldManager=tributary-operator`.
    pub uri: String,
    pub body: Value,
}

/// A client talking to a fresh mock API server.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

impl ApiServerVerifier {
    /// Waits for the next request, checks its method and path (query ignored), answers with
    /// `response` (200 OK) and returns it for further assertions.
    pub async fn expect(&mut self, method: Method, path: &str, response: Value) -> RecordedRequest {
        self.expect_answer(method, path, StatusCode::OK, response).await
    }

    /// Like [`expect`](Self::expect), answering with `status`.
    pub async fn expect_answer(&mut self, method: Method, path: &str, status: StatusCode, response: Value) -> RecordedRequest {
        let request = self.next().await;
        let recorded = &request.recorded;
        let request_path = recorded.uri.split('?').next().unwrap_or_default().to_owned();
        assert_eq!((&recorded.method, request_path.as_str()), (&method, path), "unexpected request: {recorded:#?}");
        request.respond(status, response)
    }

    /// Expects a request for an object that does not exist, and answers 404 as the API server does.
    pub async fn expect_not_found(&mut self, method: Method, path: &str) -> RecordedRequest {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{path} not found"), "reason": "NotFound", "code": 404,
        });
        self.expect_answer(method, path, StatusCode::NOT_FOUND, status).await
    }

    /// Expects an Event to be published for the object and returns its body.
    pub async fn expect_event(&mut self, namespace: &str) -> Value {
        let request = self.next().await;
        let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
        let recorded = &request.recorded;
        assert_eq!(
            (&recorded.method, recorded.uri.split('?').next().unwrap_or_default()),
            (&Method::POST, path.as_str()),
            "expected an Event: {recorded:#?}"
        );
        let body = request.recorded.body.clone();
        request.respond(StatusCode::CREATED, body).body
    }

    /// Asserts the reconcile made no further request.
    pub async fn expect_no_more_requests(mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(100), self.0.next_request()).await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }

    async fn next(&mut self) -> PendingRequest {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the reconcile made no request within 5s")
            .expect("the client was dropped");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("request body is JSON") };
        let uri = parts.uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default();
        assert_granted(&parts.method, &parts.uri);
        PendingRequest { recorded: RecordedRequest { method: parts.method, uri, body }, send }
    }
}

/// Fails the test when the chart's RBAC (the table in [`crate::rbac`]) would refuse the request:
/// the controllers make no request the operator is not granted.
fn assert_granted(method: &Method, uri: &http::Uri) {
    let access = tributary_testkit::api_server::access(method.as_str(), uri.path(), uri.query().unwrap_or_default())
        .unwrap_or_else(|| panic!("{method} {uri} names no Kubernetes resource"));
    let permission = (access.group, access.resource, access.verb);
    assert!(
        crate::rbac::granted().contains(&permission),
        "{method} {uri} needs {permission:?}, which the operator's ClusterRole and Role (rbac::CLUSTER_RULES, LEASE_RULES) do not grant"
    );
}

struct PendingRequest {
    recorded: RecordedRequest,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

impl PendingRequest {
    fn respond(self, status: StatusCode, body: Value) -> RecordedRequest {
        let bytes = serde_json::to_vec(&body).expect("response serializes");
        let response = Response::builder().status(status).body(Body::from(bytes)).expect("valid response");
        self.send.send_response(response);
        self.recorded
    }
}

/// `object` as the API server stores it: with a uid (`uid-<name>`), generation 1 and a creation
/// time (`created_at`, in seconds since the epoch), which decides who is older in a conflict.
pub fn stored<K: Resource>(mut object: K, created_at: i64) -> K {
    let meta = object.meta_mut();
    meta.uid = Some(format!("uid-{}", meta.name.as_deref().unwrap_or_default()));
    meta.generation = Some(1);
    meta.creation_timestamp = Some(Time(Timestamp::from_second(created_at).expect("timestamp")));
    object
}

/// The API server's answer to a write of `object`: the object itself.
pub fn echo(object: &impl Serialize) -> Value {
    serde_json::to_value(object).expect("serializes")
}

/// The condition of `type_` in the body of a status patch.
pub fn find_condition<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status_patch}"))
}

/// Status and reason of the condition of `type_` in the body of a status patch.
pub fn condition<'a>(status_patch: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let condition = find_condition(status_patch, type_);
    (condition["status"].as_str().unwrap_or_default(), condition["reason"].as_str().unwrap_or_default())
}

/// Reconciles an object that does not match the schema (`manifest`) and checks that it is
/// reported, not failed: a warning Event with `reason`, then a status patch at `status_path` whose
/// Ready condition says so at the object's generation, and nothing else.
pub async fn assert_malformed_object_reported<R: Reconciler, F>(
    harness: &Harness<R, F>,
    mut api: ApiServerVerifier,
    manifest: Value,
    status_path: &str,
    reason: &'static str,
) {
    let namespace = manifest["metadata"]["namespace"].as_str().expect("a namespace").to_owned();
    let generation = manifest["metadata"]["generation"].clone();
    let guard: DeserializeGuard<R::Object> = serde_json::from_value(manifest).expect("a guard always deserializes");
    assert!(guard.0.is_err(), "the manifest must not parse");
    let status_path = status_path.to_owned();
    let scenario = tokio::spawn(async move {
        let event = api.expect_event(&namespace).await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some(reason)));
        let status = api.expect(Method::PATCH, &status_path, json!({})).await;
        assert_eq!(condition(&status.body, "Ready"), ("False", reason));
        assert_eq!(status.body["status"]["observedGeneration"], generation);
        api.expect_no_more_requests().await;
    });
    let reconciled = controller_support::reconcile(Arc::new(guard), harness.context.clone()).await;
    assert_eq!(reconciled.expect("reported, not failed"), Action::await_change());
    scenario.await.expect("scenario ran");
}

/// The test broker's bootstrap servers (`TRIBUTARY_BOOTSTRAP_SERVERS`). Without it, broker tests
/// skip (after saying so), unless the run is strict, where a missing broker fails them.
pub fn test_bootstrap_servers() -> Option<String> {
    tributary_testkit::prerequisite::required_env("broker test", "TRIBUTARY_BOOTSTRAP_SERVERS")
}

/// A Kafka name no other test (or earlier run against the same broker) uses.
pub fn unique_name(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("it-{name}-{}-{nanos}", std::process::id())
}
