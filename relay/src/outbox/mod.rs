//! The transactional-outbox relay: claims rows, publishes them, and removes (or marks) them only
//! after Kafka acknowledged them.
//!
//! Each worker runs claim → produce → delete in one database transaction. The claim takes an
//! advisory lock per aggregate and skips rows other transactions hold, so several workers (and
//! several relay replicas) share a table while every aggregate is published by one transaction at
//! a time, in insertion order. Nothing relies on "id > last seen", so rows that commit out of
//! order are never skipped. A crash before the commit leaves the rows in place: they are sent
//! again, with the same `ce_id`.

#[cfg(test)]
mod pg_tests;
pub mod record;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tokio_postgres::{Client, Row, Statement};
use tracing::{debug, info, warn};

use crate::metrics::RelayMetrics;
use crate::producer::{EventProducer, ProduceError};
use record::{to_record, OutboxRow, RecordSettings};
use schema::Statements;

/// What happens to a row once Kafka has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Delete,
    /// Set the published-at column; rows older than `retention` are pruned.
    Mark {
        retention: Duration,
    },
}

/// What a row that keeps failing does to its aggregate: with `Block` the row stays, marked
/// failed, and holds back the rest of its aggregate (order kept); with `Skip` it moves to the
/// `<table>_failed` table and its aggregate goes on.
pub use tributary_api::outbox_relay::FailurePolicy;

/// Everything a relay worker needs to know.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub statements: Statements,
    pub record: RecordSettings,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub cleanup: Cleanup,
    pub failure_policy: FailurePolicy,
    /// Attempts before a row counts as failed.
    pub max_attempts: i32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Commit each batch synchronously (`synchronous_commit` stays on): see the CLI flag.
    pub synchronous_cleanup: bool,
}

impl OutboxSettings {
    /// Delay before attempt `attempts + 1` of a row: exponential, capped.
    pub fn retry_delay(&self, attempts: i32) -> Duration {
        let factor = 2u32.saturating_pow(u32::try_from(attempts.max(0)).unwrap_or(u32::MAX).min(20));
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database error on outbox table {table}: {source}")]
    Database {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

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
pub(crate) fn decode_row(row: &Row, format: schema::PayloadFormat) -> Result<OutboxRow, tokio_postgres::Error> {
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

/// Runs the migration: creates or completes the outbox table, idempotently. An existing table
/// gets the relay's own columns and the optional columns the flags name; a column the application
/// writes that is missing, or a named column of a type the relay cannot read, is refused with
/// nothing changed (adding the one would invent data, converting the other rewrites it). Returns
/// the optional columns it added to an existing table.
pub async fn migrate(client: &mut Client, statements: &Statements) -> Result<Vec<String>, SchemaProblem> {
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    // One transaction: a failed migration leaves nothing half-made.
    let transaction = client.transaction().await.map_err(database)?;
    let present = table_columns(&transaction, &statements.table).await?;
    let mut added = Vec::new();
    if !present.is_empty() {
        column_problems(statements, &present, Stage::BeforeMigration)?;
        added = statements
            .named_columns()
            .into_iter()
            .filter(|column| column.optional && !present.iter().any(|(name, _)| name == column.name))
            .map(|column| column.name.to_owned())
            .collect();
    }
    transaction.batch_execute(&statements.migration()).await.map_err(database)?;
    transaction.commit().await.map_err(database)?;
    Ok(added)
}

/// Makes held rows (failed under the block policy) of aggregate `aggregate_id`, or of every
/// aggregate, pending again with fresh attempts, and wakes the relays; returns how many.
pub async fn release_held(client: &mut Client, statements: &Statements, aggregate_id: Option<&str>) -> Result<u64, RelayError> {
    let database = |source| RelayError::Database { table: statements.table.to_string(), source };
    let transaction = client.transaction().await.map_err(database)?;
    let released = transaction.execute(&statements.release_held, &[&aggregate_id]).await.map_err(database)?;
    // The insert trigger is what wakes idle relays; without this they notice at their next poll.
    transaction.execute("SELECT pg_notify($1, '')", &[&statements.channel]).await.map_err(database)?;
    transaction.commit().await.map_err(database)?;
    Ok(released)
}

/// Problems that keep the relay from running against a table.
#[derive(Debug, thiserror::Error)]
pub enum SchemaProblem {
    #[error("outbox table {0} does not exist (run `tributary-relay migrate` first)")]
    MissingTable(String),
    #[error("outbox table {table} lacks column(s) {columns} (check the column flags, or run `tributary-relay migrate`)")]
    MissingColumns { table: String, columns: String },
    #[error(
        "outbox table {table} exists but lacks column(s) {columns}; migrate adds only the relay's own columns and the optional \
         ones (--column-headers, --column-topic, --column-created-at), never a column the application writes, and changed \
         nothing: check the column flags, or add the column(s) yourself"
    )]
    NotMigratable { table: String, columns: String },
    #[error(
        "column {column} ({flag}) of {table} is {actual}, which the relay cannot read (it takes {accepted}); migrate never \
         changes a column's type, as that rewrites its data: name another column, or convert this one yourself"
    )]
    ColumnType { table: String, column: String, flag: &'static str, actual: String, accepted: String },
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Which columns a table must have already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `migrate` adds the relay's and the optional columns; the application's must be there.
    BeforeMigration,
    /// The relay runs: every column.
    Relaying,
}

/// Checks the table and columns exist and the named columns have types the relay reads.
pub async fn check_schema(client: &Client, statements: &Statements) -> Result<(), SchemaProblem> {
    let present = table_columns(client, &statements.table).await?;
    if present.is_empty() {
        return Err(SchemaProblem::MissingTable(statements.table.to_string()));
    }
    column_problems(statements, &present, Stage::Relaying)
}

/// (name, data type) of every column of `table`; empty when it does not exist.
async fn table_columns(client: &impl tokio_postgres::GenericClient, table: &schema::Table) -> Result<Vec<(String, String)>, RelayError> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            &[&table.schema.name(), &table.name.name()],
        )
        .await
        .map_err(|source| RelayError::Database { table: table.to_string(), source })?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The first problem of a table with `present` columns (name, data type) at `stage` (pure).
