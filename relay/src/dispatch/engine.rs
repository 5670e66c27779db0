//! The dispatcher's engine: one task owns the scheduler and decides; the consumer thread feeds it
//! records, lanes (one per delivery in flight) POST them and report back, dead letters are written
//! by tasks of their own. Offsets are stored every 100 ms for the engine's positions.
//!
//! The sink not accepting connections (its container not started, restarting, crashed) is no
//! failed delivery: it opens a circuit breaker. Nothing is sent, the record goes back to the front
//! of the queue without an attempt counted, `/readyz` fails, and a probe connects with capped
//! backoff until the sink accepts again. At start the dispatcher waits for the sink the same way
//! before it joins its group. Attempts count only for answers from the sink and for requests that
//! failed or timed out after they were sent (a record that crashes the sink still ends in the
//! dead-letter topic).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use super::consumer::{
    self, AssignedPartition, Budget, ConsumerControl, ConsumerError, ConsumerEvent, DispatchConsumer, Incoming, Prepared, ReadAhead, Wake,
};
use super::dead_letter::{self, Failed, Written};
use super::http::{Attempt, Failure, FailureKind, Lane, Sink};
use super::metrics::{DeadLetterReason, DispatchMetrics};
use super::record::Record;
use super::scheduler::{PartitionId, Scheduler, Ticket};
use super::DispatchSettings;
use crate::backoff::ExponentialBackoff;
use crate::producer::EventProducer;

const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for in-flight deliveries at shutdown (inside Kubernetes' default 30 s grace).
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Pauses between probes of a sink that does not accept connections: from the first, doubling up
/// to the last, which also bounds one probe.
const SINK_PROBE_FIRST_PAUSE: Duration = Duration::from_millis(100);
const SINK_PROBE_LONGEST_PAUSE: Duration = Duration::from_secs(5);
/// Pauses between tries to read the consumed topics' partitions at start.
const METADATA_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(500);
const METADATA_RETRY_LONGEST_PAUSE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("cannot start the Kafka consumer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the Kafka consumer thread stopped unexpectedly")]
    ConsumerStopped,
    #[error("a delivery lane stopped unexpectedly")]
    LaneStopped,
    #[error("cannot read the partitions of the consumed topics: {0}")]
    Metadata(#[source] tokio::task::JoinError),
}

/// A record on its way, with what its delivery so far has seen.
#[derive(Debug)]
struct Pending {
    record: Record,
    /// Its weight in the budget.
    weight: usize,
    /// Failed attempts so far.
    attempts: u32,
    first_failure: Option<SystemTime>,
    arrived: Instant,
}

#[derive(Debug)]
struct Job {
    ticket: Ticket,
    pending: Pending,
}

#[derive(Debug)]
enum Outcome {
    Attempted {
        lane: usize,
        job: Job,
        attempt: Attempt,
    },
    DeadLettered {
        ticket: Ticket,
        weight: usize,
    },
    /// The probe connected: the sink is back.
    SinkReachable,
}

/// A record waiting for its retry.
#[derive(Debug)]
struct Due {
    at: Instant,
    /// Ties broken by arrival.
    seq: u64,
    job: Job,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug)]
struct PartitionMeta {
    topic: Arc<str>,
    partition: i32,
    /// The position last stored.
    stored: Option<i64>,
    /// Deliveries and dead letters in flight.
    out: usize,
    /// Revoked: its records in flight finish, nothing more is sent, retried or dead-lettered.
    stopping: bool,
}

/// Revoked partitions whose records in flight are finishing; the consumer waits for `done`.
#[derive(Debug)]
struct Revocation {
    partitions: Vec<PartitionId>,
    done: std::sync::mpsc::SyncSender<()>,
    deadline: Instant,
}

/// A dispatcher with its configuration checked; [`Dispatcher::run`] does the work.
pub struct Dispatcher {
    settings: Arc<DispatchSettings>,
    consumer: Prepared,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<DispatchMetrics>,
}

