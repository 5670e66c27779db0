//! An in-memory Kubernetes API server on a loopback port, speaking the real HTTP protocol, so
//! that a real `kube::Client` (and the binaries, through a kubeconfig) run their whole path
//! against it: list and watch with resource versions, get, create, replace with optimistic
//! concurrency, server-side apply, status subresources, finalizers and deletion.
//!
//! What it does as the API server does:
//! - every write bumps one cluster-wide `resourceVersion`; a replace or apply that names an older
//!   one fails with `409 Conflict`; a create of an existing name fails with `409 AlreadyExists`;
//! - `metadata.generation` starts at 1 and moves when anything but metadata and status changes;
//! - writes to the main resource keep the status, writes to `/status` change only the status;
//! - a delete of an object with finalizers sets `deletionTimestamp`; the object goes when its
//!   last finalizer is removed;
//! - a watch replays every event after the `resourceVersion` it names (`410 Gone` when that is
//!   older than the history kept), then streams live events until `timeoutSeconds`;
//! - label selectors (`k`, `!k`, `k=v`, `k==v`, `k!=v`) filter lists and watches.
//!
//! What it simplifies, and tests must not rely on: server-side apply merges maps and replaces
//! lists without tracking field managers (so it never reports an apply conflict and does not
//! remove fields a manager stopped applying), strategic merge patches are merge patches, there is
//! no garbage collector for owner references, no admission (CRD schemas and CEL rules are not
//! checked) and no authentication. `limit` is ignored, as the real server does for lists served
//! from its watch cache.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How many events a watch can resume from; older resource versions get `410 Gone`.
const HISTORY: usize = 200_000;

/// Identifies a collection: `group/version/plural` (`/v1/plural` for the core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey(String);

impl ResourceKey {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        ResourceKey(format!("{group}/{version}/{plural}"))
    }

    fn group(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    fn plural(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

type ObjectKey = (ResourceKey, String, String);

/// A request as RBAC authorizes it: the API group (empty for the core group), the resource
/// (`<plural>/status` for the status subresource) and the verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl Access {
    pub fn new(group: &str, resource: &str, verb: &str) -> Self {
        Access { group: group.to_owned(), resource: resource.to_owned(), verb: verb.to_owned() }
    }
}

/// What the API server authorizes a request of `method` to `path` (with `query`, undecoded) as,
/// or `None` for a path that names no resource. A server-side apply that creates its object also
/// needs `create`, which only the server knows; it records that itself.
pub fn access(method: &str, path: &str, query: &str) -> Option<Access> {
    let target = parse_path(path)?;
    let watching = query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1");
    let verb = match (method, &target.name) {
        ("GET", None) if watching => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => return None,
    };
    let plural = target.resource.plural();
    let resource = if target.status { format!("{plural}/status") } else { plural.to_owned() };
    Some(Access::new(target.resource.group(), &resource, verb))
}

#[derive(Debug, Clone)]
struct WatchEvent {
    resource_version: u64,
    resource: ResourceKey,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    resource_version: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<WatchEvent>,
    requests: BTreeMap<String, u64>,
    accesses: BTreeSet<Access>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<WatchEvent>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts one on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (events, _) = broadcast::channel(65_536);
        let shared = Arc::new(Shared { store: Mutex::new(Store::default()), events });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer { address, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A client of this server, as `kube::Client::try_default` would build from its kubeconfig.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap_or_else(|_| unreachable!("a loopback URL parses")));
        kube::Client::try_from(config).unwrap_or_else(|error| panic!("client for the fake API server: {error}"))
    }

    /// A kubeconfig naming this server, for running a binary against it.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Creates (or replaces) an object directly, as another client would; returns it as stored.
    pub fn put(&self, resource: &ResourceKey, object: Value) -> Value {
        let namespace = string_at(&object, "/metadata/namespace");
        let name = string_at(&object, "/metadata/name");
        let mut store = self.shared.lock();
        let key = (resource.clone(), namespace, name);
        let existing = store.objects.get(&key).cloned();
        store.write(&self.shared.events, key, existing.as_ref(), object)
    }

    pub fn get(&self, resource: &ResourceKey, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().objects.get(&(resource.clone(), namespace.to_owned(), name.to_owned())).cloned()
    }

    /// How many objects of a collection `matches`, without copying them.
    pub fn count(&self, resource: &ResourceKey, mut matches: impl FnMut(&Value) -> bool) -> usize {
        let store = self.shared.lock();
        store.objects.iter().filter(|((kind, _, _), object)| kind == resource && matches(object)).count()
    }

    /// How many requests of `method` reached `resource` (e.g. `("PATCH", key)`), counted by verb.
    pub fn requests(&self, method: &str, resource: &ResourceKey) -> u64 {
        self.shared.lock().requests.get(&format!("{method} {}", resource.0)).copied().unwrap_or_default()
    }

    /// Every access the requests so far needed, as RBAC would authorize them.
    pub fn accesses(&self) -> BTreeSet<Access> {
        self.shared.lock().accesses.clone()
    }
}