fn column_problems(statements: &Statements, present: &[(String, String)], stage: Stage) -> Result<(), SchemaProblem> {
    let table = statements.table.to_string();
    let type_of = |name: &str| present.iter().find(|(column, _)| column == name).map(|(_, ty)| ty.as_str());
    let named = statements.named_columns();
    match stage {
        Stage::BeforeMigration => {
            let missing: Vec<String> = named
                .iter()
                .filter(|column| !column.optional && type_of(column.name).is_none())
                .map(|column| format!("{} ({})", column.name, column.flag))
                .collect();
            if !missing.is_empty() {
                return Err(SchemaProblem::NotMigratable { table, columns: missing.join(", ") });
            }
        }
        Stage::Relaying => {
            let missing: Vec<&str> = statements.required_columns().into_iter().filter(|name| type_of(name).is_none()).collect();
            if !missing.is_empty() {
                return Err(SchemaProblem::MissingColumns { table, columns: missing.join(", ") });
            }
        }
    }
    for column in &named {
        match type_of(column.name) {
            Some(actual) if !column.accepted.is_empty() && !column.accepted.contains(&actual) => {
                return Err(SchemaProblem::ColumnType {
                    table,
                    column: column.name.to_owned(),
                    flag: column.flag,
                    actual: actual.to_owned(),
                    accepted: column.accepted.join(" or "),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens a new database connection for a worker (driving it in the background).
pub type Connector = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<Client, tokio_postgres::Error>> + Send + Sync>;

/// A [`Connector`] for a PostgreSQL URL, without TLS.
pub fn connector(url: String) -> Connector {
    use futures::FutureExt;
    Arc::new(move || {
        let url = url.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection.map(drop));
            Ok(client)
        }
        .boxed()
    })
}

/// Drives `connection` (a session that will `LISTEN` on the outbox's channel) and wakes every
/// worker on each notification, until the connection ends.
pub fn wake_workers_on_notify(
    mut connection: tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    wakers: Vec<Arc<Notify>>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                wakers.iter().for_each(|waker| waker.notify_one());
            }
        }
    })
}

