//! How the operator configures the `tributary-relay` containers it runs, and how the relay reads
//! that configuration: the subcommands, the ports and the environment variables, defined here once
//! for both sides. The values of the variables are the relay's flags, which the API enums spell
//! with their `Display` (`per-key`, `block`) and, with this crate's `clap` feature, parse as
//! `clap::ValueEnum`.
//!
//! The relay's `/status` answer lives with the OutboxRelay it reports on
//! ([`crate::outbox_relay::RelayReport`]).

/// `tributary-relay outbox`: the transactional-outbox relay.
pub const OUTBOX_COMMAND: &str = "outbox";
/// `tributary-relay dispatch`: the push dispatcher.
pub const DISPATCH_COMMAND: &str = "dispatch";

/// Port of the outbox relay's `/metrics`, `/healthz`, `/readyz` and `/status`, unless a sidecar
/// placement names another.
pub const OUTBOX_PORT: u16 = 8081;
/// Port of the push dispatcher's `/metrics`, `/healthz` and `/readyz`. Each command (and the
/// operator, on 8080) has a default of its own, so that they run side by side on one host.
pub const DISPATCH_PORT: u16 = 8082;

/// The environment variables the operator sets on relay containers (and, for reading the group,
/// on Pull-mode consumers), each mirroring the relay flag of the same name. The relay's other
/// flags have variables too, which only people running it by hand set.
pub mod env {
    /// The prefix the operator reserves in the consumer containers it runs.
    pub const PREFIX: &str = "TRIBUTARY_";

    // Every command, and the operator itself.
    pub const BOOTSTRAP_SERVERS: &str = "TRIBUTARY_BOOTSTRAP_SERVERS";
    pub const KAFKA_PROPERTIES_FILE: &str = "TRIBUTARY_KAFKA_PROPERTIES_FILE";
    pub const LISTEN_ADDRESS: &str = "TRIBUTARY_LISTEN_ADDRESS";
    pub const MAX_ATTEMPTS: &str = "TRIBUTARY_MAX_ATTEMPTS";

    // `outbox` (and its table's `migrate` and `outbox-release`).
    pub const DATABASE_URL: &str = "TRIBUTARY_DATABASE_URL";
    /// PEM files for TLS to the database: the CA certificate(s), and a client certificate and its
    /// key. They replace the URL's `sslrootcert`, `sslcert` and `sslkey`; its `sslmode` decides.
    pub const DATABASE_CA_FILE: &str = "TRIBUTARY_DATABASE_CA_FILE";
    pub const DATABASE_CERT_FILE: &str = "TRIBUTARY_DATABASE_CERT_FILE";
    pub const DATABASE_KEY_FILE: &str = "TRIBUTARY_DATABASE_KEY_FILE";
    pub const OUTBOX_TABLE: &str = "TRIBUTARY_OUTBOX_TABLE";
    pub const COLUMN_ID: &str = "TRIBUTARY_COLUMN_ID";
    pub const COLUMN_AGGREGATE_TYPE: &str = "TRIBUTARY_COLUMN_AGGREGATE_TYPE";
    pub const COLUMN_AGGREGATE_ID: &str = "TRIBUTARY_COLUMN_AGGREGATE_ID";
    pub const COLUMN_TYPE: &str = "TRIBUTARY_COLUMN_TYPE";
    pub const COLUMN_PAYLOAD: &str = "TRIBUTARY_COLUMN_PAYLOAD";
    pub const COLUMN_HEADERS: &str = "TRIBUTARY_COLUMN_HEADERS";
    pub const COLUMN_TOPIC: &str = "TRIBUTARY_COLUMN_TOPIC";
    pub const COLUMN_CREATED_AT: &str = "TRIBUTARY_COLUMN_CREATED_AT";
    pub const PAYLOAD_FORMAT: &str = "TRIBUTARY_PAYLOAD_FORMAT";
    pub const ROUTES: &str = "TRIBUTARY_ROUTES";
    pub const TOPIC_PREFIX: &str = "TRIBUTARY_TOPIC_PREFIX";
    pub const CLOUDEVENTS_SOURCE: &str = "TRIBUTARY_CLOUDEVENTS_SOURCE";
    pub const BATCH_SIZE: &str = "TRIBUTARY_BATCH_SIZE";
    pub const POLL_INTERVAL: &str = "TRIBUTARY_POLL_INTERVAL";
    pub const CLEANUP: &str = "TRIBUTARY_CLEANUP";
    pub const CLEANUP_RETENTION: &str = "TRIBUTARY_CLEANUP_RETENTION";
    pub const FAILURE_POLICY: &str = "TRIBUTARY_FAILURE_POLICY";
    pub const PARTITIONER: &str = "TRIBUTARY_PARTITIONER";
    /// `true`: a table the relay cannot relay (not migrated yet, a column missing) is checked
    /// again until it can, and reported on `/status`, instead of ending the relay with exit
    /// code 2. The operator sets it on every relay it runs: a sidecar that exited would
    /// restart-loop the application's pods.
    pub const WAIT_FOR_SCHEMA: &str = "TRIBUTARY_WAIT_FOR_SCHEMA";