fn string_at(object: &Value, pointer: &str) -> String {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A request path taken apart.
#[derive(Debug)]
struct Target {
    resource: ResourceKey,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target { resource: ResourceKey::new(group, version, plural), namespace, name, status })
}

fn query_map(request: &Request) -> BTreeMap<String, String> {
    let query = request.uri().query().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    None => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error answer, as the API server's `Status` object.
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        status_error(self.code, self.reason, self.message)
    }
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let Some(target) = parse_path(request.uri().path()) else {
        return status_error(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", request.uri().path()));
    };
    let query = query_map(&request);
    let method = request.method().clone();
    {
        let mut store = shared.lock();
        store.requests.entry(format!("{method} {}", target.resource.0)).and_modify(|count| *count += 1).or_insert(1);
        store.accesses.extend(access(method.as_str(), request.uri().path(), request.uri().query().unwrap_or_default()));
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let body = match axum::body::to_bytes(request.into_body(), 64 << 20).await {
        Ok(body) => body,
        Err(error) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    };
    match (method, &target.name) {
        (Method::GET, None) if query.get("watch").is_some_and(|watch| watch == "true" || watch == "1") => watch(&shared, &target, &query),
        (Method::GET, None) => list(&shared, &target, &query),
        (Method::GET, Some(name)) => {
            let key = (target.resource.clone(), target.namespace.clone().unwrap_or_default(), name.clone());
            match shared.lock().objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => not_found(&target, name),
            }
        }
        (Method::POST, None) => create(&shared, &target, &body),
        (Method::PUT, Some(name)) => replace(&shared, &target, name, &body),
        (Method::PATCH, Some(name)) => patch(&shared, &target, name, &content_type, &query, &body),
        (Method::DELETE, Some(name)) => delete(&shared, &target, name),
        (method, _) => status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} is not supported here")),
    }
}

fn not_found(target: &Target, name: &str) -> Response {
    status_error(StatusCode::NOT_FOUND, "NotFound", format!("{} {name:?} not found", target.resource.0))
}

fn parse_body(body: &Bytes) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|error| Failure {
        code: StatusCode::BAD_REQUEST,
        reason: "BadRequest",
        message: format!("body is not JSON: {error}"),
    })
}

fn list(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let selector = match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default()) {
        Ok(selector) => selector,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let store = shared.lock();
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((resource, namespace, _), object)| {
            *resource == target.resource && target.namespace.as_ref().is_none_or(|wanted| wanted == namespace) && selector.matches(object)
        })
        .map(|(_, object)| object)
        .collect();
    let body = json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": { "resourceVersion": store.resource_version.to_string() },
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn watch(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let selector = match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default()) {
        Ok(selector) => selector,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|seconds| seconds.parse().ok()).unwrap_or(1800));
    let store = shared.lock();
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => store.resource_version,
        Some(version) => match version.parse::<u64>() {
            Ok(version) => version,
            Err(_) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", format!("resourceVersion {version:?} is not a number")),
        },
    };
    if store.history.front().is_some_and(|oldest| oldest.resource_version > since + 1) && store.history.len() >= HISTORY {
        return status_error(StatusCode::GONE, "Expired", format!("too old resource version: {since}"));
    }
    // Subscribing while the store is locked: nothing written after the replayed history is missed.
    let live = shared.events.subscribe();
    let replay: Vec<WatchEvent> = store.history.iter().filter(|event| event.resource_version > since).cloned().collect();
    drop(store);
    let resource = target.resource.clone();
    let namespace = target.namespace.clone();
    let wanted = move |event: &WatchEvent| {
        event.resource == resource && namespace.as_ref().is_none_or(|wanted| *wanted == event.namespace) && selector.matches(&event.object)
    };
    let wanted_live = wanted.clone();
    let replayed = futures::stream::iter(replay.into_iter().filter(wanted));
    // A watcher that falls too far behind is closed, as the real server does; the client lists again.
    let live = tokio_stream_of(live)
        .take_while(|event| std::future::ready(event.is_some()))
        .filter_map(move |event| std::future::ready(event.filter(|event| wanted_live(event))));
    let lines = replayed
        .chain(live)
        .map(|event| Ok::<_, Infallible>(Bytes::from(format!("{}\n", json!({ "type": event.kind, "object": event.object })))));
    let deadline = tokio::time::sleep(timeout);
    let body = Body::from_stream(lines.take_until(deadline));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|error| status_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", error.to_string()))
}

