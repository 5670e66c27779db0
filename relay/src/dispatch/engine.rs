//! The dispatcher's engine: one task owns the scheduler and decides; the consumer thread feeds it
//! records, lanes (one per delivery in flight) POST them and report back, dead letters are written
//! by tasks of their own. Offsets are stored every 100 ms for the engine's positions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::consumer::{self, AssignedPartition, Budget, ConsumerControl, ConsumerError, ConsumerEvent, DispatchConsumer, Incoming, Wake};
use super::dead_letter::{self, Failed};
use super::http::{Attempt, Failure, Lane};
use super::metrics::{DeadLetterReason, DispatchMetrics};
use super::record::Record;
use super::scheduler::{PartitionId, Scheduler, Ticket};
use super::DispatchSettings;
use crate::producer::EventProducer;

const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for in-flight deliveries at shutdown (inside Kubernetes' default 30 s grace).
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

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
    Attempted { lane: usize, job: Job, attempt: Attempt },
    DeadLettered { ticket: Ticket, weight: usize },
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

/// A dispatcher with its consumer created and subscribed; [`Dispatcher::run`] does the work.
pub struct Dispatcher {
    settings: Arc<DispatchSettings>,
    consumer: Arc<DispatchConsumer>,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    wake: Arc<Wake>,
    producer: Arc<dyn EventProducer>,
    metrics: Arc<DispatchMetrics>,
}

impl Dispatcher {
    /// Fails on configuration Kafka refuses (bad properties, unknown settings).
    pub fn new(settings: DispatchSettings, producer: Arc<dyn EventProducer>, metrics: Arc<DispatchMetrics>) -> Result<Self, ConsumerError> {
        let wake = Arc::new(Wake::default());
        let (consumer, events) = consumer::create(&settings.consumer, metrics.clone(), wake.clone())?;
        Ok(Dispatcher { settings: Arc::new(settings), consumer, events, wake, producer, metrics })
    }

    /// Dispatches until `shutdown` turns true (or its sender goes away); then stops fetching,
    /// lets in-flight deliveries finish (up to the request timeout, at most 25 s), commits what is
    /// done and leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), DispatchError> {
        let Dispatcher { settings, consumer, mut events, wake, producer, metrics } = self;
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
        info!(topics = ?settings.consumer.topics, group = %settings.consumer.group, sink = settings.sink.url(), lanes = lanes.len(), "dispatching");
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
        };
        let served = engine.serve(&mut events, &mut shutdown).await;
        info!("shutting down: finishing in-flight deliveries");
        // A rebalance from now on must not wait for this engine.
        drop(events);
        control.drain();
        wake.notify();
        engine.drain().await;
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

    /// Hands ready records to idle lanes.
    fn dispatch(&mut self) -> Result<(), DispatchError> {
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
                    Err(failure) => self.on_failure(job, failure),
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
        self.dead_lettering += 1;
        self.count_out(ticket.partition, true);
        self.dead_letters.spawn(async move {
            dead_letter::write(producer.as_ref(), letter, || metrics.dead_letter_write_failed()).await;
            metrics.dead_lettered(reason);
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
    /// which are abandoned), then stores the final positions.
    async fn drain(&mut self) {
        self.draining = true;
        let grace = self.settings.request_timeout.min(MAX_SHUTDOWN_GRACE);
        let deadline = Instant::now() + grace;
        while self.in_flight() > 0 || self.dead_lettering > 0 {
            match tokio::time::timeout_at(deadline, self.outcomes.recv()).await {
                Ok(Some(outcome)) => self.on_outcome(outcome),
                Ok(None) => break,
                Err(_) => {
                    warn!(in_flight = self.in_flight(), dead_letters = self.dead_lettering, ?grace, "abandoning unfinished deliveries");
                    break;
                }
            }
        }
        self.finish_revocations(true);
        self.store_offsets();
    }
}
