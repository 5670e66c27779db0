//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles.
//!
//! The algorithm is client-go's (`tools/leaderelection`, as controller-runtime, KEDA and Strimzi
//! use it), written against kube's typed `Api<Lease>` rather than taken from a crate: the
//! maintained crate for kube 5, kube-lease-manager, reads the system time itself (so its expiry
//! cannot be tested with a fixed clock) and relies on server-side apply field ownership for
//! mutual exclusion; kube-leader-election requires kube 4. The lock itself is the API server's:
//! a create fails when the Lease exists, a replace fails when the `resourceVersion` moved.
//!
//! - A candidate takes the Lease when nobody holds it, or when the record it last saw has not
//!   changed for the lease duration, measured on its own clock from when it saw that record (so
//!   clock skew between nodes does not matter, as in client-go).
//! - The leader renews every retry period; if it cannot renew for the renew deadline, or finds
//!   another holder, it has lost the lease and stops reconciling at once.
//! - On shutdown the leader releases the Lease so that a standby takes over without waiting.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;

/// Timing and identity of one candidate.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the Lease, in `namespace`.
    pub name: String,
    pub namespace: String,
    /// This instance's name in `holderIdentity` (the pod name in a cluster).
    pub identity: String,
    /// How long a lease holds without renewal; a standby takes over after that.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            name: "tributary-operator".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The parts of a Lease that decide who leads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Record {
    holder: Option<String>,
    duration_seconds: Option<i32>,
    acquired: Option<Timestamp>,
    renewed: Option<Timestamp>,
    transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|holder| !holder.is_empty()),
            duration_seconds: spec.lease_duration_seconds,
            acquired: spec.acquire_time.map(|time| time.0),
            renewed: spec.renew_time.map(|time| time.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: self.holder.clone(),
            lease_duration_seconds: self.duration_seconds,
            acquire_time: self.acquired.map(MicroTime),
            renew_time: self.renewed.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Create(Record),
    Update(Record),
    /// Someone else holds a lease that has not expired.
    Wait,
}

/// One candidate for leadership.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
    /// The record last read, and when (on our clock) it was first seen as it is.
    observed: Option<(Record, Timestamp)>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings, clock: Arc<dyn Clock>) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        LeaderElector { api, settings, clock, observed: None }
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// One attempt to take or renew the Lease (client-go's `tryAcquireOrRenew`): whether this
    /// instance holds it afterwards. A write that lost a race is `Ok(false)`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = self.clock.now();
        let lease = self.api.get_opt(&self.settings.name).await?;
        self.write(lease, now).await
    }

    /// The write half of [`Self::try_acquire_or_renew`], given the Lease as read.
    async fn write(&mut self, lease: Option<Lease>, now: Timestamp) -> Result<bool, kube::Error> {
        let written = match self.decide(lease.as_ref(), now) {
            Decision::Wait => return Ok(false),
            Decision::Create(record) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record.spec()),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Update(record) => {
                let mut lease = lease.unwrap_or_default();
                lease.spec = Some(record.spec());
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some((Record::of(&lease), now));
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up, if held, so that a standby need not wait for it to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let mut record = Record::of(&lease);
        if record.holder.as_deref() != Some(self.identity()) {
            return Ok(());
        }
        record.holder = None;
        record.duration_seconds = Some(1);
        record.renewed = Some(self.clock.now());
        lease.spec = Some(record.spec());
        match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// What to write, given the Lease as read (pure but for remembering what was observed).
    fn decide(&mut self, lease: Option<&Lease>, now: Timestamp) -> Decision {
        let duration_seconds = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(lease) = lease else {
            let record = Record {
                holder: Some(self.settings.identity.clone()),
                duration_seconds: Some(duration_seconds),
                acquired: Some(now),
                renewed: Some(now),
                transitions: 0,
            };
            return Decision::Create(record);
        };
        let current = Record::of(lease);
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == current => *at,
            _ => now,
        };
        self.observed = Some((current.clone(), first_seen));
        let ours = current.holder.as_deref() == Some(self.identity());
        let lease_duration = SignedDuration::from_secs(i64::from(current.duration_seconds.unwrap_or(duration_seconds)));
        let expired = first_seen.checked_add(lease_duration).map_or(true, |expiry| expiry <= now);
        if current.holder.is_some() && !ours && !expired {
            return Decision::Wait;
        }
        Decision::Update(Record {
            holder: Some(self.settings.identity.clone()),
            duration_seconds: Some(duration_seconds),
            acquired: if ours { current.acquired } else { Some(now) },
            renewed: Some(now),
            transitions: if ours { current.transitions } else { current.transitions + 1 },
        })
    }
}

/// Runs `lead` whenever this instance holds the Lease, and stops it at once when the Lease is
/// lost; then waits to lead again. Returns when `lead` returns (it handles shutdown itself),
/// releasing the Lease, or when `shutdown` completes while standing by.
pub async fn run_elected<F, Fut>(mut elector: LeaderElector, metrics: Arc<Metrics>, mut lead: F, shutdown: impl Future<Output = ()>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let retry = elector.settings.retry_period;
    tokio::pin!(shutdown);
    loop {
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => warn!(%error, lease = %elector.settings.name, "cannot read or write the leader Lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = &mut shutdown => return,
            }
        }
        info!(identity = %elector.identity(), lease = %elector.settings.name, "became the leader; reconciling");
        metrics.set_leader(true);
        let finished = tokio::select! {
            () = lead() => true,
            () = keep_renewing(&mut elector) => false,
        };
        metrics.set_leader(false);
        if finished {
            if let Err(error) = elector.release().await {
                warn!(%error, "could not release the leader Lease; a standby takes over when it expires");
            }
            return;
        }
        warn!(identity = %elector.identity(), lease = %elector.settings.name, "lost the leader Lease; stopped reconciling");
    }
}

/// Renews every retry period; returns once the Lease is held by another or could not be renewed
/// within the renew deadline.
async fn keep_renewing(elector: &mut LeaderElector) {
    let deadline = SignedDuration::try_from(elector.settings.renew_deadline).unwrap_or(SignedDuration::MAX);
    let mut renewed = elector.clock.now();
    loop {
        tokio::time::sleep(elector.settings.retry_period).await;
        match elector.try_acquire_or_renew().await {
            Ok(true) => renewed = elector.clock.now(),
            Ok(false) => return,
            Err(error) => warn!(%error, "cannot renew the leader Lease"),
        }
        if elector.clock.now().duration_since(renewed) >= deadline {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