/// The live events as a stream: `None` once the receiver lagged or the server is gone.
fn tokio_stream_of(receiver: broadcast::Receiver<WatchEvent>) -> impl futures::Stream<Item = Option<WatchEvent>> {
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(event) => Some((Some(event), Some(receiver))),
            Err(_) => Some((None, None)),
        }
    })
}

fn create(shared: &Shared, target: &Target, body: &Bytes) -> Response {
    let mut object = match parse_body(body) {
        Ok(object) => object,
        Err(failure) => return failure.into_response(),
    };
    let name = string_at(&object, "/metadata/name");
    if name.is_empty() {
        return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value".into());
    }
    let namespace = target.namespace.clone().unwrap_or_default();
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = Value::String(namespace.clone());
    }
    let mut store = shared.lock();
    let key = (target.resource.clone(), namespace, name.clone());
    if store.objects.contains_key(&key) {
        return status_error(StatusCode::CONFLICT, "AlreadyExists", format!("{} {name:?} already exists", target.resource.0));
    }
    let stored = store.write(&shared.events, key, None, object);
    json_response(StatusCode::CREATED, &stored)
}

fn replace(shared: &Shared, target: &Target, name: &str, body: &Bytes) -> Response {
    let object = match parse_body(body) {
        Ok(object) => object,
        Err(failure) => return failure.into_response(),
    };
    let mut store = shared.lock();
    let key = (target.resource.clone(), target.namespace.clone().unwrap_or_default(), name.to_owned());
    let Some(existing) = store.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    if let Err(failure) = check_version(&existing, &object, target, name) {
        return failure.into_response();
    }
    let merged = if target.status { with_status_of(&existing, &object) } else { with_status_of(&object, &existing) };
    let stored = store.write(&shared.events, key, Some(&existing), merged);
    json_response(StatusCode::OK, &stored)
}

fn patch(shared: &Shared, target: &Target, name: &str, content_type: &str, query: &BTreeMap<String, String>, body: &Bytes) -> Response {
    let patch = match parse_body(body) {
        Ok(patch) => patch,
        Err(failure) => return failure.into_response(),
    };
    let apply = content_type.starts_with("application/apply-patch");
    if !apply && !content_type.starts_with("application/merge-patch") && !content_type.starts_with("application/strategic-merge-patch") {
        return status_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", format!("patch type {content_type:?}"));
    }
    if apply && query.get("fieldManager").is_none_or(String::is_empty) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value".into(),
        );
    }
    let mut store = shared.lock();
    let key = (target.resource.clone(), target.namespace.clone().unwrap_or_default(), name.to_owned());
    let existing = store.objects.get(&key).cloned();
    let base = match (&existing, apply && !target.status) {
        (Some(existing), _) => existing.clone(),
        (None, true) => {
            // An apply that creates its object is authorized as a create as well.
            store.accesses.insert(Access::new(target.resource.group(), target.resource.plural(), "create"));
            json!({ "metadata": { "name": name } })
        }
        (None, false) => return not_found(target, name),
    };
    if let Err(failure) = check_version(&base, &patch, target, name) {
        return failure.into_response();
    }
    let mut merged = base.clone();
    if target.status {
        if let Some(status) = patch.get("status") {
            merge(&mut merged["status"], status);
        }
    } else {
        let mut without_status = patch.clone();
        if let Some(fields) = without_status.as_object_mut() {
            fields.remove("status");
        }
        merge(&mut merged, &without_status);
        if let Some(namespace) = &target.namespace {
            merged["metadata"]["namespace"] = Value::String(namespace.clone());
        }
    }
    let stored = store.write(&shared.events, key, existing.as_ref(), merged);
    json_response(StatusCode::OK, &stored)
}

fn delete(shared: &Shared, target: &Target, name: &str) -> Response {
    let mut store = shared.lock();
    let key = (target.resource.clone(), target.namespace.clone().unwrap_or_default(), name.to_owned());
    let Some(existing) = store.objects.get(&key).cloned() else {
        return not_found(target, name);
    };
    let mut marked = existing.clone();
    if marked.pointer("/metadata/deletionTimestamp").is_none() {
        marked["metadata"]["deletionTimestamp"] =
            Value::String(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default().to_string());
    }
    let stored = store.write(&shared.events, key, Some(&existing), marked);
    json_response(StatusCode::OK, &stored)
}

