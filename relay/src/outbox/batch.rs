//! One batch: claim → produce → delete (or mark) in one transaction, failures recorded.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, Row, Statement};
use tracing::{debug, warn};

use super::record::{to_record, OutboxRow};
use super::schema::{self, PayloadFormat};
use super::{Cleanup, FailurePolicy, OutboxSettings, RelayError};
use crate::metrics::RelayMetrics;
use crate::producer::{EventProducer, ProduceError};

/// The aggregates one worker claims: those whose id hashes to `index` modulo `count`. The workers
/// of one relay then never wait for each other's aggregates (a worker whose claim met only
/// aggregates locked by a sibling would come back empty and idle); relay replicas still share
/// every aggregate through the aggregate locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: i64,
    pub count: i64,
}

impl Shard {
    /// Every aggregate.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The shard of worker `index` of `count`.
    pub fn of_worker(index: usize, count: usize) -> Shard {
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Shard { index: to_i64(index), count: to_i64(count.max(1)) }
    }

    /// The claim's parameters for a batch of `batch_size` rows.
    pub fn claim_parameters<'a>(&'a self, batch_size: &'a i64) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 3] {
        [batch_size, &self.count, &self.index]
    }
}

/// A worker's database connection with the batch statements prepared on it: planned once, not
/// per batch (with small batches, planning would be most of the database's work).
pub struct Session {
    client: Client,
    claim: Statement,
    recheck: Statement,
    /// Delete or mark, per the cleanup setting.
    cleanup: Statement,
    schedule_retry: Statement,
    /// Hold or move, per the failure policy.
    give_up: Statement,
}

impl Session {
    pub async fn prepare(client: Client, settings: &OutboxSettings) -> Result<Session, tokio_postgres::Error> {
        let statements = &settings.statements;
        let cleanup = match settings.cleanup {
            Cleanup::Delete => &statements.delete_published,
            Cleanup::Mark { .. } => &statements.mark_published,
        };
        let give_up = match settings.failure_policy {
            FailurePolicy::Block => &statements.hold_failed,
            FailurePolicy::Skip => &statements.move_failed,
        };
        Ok(Session {
            claim: client.prepare(&statements.claim).await?,
            recheck: client.prepare(&statements.recheck).await?,
            cleanup: client.prepare(cleanup).await?,
            schedule_retry: client.prepare(&statements.schedule_retry).await?,
            give_up: client.prepare(give_up).await?,
            client,
        })
    }
}

impl std::ops::Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub claimed: usize,
    pub published: usize,
    /// Rows that failed and will be tried again later.
    pub retrying: usize,
    /// Rows that reached `max_attempts` (held or moved, per policy).
    pub failed: usize,
    /// Kafka was unreachable: nothing in this batch was removed.
    pub kafka_unavailable: bool,
}

