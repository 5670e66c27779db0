//! Checks a manifest the way the apiserver would before it ever reaches the operator: the CRD's
//! OpenAPI schema (types, required fields, enums, ranges, patterns, unknown fields) and its CEL
//! rules (`x-kubernetes-validations`), with schema defaults applied first.
//!
//! The offline `apply` uses this so that a file it accepts is one `kubectl apply` accepts too, and
//! the tests use it to prove that bad input is rejected by the CRD itself.

use std::fmt;

use kube::core::{cel::Validator, CustomResourceExt};
use serde_json::Value;

/// One reason a manifest is invalid, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `spec.partitions`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
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
                    (None, None) => errors.push(FieldError { field: child_path, message: "unknown field".into() }),
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
    validator
        .iter_errors(object)
        .map(|error| FieldError { field: pointer_to_path(error.instance_path().as_str()), message: error.to_string() })
        .collect()
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

    #[test]
    fn nulls_are_dropped_recursively() {
        let value = serde_json::json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        assert_eq!(without_nulls(&value), serde_json::json!({"b": {"d": 1}, "e": [{}]}));
    }
}
