//! Dead letters: the original record (key, value, every header) plus failure headers, written to
//! the dead-letter topic before the original's offset may be committed.
//!
//! Kafka may refuse a dead letter for good (larger than the topic's max.message.bytes, a topic
//! that cannot exist, no permission to write it). Retrying that forever would hold the partition's
//! commits forever, so a refused dead letter is written again truncated (see [`truncated`]); when
//! that is refused too, the record is given up: the caller logs it and counts it, and the
//! partition moves on. Kafka being unavailable is retried until it answers.

use std::time::{Duration, SystemTime};

use tracing::warn;

use super::record::Record;
use crate::backoff::ExponentialBackoff;
use crate::producer::{EventProducer, OutgoingRecord, ProduceError};

/// Why the delivery failed: the last error.
pub const ERROR: &str = "tributary_error";
/// Attempts made, the first one included.
pub const ATTEMPTS: &str = "tributary_attempts";
pub const ORIGINAL_TOPIC: &str = "tributary_original_topic";
pub const ORIGINAL_PARTITION: &str = "tributary_original_partition";
pub const ORIGINAL_OFFSET: &str = "tributary_original_offset";
/// When the first attempt failed (RFC 3339, UTC, milliseconds).
pub const FIRST_FAILURE_TIME: &str = "tributary_first_failure_time";
/// On a truncated dead letter: why Kafka refused it whole.
pub const TRUNCATED: &str = "tributary_truncated";

const FAILURE_HEADERS: [&str; 7] = [ERROR, ATTEMPTS, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, FIRST_FAILURE_TIME, TRUNCATED];

/// Longest pause between two tries to write a dead letter.
const MAX_PRODUCE_DELAY: Duration = Duration::from_secs(30);

/// How a record failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub error: &'a str,
    pub attempts: u32,
    pub first_failure: SystemTime,
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_time(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(timestamp) => format!("{timestamp:.3}"),
        // Outside jiff's range (years beyond ±9999): not a clock this runs on.
        Err(_) => format!("{time:?}"),
    }
}

/// The dead letter of `record`. Failure headers the record already carries (it was dead-lettered
/// before and replayed) are replaced; a record without key gets an empty key.
pub fn dead_letter(dead_letter_topic: &str, record: &Record, failed: &Failed<'_>) -> OutgoingRecord {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|header| !FAILURE_HEADERS.iter().any(|failure| header.name == failure.as_bytes()))
        .map(|header| (String::from_utf8_lossy(&header.name).into_owned(), header.value.as_deref().unwrap_or_default().to_vec()))
        .collect();
    headers.extend([
        (ERROR.to_owned(), failed.error.as_bytes().to_vec()),
        (ATTEMPTS.to_owned(), failed.attempts.to_string().into_bytes()),
        (ORIGINAL_TOPIC.to_owned(), failed.topic.as_bytes().to_vec()),
        (ORIGINAL_PARTITION.to_owned(), failed.partition.to_string().into_bytes()),
        (ORIGINAL_OFFSET.to_owned(), record.offset.to_string().into_bytes()),
        (FIRST_FAILURE_TIME.to_owned(), format_time(failed.first_failure).into_bytes()),
    ]);
    OutgoingRecord {
        topic: dead_letter_topic.to_owned(),
        key: record.key.as_deref().unwrap_or_default().to_vec(),
        payload: record.value.as_ref().map(|value| value.to_vec()),
        headers,
    }
}

/// The dead letter Kafka refused whole, cut down to what finds the original again: its key, its
/// CloudEvents (`ce_*`) and failure headers, no value (nor the `content-type` describing it), and
/// [`TRUNCATED`] with `reason`. The original stays in its topic, at the offset the headers name,
/// for as long as that topic retains it.
pub fn truncated(letter: &OutgoingRecord, reason: &str) -> OutgoingRecord {
    let kept = |name: &str| name.starts_with("ce_") || FAILURE_HEADERS.contains(&name);
    let mut headers: Vec<(String, Vec<u8>)> = letter.headers.iter().filter(|(name, _)| kept(name)).cloned().collect();
    headers.push((TRUNCATED.to_owned(), reason.as_bytes().to_vec()));
    OutgoingRecord { topic: letter.topic.clone(), key: letter.key.clone(), payload: None, headers }
}

/// How writing a dead letter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Whole,
    /// Refused whole (the reason), written [`truncated`].
    Truncated(String),
    /// Refused whole and truncated (the last refusal): nothing was written.
    Refused(String),
}

/// Writes a dead letter: whole, else truncated when Kafka refuses it whole, trying each again
/// (doubling the pause up to 30 s) for as long as Kafka is unavailable, so the original is
/// committed only once its dead letter is written or refused for good. `on_failure` runs per
/// failed try.
pub async fn write(producer: &dyn EventProducer, letter: OutgoingRecord, mut on_failure: impl FnMut()) -> Written {
    let reason = match send_until_answered(producer, &letter, &mut on_failure).await {
        Ok(()) => return Written::Whole,
        Err(reason) => reason,
    };
    warn!(topic = %letter.topic, error = %reason, "Kafka refused a dead letter; writing it truncated");
    match send_until_answered(producer, &truncated(&letter, &reason), &mut on_failure).await {
        Ok(()) => Written::Truncated(reason),
        Err(refused) => Written::Refused(refused),
    }
}

