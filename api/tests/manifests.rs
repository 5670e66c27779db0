//! Test level: manifests (schema + CEL, no cluster).
//!
//! Every example under `examples/` must be accepted by the CRDs exactly as `kubectl apply` would
//! accept it (OpenAPI schema, unknown fields, CEL rules), must parse into its typed object, and
//! must only reference EventTopics it defines. Every file under `api/tests/invalid/` must be
//! rejected, by an error that names the field its header says.
//!
//! `cargo test -p tributary-api --test manifests -- --nocapture` prints every rejection, so the
//! messages users would see can be reviewed.

// Helpers outside the `#[test]` functions fail a test the same way: with a panic and its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tributary_api::validation::{validate_manifest, FieldError};
use tributary_api::{EventTopic, OutboxRelay, Subscription};

/// The README demo creates every example topic (and the Subscriptions' own dead-letter topics) on
/// one test broker; keep it light.
const MAX_DEMO_TOPICS: usize = 30;

const MIN_INVALID_EVENT_TOPICS: usize = 18;
const MIN_INVALID_SUBSCRIPTIONS: usize = 16;
const MIN_INVALID_OUTBOX_RELAYS: usize = 12;

/// The domain folders the README and the demo rely on.
const DOMAINS: [&str; 3] = ["call-exchange", "personal-finance", "trading"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

fn invalid_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/invalid")
}

/// YAML files under `dir`, recursively, sorted, skipping the folders named in `skip`.
fn yaml_files(dir: &Path, skip: &[&Path]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if skip.iter().any(|s| *s == dir) {
            continue;
        }
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(examples_dir()).map(|p| format!("examples/{}", p.display())).unwrap_or_else(|_| path.display().to_string())
}

/// The documents of a multi-document YAML text, as JSON; empty documents are skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", relative(path))))
        .filter(|value| !value.is_null())
        .collect()
}

fn kind_of(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or("<no kind>")
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

/// Runs the CRD checks of the object's kind; any other kind is an error of its own.
fn validate(object: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
    match kind_of(object) {
        "EventTopic" => validate_manifest::<EventTopic>(object, old),
        "Subscription" => validate_manifest::<Subscription>(object, old),
        "OutboxRelay" => validate_manifest::<OutboxRelay>(object, old),
        other => Err(vec![FieldError { field: "kind".into(), message: format!("{other:?} is not a Tributary kind") }]),
    }
}

fn show(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("\n    - {e}")).collect()
}

/// A valid example, parsed into its typed object.
enum Typed {
    Topic(Box<EventTopic>),
    Subscription(Box<Subscription>),
    Relay(Box<OutboxRelay>),
}

fn typed(object: &Value) -> Result<Typed, String> {
    let error = |e: serde_json::Error| e.to_string();
    match kind_of(object) {
        "EventTopic" => serde_json::from_value(object.clone()).map(|o| Typed::Topic(Box::new(o))).map_err(error),
        "Subscription" => serde_json::from_value(object.clone()).map(|o| Typed::Subscription(Box::new(o))).map_err(error),
        "OutboxRelay" => serde_json::from_value(object.clone()).map(|o| Typed::Relay(Box::new(o))).map_err(error),
        other => Err(format!("{other:?} is not a Tributary kind")),
    }
}

/// One valid example document and where it came from.
struct Example {
    file: String,
    /// The domain folder (`call-exchange`), or the file itself for files directly in `examples/`.
    folder: String,
    raw: Value,
    object: Typed,
}

impl Example {
    fn namespace(&self) -> &str {
        str_at(&self.raw, "/metadata/namespace").unwrap_or_default()
    }
    fn name(&self) -> &str {
        str_at(&self.raw, "/metadata/name").unwrap_or_default()
    }
}

