//! Checks a manifest the way the apiserver would before it ever reaches the operator: the CRD's
//! OpenAPI schema (types, required fields, enums, ranges, patterns, unknown fields) and its CEL
//! rules (`x-kubernetes-validations`), with schema defaults applied first.
//!
//! The offline `apply` uses this so that a file it accepts is one `kubectl apply` accepts too, and
//! the tests use it to prove that bad input is rejected by the CRD itself.

use std::fmt;

use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use kube::core::{cel::Validator, CustomResourceExt};
use serde_json::Value;

use crate::patterns;

/// One reason a manifest is invalid, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `spec.partitions`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CEL rule messages often name their field already ("spec.delivery.sink is required …").
        let names_itself = self.message.strip_prefix(self.field.as_str()).is_some_and(|rest| rest.starts_with(' '));
        if self.field.is_empty() || names_itself {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Validates `object` (a whole manifest) against the CRD of `K`; `old` is the previous version of
/// the object, for transition rules such as "partitions never shrink".
pub fn validate_manifest<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
    let schema = openapi_schema::<K>();
    let object = without_nulls(object);
    let mut errors = Vec::new();
    structural_errors(&schema, &object, "", &mut errors);
    errors.extend(openapi_errors(&schema, &object));
    // CEL rules assume a structurally valid object; the apiserver only runs them after the
    // schema passed, so doing the same keeps messages about the real cause.
    if errors.is_empty() {
        let old = old.map(without_nulls);
        if let Err(cel_errors) = Validator::new().validate(&schema, &object, old.as_ref()) {
            errors.extend(
                cel_errors
                    .iter()
                    .map(|error| FieldError { field: error.field_path.trim_start_matches('.').to_owned(), message: error.message.clone() }),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The CRD's `openAPIV3Schema`, as JSON.
fn openapi_schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions.first().and_then(|version| version.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// The apiserver treats an explicit `null` as "unset"; so do we.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// What the apiserver checks beyond OpenAPI: fields the schema does not know (it drops them, and
/// `kubectl apply` refuses them under strict field validation; either way a typo such as
/// `partiton` would be silently ignored) and duplicate entries in list-maps and sets.
fn structural_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                // Every object has these; CRD schemas leave them implicit.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(child_schema), _) | (None, Some(child_schema)) => structural_errors(child_schema, child, &child_path, errors),
                    // Embedded ObjectMeta has no properties in CRD schemas; the apiserver checks it.
                    (None, None) if properties.is_none() => {}
                    (None, None) => errors.push(unknown_field(path, key, properties.into_iter().flat_map(|p| p.keys()))),
                }
            }
        }
        Value::Array(items) => {
            duplicate_entries(schema, items, path, errors);
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    structural_errors(item_schema, item, &format!("{path}[{index}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// `unknown field "partitons"; did you mean "partitions"?`, on the object holding it.
fn unknown_field<'a>(path: &str, key: &str, known: impl Iterator<Item = &'a String>) -> FieldError {
    let lowercase = key.to_lowercase();
    // Up to a third of the name may be mistyped (at least two letters), swaps counting once.
    let within = 2.max(key.chars().count() / 3);
    let nearest = known
        .map(|candidate| (strsim::damerau_levenshtein(&lowercase, &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= within)
        .min();
    let message = match nearest {
        Some((_, candidate)) => format!("unknown field {key:?}; did you mean {candidate:?}?"),
        None => format!("unknown field {key:?}"),
    };
    FieldError { field: path.to_owned(), message }
}

/// Entries of a `x-kubernetes-list-type: map` list with the same keys, or of a `set` with the
/// same value.
fn duplicate_entries(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    let key_of = |item: &Value| -> Value {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys = schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array).cloned().unwrap_or_default();
                Value::Array(keys.iter().filter_map(Value::as_str).map(|key| item.get(key).cloned().unwrap_or(Value::Null)).collect())
            }
            Some("set") => item.clone(),
            _ => Value::Null,
        }
    };
    if !matches!(schema.get("x-kubernetes-list-type").and_then(Value::as_str), Some("map" | "set")) {
        return;
    }
    let keys: Vec<Value> = items.iter().map(key_of).collect();
    for (index, key) in keys.iter().enumerate() {
        if let Some(first) = keys[..index].iter().position(|earlier| earlier == key) {
            errors.push(FieldError {
                field: format!("{path}[{index}]"),
                message: format!("duplicate entry: {key} is already listed at {path}[{first}]"),
            });
        }
    }
}

/// OpenAPI v3 constraints. CRD schemas are a subset of JSON Schema draft 4 plus `nullable` and
/// `x-kubernetes-*` extensions, which draft 4 validation ignores.
fn openapi_errors(schema: &Value, object: &Value) -> Vec<FieldError> {
    let validator = match jsonschema::draft4::options().should_validate_formats(true).build(schema) {
        Ok(validator) => validator,
        Err(error) => return vec![FieldError { field: String::new(), message: format!("the CRD schema itself is invalid: {error}") }],
    };
    validator.iter_errors(object).map(|error| field_error(schema, &error)).collect()
}

/// The validator's error, worded for people where its own wording is not: limits of integer
/// fields without `.0`, patterns in words (see [`patterns`]), every allowed value, a missing
/// field by its own path.
fn field_error(schema: &Value, error: &ValidationError) -> FieldError {
    let field = pointer_to_path(error.instance_path().as_str());
    let value = error.instance();
    let message = match error.kind() {
        ValidationErrorKind::Required { property } => {
            let property = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            let field = if field.is_empty() { property } else { format!("{field}.{property}") };
            return FieldError { message: format!("{field} is required"), field };
        }
        ValidationErrorKind::Minimum { limit } => format!("{value} is less than the minimum of {}", limit_text(schema, error, limit)),
        ValidationErrorKind::Maximum { limit } => format!("{value} is greater than the maximum of {}", limit_text(schema, error, limit)),
        ValidationErrorKind::Pattern { pattern } => match patterns::find(pattern) {
            Some(pattern) => format!("{value} is not {}", pattern.expected),
            None => error.to_string(),
        },
        ValidationErrorKind::Enum { options } => {
            // `null` stands for "unset" in nullable fields; it is no value to offer.
            let options: Vec<String> = options.as_array().into_iter().flatten().filter(|o| !o.is_null()).map(Value::to_string).collect();
            match options.split_last() {
                Some((last, [])) => format!("{value} is not {last}"),
                Some((last, rest)) => format!("{value} is not one of {} or {last}", rest.join(", ")),
                None => error.to_string(),
            }
        }
        _ => error.to_string(),
    };
    FieldError { field, message }
}

/// A numeric limit as the field's type reads: `1`, not `1.0`, for an integer field.
fn limit_text(schema: &Value, error: &ValidationError, limit: &Value) -> String {
    let keyword = error.schema_path().as_str();
    let field_schema = keyword.rsplit_once('/').and_then(|(parent, _)| schema.pointer(parent));
    let integer_field = field_schema.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("integer");
    match limit.as_f64() {
        Some(limit) if integer_field && limit.fract() == 0.0 => format!("{}", limit as i64),
        _ => limit.to_string(),
    }
}

/// `/spec/deadLetter/partitions` → `spec.deadLetter.partitions`; `/spec/topics/0` → `spec.topics[0]`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    path
}

/// Whether a JSON Schema (draft 4) accepts a value; for tests of the patterns the CRDs carry.
pub fn json_schema_accepts(schema: &Value, value: &Value) -> bool {
    jsonschema::draft4::options().build(schema).map(|validator| validator.is_valid(value)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(pointer_to_path("/spec/deadLetter/partitions"), "spec.deadLetter.partitions");
        assert_eq!(pointer_to_path("/spec/topics/0/name"), "spec.topics[0].name");
        assert_eq!(pointer_to_path(""), "");
    }

    /// The messages of `spec` in an EventTopic (or, with `kind`, another Tributary kind).
    fn rejections<K: CustomResourceExt>(kind: &str, spec: Value) -> Vec<String> {
        let object = serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": kind, "metadata": { "name": "orders" }, "spec": spec,
        });
        validate_manifest::<K>(&object, None).expect_err("invalid").iter().map(FieldError::to_string).collect()
    }

    fn topic_messages(spec: Value) -> Vec<String> {
        rejections::<crate::EventTopic>("EventTopic", spec)
    }

    #[test]
    fn integer_limits_read_as_integers() {
        let spec = serde_json::json!({ "partitions": -3, "replicationFactor": 40000 });
        assert_eq!(
            topic_messages(spec),
            ["spec.partitions: -3 is less than the minimum of 1", "spec.replicationFactor: 40000 is greater than the maximum of 32767"]
        );
    }

    #[test]
    fn patterns_are_described_in_words() {
        assert_eq!(
            topic_messages(serde_json::json!({ "retention": "7 days" })),
            [format!("spec.retention: \"7 days\" is not {}", patterns::RETENTION.expected)]
        );
        let message = &topic_messages(serde_json::json!({ "retention": "7 days" }))[0];
        assert!(message.contains("use a number and a unit ms, s, m, h, d or w"), "{message}");
        assert!(!message.contains('^'), "no regex: {message}");
    }

    #[test]
    fn every_pattern_of_every_crd_has_words() {
        fn patterns_in(schema: &Value, found: &mut Vec<String>) {
            match schema {
                Value::Object(map) => {
                    found.extend(map.get("pattern").and_then(Value::as_str).map(str::to_owned));
                    map.values().for_each(|child| patterns_in(child, found));
                }
                Value::Array(items) => items.iter().for_each(|child| patterns_in(child, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        for schema in
            [openapi_schema::<crate::EventTopic>(), openapi_schema::<crate::Subscription>(), openapi_schema::<crate::OutboxRelay>()]
        {
            patterns_in(&schema, &mut found);
        }
        let unused: Vec<_> = patterns::ALL.iter().filter(|pattern| !found.iter().any(|regex| regex == pattern.regex)).collect();
        assert!(unused.is_empty(), "patterns no CRD uses: {unused:?}");
        let undescribed: Vec<_> = found.iter().filter(|regex| patterns::find(regex).is_none()).collect();
        assert!(undescribed.is_empty(), "patterns without words in patterns::ALL: {undescribed:?}");
    }

    #[test]
    fn enum_errors_name_every_allowed_value() {
        let messages = topic_messages(serde_json::json!({ "cleanupPolicy": "keep" }));
        assert_eq!(messages, ["spec.cleanupPolicy: \"keep\" is not one of \"delete\", \"compact\" or \"compact,delete\""]);
    }

    #[test]
    fn a_missing_field_is_named_by_its_path_once() {
        let spec = serde_json::json!({ "topics": [{ "name": "orders" }], "delivery": { "mode": "Push" } });
        let messages = rejections::<crate::Subscription>("Subscription", spec);
        assert_eq!(messages, ["spec.template is required"]);
        let spec =
            serde_json::json!({ "topics": [{ "name": "orders" }], "delivery": { "mode": "Push" }, "template": { "image": "shop:1" } });
        let messages = rejections::<crate::Subscription>("Subscription", spec);
        assert_eq!(messages, ["spec.delivery.sink is required when spec.delivery.mode is Push"]);
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_known_one() {
        let messages = topic_messages(serde_json::json!({ "partitons": 3, "retnetion": "7d", "colour": "blue" }));
        assert_eq!(
            messages,
            [
                "spec: unknown field \"colour\"",
                "spec: unknown field \"partitons\"; did you mean \"partitions\"?",
                "spec: unknown field \"retnetion\"; did you mean \"retention\"?",
            ]
        );
    }

    #[test]
    fn nulls_are_dropped_recursively() {
        let value = serde_json::json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        assert_eq!(without_nulls(&value), serde_json::json!({"b": {"d": 1}, "e": [{}]}));
    }
}
