//! [`TopicAdmin`] over librdkafka's admin API.
//!
//! rdkafka wraps only the legacy AlterConfigs, which replaces a topic's whole config and which some
//! brokers (Tansu) do not implement; config drift is corrected with IncrementalAlterConfigs through
//! librdkafka directly, which touches just the keys given.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::{bindings as rdsys, ClientConfig};

use tributary_common::kafka_properties::{self, PropertiesError};

use super::{KafkaError, TopicAdmin, TopicLayout, TopicSpec, TopicState};

/// How to reach Kafka: bootstrap servers plus optional librdkafka properties (SASL, TLS).
#[derive(Debug, Clone)]
pub struct KafkaConnection {
    pub bootstrap_servers: String,
    /// A librdkafka properties file (`key=value` lines, `#` comments), e.g. `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`.
    pub properties_file: Option<PathBuf>,
    /// Deadline of each admin request.
    pub request_timeout: Duration,
}

impl KafkaConnection {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConnection { bootstrap_servers: bootstrap_servers.into(), properties_file: None, request_timeout: Duration::from_secs(10) }
    }

    /// The librdkafka client config for this connection.
    pub fn client_config(&self) -> Result<ClientConfig, ConnectionError> {
        let mut config = kafka_properties::client_config(&self.bootstrap_servers, self.properties_file.as_deref(), &[])?;
        config
            // A metadata lookup of a missing topic must not create it.
            .set("allow.auto.create.topics", "false")
            .set("socket.timeout.ms", self.request_timeout.as_millis().to_string());
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Properties(#[from] PropertiesError),
    #[error("cannot create the Kafka admin client for {bootstrap_servers}: {source}")]
    CreateClient {
        bootstrap_servers: String,
        #[source]
        source: RdError,
    },
}

/// The production [`TopicAdmin`].
#[derive(Clone)]
pub struct RdKafkaTopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    request_timeout: Duration,
}

impl RdKafkaTopicAdmin {
    pub fn connect(connection: &KafkaConnection) -> Result<Self, ConnectionError> {
        let client = connection
            .client_config()?
            .create()
            .map_err(|source| ConnectionError::CreateClient { bootstrap_servers: connection.bootstrap_servers.clone(), source })?;
        Ok(RdKafkaTopicAdmin { client: Arc::new(client), request_timeout: connection.request_timeout })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(self.request_timeout)).operation_timeout(Some(self.request_timeout))
    }

    /// Runs a blocking librdkafka call off the async runtime.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&AdminClient<DefaultClientContext>, Duration) -> T + Send + 'static,
    ) -> Result<T, KafkaError> {
        let client = Arc::clone(&self.client);
        let timeout = self.request_timeout;
        tokio::task::spawn_blocking(move || call(&client, timeout))
            .await
            .map_err(|join| KafkaError::Unavailable(format!("admin call did not complete: {join}")))
    }

    async fn describe_configs(&self, name: &str) -> Result<BTreeMap<String, String>, KafkaError> {
        let results = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(name)], &self.options())
            .await
            .map_err(|error| classify(error, "DescribeConfigs", name))?;
        let mut configs = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| classify_code(code, "DescribeConfigs", name, String::new()))?;
            configs.extend(resource.entries.into_iter().filter_map(|entry| Some((entry.name, entry.value?))));
        }
        Ok(configs)
    }
}

#[async_trait]
impl TopicAdmin for RdKafkaTopicAdmin {
    async fn describe_topic(&self, name: &str) -> Result<Option<TopicState>, KafkaError> {
        let Some(layout) = self.topic_layout(name).await? else {
            return Ok(None);
        };
        let configs = self.describe_configs(name).await?;
        Ok(Some(TopicState {
            name: name.to_owned(),
            partitions: layout.partitions,
            replication_factor: layout.replication_factor,
            configs,
        }))
    }

    async fn topic_layout(&self, name: &str) -> Result<Option<TopicLayout>, KafkaError> {
        let topic = name.to_owned();
        self.blocking(move |client, timeout| describe_topic_layout(client, &topic, timeout)).await?
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), KafkaError> {
        let partitions = spec.partitions;
        // -1 asks the broker for its default replication factor (KIP-464).
        let replication = TopicReplication::Fixed(spec.replication_factor.unwrap_or(-1));
        let mut topic = NewTopic::new(&spec.name, partitions, replication);
        for (key, value) in &spec.configs {
            topic = topic.set(key, value);
        }
        let results =
            self.client.create_topics([&topic], &self.options()).await.map_err(|error| classify(error, "CreateTopics", &spec.name))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(classify_code(code, "CreateTopics", &spec.name, code.to_string())),
            }
        }
        Ok(())
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<(), KafkaError> {
        let total = usize::try_from(total).unwrap_or(0);
        let request = NewPartitions::new(name, total);
        let results =
            self.client.create_partitions([&request], &self.options()).await.map_err(|error| classify(error, "CreatePartitions", name))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(classify_code(code, "CreatePartitions", name, code.to_string()));
            }
        }
        Ok(())
    }

    async fn set_configs(&self, name: &str, configs: &BTreeMap<String, String>) -> Result<(), KafkaError> {
        let topic = name.to_owned();
        let configs = configs.clone();
        self.blocking(move |client, timeout| incremental_alter_configs(client, &topic, &configs, timeout)).await?
    }

    async fn delete_topic(&self, name: &str) -> Result<(), KafkaError> {
        let results = self.client.delete_topics(&[name], &self.options()).await.map_err(|error| classify(error, "DeleteTopics", name))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(classify_code(code, "DeleteTopics", name, code.to_string())),
            }
        }
        Ok(())
    }
}

