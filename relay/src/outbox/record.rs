//! An outbox row → a Kafka record with CloudEvents 1.0 binary-mode headers (pure).

use std::collections::BTreeMap;

use super::schema::PayloadFormat;
use crate::producer::OutgoingRecord;

/// One claimed outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: Option<Vec<u8>>,
    /// The headers column, as JSON text.
    pub headers: Option<String>,
    pub topic: Option<String>,
    /// RFC 3339 UTC time the row was written (commit time, within a short transaction).
    pub created_at: String,
    /// Seconds since the epoch of `created_at`, for the commit→ack latency.
    pub created_at_epoch: f64,
    pub attempts: i32,
    /// The relay's sequence number of the row (`tributary_seq`): how the relay updates it.
    pub seq: i64,
}

/// Where rows go: the topic column, the routes by aggregate type, then `<prefix><aggregate type>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub routes: BTreeMap<String, String>,
    pub topic_prefix: Option<String>,
}

/// Why a row cannot become a record. These are the row's own faults: retrying later can only
/// help once someone fixes the configuration or the row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("no topic for aggregate type {0:?}: no topic column value, no route and no topic prefix")]
    Unroutable(String),
    #[error("payload is not valid JSON: {0}")]
    MalformedPayload(String),
    #[error("headers column is not a JSON object of strings: {0}")]
    MalformedHeaders(String),
    #[error("record of {size} bytes exceeds the producer's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

impl RowError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RowError::Unroutable(_) => "unroutable",
            RowError::MalformedPayload(_) => "malformed_payload",
            RowError::MalformedHeaders(_) => "malformed_headers",
            RowError::TooLarge { .. } => "too_large",
        }
    }
}

/// What every record carries besides the row.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    pub routing: Routing,
    pub format: PayloadFormat,
    /// CloudEvents `source`.
    pub source: String,
    /// Largest record the producer accepts (librdkafka `message.max.bytes`).
    pub max_record_bytes: usize,
}

/// Builds the Kafka record of a row: key = aggregate id, value = payload, CloudEvents headers
/// plus the row's own headers (correlation and causation ids pass through).
pub fn to_record(row: &OutboxRow, settings: &RecordSettings) -> Result<OutgoingRecord, RowError> {
    let topic = route(row, &settings.routing)?;
    let content_type = match settings.format {
        PayloadFormat::Json => {
            if let Some(payload) = &row.payload {
                serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|error| RowError::MalformedPayload(error.to_string()))?;
            }
            "application/json"
        }
        PayloadFormat::Binary => "application/octet-stream",
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("ce_specversion".into(), b"1.0".to_vec()),
        ("ce_id".into(), row.id.clone().into_bytes()),
        ("ce_type".into(), row.event_type.clone().into_bytes()),
        ("ce_source".into(), settings.source.clone().into_bytes()),
        ("ce_time".into(), row.created_at.clone().into_bytes()),
        ("ce_subject".into(), row.aggregate_id.clone().into_bytes()),
        ("content-type".into(), content_type.as_bytes().to_vec()),
    ];
    if let Some(text) = &row.headers {
        let extra: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|error| RowError::MalformedHeaders(error.to_string()))?;
        for (name, value) in extra {
            let value = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            // The CloudEvents attributes above are the relay's to set.
            if !headers.iter().any(|(existing, _)| *existing == name) {
                headers.push((name, value.into_bytes()));
            }
        }
    }
    let record = OutgoingRecord { topic, key: row.aggregate_id.clone().into_bytes(), payload: row.payload.clone(), headers };
    let size = record.approximate_size();
    if size > settings.max_record_bytes {
        return Err(RowError::TooLarge { size, limit: settings.max_record_bytes });
    }
    Ok(record)
}