impl Dispatcher {
    /// Fails on configuration Kafka refuses (bad properties, unknown settings).
    pub fn new(settings: DispatchSettings, producer: Arc<dyn EventProducer>, metrics: Arc<DispatchMetrics>) -> Result<Self, ConsumerError> {
        let consumer = consumer::prepare(&settings.consumer)?;
        Ok(Dispatcher { settings: Arc::new(settings), consumer, producer, metrics })
    }

    /// Waits for the sink to accept connections, joins the group and dispatches until `shutdown`
    /// turns true (or its sender goes away); then stops fetching, lets in-flight deliveries finish
    /// (up to the request timeout, at most 25 s) while keeping its partitions, commits what is done
    /// and leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), DispatchError> {
        let Dispatcher { settings, consumer, producer, metrics } = self;
        let probe_timeout = settings.request_timeout.min(SINK_PROBE_LONGEST_PAUSE);
        if let Err(error) = settings.sink.accepts_connections(probe_timeout).await {
            warn!(sink = settings.sink.url(), %error, "the sink does not accept connections: waiting for it before consuming");
            tokio::select! {
                () = until_reachable(&settings.sink, probe_timeout) => info!(sink = settings.sink.url(), "the sink accepts connections"),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
        metrics.set_sink_up(true);
        let (consumer, partitions) = tokio::select! {
            counted = count_partitions(consumer) => counted?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        // Half the buffer's bytes again, at most, fetched ahead by librdkafka.
        let read_ahead = ReadAhead::divided(settings.max_buffered_bytes / 2, partitions);
        let wake = Arc::new(Wake::default());
        let (consumer, mut events) = consumer.subscribe(read_ahead, metrics.clone(), wake.clone())?;
        let budget = Arc::new(Budget::new(settings.max_buffered_records, settings.max_buffered_bytes, wake.clone()));
        let control = Arc::new(ConsumerControl::default());
        let thread = {
            let (consumer, filters, budget, control, wake) =
                (consumer.clone(), Arc::from(settings.filters.clone()), budget.clone(), control.clone(), wake.clone());
            std::thread::Builder::new()
                .name("kafka-consumer".into())
                .spawn(move || consumer::run(consumer, filters, budget, control, wake))
                .map_err(DispatchError::Thread)?
        };
        let (outcomes_sender, outcomes) = mpsc::unbounded_channel();
        let mut lane_tasks = JoinSet::new();
        let lanes = (0..settings.lanes)
            .map(|index| {
                let (jobs, receiver) = mpsc::channel(1);
                lane_tasks.spawn(run_lane(
                    index,
                    Lane::new(settings.sink.clone(), settings.request_timeout),
                    receiver,
                    outcomes_sender.clone(),
                ));
                jobs
            })
            .collect::<Vec<_>>();
        info!(
            topics = ?settings.consumer.topics, group = %settings.consumer.group, sink = settings.sink.url(), lanes = lanes.len(),
            partitions, read_ahead_kib_per_partition = read_ahead.kib_per_partition(), "dispatching"
        );
        let mut engine = Engine {
            scheduler: Scheduler::new(settings.ordering),
            idle: (0..lanes.len()).rev().collect(),
            lanes,
            settings,
            consumer,
            producer,
            metrics,
            budget,
            partitions: HashMap::new(),
            retries: BinaryHeap::new(),
            next_seq: 0,
            outcomes_sender,
            outcomes,
            dead_letters: JoinSet::new(),
            dead_lettering: 0,
            revocations: Vec::new(),
            draining: false,
            sink_down_since: None,
            probe: None,
        };
        let served = engine.serve(&mut events, &mut shutdown).await;
        info!("shutting down: finishing in-flight deliveries");
        control.drain();
        wake.notify();
        // Rebalances meanwhile wait for the deliveries of the partitions they take away.
        engine.drain(&mut events).await;
        // A rebalance from now on must not wait for this engine.
        drop(events);
        lane_tasks.abort_all();
        engine.dead_letters.abort_all();
        drop(engine);
        control.stop();
        wake.notify();
        // The thread commits the stored offsets and leaves the group.
        if tokio::task::spawn_blocking(move || thread.join()).await.map_or(true, |joined| joined.is_err()) {
            warn!("the Kafka consumer thread panicked");
        }
        served
    }
}

/// The partitions of the consumed topics, asked until the broker answers.
async fn count_partitions(consumer: Prepared) -> Result<(Prepared, usize), DispatchError> {
    let mut backoff = ExponentialBackoff::new(METADATA_RETRY_FIRST_PAUSE, METADATA_RETRY_LONGEST_PAUSE);
    let mut consumer = consumer;
    loop {
        // A blocking librdkafka call: off the async workers.
        let (returned, counted) = tokio::task::spawn_blocking(move || {
            let counted = consumer.count_partitions();
            (consumer, counted)
        })
        .await
        .map_err(DispatchError::Metadata)?;
        consumer = returned;
        match counted {
            Ok(partitions) => return Ok((consumer, partitions)),
            Err(error) => warn!(%error, "cannot read the partitions of the consumed topics; trying again"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Probes the sink until it accepts a connection, pausing between tries with capped backoff.
async fn until_reachable(sink: &Sink, timeout: Duration) {
    let mut backoff = ExponentialBackoff::new(SINK_PROBE_FIRST_PAUSE, SINK_PROBE_LONGEST_PAUSE);
    while let Err(error) = sink.accepts_connections(timeout).await {
        debug!(%error, "the sink does not accept connections yet");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn run_lane(index: usize, mut lane: Lane, mut jobs: mpsc::Receiver<Job>, outcomes: mpsc::UnboundedSender<Outcome>) {
    while let Some(job) = jobs.recv().await {
        let attempt = lane.deliver(&job.pending.record).await;
        if outcomes.send(Outcome::Attempted { lane: index, job, attempt }).is_err() {
            return;
        }
    }
}

struct Engine {
    settings: Arc<DispatchSettings>,
    consumer: Arc<DispatchConsumer>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<DispatchMetrics>,
    budget: Arc<Budget>,
    scheduler: Scheduler<Pending>,
    partitions: HashMap<PartitionId, PartitionMeta>,
    retries: BinaryHeap<Reverse<Due>>,
    next_seq: u64,
    lanes: Vec<mpsc::Sender<Job>>,
    /// Lanes without a job, the most recently used last (its connection is the warmest).
    idle: Vec<usize>,
    outcomes_sender: mpsc::UnboundedSender<Outcome>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    dead_letters: JoinSet<()>,
    /// Dead letters being written.
    dead_lettering: usize,
    revocations: Vec<Revocation>,
    /// Shutting down: failures are abandoned rather than retried or dead-lettered.
    draining: bool,
    /// The circuit breaker: open since then, while the sink does not accept connections.
    sink_down_since: Option<Instant>,
    /// Probing the sink while the breaker is open.
    probe: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }
}

impl Engine {
    async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DispatchError> {
        let mut store = tokio::time::interval(STORE_INTERVAL);
        store.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let retry_timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(retry_timer);
        loop {
            self.dispatch()?;
            let next_retry = self.retries.peek().map(|Reverse(due)| due.at);
            if let Some(at) = next_retry {
                if retry_timer.deadline() != at {
                    retry_timer.as_mut().reset(at);
                }
            }
            // Unbiased: under load outcomes are always ready, and the other branches (records,
            // retries, storing offsets) must still get their turn.
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                Some(outcome) = self.outcomes.recv() => {
                    self.on_outcome(outcome);
                    while let Ok(outcome) = self.outcomes.try_recv() {
                        self.on_outcome(outcome);
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return Err(DispatchError::ConsumerStopped),
                },
                () = &mut retry_timer, if next_retry.is_some() => self.resume_due_retries(),
                _ = store.tick() => {
                    self.store_offsets();
                    self.finish_revocations(false);
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.lanes.len() - self.idle.len()
    }

    /// Hands ready records to idle lanes (none while the sink does not accept connections).
    fn dispatch(&mut self) -> Result<(), DispatchError> {
        if self.sink_down_since.is_some() {
            return Ok(());
        }
        while let Some(&lane) = self.idle.last() {
            let Some((ticket, pending)) = self.scheduler.pop_ready() else { break };
            self.idle.pop();
            self.count_out(ticket.partition, true);
            self.lanes[lane].try_send(Job { ticket, pending }).map_err(|_| DispatchError::LaneStopped)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Assigned(partitions) => {
                for AssignedPartition { id, topic, partition } in partitions {
                    self.scheduler.assign(id);
                    self.partitions.insert(id, PartitionMeta { topic, partition, stored: None, out: 0, stopping: false });
                }
            }
            ConsumerEvent::Revoked { partitions, done } => {
                for id in &partitions {
                    for pending in self.scheduler.stop(*id) {
                        self.budget.release(pending.weight);
                    }
                    if let Some(meta) = self.partitions.get_mut(id) {
                        meta.stopping = true;
                    }
                }
                let budget = &self.budget;
                self.retries.retain(|Reverse(due)| {
                    let keep = !partitions.contains(&due.job.ticket.partition);
                    if !keep {
                        budget.release(due.job.pending.weight);
                    }
                    keep
                });
                let deadline = Instant::now() + self.settings.request_timeout.min(MAX_SHUTDOWN_GRACE);
                self.revocations.push(Revocation { partitions, done, deadline });
                self.finish_revocations(false);
            }
            ConsumerEvent::Records(batch) => {
                let arrived = Instant::now();
                let mut filtered = 0;
                for incoming in batch {
                    match incoming {
                        Incoming::Deliver(record) => {
                            let (partition, offset, key) = (record.partition, record.offset, record.key.clone());
                            let pending = Pending { weight: record.weight(), record, attempts: 0, first_failure: None, arrived };
                            if let Err(pending) = self.scheduler.push(partition, offset, key, pending) {
                                self.budget.release(pending.weight);
                            }
                        }
                        Incoming::Filtered { partition, offset } => filtered += u64::from(self.scheduler.skip(partition, offset)),
                    }
                }
                self.metrics.filtered(filtered);
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Attempted { lane, job, attempt } => {
                self.idle.push(lane);
                self.count_out(job.ticket.partition, false);
                if !self.scheduler.is_current(job.ticket) {
                    self.budget.release(job.pending.weight);
                    return;
                }
                match attempt {
                    Ok(()) => {
                        self.metrics.delivered(job.pending.arrived.elapsed().as_secs_f64());
                        self.finish(job.ticket, job.pending.weight);
                    }
                    Err(failure) if failure.kind == FailureKind::Connect => self.on_sink_unreachable(job, &failure.message),
                    Err(failure) => self.on_failure(job, failure),
                }
            }
            Outcome::SinkReachable => {
                self.probe = None;
                if let Some(since) = self.sink_down_since.take() {
                    info!(sink = self.settings.sink.url(), outage = ?since.elapsed(), "the sink accepts connections again: delivery resumes");
                    self.metrics.set_sink_up(true);
                }
            }
            Outcome::DeadLettered { ticket, weight } => {
                self.dead_lettering -= 1;
                self.count_out(ticket.partition, false);
                while self.dead_letters.try_join_next().is_some() {}
                if self.scheduler.is_current(ticket) {
                    self.finish(ticket, weight);
                } else {
                    self.budget.release(weight);
                }
            }
        }
    }

    /// A record that could not be sent because the sink took no connection: no attempt. It goes
    /// back to the front of the queue, and delivery pauses until a probe connects.
    fn on_sink_unreachable(&mut self, job: Job, error: &str) {
        let stopping = self.draining || self.partitions.get(&job.ticket.partition).is_none_or(|meta| meta.stopping);
        if stopping {
            // Not done, not committed: delivered again after the restart or by the next owner.
            self.budget.release(job.pending.weight);
        } else if let Err(pending) = self.scheduler.retry(job.ticket, job.pending) {
            self.budget.release(pending.weight);
        }
        if self.sink_down_since.is_some() {
            return;
        }
        warn!(sink = self.settings.sink.url(), %error, "the sink does not accept connections: delivery paused until it does (no attempts counted)");
        self.sink_down_since = Some(Instant::now());
        self.metrics.set_sink_up(false);
        let (sink, outcomes) = (self.settings.sink.clone(), self.outcomes_sender.clone());
        let timeout = self.settings.request_timeout.min(SINK_PROBE_LONGEST_PAUSE);
        self.probe = Some(tokio::spawn(async move {
            until_reachable(&sink, timeout).await;
            let _ = outcomes.send(Outcome::SinkReachable);
        }));
    }

    fn count_out(&mut self, partition: PartitionId, out: bool) {
        if let Some(meta) = self.partitions.get_mut(&partition) {
            meta.out = if out { meta.out + 1 } else { meta.out.saturating_sub(1) };
        }
    }

    /// Answers revocations whose partitions have nothing in flight any more (or whose time is
    /// up, or all with `force`): stores their positions and forgets them.
    fn finish_revocations(&mut self, force: bool) {
        let now = Instant::now();
        let partitions = &self.partitions;
        let (finished, waiting): (Vec<Revocation>, Vec<Revocation>) =
            std::mem::take(&mut self.revocations).into_iter().partition(|revocation| {
                force
                    || now >= revocation.deadline
                    || revocation.partitions.iter().all(|id| partitions.get(id).is_none_or(|meta| meta.out == 0))
            });
        self.revocations = waiting;
        if finished.is_empty() {
            return;
        }
        self.store_offsets();
        for revocation in finished {
            let abandoned: usize = revocation.partitions.iter().filter_map(|id| self.partitions.get(id)).map(|meta| meta.out).sum();
            if abandoned > 0 {
                warn!(abandoned, "giving up revoked partitions with deliveries still in flight");
            }
            for id in &revocation.partitions {
                self.scheduler.remove(*id);
                self.partitions.remove(id);
            }
            let _ = revocation.done.send(());
        }
    }

    fn finish(&mut self, ticket: Ticket, weight: usize) {
        self.scheduler.finish(ticket);
        self.budget.release(weight);
    }

    fn on_failure(&mut self, mut job: Job, failure: Failure) {
        let pending = &mut job.pending;
        pending.attempts += 1;
        let first_failure = *pending.first_failure.get_or_insert_with(SystemTime::now);
        let policy = &self.settings.retry;
        let retry = policy.should_retry(pending.attempts, failure.retryable);
        let stopping = self.draining || self.partitions.get(&job.ticket.partition).is_none_or(|meta| meta.stopping);
        self.metrics.failed_attempt(failure.kind.label(), retry && !stopping);
        if stopping {
            // Not done, not committed: delivered again after the restart or by the next owner.
            self.budget.release(pending.weight);
            return;
        }
        if retry {
            let delay = policy.delay(pending.attempts, failure.retry_after);
            debug!(offset = pending.record.offset, attempts = pending.attempts, ?delay, error = %failure.message, "delivery failed; retrying");
            self.next_seq += 1;
            self.retries.push(Reverse(Due { at: Instant::now() + delay, seq: self.next_seq, job }));
            return;
        }
        let Some(meta) = self.partitions.get(&job.ticket.partition) else { return self.budget.release(pending.weight) };
        let reason = if failure.retryable { DeadLetterReason::AttemptsExhausted } else { DeadLetterReason::NotRetryable };
        warn!(
            topic = %meta.topic, partition = meta.partition, offset = pending.record.offset, attempts = pending.attempts,
            reason = reason.label(), error = %failure.message, "dead-lettering a record"
        );
        let failed =
            Failed { topic: &meta.topic, partition: meta.partition, error: &failure.message, attempts: pending.attempts, first_failure };
        let letter = dead_letter::dead_letter(&self.settings.dead_letter_topic, &pending.record, &failed);
        let (producer, metrics, outcomes) = (self.producer.clone(), self.metrics.clone(), self.outcomes_sender.clone());
        let (ticket, weight) = (job.ticket, pending.weight);
        let (topic, partition, offset) = (meta.topic.clone(), meta.partition, pending.record.offset);
        self.dead_lettering += 1;
        self.count_out(ticket.partition, true);
        self.dead_letters.spawn(async move {
            let dead_letter_topic = letter.topic.clone();
            match dead_letter::write(producer.as_ref(), letter, || metrics.dead_letter_write_failed()).await {
                Written::Whole => metrics.dead_lettered(reason),
                Written::Truncated(why) => {
                    warn!(%topic, partition, offset, %dead_letter_topic, refused = %why, "dead-lettered a record truncated: Kafka refused it whole");
                    metrics.dead_letter_truncated();
                    metrics.dead_lettered(reason);
                }
                Written::Refused(why) => {
                    error!(
                        %topic, partition, offset, %dead_letter_topic, error = %why,
                        "dropping a record: Kafka refused its dead letter for good, also truncated; the partition moves on"
                    );
                    metrics.dead_letter_refused();
                }
            }
            let _ = outcomes.send(Outcome::DeadLettered { ticket, weight });
        });
    }

    fn resume_due_retries(&mut self) {
        let now = Instant::now();
        while self.retries.peek().is_some_and(|Reverse(due)| due.at <= now) {
            let Some(Reverse(due)) = self.retries.pop() else { break };
            if let Err(pending) = self.scheduler.retry(due.job.ticket, due.job.pending) {
                self.budget.release(pending.weight);
            }
        }
    }

    /// Stores each partition's position when it moved; librdkafka commits stored offsets.
    fn store_offsets(&mut self) {
        self.metrics.set_load(self.budget.records(), self.in_flight());
        let mut offsets = TopicPartitionList::new();
        for (id, meta) in &mut self.partitions {
            let Some(position) = self.scheduler.position(*id) else { continue };
            if meta.stored != Some(position) {
                if let Err(error) = offsets.add_partition_offset(&meta.topic, meta.partition, Offset::Offset(position)) {
                    warn!(%error, topic = %meta.topic, partition = meta.partition, "cannot store an offset");
                    continue;
                }
                meta.stored = Some(position);
            }
        }
        if offsets.count() > 0 {
            // Fails for partitions revoked meanwhile; their new owner starts from the last commit.
            if let Err(error) = self.consumer.store_offsets(&offsets) {
                debug!(%error, "cannot store offsets");
            }
        }
    }

    /// Waits for in-flight deliveries and dead letters (not for retries or records not yet sent,
    /// which are abandoned), then stores the final positions. Rebalances meanwhile are served as
    /// while running: partitions are given up only once their deliveries in flight are done and
    /// stored, so their next owner neither repeats nor overtakes them.
    async fn drain(&mut self, events: &mut mpsc::UnboundedReceiver<ConsumerEvent>) {
        self.draining = true;
        let grace = self.settings.request_timeout.min(MAX_SHUTDOWN_GRACE);
        let deadline = Instant::now() + grace;
        while self.in_flight() > 0 || self.dead_lettering > 0 {
            tokio::select! {
                outcome = self.outcomes.recv() => match outcome {
                    Some(outcome) => {
                        self.on_outcome(outcome);
                        self.finish_revocations(false);
                    }
                    None => break,
                },
                Some(event) = events.recv() => self.on_event(event),
                () = tokio::time::sleep_until(deadline) => {
                    warn!(in_flight = self.in_flight(), dead_letters = self.dead_lettering, ?grace, "abandoning unfinished deliveries");
                    break;
                }
            }
        }
        self.finish_revocations(true);
        self.store_offsets();
    }
}