/// An admin result event, destroyed when dropped.
pub(super) struct AdminEvent(pub(super) *mut rdsys::rd_kafka_event_t);

impl Drop for AdminEvent {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `rd_kafka_queue_poll`, is non-null and is destroyed once.
        unsafe { rdsys::rd_kafka_event_destroy(self.0) }
    }
}

/// Runs one librdkafka admin request on a private queue and waits for its result event. `issue`
/// makes the request with the options and queue it is given.
///
/// rdkafka wraps only some admin requests; this serves the others without the per-topic handles
/// that `fetch_metadata` creates (librdkafka keeps those and refreshes metadata for all of them,
/// which makes every later request slower as topics accumulate).
pub(super) fn run_admin_request(
    client: &AdminClient<DefaultClientContext>,
    operation: &'static str,
    topic: &str,
    op: rdsys::rd_kafka_admin_op_t,
    timeout: Duration,
    issue: impl FnOnce(*mut rdsys::rd_kafka_t, *const rdsys::rd_kafka_AdminOptions_t, *mut rdsys::rd_kafka_queue_t),
) -> Result<AdminEvent, KafkaError> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let rk = client.inner().native_ptr();
    // SAFETY: options and queue are created here, used only while alive and destroyed once;
    // `rk` outlives the call because `client` is borrowed for its whole duration.
    unsafe {
        let options = rdsys::rd_kafka_AdminOptions_new(rk, op);
        let mut err_buf = [0 as std::ffi::c_char; 256];
        rdsys::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, err_buf.as_mut_ptr(), err_buf.len());
        let queue = rdsys::rd_kafka_queue_new(rk);
        issue(rk, options, queue);
        // The request carries its own timeout; allow a little more before giving up on the reply.
        let event = rdsys::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1_000));
        rdsys::rd_kafka_queue_destroy(queue);
        rdsys::rd_kafka_AdminOptions_destroy(options);
        if event.is_null() {
            return Err(KafkaError::Unavailable(format!("{operation} on {topic:?} got no reply within {timeout:?}")));
        }
        let event = AdminEvent(event);
        let code = rdsys::rd_kafka_event_error(event.0);
        if code != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let message = c_string(rdsys::rd_kafka_event_error_string(event.0));
            return Err(classify_code(code.into(), operation, topic, message));
        }
        Ok(event)
    }
}