/// Claims up to `batch_size` rows, publishes them, removes the acknowledged ones and records
/// failures, all in one transaction.
pub async fn process_batch(
    session: &mut Session,
    settings: &OutboxSettings,
    shard: Shard,
    producer: &dyn EventProducer,
    metrics: &RelayMetrics,
) -> Result<BatchOutcome, RelayError> {
    let statements = &settings.statements;
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    let Session { client, claim, recheck: recheck_statement, cleanup, schedule_retry, give_up } = session;
    let transaction = client.transaction().await.map_err(database)?;
    let rows = transaction.query(&*claim, &shard.claim_parameters(&settings.batch_size)).await.map_err(database)?;
    let rows: Vec<OutboxRow> =
        rows.iter().map(|row| decode_row(row, settings.record.format)).collect::<Result<_, _>>().map_err(database)?;
    let mut outcome = BatchOutcome { claimed: rows.len(), ..BatchOutcome::default() };
    if rows.is_empty() {
        transaction.commit().await.map_err(database)?;
        return Ok(outcome);
    }
    metrics.observe_batch(rows.len());

    let current = recheck(&transaction, recheck_statement, &rows).await.map_err(database)?;
    let mut live_rows = Vec::with_capacity(rows.len());
    for mut row in rows {
        // Gone: the aggregate's previous lock holder published or failed it after the claim's
        // snapshot (a failed row leaves the rest of its aggregate `behind`).
        let Some(now) = current.get(&row.seq) else { continue };
        row.attempts = now.attempts;
        live_rows.push((row, now.sendable && !now.behind));
    }

    // Rows of an aggregate after one that cannot go now stay for later, keeping its order.
    let mut held_aggregates: HashSet<&str> = HashSet::new();
    let mut to_send = Vec::with_capacity(live_rows.len());
    let mut row_failures: Vec<(&OutboxRow, String, &'static str)> = Vec::new();
    for (row, sendable) in &live_rows {
        if held_aggregates.contains(row.aggregate_id.as_str()) {
            continue;
        }
        if !sendable {
            debug!(aggregate_id = %row.aggregate_id, "claimed rows wait behind an earlier row of their aggregate; left for a later batch");
            held_aggregates.insert(&row.aggregate_id);
            continue;
        }
        match to_record(row, &settings.record) {
            Ok(record) => to_send.push((row, record)),
            Err(error) => {
                held_aggregates.insert(&row.aggregate_id);
                row_failures.push((row, error.to_string(), error.metric_label()));
            }
        }
    }
    let (sent_rows, records): (Vec<&OutboxRow>, Vec<_>) = to_send.into_iter().unzip();
    let results = producer.send_all(records).await;
    let acked_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();

    let mut acked_seqs: Vec<i64> = Vec::with_capacity(sent_rows.len());
    for (row, result) in sent_rows.iter().zip(results) {
        // Only an unbroken prefix of each aggregate is removed: a row acknowledged after one that
        // was not stays and is sent again after it (a duplicate, but never out of order).
        if held_aggregates.contains(row.aggregate_id.as_str()) {
            continue;
        }
        match result {
            Ok(()) => {
                acked_seqs.push(row.seq);
                metrics.observe_commit_to_ack(acked_at - row.created_at_epoch);
            }
            Err(ProduceError::Unavailable(message)) => {
                held_aggregates.insert(&row.aggregate_id);
                if !outcome.kafka_unavailable {
                    warn!(event_id = %row.id, %message, "Kafka unavailable; batch left for later");
                }
                outcome.kafka_unavailable = true;
            }
            Err(rejected @ ProduceError::Rejected(_)) => {
                held_aggregates.insert(&row.aggregate_id);
                row_failures.push((row, rejected.to_string(), "rejected"));
            }
        }
    }

    if !acked_seqs.is_empty() {
        transaction.execute(&*cleanup, &[&acked_seqs]).await.map_err(database)?;
    }
    for (row, error, reason) in &row_failures {
        metrics.failed(reason);
        if row.attempts + 1 >= settings.max_attempts {
            let what = match settings.failure_policy {
                FailurePolicy::Block => "held; its aggregate waits",
                FailurePolicy::Skip => "moved to the failed table",
            };
            warn!(event_id = %row.id, aggregate_id = %row.aggregate_id, %error, "outbox row failed {} times, {what}", row.attempts + 1);
            transaction.execute(&*give_up, &[&row.seq, error]).await.map_err(database)?;
            outcome.failed += 1;
        } else {
            let delay = settings.retry_delay(row.attempts).as_secs_f64();
            debug!(event_id = %row.id, %error, delay, "outbox row will be retried");
            transaction.execute(&*schedule_retry, &[&row.seq, error, &delay]).await.map_err(database)?;
            outcome.retrying += 1;
        }
    }
    transaction.commit().await.map_err(database)?;
    outcome.published = acked_seqs.len();
    metrics.published(acked_seqs.len());
    Ok(outcome)
}

/// A claimed row as a statement of its own, after the claim, sees it.
///
/// The claim's snapshot is taken before it locks aggregates, so for an aggregate whose previous
/// lock holder committed during the scan it can show rows that holder has since published or
/// failed (both gone from the pending rows now) or rescheduled (no longer `sendable`), and it has
/// skipped that aggregate's rows met while the lock was still taken. Either way the aggregate's
/// first pending claimed row then has unpublished rows before it (`behind`), or is itself not
/// sendable: the aggregate waits for a later batch (its lock is ours until this one ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recheck {
    pub attempts: i32,
    pub sendable: bool,
    /// An earlier row of the aggregate is unpublished (pending but not claimed, or failed).
    pub behind: bool,
}

/// [`Recheck`] of every claimed row still pending, by sequence number.
pub(crate) async fn recheck(
    transaction: &tokio_postgres::Transaction<'_>,
    statement: &Statement,
    rows: &[OutboxRow],
) -> Result<HashMap<i64, Recheck>, tokio_postgres::Error> {
    let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
    let current = transaction.query(statement, &[&seqs]).await?;
    current
        .iter()
        .map(|row| Ok((row.try_get(0)?, Recheck { attempts: row.try_get(1)?, sendable: row.try_get(2)?, behind: row.try_get(3)? })))
        .collect()
}

/// A row of [`Statements::claim`](schema::Statements), in its column order.
pub fn decode_row(row: &Row, format: PayloadFormat) -> Result<OutboxRow, tokio_postgres::Error> {
    // JSON arrives as text (PostgreSQL renders jsonb once, no bytea copy); the commit time as a
    // timestamp, formatted here rather than by to_char for every row.
    let payload = match format {
        schema::PayloadFormat::Json => row.try_get::<_, Option<String>>(4)?.map(String::into_bytes),
        schema::PayloadFormat::Binary => row.try_get(4)?,
    };
    let since_epoch = row.try_get::<_, SystemTime>(7)?.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(OutboxRow {
        id: row.try_get(0)?,
        aggregate_type: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        event_type: row.try_get(3)?,
        payload,
        headers: row.try_get(5)?,
        topic: row.try_get(6)?,
        created_at: rfc3339_micros(since_epoch),
        created_at_epoch: since_epoch.as_secs_f64(),
        attempts: row.try_get(8)?,
        seq: row.try_get(9)?,
    })
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
mod tests {
    use super::*;

    #[test]
    fn commit_times_format_as_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339_micros(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_micros(1_795_000_000_123_456)), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(4_107_542_399)), "2100-02-28T23:59:59.000000Z");
    }
}