fn route(row: &OutboxRow, routing: &Routing) -> Result<String, RowError> {
    if let Some(topic) = row.topic.as_ref().filter(|topic| !topic.is_empty()) {
        return Ok(topic.clone());
    }
    if let Some(topic) = routing.routes.get(&row.aggregate_type) {
        return Ok(topic.clone());
    }
    match &routing.topic_prefix {
        Some(prefix) => Ok(format!("{prefix}{}", row.aggregate_type)),
        None => Err(RowError::Unroutable(row.aggregate_type.clone())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(id: &str, aggregate_id: &str) -> OutboxRow {
        OutboxRow {
            id: id.into(),
            aggregate_type: "Order".into(),
            aggregate_id: aggregate_id.into(),
            event_type: "orders.created".into(),
            payload: Some(br#"{"total":12}"#.to_vec()),
            headers: None,
            topic: None,
            created_at: "2026-11-24T12:00:00.000000Z".into(),
            created_at_epoch: 0.0,
            attempts: 0,
            seq: 0,
        }
    }

    fn settings(routes: &[(&str, &str)], prefix: Option<&str>) -> RecordSettings {
        RecordSettings {
            routing: Routing {
                routes: routes.iter().map(|(a, t)| (a.to_string(), t.to_string())).collect(),
                topic_prefix: prefix.map(str::to_owned),
            },
            format: PayloadFormat::Json,
            source: "/tributary/shop/orders".into(),
            max_record_bytes: 1_000_000,
        }
    }

    fn header<'a>(record: &'a OutgoingRecord, name: &str) -> Option<&'a str> {
        record.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn record_carries_key_payload_and_cloudevents_headers() {
        let mut with_headers = row("6f1c", "order-7");
        with_headers.headers = Some(r#"{"correlation_id":"c-1","causation_id":"e-0","ce_id":"spoofed","retries":2}"#.into());
        let record = to_record(&with_headers, &settings(&[("Order", "shop.orders")], None)).expect("routable");
        assert_eq!(record.topic, "shop.orders");
        assert_eq!(record.key, b"order-7");
        assert_eq!(record.payload.as_deref(), Some(&br#"{"total":12}"#[..]));
        assert_eq!(header(&record, "ce_specversion"), Some("1.0"));
        assert_eq!(header(&record, "ce_id"), Some("6f1c"));
        assert_eq!(header(&record, "ce_type"), Some("orders.created"));
        assert_eq!(header(&record, "ce_source"), Some("/tributary/shop/orders"));
        assert_eq!(header(&record, "ce_time"), Some("2026-11-24T12:00:00.000000Z"));
        assert_eq!(header(&record, "ce_subject"), Some("order-7"));
        assert_eq!(header(&record, "content-type"), Some("application/json"));
        assert_eq!(header(&record, "correlation_id"), Some("c-1"));
        assert_eq!(header(&record, "causation_id"), Some("e-0"));
        assert_eq!(header(&record, "retries"), Some("2"));
        assert_eq!(record.headers.iter().filter(|(n, _)| n == "ce_id").count(), 1, "row headers cannot override ce_id");
    }

    #[test]
    fn routing_prefers_topic_column_then_route_then_prefix() {
        let mut with_column = row("1", "a");
        with_column.topic = Some("explicit".into());
        let both = settings(&[("Order", "routed")], Some("dce."));
        assert_eq!(to_record(&with_column, &both).expect("ok").topic, "explicit");
        assert_eq!(to_record(&row("1", "a"), &both).expect("ok").topic, "routed");
        assert_eq!(to_record(&row("1", "a"), &settings(&[], Some("dce."))).expect("ok").topic, "dce.Order");
        assert_eq!(to_record(&row("1", "a"), &settings(&[], None)), Err(RowError::Unroutable("Order".into())));
    }

    #[test]
    fn bad_rows_are_reported_not_sent() {
        let mut malformed = row("1", "a");
        malformed.payload = Some(b"{not json".to_vec());
        assert!(matches!(to_record(&malformed, &settings(&[], Some("p."))), Err(RowError::MalformedPayload(_))));
        let mut bad_headers = row("1", "a");
        bad_headers.headers = Some("[1,2]".into());
        assert!(matches!(to_record(&bad_headers, &settings(&[], Some("p."))), Err(RowError::MalformedHeaders(_))));
        let mut large = row("1", "a");
        large.payload = Some(format!("\"{}\"", "x".repeat(2_000_000)).into_bytes());
        assert!(matches!(to_record(&large, &settings(&[], Some("p."))), Err(RowError::TooLarge { .. })));
    }
}
