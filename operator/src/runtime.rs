//! What `tributary-operator run` runs, as a library function the binary and the tests share: the
//! three controllers, started while this instance leads (or always, without leader election),
//! and the readiness they report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Reporter;
use kube::Client;
use tracing::warn;
use tributary_common::server::Readiness;

use crate::clock::Clock;
use crate::controller_support::{Lifecycle, Shared};
use crate::kafka::{ConsumerGroups, TopicAdmin};
use crate::leader::{self, LeaderElector, LeaseSettings};
use crate::metrics::Metrics;
use crate::outbox_relay::{self, probe::RelayStatusSource};
use crate::{event_topic, subscription};

/// Everything the controllers run with.
pub struct Operator {
    pub client: Client,
    pub admin: Arc<dyn TopicAdmin>,
    pub groups: Arc<dyn ConsumerGroups>,
    pub relay_status: Arc<dyn RelayStatusSource>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Names this instance in the Events it publishes.
    pub reporter: Reporter,
    pub event_topics: event_topic::Settings,
    pub subscriptions: subscription::Settings,
    pub outbox_relays: outbox_relay::Settings,
}

/// Runs until `shutdown`. With `lease`, the controllers run only while this instance holds the
/// Lease; a standby is ready (it serves its probes), the leader once its watches synced.
pub async fn run(operator: Operator, lease: Option<LeaseSettings>, readiness: Readiness, shutdown: Shutdown) {
    let Some(lease) = lease else {
        operator.metrics.set_leader(true);
        return run_controllers(&operator, &readiness, &shutdown).await;
    };
    readiness.mark_ready();
    let elector = LeaderElector::new(operator.client.clone(), lease, operator.clock.clone());
    leader::run_elected(
        elector,
        operator.metrics.clone(),
        || async {
            // Not ready while the new leader's watches sync; a standby again when this is dropped.
            let _standby_again = ReadyOnDrop(readiness.clone());
            readiness.set(false);
            run_controllers(&operator, &readiness, &shutdown).await;
        },
        shutdown.requested(),
    )
    .await;
}

pub use tributary_common::shutdown::Shutdown;

/// The three controllers, until shutdown; `readiness` turns ready once all three have synced.
async fn run_controllers(operator: &Operator, readiness: &Readiness, shutdown: &Shutdown) {
    let synced = SyncedControllers::new(readiness.clone(), 3);
    let shared = Shared::new(operator.client.clone(), operator.reporter.clone(), operator.metrics.clone(), operator.clock.clone());
    let lifecycle = || Lifecycle { synced: synced.callback(), shutdown: shutdown.requested() };
    let topics = event_topic::controller::run(shared.clone(), operator.admin.clone(), operator.event_topics.clone(), lifecycle());
    let subscriptions = subscription::controller::run(
        shared.clone(),
        operator.admin.clone(),
        operator.groups.clone(),
        operator.subscriptions.clone(),
        lifecycle(),
    );
    let relays = outbox_relay::controller::run(shared, operator.relay_status.clone(), operator.outbox_relays.clone(), lifecycle());
    let controllers = async {
        tokio::join!(topics, subscriptions, relays);
    };
    let stopped_waiting = async {
        shutdown.requested().await;
        // kube's controller holds its runner until its store has synced, and a shutdown request
        // stops its watch: one that had not synced may never finish. Nothing runs before every
        // store synced, so then there is nothing to wait for.
        if synced.all() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!("reconciles still running {SHUTDOWN_GRACE:?} after the shutdown request; stopping them");
        }
    };
    tokio::select! {
        () = controllers => {}
        () = stopped_waiting => {}
    }
}

/// How long reconciles in flight may take to finish after a shutdown request (the chart gives
/// the pod 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Marks ready when dropped: a leader that stops leading is a standby, and standbys are ready.
struct ReadyOnDrop(Readiness);

impl Drop for ReadyOnDrop {
    fn drop(&mut self) {
        self.0.mark_ready();
    }
}

/// Turns `/readyz` ready once every controller's watch has synced.
#[derive(Clone)]
struct SyncedControllers {
    readiness: Readiness,
    pending: Arc<AtomicUsize>,
}

impl SyncedControllers {
    fn new(readiness: Readiness, controllers: usize) -> Self {
        SyncedControllers { readiness, pending: Arc::new(AtomicUsize::new(controllers)) }
    }

    /// Whether every controller has synced.
    fn all(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// What one controller calls once synced.
    fn callback(&self) -> impl FnOnce() + Send + 'static {
        let synced = self.clone();
        move || {
            if synced.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                synced.readiness.mark_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests;