/// Copies a C string librdkafka owns; null reads as empty.
///
/// # Safety
/// `text` must be null or point to a NUL-terminated string that stays valid during the call.
pub(super) unsafe fn c_string(text: *const std::ffi::c_char) -> String {
    if text.is_null() {
        String::new()
    } else {
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// Partition count and replication factor via DescribeTopics (KIP-700); `None` for a topic that
/// does not exist.
fn describe_topic_layout(
    client: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<TopicLayout>, KafkaError> {
    const OPERATION: &str = "DescribeTopics";
    let c_topic = CString::new(topic).map_err(|_| KafkaError::Rejected {
        operation: OPERATION,
        topic: topic.to_owned(),
        message: "topic name contains NUL".into(),
    })?;
    let mut names = [c_topic.as_ptr()];
    // SAFETY: the collection copies the names; it is destroyed once, after the request was issued.
    let event = unsafe {
        let collection = rdsys::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len());
        let event = run_admin_request(
            client,
            OPERATION,
            topic,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_DescribeTopics(rk, collection, options, queue),
        );
        rdsys::rd_kafka_TopicCollection_destroy(collection);
        event?
    };
    // SAFETY: every pointer read below belongs to `event`, which lives until the end of the block.
    unsafe {
        let result = rdsys::rd_kafka_event_DescribeTopics_result(event.0);
        let mut count = 0usize;
        let descriptions = rdsys::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if count > 0 {
            let description = *descriptions;
            let error = rdsys::rd_kafka_TopicDescription_error(description);
            if !error.is_null() {
                let code: RDKafkaErrorCode = rdsys::rd_kafka_error_code(error).into();
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Ok(None);
                }
                return Err(classify_code(code, OPERATION, topic, c_string(rdsys::rd_kafka_error_string(error))));
            }
            let mut partition_count = 0usize;
            let partitions = rdsys::rd_kafka_TopicDescription_partitions(description, &mut partition_count);
            let replication_factor = (0..partition_count)
                .map(|p| {
                    let mut replicas = 0usize;
                    rdsys::rd_kafka_TopicPartitionInfo_replicas(*partitions.add(p), &mut replicas);
                    replicas
                })
                .max()
                .unwrap_or(0);
            return Ok(Some(TopicLayout {
                partitions: i32::try_from(partition_count).unwrap_or(i32::MAX),
                replication_factor: i32::try_from(replication_factor).unwrap_or(i32::MAX),
            }));
        }
        Ok(None)
    }
}

/// IncrementalAlterConfigs (KIP-339) with SET operations: changes only the keys given.
fn incremental_alter_configs(
    client: &AdminClient<DefaultClientContext>,
    topic: &str,
    configs: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    const OPERATION: &str = "IncrementalAlterConfigs";
    let invalid = |message: String| KafkaError::InvalidConfig { topic: topic.to_owned(), message };
    let c_topic = CString::new(topic).map_err(|_| invalid("topic name contains NUL".into()))?;
    let entries: Vec<(CString, CString)> = configs
        .iter()
        .map(|(key, value)| Ok((CString::new(key.as_str())?, CString::new(value.as_str())?)))
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(|_| invalid("config contains NUL".into()))?;

    // SAFETY: the resource is created here, filled with strings librdkafka copies, and destroyed
    // once after the request; result pointers belong to `event`, alive until the block ends.
    unsafe {
        let resource = rdsys::rd_kafka_ConfigResource_new(rdsys::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC, c_topic.as_ptr());
        for (key, value) in &entries {
            let error = rdsys::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                key.as_ptr(),
                rdsys::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                value.as_ptr(),
            );
            if !error.is_null() {
                let message = c_string(rdsys::rd_kafka_error_string(error));
                rdsys::rd_kafka_error_destroy(error);
                rdsys::rd_kafka_ConfigResource_destroy(resource);
                return Err(invalid(message));
            }
        }
        let mut resources = [resource];
        let event = run_admin_request(
            client,
            OPERATION,
            topic,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
            timeout,
            |rk, options, queue| rdsys::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue),
        );
        rdsys::rd_kafka_ConfigResource_destroy(resource);
        let event = event?;
        let result = rdsys::rd_kafka_event_IncrementalAlterConfigs_result(event.0);
        let mut count = 0usize;
        let results = rdsys::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        for index in 0..count {
            let resource = *results.add(index);
            let code = rdsys::rd_kafka_ConfigResource_error(resource);
            if code != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(classify_code(code.into(), OPERATION, topic, c_string(rdsys::rd_kafka_ConfigResource_error_string(resource))));
            }
        }
        Ok(())
    }
}

fn classify(error: RdError, operation: &'static str, topic: &str) -> KafkaError {
    match &error {
        RdError::AdminOp(code) | RdError::MetadataFetch(code) => classify_code(*code, operation, topic, error.to_string()),
        _ => match error.rdkafka_error_code() {
            Some(code) => classify_code(code, operation, topic, error.to_string()),
            None => KafkaError::Unavailable(format!("{operation} on {topic:?}: {error}")),
        },
    }
}

/// Sorts a Kafka error code into what the reconciler does about it.
pub(super) fn classify_code(code: RDKafkaErrorCode, operation: &'static str, topic: &str, message: String) -> KafkaError {
    use RDKafkaErrorCode as Code;
    let message = if message.is_empty() { code.to_string() } else { message };
    match code {
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::OperationTimedOut
        | Code::RequestTimedOut
        | Code::NetworkException
        | Code::Resolve
        | Code::NotController
        | Code::LeaderNotAvailable
        | Code::BrokerNotAvailable
        | Code::CoordinatorNotAvailable
        | Code::WaitCache => KafkaError::Unavailable(format!("{operation} on {topic:?}: {message}")),
        Code::UnsupportedFeature | Code::UnsupportedVersion | Code::UnsupportedForMessageFormat | Code::InvalidRequest => {
            KafkaError::Unsupported { operation, message }
        }
        Code::InvalidConfig => KafkaError::InvalidConfig { topic: topic.to_owned(), message },
        _ => KafkaError::Rejected { operation, topic: topic.to_owned(), message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_sort_into_reconciler_actions() {
        assert!(matches!(classify_code(RDKafkaErrorCode::AllBrokersDown, "Metadata", "t", String::new()), KafkaError::Unavailable(_)));
        assert!(matches!(
            classify_code(RDKafkaErrorCode::UnsupportedVersion, "CreatePartitions", "t", String::new()),
            KafkaError::Unsupported { operation: "CreatePartitions", .. }
        ));
        assert!(matches!(
            classify_code(RDKafkaErrorCode::InvalidConfig, "CreateTopics", "t", String::new()),
            KafkaError::InvalidConfig { .. }
        ));
        assert!(matches!(
            classify_code(RDKafkaErrorCode::PolicyViolation, "CreateTopics", "t", String::new()),
            KafkaError::Rejected { .. }
        ));
    }
}
