//! An outbox row → a Kafka record with CloudEvents 1.0 binary-mode headers (pure).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::schema::PayloadFormat;
use crate::producer::OutgoingRecord;

/// One claimed outbox row. The values a record needs are `None` where the application's table
/// holds NULL: such a row cannot be published, and goes through the failure policy.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    pub payload: Option<Vec<u8>>,
    /// The headers column, as JSON text.
    pub headers: Option<String>,
    pub topic: Option<String>,
    /// When the row was written (commit time, within a short transaction).
    pub created_at: Option<SystemTime>,
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
    #[error("the row's {0} is NULL (its column allows NULL; the relay needs a value)")]
    Null(&'static str),
}

impl RowError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RowError::Unroutable(_) => "unroutable",
            RowError::MalformedPayload(_) => "malformed_payload",
            RowError::MalformedHeaders(_) => "malformed_headers",
            RowError::TooLarge { .. } => "too_large",
            RowError::Null(_) => "null_value",
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
    let required = |value: &Option<String>, what| value.clone().ok_or(RowError::Null(what));
    let id = required(&row.id, "event id")?;
    let aggregate_id = required(&row.aggregate_id, "aggregate id")?;
    let event_type = required(&row.event_type, "event type")?;
    let created_at = row.created_at.ok_or(RowError::Null("created-at"))?;
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
        ("ce_id".into(), id.into_bytes()),
        ("ce_type".into(), event_type.into_bytes()),
        ("ce_source".into(), settings.source.clone().into_bytes()),
        ("ce_time".into(), rfc3339_micros(created_at.duration_since(UNIX_EPOCH).unwrap_or_default()).into_bytes()),
        ("ce_subject".into(), aggregate_id.clone().into_bytes()),
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
    let record = OutgoingRecord { topic, key: aggregate_id.into_bytes(), payload: row.payload.clone(), headers };
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
    // Only a row the topic column does not route needs its aggregate type.
    let aggregate_type = row.aggregate_type.as_ref().ok_or(RowError::Null("aggregate type"))?;
    if let Some(topic) = routing.routes.get(aggregate_type) {
        return Ok(topic.clone());
    }
    match &routing.topic_prefix {
        Some(prefix) => Ok(format!("{prefix}{aggregate_type}")),
        None => Err(RowError::Unroutable(aggregate_type.clone())),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC) of a time since the epoch.
fn rfc3339_micros(since_epoch: Duration) -> String {
    let seconds = since_epoch.as_secs();
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX - 719_468) + 719_468;
    let (era, day_of_era) = (days.div_euclid(146_097), days.rem_euclid(146_097));
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:06}Z", since_epoch.subsec_micros())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(id: &str, aggregate_id: &str) -> OutboxRow {
        OutboxRow {
            id: Some(id.into()),
            aggregate_type: Some("Order".into()),
            aggregate_id: Some(aggregate_id.into()),
            event_type: Some("orders.created".into()),
            payload: Some(br#"{"total":12}"#.to_vec()),
            headers: None,
            topic: None,
            // 2026-11-24T12:00:00Z
            created_at: UNIX_EPOCH.checked_add(Duration::from_secs(1_795_521_600)),
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

    #[test]
    fn a_null_the_record_needs_is_the_rows_failure_and_names_the_value() {
        let routed = settings(&[("Order", "shop.orders")], None);
        type Nulling = fn(&mut OutboxRow);
        let cases: [(Nulling, &str); 5] = [
            (|row| row.id = None, "event id"),
            (|row| row.aggregate_id = None, "aggregate id"),
            (|row| row.event_type = None, "event type"),
            (|row| row.created_at = None, "created-at"),
            (|row| row.aggregate_type = None, "aggregate type"),
        ];
        for (nulled, what) in cases {
            let mut null = row("1", "a");
            nulled(&mut null);
            let error = to_record(&null, &routed).expect_err(what);
            assert_eq!(error, RowError::Null(what));
            assert!(error.to_string().contains("NULL") && error.to_string().contains(what), "{error}");
        }
        let mut by_topic_column = row("1", "a");
        (by_topic_column.aggregate_type, by_topic_column.topic) = (None, Some("explicit".into()));
        assert_eq!(to_record(&by_topic_column, &routed).expect("routed by its column").topic, "explicit");
    }

    #[test]
    fn commit_times_format_as_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339_micros(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_micros(1_795_000_000_123_456)), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(4_107_542_399)), "2100-02-28T23:59:59.000000Z");
    }
}