/// Every valid example document. Panics, naming every bad document at once, when one is not a
/// valid Tributary object.
fn load_examples() -> Vec<Example> {
    let root = examples_dir();
    let invalid = invalid_dir();
    let mut examples = Vec::new();
    let mut failures = Vec::new();
    for path in yaml_files(&root, &[invalid.as_path()]) {
        let file = relative(&path);
        let inside = path.strip_prefix(&root).expect("under examples/");
        let folder = if inside.components().count() > 1 {
            inside.components().next().expect("first component").as_os_str().to_string_lossy().into_owned()
        } else {
            inside.display().to_string()
        };
        let docs = documents(&path);
        if docs.is_empty() {
            failures.push(format!("{file}: no documents"));
        }
        for (index, raw) in docs.into_iter().enumerate() {
            let at = format!("{file} (document {}, {} {:?})", index + 1, kind_of(&raw), str_at(&raw, "/metadata/name").unwrap_or("?"));
            if str_at(&raw, "/apiVersion") != Some("tributary.dev/v1alpha1") {
                failures.push(format!("{at}: apiVersion must be tributary.dev/v1alpha1"));
            }
            if str_at(&raw, "/metadata/name").is_none_or(str::is_empty) {
                failures.push(format!("{at}: metadata.name is missing"));
            }
            if str_at(&raw, "/metadata/namespace").is_none_or(str::is_empty) {
                failures.push(format!("{at}: metadata.namespace must be set in examples"));
            }
            if let Err(errors) = validate(&raw, None) {
                failures.push(format!("{at}: rejected by the CRD:{}", show(&errors)));
                continue;
            }
            match typed(&raw) {
                Ok(object) => examples.push(Example { file: file.clone(), folder: folder.clone(), raw, object }),
                Err(error) => failures.push(format!("{at}: does not parse into its type: {error}")),
            }
        }
    }
    assert!(failures.is_empty(), "invalid examples:\n{}", failures.join("\n"));
    examples
}

#[test]
fn every_example_is_a_valid_tributary_object() {
    let examples = load_examples();
    let mut per_kind = BTreeMap::<&str, usize>::new();
    for example in &examples {
        *per_kind.entry(kind_of(&example.raw)).or_default() += 1;
    }
    println!("{} valid example objects: {per_kind:?}", examples.len());
    assert!(examples.iter().any(|e| e.file == "examples/quickstart.yaml"), "examples/quickstart.yaml is missing");
}

#[test]
fn every_domain_folder_is_a_complete_topology() {
    let examples = load_examples();
    let folders: BTreeSet<&str> = examples.iter().filter(|e| e.file.matches('/').count() > 1).map(|e| e.folder.as_str()).collect();
    for domain in DOMAINS {
        assert!(folders.contains(domain), "examples/{domain}/ is missing");
    }
    for folder in folders {
        let count = |kind: &str| examples.iter().filter(|e| e.folder == folder && kind_of(&e.raw) == kind).count();
        let (topics, subscriptions, relays) = (count("EventTopic"), count("Subscription"), count("OutboxRelay"));
        println!("examples/{folder}/: {topics} EventTopics, {subscriptions} Subscriptions, {relays} OutboxRelays");
        assert!(topics >= 3, "examples/{folder}/ has {topics} EventTopics, needs at least 3");
        assert!(subscriptions >= 1, "examples/{folder}/ has no Subscription");
        assert!(relays >= 1, "examples/{folder}/ has no OutboxRelay");
    }
}

#[test]
fn example_references_resolve_within_their_folder_and_namespace() {
    let examples = load_examples();
    // (folder, namespace, name) -> the EventTopic.
    let mut topics = BTreeMap::<(&str, &str, &str), &EventTopic>::new();
    for example in &examples {
        if let Typed::Topic(topic) = &example.object {
            let key = (example.folder.as_str(), example.namespace(), example.name());
            assert!(topics.insert(key, topic).is_none(), "{}: EventTopic {:?} is defined twice", example.file, example.name());
        }
    }
    let mut failures = Vec::new();
    for example in &examples {
        let (folder, namespace) = (example.folder.as_str(), example.namespace());
        let lookup = |name: &str| topics.get(&(folder, namespace, name)).copied();
        match &example.object {
            Typed::Subscription(subscription) => {
                let mut partitions = 0;
                for reference in &subscription.spec.topics {
                    match lookup(&reference.name) {
                        Some(topic) => partitions += topic.spec.partitions,
                        None => failures.push(format!(
                            "{}: Subscription {:?} reads EventTopic {:?}, which examples/{folder}/ does not define in namespace {namespace:?}",
                            example.file,
                            example.name(),
                            reference.name
                        )),
                    }
                }
                // A consumer group cannot use more replicas than its topics have partitions.
                let max_replicas = subscription.spec.scaling.max_replicas;
                if partitions > 0 && max_replicas > partitions {
                    failures.push(format!(
                        "{}: Subscription {:?} scales to {max_replicas} replicas but its topics have only {partitions} partitions",
                        example.file,
                        example.name()
                    ));
                }
            }
            Typed::Relay(relay) => {
                for route in &relay.spec.routing.routes {
                    if lookup(&route.event_topic).is_none() {
                        failures.push(format!(
                            "{}: OutboxRelay {:?} routes {:?} to EventTopic {:?}, which examples/{folder}/ does not define in namespace {namespace:?}",
                            example.file,
                            example.name(),
                            route.aggregate_type,
                            route.event_topic
                        ));
                    }
                }
            }
            Typed::Topic(_) => {}
        }
    }
    assert!(failures.is_empty(), "unresolved references:\n{}", failures.join("\n"));
}