/// A write that names a `resourceVersion` succeeds only against that version.
fn check_version(existing: &Value, incoming: &Value, target: &Target, name: &str) -> Result<(), Failure> {
    match incoming.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        Some(version) if Some(version) != existing.pointer("/metadata/resourceVersion").and_then(Value::as_str) => Err(Failure {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                target.resource.0
            ),
        }),
        _ => Ok(()),
    }
}

/// `object` with the status of `source` (or none).
fn with_status_of(object: &Value, source: &Value) -> Value {
    let mut object = object.clone();
    if let Some(fields) = object.as_object_mut() {
        match source.get("status") {
            Some(status) => fields.insert("status".into(), status.clone()),
            None => fields.remove("status"),
        };
    }
    object
}

/// JSON merge patch (RFC 7386): maps merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, value) in patch {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

impl Store {
    /// Stores `object` under `key` with fresh metadata, records the event and returns the stored
    /// object; an object marked for deletion whose finalizers are gone is removed instead.
    fn write(&mut self, events: &broadcast::Sender<WatchEvent>, key: ObjectKey, existing: Option<&Value>, mut object: Value) -> Value {
        self.resource_version += 1;
        let version = self.resource_version;
        let metadata = object["metadata"].as_object_mut().map(std::mem::take).unwrap_or_default();
        let mut metadata = Value::Object(metadata);
        metadata["name"] = Value::String(key.2.clone());
        if !key.1.is_empty() {
            metadata["namespace"] = Value::String(key.1.clone());
        }
        metadata["resourceVersion"] = Value::String(version.to_string());
        let generation = match existing {
            None => {
                metadata["uid"] = Value::String(format!("00000000-0000-4000-8000-{version:012x}"));
                metadata["creationTimestamp"] =
                    Value::String(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default().to_string());
                1
            }
            Some(existing) => {
                for kept in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    if let Some(value) = existing.pointer(&format!("/metadata/{kept}")) {
                        metadata[kept] = value.clone();
                    }
                }
                let old = existing.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                if spec_of(existing) != spec_of(&object) {
                    old + 1
                } else {
                    old
                }
            }
        };
        metadata["generation"] = json!(generation);
        if metadata.get("finalizers").is_some_and(|finalizers| finalizers.as_array().is_some_and(Vec::is_empty)) {
            if let Some(fields) = metadata.as_object_mut() {
                fields.remove("finalizers");
            }
        }
        object["metadata"] = metadata;
        let going = object.pointer("/metadata/deletionTimestamp").is_some() && object.pointer("/metadata/finalizers").is_none();
        let kind = match (existing, going) {
            (_, true) => "DELETED",
            (None, false) => "ADDED",
            (Some(_), false) => "MODIFIED",
        };
        if going {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        if !(going && existing.is_none()) {
            let event = WatchEvent { resource_version: version, resource: key.0, namespace: key.1, kind, object: object.clone() };
            if self.history.len() >= HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
            let _ = events.send(event);
        }
        object
    }
}

/// What `metadata.generation` tracks: everything but metadata and status.
fn spec_of(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(fields) = object.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    object
}

/// A label selector of equality terms.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<Term>);

