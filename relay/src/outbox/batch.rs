//! One batch: claim → produce → delete (or mark) in one transaction, failures recorded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Instant, SystemTime};

use tokio_postgres::{Client, Row, Statement, Transaction};
use tracing::{debug, warn};

use super::record::{to_record, OutboxRow};
use super::schema::{self, PayloadFormat};
use super::{Cleanup, FailurePolicy, OutboxSettings, RelayError};
use crate::metrics::RelayMetrics;
use crate::producer::{EventProducer, OutgoingRecord, ProduceError};

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
    /// Keeps a row that failed for good, holding back its aggregate (the block policy, and a
    /// row the skip policy cannot move).
    hold: Statement,
    /// Moves a row that failed for good to the failed table (the skip policy).
    move_aside: Option<Statement>,
}

impl Session {
    pub async fn prepare(client: Client, settings: &OutboxSettings) -> Result<Session, tokio_postgres::Error> {
        let statements = &settings.statements;
        let cleanup = match settings.cleanup {
            Cleanup::Delete => &statements.delete_published,
            Cleanup::Mark { .. } => &statements.mark_published,
        };
        let move_aside = match settings.failure_policy {
            FailurePolicy::Block => None,
            FailurePolicy::Skip => Some(client.prepare(&statements.move_failed).await?),
        };
        Ok(Session {
            claim: client.prepare(&statements.claim).await?,
            recheck: client.prepare(&statements.recheck).await?,
            cleanup: client.prepare(cleanup).await?,
            schedule_retry: client.prepare(&statements.schedule_retry).await?,
            hold: client.prepare(&statements.hold_failed).await?,
            move_aside,
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
    /// The producer gave up on records for another record's sake (see
    /// [`ProduceError::Aborted`]): they stay, and go again with the next batch.
    pub aborted: bool,
}

/// A row that cannot be published, why, and the failure metric's label.
type RowFailure<'a> = (&'a OutboxRow, String, &'static str);

/// The next rows of one aggregate, in order: records to send, up to a row that cannot become one.
enum Next<'a> {
    Send(&'a OutboxRow, OutgoingRecord),
    Fail(RowFailure<'a>),
}

/// Claims up to `batch_size` rows, publishes them, removes the acknowledged ones and records
/// failures, all in one transaction.
///
/// Order per aggregate holds under any failure: the records of an aggregate go out in rounds,
/// each round the aggregate's next records up to a change of topic (another partition, which
/// nothing keeps in order with this one); the next round only after Kafka acknowledged every
/// record of the one before. Within a round the producer keeps a partition without gaps (see
/// [`EventProducer::send_all`]). The first record of an aggregate that is not acknowledged ends
/// the aggregate's batch; a row that cannot become a record fails only once it is next.
pub async fn process_batch(
    session: &mut Session,
    settings: &OutboxSettings,
    shard: Shard,
    producer: &dyn EventProducer,
    metrics: &RelayMetrics,
) -> Result<BatchOutcome, RelayError> {
    let statements = &settings.statements;
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    let Session { client, claim, recheck: recheck_statement, cleanup, schedule_retry, hold, move_aside } = session;
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

    // Each aggregate's rows that may go now, in order: up to one that waits (behind an earlier
    // row, or for its retry; it stays for a later batch) or cannot become a record.
    let mut aggregates: Vec<VecDeque<Next<'_>>> = Vec::new();
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    let mut closed: HashSet<&str> = HashSet::new();
    let mut failures: Vec<RowFailure<'_>> = Vec::new();
    for (row, sendable) in &live_rows {
        let Some(aggregate) = row.aggregate_id.as_deref() else {
            // No aggregate: nothing waits behind it, and it cannot become a record.
            if *sendable {
                if let Err(error) = to_record(row, &settings.record) {
                    failures.push((row, error.to_string(), error.metric_label()));
                }
            }
            continue;
        };
        if closed.contains(aggregate) {
            continue;
        }
        if !sendable {
            debug!(aggregate_id = %aggregate, "claimed rows wait behind an earlier row of their aggregate; left for a later batch");
            closed.insert(aggregate);
            continue;
        }
        let next = match to_record(row, &settings.record) {
            Ok(record) => Next::Send(row, record),
            Err(error) => {
                closed.insert(aggregate);
                Next::Fail((row, error.to_string(), error.metric_label()))
            }
        };
        let index = *index_of.entry(aggregate).or_insert_with(|| {
            aggregates.push(VecDeque::new());
            aggregates.len() - 1
        });
        aggregates[index].push_back(next);
    }

    // Rounds, while records are left and time is: the transaction is idle meanwhile (see
    // `OutboxSettings::transaction_idle_timeout`).
    let deadline = Instant::now() + settings.delivery_timeout;
    let mut acked_seqs: Vec<i64> = Vec::new();
    loop {
        let mut round: Vec<(usize, &OutboxRow)> = Vec::new();
        let mut records = Vec::new();
        for (index, queue) in aggregates.iter_mut().enumerate() {
            let mut topic: Option<String> = None;
            while let Some(next) = queue.front() {
                match next {
                    Next::Send(_, record) if topic.as_ref().is_some_and(|topic| *topic != record.topic) => break,
                    Next::Send(..) => {
                        let Some(Next::Send(row, record)) = queue.pop_front() else { break };
                        if topic.is_none() {
                            topic = Some(record.topic.clone());
                        }
                        round.push((index, row));
                        records.push(record);
                    }
                    // Its turn only once every record before it was acknowledged.
                    Next::Fail(_) if topic.is_some() => break,
                    Next::Fail(_) => {
                        if let Some(Next::Fail(failure)) = queue.pop_front() {
                            failures.push(failure);
                        }
                        queue.clear();
                    }
                }
            }
        }
        if records.is_empty() {
            break;
        }
        let results = producer.send_all(records).await;
        let acked_at = SystemTime::now();
        let mut refused: HashSet<usize> = HashSet::new();
        let mut stopped: HashSet<usize> = HashSet::new();
        for ((index, row), result) in round.into_iter().zip(results) {
            if stopped.contains(&index) {
                if result.is_ok() && refused.contains(&index) {
                    warn!(event_id = ?row.id, aggregate_id = ?row.aggregate_id, "Kafka acknowledged a record after refusing an earlier one of \
                          its aggregate: their order in Kafka is broken (does the broker check idempotent producers' sequences?)");
                }
                continue;
            }
            let error = match result {
                Ok(()) => {
                    acked_seqs.push(row.seq);
                    if let Some(latency) = row.created_at.and_then(|created_at| acked_at.duration_since(created_at).ok()) {
                        metrics.observe_commit_to_ack(latency.as_secs_f64());
                    }
                    continue;
                }
                Err(error) => error,
            };
            // Nothing more of this aggregate in this batch.
            stopped.insert(index);
            aggregates[index].clear();
            match error {
                ProduceError::Unavailable(message) => {
                    if !outcome.kafka_unavailable {
                        warn!(event_id = ?row.id, %message, "Kafka unavailable; batch left for later");
                    }
                    outcome.kafka_unavailable = true;
                }
                ProduceError::Aborted(message) => {
                    debug!(event_id = ?row.id, %message, "record not sent; left for the next batch");
                    outcome.aborted = true;
                }
                rejected @ ProduceError::Rejected(_) => {
                    refused.insert(index);
                    failures.push((row, rejected.to_string(), "rejected"));
                }
            }
        }
        // Nothing more while Kafka is away, or once the time for this batch is up.
        if outcome.kafka_unavailable || Instant::now() >= deadline {
            break;
        }
    }

    if !acked_seqs.is_empty() {
        transaction.execute(&*cleanup, &[&acked_seqs]).await.map_err(database)?;
    }
    for (row, error, reason) in &failures {
        metrics.failed(reason);
        if row.attempts + 1 >= settings.max_attempts {
            give_up(&transaction, settings, hold, move_aside.as_ref(), row, error).await.map_err(database)?;
            outcome.failed += 1;
        } else {
            let delay = settings.retry_delay(row.attempts).as_secs_f64();
            debug!(event_id = ?row.id, %error, delay, "outbox row will be retried");
            transaction.execute(&*schedule_retry, &[&row.seq, error, &delay]).await.map_err(database)?;
            outcome.retrying += 1;
        }
    }
    transaction.commit().await.map_err(database)?;
    outcome.published = acked_seqs.len();
    metrics.published(acked_seqs.len());
    Ok(outcome)
}

/// A row that failed `max_attempts` times: held (block), or moved to the failed table (skip). A
/// row the skip policy cannot move, or not without losing a column (the failed table lacks one
/// the application added, or refuses the row), is held instead, the error saying why.
async fn give_up(
    transaction: &Transaction<'_>,
    settings: &OutboxSettings,
    hold: &Statement,
    move_aside: Option<&Statement>,
    row: &OutboxRow,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    let statements = &settings.statements;
    let attempts = row.attempts + 1;
    let Some(move_aside) = move_aside else {
        warn!(event_id = ?row.id, aggregate_id = ?row.aggregate_id, %error, "outbox row failed {attempts} times, held; its aggregate waits");
        transaction.execute(hold, &[&row.seq, &error]).await?;
        return Ok(());
    };
    // A refusal of the failed table must not fail the batch (and every batch after it).
    transaction.batch_execute("SAVEPOINT tributary_move").await?;
    let why_not = match transaction.execute(move_aside, &[&row.seq, &error]).await {
        Ok(0) => {
            let lacking: Vec<String> = transaction.query(&statements.failed_table_lacks, &[]).await?.iter().map(|row| row.get(0)).collect();
            format!("it lacks column(s) {} of {}", lacking.join(", "), statements.table)
        }
        Ok(_) => {
            transaction.batch_execute("RELEASE SAVEPOINT tributary_move").await?;
            warn!(event_id = ?row.id, aggregate_id = ?row.aggregate_id, %error, "outbox row failed {attempts} times, moved to the failed table");
            return Ok(());
        }
        Err(refused) => match refused.as_db_error() {
            Some(refusal) => {
                transaction.batch_execute("ROLLBACK TO SAVEPOINT tributary_move").await?;
                format!("it refused the row: {}", refusal.message())
            }
            None => return Err(refused),
        },
    };
    let error =
        format!("{error}; not moved to {}: {why_not} (run `tributary-relay migrate`, then release the row)", statements.failed_table);
    warn!(event_id = ?row.id, aggregate_id = ?row.aggregate_id, %error, "outbox row failed {attempts} times, held");
    transaction.execute(hold, &[&row.seq, &error]).await?;
    Ok(())
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

/// A row of [`Statements::claim`](schema::Statements), in its column order. NULLs come through
/// as `None`: a row lacking what a record needs fails on its own (see `RowError::Null`).
pub fn decode_row(row: &Row, format: PayloadFormat) -> Result<OutboxRow, tokio_postgres::Error> {
    // JSON arrives as text (PostgreSQL renders jsonb once, no bytea copy).
    let payload = match format {
        schema::PayloadFormat::Json => row.try_get::<_, Option<String>>(4)?.map(String::into_bytes),
        schema::PayloadFormat::Binary => row.try_get(4)?,
    };
    Ok(OutboxRow {
        id: row.try_get(0)?,
        aggregate_type: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        event_type: row.try_get(3)?,
        payload,
        headers: row.try_get(5)?,
        topic: row.try_get(6)?,
        created_at: row.try_get(7)?,
        attempts: row.try_get(8)?,
        seq: row.try_get(9)?,
    })
}