    // `dispatch`, and Pull-mode consumers reading the group themselves.
    pub const TOPICS: &str = "TRIBUTARY_TOPICS";
    pub const GROUP: &str = "TRIBUTARY_GROUP";
    pub const START_FROM: &str = "TRIBUTARY_START_FROM";
    pub const DEAD_LETTER_TOPIC: &str = "TRIBUTARY_DEAD_LETTER_TOPIC";
    pub const BACKOFF: &str = "TRIBUTARY_BACKOFF";
    pub const INITIAL_DELAY: &str = "TRIBUTARY_INITIAL_DELAY";
    pub const MAX_DELAY: &str = "TRIBUTARY_MAX_DELAY";
    // `dispatch` only.
    pub const SINK: &str = "TRIBUTARY_SINK";
    pub const ORDERING: &str = "TRIBUTARY_ORDERING";
    pub const CONCURRENCY: &str = "TRIBUTARY_CONCURRENCY";
    pub const FILTERS: &str = "TRIBUTARY_FILTERS";
    // Pull-mode consumers only: the librdkafka properties of their group.
    pub const CONSUMER_PROPERTIES_FILE: &str = "TRIBUTARY_CONSUMER_PROPERTIES_FILE";
}

/// A value that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not one of {}", .expected.join(", "))]
pub struct UnknownValue {
    pub value: String,
    pub expected: Vec<&'static str>,
}

/// Gives an API enum its spelling outside the CRD, as the relay's flags and the variables the
/// operator sets write it (`per-key`, beside serde's `PerKey` in the CRD): `ALL`, `as_str`,
/// `Display`, `FromStr` and, with the `clap` feature, `clap::ValueEnum` (without help per value,
/// so the flags' help stays one line).
macro_rules! flag_spelling {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// How the relay's flag spells the value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::relay_contract::UnknownValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL.iter().copied().find(|value| value.as_str() == text).ok_or_else(|| $crate::relay_contract::UnknownValue {
                    value: text.to_owned(),
                    expected: Self::ALL.iter().map(|value| value.as_str()).collect(),
                })
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::outbox_relay::{CleanupMode, FailurePolicy, Partitioner, PayloadFormat};
    use crate::subscription::{Backoff, FilterOperator, Ordering};

    /// Each value reads back from its spelling, and the spellings are what the relay's flags and
    /// the operator's variables have always taken.
    fn round_trips<T>(expected: &[&str])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr,
        T::Err: std::fmt::Debug,
    {
        let spelled: Vec<String> = expected.iter().map(|text| text.parse::<T>().expect("a spelling").to_string()).collect();
        assert_eq!(spelled, expected);
    }

    #[test]
    fn every_enum_of_the_contract_has_its_flag_spelling() {
        round_trips::<PayloadFormat>(&["json", "binary"]);
        round_trips::<FailurePolicy>(&["block", "skip"]);
        round_trips::<CleanupMode>(&["delete", "mark"]);
        round_trips::<Partitioner>(&["murmur2_random", "consistent_random", "fnv1a_random"]);
        round_trips::<Ordering>(&["per-key", "unordered"]);
        round_trips::<Backoff>(&["linear", "exponential"]);
        round_trips::<FilterOperator>(&["exact", "prefix", "suffix"]);
        assert_eq!(Ordering::ALL, [Ordering::PerKey, Ordering::Unordered]);
    }

    #[test]
    fn an_unknown_spelling_names_the_known_ones() {
        let error = "PerKey".parse::<Ordering>().expect_err("the CRD's spelling is not the flag's");
        assert_eq!(error.to_string(), r#""PerKey" is not one of per-key, unordered"#);
    }
}