/// Runs one worker until shutdown: batches back to back while rows keep coming, then waits for a
/// NOTIFY or the poll interval. Reconnects and backs off on failure.
pub async fn run_worker(
    shard: Shard,
    connect: Connector,
    settings: Arc<OutboxSettings>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<RelayMetrics>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker = shard.index;
    let mut client: Option<Session> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    while !*shutdown.borrow() {
        let connection = match client.as_mut() {
            Some(connection) if !connection.is_closed() => connection,
            _ => match open_session(&connect, &settings).await {
                Ok(connection) => {
                    metrics.set_database_ready(true);
                    client.insert(connection)
                }
                Err(error) => {
                    metrics.set_database_ready(false);
                    warn!(worker, %error, "cannot connect to the database; retrying");
                    sleep_or_shutdown(backoff.next(), &mut shutdown).await;
                    continue;
                }
            },
        };
        match process_batch(connection, &settings, shard, producer.as_ref(), &metrics).await {
            Ok(outcome) if outcome.kafka_unavailable => {
                metrics.set_kafka_ready(false);
                sleep_or_shutdown(backoff.next(), &mut shutdown).await;
            }
            Ok(outcome) => {
                // An empty batch says nothing about Kafka; housekeeping probes it when idle.
                if outcome.claimed > 0 {
                    metrics.set_kafka_ready(true);
                }
                metrics.set_database_ready(true);
                backoff.reset();
                if outcome.claimed < usize::try_from(settings.batch_size).unwrap_or(usize::MAX) {
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(settings.poll_interval) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            Err(error) => {
                metrics.set_database_ready(false);
                warn!(worker, %error, "outbox batch failed; reconnecting");
                client = None;
                sleep_or_shutdown(backoff.next(), &mut shutdown).await;
            }
        }
    }
    info!(worker, "worker stopped");
}

/// A worker's connection. Its prepared statements are planned for each execution: a plan cached
/// while the outbox was empty (sequential scans are cheapest then) would stay when a backlog
/// builds up. Without synchronous cleanup its commits return once written, not flushed.
pub async fn connect_worker(connect: &Connector, settings: &OutboxSettings) -> Result<Client, tokio_postgres::Error> {
    let client = connect().await?;
    client.batch_execute("SET plan_cache_mode = force_custom_plan").await?;
    if !settings.synchronous_cleanup {
        client.batch_execute("SET synchronous_commit = off").await?;
    }
    Ok(client)
}

async fn open_session(connect: &Connector, settings: &OutboxSettings) -> Result<Session, tokio_postgres::Error> {
    Session::prepare(connect_worker(connect, settings).await?, settings).await
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Capped exponential backoff for reconnects and outages.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, current: initial }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next().as_millis(), 100);
    }

    fn statements(headers: Option<&str>, created_at: Option<&str>) -> Statements {
        let column = |name: &str| schema::Ident::new("column", name).expect("valid");
        let columns = schema::Columns {
            id: column("id"),
            aggregate_type: column("aggregatetype"),
            aggregate_id: column("aggregateid"),
            event_type: column("type"),
            payload: column("data"),
            headers: headers.map(column),
            topic: None,
            created_at: created_at.map(column),
        };
        Statements::new(schema::Table::parse("outbox").expect("valid"), columns, schema::PayloadFormat::Json).expect("valid")
    }

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(name, ty)| ((*name).to_owned(), (*ty).to_owned())).collect()
    }

    #[test]
    fn migrate_needs_the_applications_columns_and_readable_types_only() {
        let application = [("id", "uuid"), ("aggregatetype", "text"), ("aggregateid", "text"), ("type", "text"), ("data", "jsonb")];
        let fine = statements(Some("headers"), Some("created_at"));
        assert!(column_problems(&fine, &columns(&application), Stage::BeforeMigration).is_ok(), "optional columns are added");
        let problem = column_problems(&fine, &columns(&application), Stage::Relaying).expect_err("not migrated yet");
        assert!(problem.to_string().contains("headers, created_at, tributary_seq"), "{problem}");

        let problem = column_problems(&fine, &columns(&application[..4]), Stage::BeforeMigration).expect_err("no payload column");
        assert!(matches!(&problem, SchemaProblem::NotMigratable { columns, .. } if columns == "data (--column-payload)"), "{problem}");

        let text_created_at = [&application[..], &[("created_at", "text")]].concat();
        let problem = column_problems(&fine, &columns(&text_created_at), Stage::BeforeMigration).expect_err("text is no timestamp");
        let text = problem.to_string();
        assert!(text.contains("created_at (--column-created-at)") && text.contains("is text") && text.contains("timestamp"), "{text}");
        let bytea_payload = [&application[..4], &[("data", "bytea")]].concat();
        assert!(matches!(
            column_problems(&fine, &columns(&bytea_payload), Stage::BeforeMigration),
            Err(SchemaProblem::ColumnType { flag: "--column-payload", .. })
        ));
    }

    #[test]
    fn commit_times_format_as_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339_micros(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_micros(1_795_000_000_123_456)), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(Duration::from_secs(4_107_542_399)), "2100-02-28T23:59:59.000000Z");
    }
}