/// Sends one record until Kafka acknowledges (`Ok`) or refuses it for good (`Err`, why).
async fn send_until_answered(producer: &dyn EventProducer, record: &OutgoingRecord, on_failure: &mut impl FnMut()) -> Result<(), String> {
    let mut backoff = ExponentialBackoff::new(Duration::from_millis(100), MAX_PRODUCE_DELAY);
    loop {
        match producer.send_all(vec![record.clone()]).await.pop() {
            Some(Ok(())) => return Ok(()),
            Some(Err(ProduceError::Rejected(reason))) => {
                on_failure();
                return Err(reason);
            }
            Some(Err(error)) => warn!(%error, topic = %record.topic, "cannot write a dead letter; trying again"),
            None => warn!(topic = %record.topic, "the producer returned no result for a dead letter; trying again"),
        }
        on_failure();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dispatch::record::RecordHeader;
    use crate::dispatch::scheduler::PartitionId;
    use crate::producer::FakeProducer;

    fn header(name: &str, value: &str) -> RecordHeader {
        RecordHeader { name: Bytes::copy_from_slice(name.as_bytes()), value: Some(Bytes::copy_from_slice(value.as_bytes())) }
    }

    fn failed() -> Failed<'static> {
        Failed {
            topic: "shop.orders",
            partition: 3,
            error: "HTTP 400 Bad Request: no such order",
            attempts: 1,
            first_failure: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
        }
    }

    /// Order 7's record at offset 41, with `headers`.
    fn order_7(headers: Vec<RecordHeader>) -> Record {
        Record {
            partition: PartitionId(9),
            offset: 41,
            key: Some(Bytes::from_static(b"order-7")),
            value: Some(Bytes::from_static(br#"{"order":7}"#)),
            headers,
        }
    }

    #[test]
    fn a_dead_letter_is_the_original_plus_failure_headers() {
        let record = order_7(vec![
            header("ce_id", "e-1"),
            header("ce_type", "orders.created"),
            header("content-type", "application/json"),
            RecordHeader { name: Bytes::from_static(b"empty"), value: None },
        ]);
        let letter = dead_letter("shop.orders.dlq", &record, &failed());
        assert_eq!(letter.topic, "shop.orders.dlq");
        assert_eq!(letter.key, b"order-7");
        assert_eq!(letter.payload.as_deref(), Some(&br#"{"order":7}"#[..]));
        let headers: Vec<(&str, String)> =
            letter.headers.iter().map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value).into_owned())).collect();
        assert_eq!(
            headers,
            [
                ("ce_id", "e-1".to_owned()),
                ("ce_type", "orders.created".to_owned()),
                ("content-type", "application/json".to_owned()),
                ("empty", String::new()),
                (ERROR, "HTTP 400 Bad Request: no such order".to_owned()),
                (ATTEMPTS, "1".to_owned()),
                (ORIGINAL_TOPIC, "shop.orders".to_owned()),
                (ORIGINAL_PARTITION, "3".to_owned()),
                (ORIGINAL_OFFSET, "41".to_owned()),
                (FIRST_FAILURE_TIME, "2026-11-18T11:06:40.123Z".to_owned()),
            ]
        );
    }

    #[test]
    fn a_replayed_dead_letter_gets_fresh_failure_headers_and_a_tombstone_stays_one() {
        let record = Record {
            partition: PartitionId(1),
            offset: 5,
            key: None,
            value: None,
            headers: vec![header(ATTEMPTS, "9"), header(ORIGINAL_TOPIC, "elsewhere"), header("ce_id", "e-2")],
        };
        let letter = dead_letter("dlq", &record, &Failed { attempts: 4, ..failed() });
        assert_eq!((letter.key.as_slice(), letter.payload.as_deref()), (&b""[..], None));
        let values = |name: &str| letter.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(values(ATTEMPTS), [b"4".to_vec()]);
        assert_eq!(values(ORIGINAL_TOPIC), [b"shop.orders".to_vec()]);
        assert_eq!(values("ce_id"), [b"e-2".to_vec()]);
    }

    #[tokio::test(start_paused = true)]
    async fn writing_retries_until_kafka_acknowledges() {
        let producer = std::sync::Arc::new(FakeProducer::default());
        producer.set_unavailable(true);
        let letter = OutgoingRecord { topic: "dlq".into(), key: b"k".to_vec(), payload: None, headers: Vec::new() };
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = {
            let (producer, letter, failures) = (producer.clone(), letter.clone(), failures.clone());
            tokio::spawn(async move {
                write(producer.as_ref(), letter, || {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!task.is_finished());
        assert!(failures.load(std::sync::atomic::Ordering::Relaxed) >= 3);
        producer.set_unavailable(false);
        assert_eq!(task.await.expect("writer"), Written::Whole);
        assert_eq!(producer.sent(), [letter]);
    }

    #[test]
    fn a_truncated_dead_letter_keeps_what_finds_the_original() {
        let record = order_7(vec![header("ce_id", "e-1"), header("content-type", "application/json"), header("traceparent", "00-ab")]);
        let letter = truncated(&dead_letter("dlq", &record, &failed()), "Message size too large");
        assert_eq!((letter.topic.as_str(), letter.key.as_slice(), letter.payload), ("dlq", &b"order-7"[..], None));
        let names: Vec<&str> = letter.headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["ce_id", ERROR, ATTEMPTS, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, FIRST_FAILURE_TIME, TRUNCATED]);
        assert_eq!(letter.headers.last().map(|(_, value)| value.as_slice()), Some(&b"Message size too large"[..]));
    }

    #[tokio::test]
    async fn a_dead_letter_refused_whole_and_truncated_is_given_up() {
        let producer = FakeProducer::default();
        producer.reject_topic("dlq");
        let letter = OutgoingRecord { topic: "dlq".into(), key: b"k".to_vec(), payload: Some(b"v".to_vec()), headers: Vec::new() };
        let mut failures = 0;
        let written = write(&producer, letter, || failures += 1).await;
        assert_eq!(written, Written::Refused("fake broker rejects topic dlq".into()));
        assert_eq!(failures, 2, "whole, then truncated: each once");
        assert!(producer.sent().is_empty());
    }
}
