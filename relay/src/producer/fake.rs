//! An in-memory [`EventProducer`] for tests.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{EventProducer, OutgoingRecord, ProduceError};

/// An in-memory [`EventProducer`] for unit tests: records what was sent; topics can be made to
/// reject records or the whole broker to be unavailable.
#[derive(Debug, Default)]
pub struct FakeProducer {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    sent: Vec<OutgoingRecord>,
    rejecting_topics: Vec<String>,
    unavailable: bool,
}

impl FakeProducer {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn sent(&self) -> Vec<OutgoingRecord> {
        self.state().sent.clone()
    }

    pub fn reject_topic(&self, topic: &str) {
        self.state().rejecting_topics.push(topic.to_owned());
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }
}

#[async_trait]
impl EventProducer for FakeProducer {
    async fn send_all(&self, records: Vec<OutgoingRecord>) -> Vec<Result<(), ProduceError>> {
        let mut state = self.state();
        records
            .into_iter()
            .map(|record| {
                if state.unavailable {
                    Err(ProduceError::Unavailable("fake broker is down".into()))
                } else if state.rejecting_topics.contains(&record.topic) {
                    Err(ProduceError::Rejected(format!("fake broker rejects topic {}", record.topic)))
                } else {
                    state.sent.push(record);
                    Ok(())
                }
            })
            .collect()
    }

    async fn reachable(&self) -> bool {
        !self.state().unavailable
    }
}