#[test]
fn the_demo_creates_a_modest_number_of_distinct_kafka_topics() {
    let examples = load_examples();
    // Kafka topic -> the example that creates it. The demo applies every folder to one broker, so
    // two examples must never claim the same Kafka topic.
    let mut kafka_topics = BTreeMap::<String, String>::new();
    let mut claim = |topic: String, by: String| {
        if let Some(previous) = kafka_topics.insert(topic.clone(), by.clone()) {
            panic!("Kafka topic {topic:?} is created by both {previous} and {by}");
        }
    };
    for example in &examples {
        if let Typed::Topic(topic) = &example.object {
            let by = format!("{} ({})", example.file, example.name());
            assert!(
                topic.spec.replication_factor.is_none() && topic.spec.min_in_sync_replicas.is_none(),
                "{by}: leave replicationFactor and minInSyncReplicas unset, the demo broker has one node"
            );
            claim(topic.requested_topic_name().to_owned(), by.clone());
            if let Some(dead_letter) = topic.requested_dead_letter_name() {
                claim(dead_letter, format!("{by}, dead letters"));
            }
        }
    }
    // A Subscription's own dead-letter topic is one more topic, unless an EventTopic creates it.
    let mut extra = BTreeSet::new();
    for example in &examples {
        if let Typed::Subscription(subscription) = &example.object {
            let sources: Vec<Option<String>> = subscription
                .spec
                .topics
                .iter()
                .map(|reference| {
                    examples.iter().find_map(|other| match &other.object {
                        Typed::Topic(topic) if other.folder == example.folder && other.name() == reference.name => {
                            topic.requested_dead_letter_name()
                        }
                        _ => None,
                    })
                })
                .collect();
            let name = subscription.dead_letter_topic_name(&sources);
            if !kafka_topics.contains_key(&name) {
                extra.insert(name);
            }
        }
    }
    let total = kafka_topics.len() + extra.len();
    println!("the demo creates {total} Kafka topics: {:?} {:?}", kafka_topics.keys().collect::<Vec<_>>(), extra);
    assert!(total <= MAX_DEMO_TOPICS, "the examples create {total} Kafka topics, more than {MAX_DEMO_TOPICS}");
}

#[test]
fn transition_rules_accept_unchanged_and_grown_examples() {
    let examples = load_examples();
    let mut failures = Vec::new();
    for example in &examples {
        let at = format!("{} ({} {:?})", example.file, kind_of(&example.raw), example.name());
        // old == new: an apply that changes nothing must never be rejected.
        if let Err(errors) = validate(&example.raw, Some(&example.raw)) {
            failures.push(format!("{at}: rejected as an update to itself:{}", show(&errors)));
        }
        // Growing partitions is the one allowed change to an EventTopic's shape.
        if let Typed::Topic(topic) = &example.object {
            let mut grown = example.raw.clone();
            grown["spec"]["partitions"] = Value::from(topic.spec.partitions + 1);
            if let Err(errors) = validate(&grown, Some(&example.raw)) {
                failures.push(format!("{at}: rejected growing partitions:{}", show(&errors)));
            }
        }
    }
    assert!(failures.is_empty(), "transition rules reject valid updates:\n{}", failures.join("\n"));
}

/// The `# key: value` header of an invalid example.
struct Expectation {
    field: String,
    message: Option<String>,
    transition: bool,
}

