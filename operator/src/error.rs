//! Reconcile errors. Each names the object it is about and has a fixed metric label.

use crate::kafka::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{operation} of {object} failed: {source}")]
    Kube {
        operation: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kafka request for {object} failed: {source}")]
    Kafka {
        object: String,
        #[source]
        source: KafkaError,
    },
    #[error("{object} has no namespace; Tributary resources are namespaced")]
    MissingNamespace { object: String },
}

impl Error {
    /// Label for the failures-by-reason metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Kafka { source, .. } => source.metric_label(),
            Error::MissingNamespace { .. } => "missing_namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