#[derive(Debug, Clone)]
enum Term {
    Exists(String),
    Absent(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| {
                if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                    Err(format!("label selector {term:?}: set-based terms are not supported by the fake API server"))
                } else if let Some((key, value)) = term.split_once("!=") {
                    Ok(Term::NotEquals(key.trim().into(), value.trim().into()))
                } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                    Ok(Term::Equals(key.trim().into(), value.trim().into()))
                } else if let Some(key) = term.strip_prefix('!') {
                    Ok(Term::Absent(key.trim().into()))
                } else {
                    Ok(Term::Exists(term.into()))
                }
            })
            .collect::<Result<_, _>>()
            .map(Selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|labels| labels.get(key)).and_then(Value::as_str);
        self.0.iter().all(|term| match term {
            Term::Exists(key) => label(key).is_some(),
            Term::Absent(key) => label(key).is_none(),
            Term::Equals(key, value) => label(key) == Some(value.as_str()),
            Term::NotEquals(key, value) => label(key) != Some(value.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};

    use super::*;

    fn config_maps() -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps")
    }

    fn config_map(name: &str) -> DynamicObject {
        serde_json::from_value(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "a": "1" } }))
            .expect("a ConfigMap")
    }

    #[tokio::test]
    async fn create_get_replace_with_conflicts_as_the_api_server_answers() {
        let server = FakeApiServer::start().await.expect("starts");
        let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "team", &config_maps());
        let created = api.create(&PostParams::default(), &config_map("one")).await.expect("created");
        assert_eq!(created.metadata.generation, Some(1));
        let again = api.create(&PostParams::default(), &config_map("one")).await.expect_err("exists");
        assert!(matches!(again, kube::Error::Api(ref status) if status.code == 409 && status.reason == "AlreadyExists"), "{again:?}");

        let mut changed = created.clone();
        changed.data["data"]["a"] = json!("2");
        let replaced = api.replace("one", &PostParams::default(), &changed).await.expect("replaced");
        assert_eq!(replaced.metadata.generation, Some(2));
        // The same old resourceVersion again: someone else's write won.
        let stale = api.replace("one", &PostParams::default(), &changed).await.expect_err("stale");
        assert!(matches!(stale, kube::Error::Api(ref status) if status.code == 409 && status.reason == "Conflict"), "{stale:?}");
        let missing = api.get("two").await.expect_err("missing");
        assert!(matches!(missing, kube::Error::Api(ref status) if status.code == 404), "{missing:?}");
    }

    #[tokio::test]
    async fn apply_creates_merges_and_status_is_a_subresource() {
        let server = FakeApiServer::start().await.expect("starts");
        let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "team", &config_maps());
        let params = PatchParams::apply("test").force();
        let body =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "one" }, "data": { "a": "1" }, "status": { "x": 1 } });
        let first = api.patch("one", &params, &Patch::Apply(&body)).await.expect("applied");
        assert_eq!(first.data.get("status"), None, "a main-resource write does not set the status");
        let status = json!({ "apiVersion": "v1", "kind": "ConfigMap", "status": { "ready": true } });
        let second = api.patch_status("one", &params, &Patch::Apply(&status)).await.expect("status applied");
        assert_eq!(second.data["status"]["ready"], json!(true));
        assert_eq!(second.metadata.generation, Some(1), "a status write keeps the generation");
        let without_manager = api.patch("one", &PatchParams::default(), &Patch::Apply(&body)).await.expect_err("needs a field manager");
        assert!(matches!(without_manager, kube::Error::Api(ref status) if status.code == 400), "{without_manager:?}");
    }

    #[tokio::test]
    async fn deletion_waits_for_finalizers_and_watches_see_every_step() {
        let server = FakeApiServer::start().await.expect("starts");
        let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "team", &config_maps());
        let mut object = config_map("one");
        object.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        let created = api.create(&PostParams::default(), &object).await.expect("created");
        let version = created.metadata.resource_version.clone().expect("a version");
        let mut events = api.watch(&kube::api::WatchParams::default().timeout(5), &version).await.expect("watches").boxed();

        api.delete("one", &Default::default()).await.expect("delete accepted");
        assert!(api.get("one").await.expect("still there").metadata.deletion_timestamp.is_some());
        let release = json!({ "metadata": { "finalizers": null } });
        api.patch("one", &PatchParams::default(), &Patch::Merge(&release)).await.expect("finalizer removed");
        assert!(api.get_opt("one").await.expect("answers").is_none(), "gone once the last finalizer went");

        let mut kinds = Vec::new();
        while let Some(Ok(event)) = events.next().await {
            kinds.push(match event {
                kube::api::WatchEvent::Modified(_) => "MODIFIED",
                kube::api::WatchEvent::Deleted(_) => "DELETED",
                kube::api::WatchEvent::Added(_) => "ADDED",
                _ => "OTHER",
            });
            if kinds.len() == 2 {
                break;
            }
        }
        assert_eq!(kinds, ["MODIFIED", "DELETED"]);
    }

    #[test]
    fn label_selectors_filter_by_equality_and_existence() {
        let object = json!({ "metadata": { "labels": { "app": "a", "tier": "web" } } });
        assert!(Selector::parse("app=a,tier").expect("parses").matches(&object));
        assert!(Selector::parse("app==a,!missing").expect("parses").matches(&object));
        assert!(!Selector::parse("app!=a").expect("parses").matches(&object));
        assert!(Selector::parse("app in (a)").is_err());
    }

    #[test]
    fn paths_name_resource_namespace_object_and_subresource() {
        let target = parse_path("/apis/tributary.dev/v1alpha1/namespaces/team/eventtopics/orders/status").expect("parses");
        assert_eq!(target.resource, ResourceKey::new("tributary.dev", "v1alpha1", "eventtopics"));
        assert_eq!((target.namespace.as_deref(), target.name.as_deref(), target.status), (Some("team"), Some("orders"), true));
        let namespaces = parse_path("/api/v1/namespaces/team").expect("parses");
        assert_eq!((namespaces.resource, namespaces.name.as_deref()), (ResourceKey::new("", "v1", "namespaces"), Some("team")));
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
    }
}