fn expectation(path: &Path) -> Expectation {
    let text = fs::read_to_string(path).expect("readable");
    let mut header = BTreeMap::new();
    for line in text.lines().take_while(|line| line.starts_with('#') || line.trim().is_empty()) {
        if let Some((key, value)) = line.trim_start_matches('#').trim().split_once(':') {
            header.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    let file = relative(path);
    let field = header.get("expect-field").filter(|f| !f.is_empty()).unwrap_or_else(|| panic!("{file}: no `# expect-field:` header"));
    let transition = match header.get("transition").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => panic!("{file}: `# transition:` must be true or false, not {other:?}"),
    };
    Expectation { field: field.clone(), message: header.get("expect-message").cloned(), transition }
}

/// Whether an error is about `field`: it names it (or one of its list items, `spec.topics[1]`
/// for `spec.topics`) as its path or in its message, or it is a schema error on the parent
/// object about the property (`"image" is a required property` at `spec.template` names
/// `spec.template.image`).
fn names_field(error: &FieldError, field: &str) -> bool {
    if error.field == field || error.field.starts_with(&format!("{field}[")) || error.message.contains(field) {
        return true;
    }
    let (parent, property) = match field.rsplit_once('.') {
        Some((parent, property)) => (parent, property),
        None => ("", field),
    };
    error.field == parent && error.message.contains(&format!("\"{property}\""))
}

#[test]
fn every_invalid_example_is_rejected_for_the_reason_its_name_gives() {
    let files = yaml_files(&invalid_dir(), &[]);
    let mut per_kind = BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for path in &files {
        let file = relative(path);
        let expected = expectation(path);
        let docs = documents(path);
        let (old, new) = match (expected.transition, docs.as_slice()) {
            (false, [new]) => (None, new),
            (true, [old, new]) => (Some(old), new),
            (false, docs) => panic!("{file}: holds {} documents; one expected (or `# transition: true` with old and new)", docs.len()),
            (true, docs) => panic!("{file}: a transition holds two documents, old then new, not {}", docs.len()),
        };
        let kind = match kind_of(new) {
            "EventTopic" => "EventTopic",
            "Subscription" => "Subscription",
            "OutboxRelay" => "OutboxRelay",
            other => panic!("{file}: kind {other:?} is not a Tributary kind"),
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            name.starts_with(&format!("{}-", kind.to_lowercase())),
            "{file}: holds a {kind}, so its name must start with {}-",
            kind.to_lowercase()
        );
        *per_kind.entry(kind).or_default() += 1;

        if let Some(old) = old {
            // The old object must be fine on its own, so only the change can be what is rejected.
            if let Err(errors) = validate(old, None) {
                failures.push(format!("{file}: the old object is itself invalid:{}", show(&errors)));
                continue;
            }
            if kind_of(old) != kind {
                failures.push(format!("{file}: old and new objects are of different kinds"));
                continue;
            }
        }
        match validate(new, old) {
            Ok(()) => {
                println!("ACCEPTED {file} (expected an error naming {})", expected.field);
                failures.push(format!("{file}: accepted, expected an error naming {}", expected.field));
            }
            Err(errors) => {
                println!("rejected {file}:{}", show(&errors));
                // Every error must be about the field the file is named for: the rest of the
                // object is valid, so the file proves that one rule.
                let unrelated: Vec<_> = errors.iter().filter(|e| !names_field(e, &expected.field)).cloned().collect();
                if !unrelated.is_empty() {
                    failures.push(format!("{file}: errors not about {}:{}", expected.field, show(&unrelated)));
                }
                if let Some(message) = &expected.message {
                    if !errors.iter().any(|e| names_field(e, &expected.field) && e.message.contains(message.as_str())) {
                        failures.push(format!("{file}: no error about {} says {message:?}:{}", expected.field, show(&errors)));
                    }
                }
                // A transition case must pass as a plain create: it is the change that is wrong.
                if old.is_some() {
                    if let Err(errors) = validate(new, None) {
                        failures.push(format!("{file}: the new object is invalid even without the old one:{}", show(&errors)));
                    }
                }
            }
        }
    }
    println!("{} invalid examples: {per_kind:?}", files.len());
    // Deleting cases must fail the test too.
    for (kind, minimum) in
        [("EventTopic", MIN_INVALID_EVENT_TOPICS), ("Subscription", MIN_INVALID_SUBSCRIPTIONS), ("OutboxRelay", MIN_INVALID_OUTBOX_RELAYS)]
    {
        let count = per_kind.get(kind).copied().unwrap_or_default();
        if count < minimum {
            failures.push(format!("api/tests/invalid/ has {count} {kind} cases, at least {minimum} expected"));
        }
    }
    assert!(failures.is_empty(), "{} problems with the {} invalid examples:\n{}", failures.len(), files.len(), failures.join("\n"));
}
