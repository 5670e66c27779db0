//! What every pod the operator runs gets from the operator's own configuration: the Kafka
//! bootstrap servers, the `tributary-relay` image, and the workload Kafka properties Secret with
//! the volume, mount and variable that hand it to each container talking to Kafka (pure), and the
//! check that this Secret is there before a pod needs it. Subscriptions' consumers and push
//! dispatchers and OutboxRelays' relays all take it from here, so credentials reach every
//! workload the same way.

use k8s_openapi::api::core::v1::{EnvVar, Secret, SecretVolumeSource, Volume, VolumeMount};

use crate::controller_support::Shared;
use crate::error::Result;

/// Where the workload Kafka properties Secret is mounted.
pub const KAFKA_PROPERTIES_DIR: &str = "/etc/tributary/kafka";
/// Key of the librdkafka properties file in the workload Kafka properties Secret.
pub const KAFKA_PROPERTIES_KEY: &str = "kafka.properties";

/// Operator-wide settings that reach every workload: Subscriptions' pods and OutboxRelays' relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSettings {
    /// Kafka bootstrap servers, the operator's own.
    pub bootstrap_servers: String,
    /// Image of `tributary-relay`, run as push dispatchers and outbox relays.
    pub relay_image: String,
    /// A Secret, in each workload's namespace, holding `kafka.properties` (SASL/TLS settings for
    /// librdkafka) and any files it names; mounted at /etc/tributary/kafka.
    pub kafka_properties_secret: Option<String>,
}

impl WorkloadSettings {
    /// The Kafka properties Secret as a pod mounts it, in a volume named `volume`; `None` when the
    /// operator has no such Secret.
    pub fn kafka_properties<'a>(&'a self, volume: &'a str) -> Option<KafkaProperties<'a>> {
        self.kafka_properties_secret.as_deref().map(|secret| KafkaProperties { secret, volume })
    }
}

/// A Secret checked for a key, without keeping (or logging) its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    Found,
    Missing,
    KeyMissing,
}

impl SecretCheck {
    pub fn of(secret: Option<&Secret>, key: &str) -> Self {
        match secret {
            None => SecretCheck::Missing,
            Some(secret) if secret.data.as_ref().is_some_and(|data| data.contains_key(key)) => SecretCheck::Found,
            Some(_) => SecretCheck::KeyMissing,
        }
    }
}

/// Whether Secret `name` in `namespace` exists and holds `key`.
pub async fn check_secret_key(shared: &Shared, namespace: &str, name: &str, key: &str) -> Result<SecretCheck> {
    Ok(SecretCheck::of(shared.get::<Secret>(namespace, name).await?.as_ref(), key))
}

/// Why the workload Kafka properties Secret cannot be mounted in `namespace`, if it cannot: a pod
/// whose Secret volume is missing does not start. `None` also when the operator has no such
/// Secret.
pub async fn kafka_secret_problem(settings: &WorkloadSettings, shared: &Shared, namespace: &str) -> Result<Option<String>> {
    let Some(name) = &settings.kafka_properties_secret else { return Ok(None) };
    let problem = match check_secret_key(shared, namespace, name, KAFKA_PROPERTIES_KEY).await? {
        SecretCheck::Found => return Ok(None),
        SecretCheck::Missing => "does not exist in this namespace",
        SecretCheck::KeyMissing => "has no key kafka.properties",
    };
    Ok(Some(format!(
        "Secret {name} (the operator's Kafka settings for workloads, --workload-kafka-properties-secret) {problem}; pods that mount it cannot start"
    )))
}

/// The workload Kafka properties Secret in one pod: the pod gets `volume()`, and every container
/// that talks to Kafka gets `mount()` and `env()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaProperties<'a> {
    secret: &'a str,
    volume: &'a str,
}

impl KafkaProperties<'_> {
    pub fn volume(&self) -> Volume {
        Volume {
            name: self.volume.to_owned(),
            secret: Some(SecretVolumeSource { secret_name: Some(self.secret.to_owned()), ..SecretVolumeSource::default() }),
            ..Volume::default()
        }
    }

    /// Read-only, and of the whole Secret: the properties file may name certificate files beside it.
    pub fn mount(&self) -> VolumeMount {
        VolumeMount {
            name: self.volume.to_owned(),
            mount_path: KAFKA_PROPERTIES_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }
    }

    /// The variable by which every Tributary binary finds the properties file.
    pub fn env(&self) -> EnvVar {
        EnvVar {
            name: tributary_api::relay_contract::env::KAFKA_PROPERTIES_FILE.to_owned(),
            value: Some(format!("{KAFKA_PROPERTIES_DIR}/{KAFKA_PROPERTIES_KEY}")),
            value_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_check_needs_the_key() {
        let secret = |keys: &[&str]| Secret {
            data: Some(keys.iter().map(|key| ((*key).to_owned(), k8s_openapi::ByteString(b"postgres://x".to_vec()))).collect()),
            ..Secret::default()
        };
        assert_eq!(SecretCheck::of(Some(&secret(&["url"])), "url"), SecretCheck::Found);
        assert_eq!(SecretCheck::of(Some(&secret(&["dsn"])), "url"), SecretCheck::KeyMissing);
        assert_eq!(SecretCheck::of(Some(&Secret::default()), "url"), SecretCheck::KeyMissing);
        assert_eq!(SecretCheck::of(None, "url"), SecretCheck::Missing);
    }

    fn settings(secret: Option<&str>) -> WorkloadSettings {
        WorkloadSettings {
            bootstrap_servers: "kafka:9092".into(),
            relay_image: "relay:test".into(),
            kafka_properties_secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn the_secret_is_mounted_read_only_and_its_properties_file_named() {
        let settings = settings(Some("kafka-auth"));
        let kafka = settings.kafka_properties("relay-kafka").expect("a Secret is set");
        let volume = kafka.volume();
        assert_eq!(volume.name, "relay-kafka");
        assert_eq!(volume.secret.and_then(|secret| secret.secret_name).as_deref(), Some("kafka-auth"));
        let mount = kafka.mount();
        assert_eq!((mount.name.as_str(), mount.mount_path.as_str(), mount.read_only), ("relay-kafka", "/etc/tributary/kafka", Some(true)));
        assert_eq!(mount.sub_path, None, "a subPath mount would not see the Secret's updates");
        let env = kafka.env();
        assert_eq!(
            (env.name.as_str(), env.value.as_deref()),
            ("TRIBUTARY_KAFKA_PROPERTIES_FILE", Some("/etc/tributary/kafka/kafka.properties"))
        );
    }

    #[test]
    fn without_a_secret_there_is_nothing_to_mount() {
        assert_eq!(settings(None).kafka_properties("relay-kafka"), None);
    }
}
