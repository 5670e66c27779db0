//! Reading a running relay's figures: the operator picks one pod whose relay container is ready
//! and asks it `GET /status` directly (pod IP and container port), with a short timeout.
//!
//! The relay reports over HTTP instead of writing the OutboxRelay status itself so that it needs
//! no Kubernetes credentials: as a sidecar it runs with the application's ServiceAccount, which
//! must not gain rights to patch Tributary's resources.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use tributary_api::outbox_relay::{RelayReport, RELAY_STATUS_PATH};

use super::desired::PORT_NAME;
use crate::relay_container::CONTAINER_NAME;

/// A relay's `/status` answer could not be had.
#[derive(Debug, thiserror::Error)]
#[error("GET http://{address}{RELAY_STATUS_PATH} failed: {message}")]
pub struct ProbeError {
    pub address: SocketAddr,
    pub message: String,
}

/// Where relay figures come from (HTTP in the cluster, canned in tests).
#[async_trait::async_trait]
pub trait RelayStatusSource: Send + Sync {
    async fn fetch(&self, address: SocketAddr) -> Result<RelayReport, ProbeError>;
}

/// `GET /status` over plain HTTP/1.1.
#[derive(Debug, Clone)]
pub struct HttpRelayStatus {
    pub timeout: Duration,
}

/// A larger answer is not a relay's.
const MAX_BODY_BYTES: usize = 16 * 1024;

#[async_trait::async_trait]
impl RelayStatusSource for HttpRelayStatus {
    async fn fetch(&self, address: SocketAddr) -> Result<RelayReport, ProbeError> {
        let fail = |message: String| ProbeError { address, message };
        tokio::time::timeout(self.timeout, get_status(address))
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
            .map_err(fail)
    }
}

async fn get_status(address: SocketAddr) -> Result<RelayReport, String> {
    let stream = tokio::net::TcpStream::connect(address).await.map_err(|error| format!("cannot connect: {error}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|error| format!("HTTP handshake: {error}"))?;
    let exchange = async {
        let request = hyper::Request::get(RELAY_STATUS_PATH)
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        let response = sender.send_request(request).await.map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body =
            Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|error| format!("reading the answer: {error}"))?;
        serde_json::from_slice(&body.to_bytes()).map_err(|error| format!("the answer is not a relay status: {error}"))
    };
    // The connection is driven within this future, so a timeout drops it together with the request.
    tokio::select! {
        result = exchange => result,
        Err(error) = connection => Err(format!("connection failed: {error}")),
    }
}

/// When each relay was last asked, so that its figures are read at most once per interval however
/// often it is reconciled: the status patch that stores new figures is itself a watch event, and
/// under load the figures change every time.
#[derive(Debug, Default)]
pub struct ProbeSchedule(Mutex<HashMap<String, Timestamp>>);

impl ProbeSchedule {
    /// Whether the relay `key` may be asked at `now`, `interval` after it last was; if so, `now`
    /// is recorded. Entries of relays not asked for many intervals (deleted ones) are dropped.
    pub fn due(&self, key: &str, now: Timestamp, interval: Duration) -> bool {
        let interval = SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX);
        let mut asked = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        asked.retain(|_, at| now.duration_since(*at) < interval.saturating_mul(10));
        let due = asked.get(key).is_none_or(|at| now.duration_since(*at) >= interval);
        if due {
            asked.insert(key.to_owned(), now);
        }
        due
    }
}

/// Pods that run a ready relay container, and the address of the first of them (by name) to ask;
/// without a ready one, of the first whose relay container runs: a relay that waits for its
/// table is not ready (standalone) and says why on `/status`.
pub fn ready_relays(pods: &[Pod], default_port: i32) -> (usize, Option<SocketAddr>) {
    let relay_status = |pod: &Pod| {
        let statuses = pod.status.as_ref().and_then(|status| status.container_statuses.as_deref()).unwrap_or_default();
        statuses.iter().find(|status| status.name == CONTAINER_NAME).cloned()
    };
    let mut running: Vec<(&Pod, bool, SocketAddr)> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let status = relay_status(pod)?;
            let runs = status.ready || status.state.as_ref().is_some_and(|state| state.running.is_some());
            let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            runs.then_some((pod, status.ready, SocketAddr::new(ip, relay_port_of(pod).unwrap_or(default_port).try_into().ok()?)))
        })
        .collect();
    // Ready ones first, then by name.
    running.sort_by_key(|(pod, ready, _)| (!ready, pod.name_any()));
    (running.iter().filter(|(_, ready, _)| *ready).count(), running.first().map(|(_, _, address)| *address))
}

/// The relay's port in this pod's spec (during a rollout, older pods may use another).
fn relay_port_of(pod: &Pod) -> Option<i32> {
    let container = pod.spec.as_ref()?.containers.iter().find(|container| container.name == CONTAINER_NAME)?;
    container.ports.as_deref()?.iter().find(|port| port.name.as_deref() == Some(PORT_NAME)).map(|port| port.container_port)
}

#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Canned answers by address; an unknown address fails like an unreachable pod.
    #[derive(Debug, Default)]
    pub struct FakeRelayStatus {
        answers: Mutex<HashMap<SocketAddr, RelayReport>>,
        asked: Mutex<Vec<SocketAddr>>,
    }

    impl FakeRelayStatus {
        pub fn answer(&self, address: SocketAddr, report: RelayReport) {
            self.answers.lock().expect("not poisoned").insert(address, report);
        }

        pub fn asked(&self) -> Vec<SocketAddr> {
            self.asked.lock().expect("not poisoned").clone()
        }
    }

    #[async_trait::async_trait]
    impl RelayStatusSource for FakeRelayStatus {
        async fn fetch(&self, address: SocketAddr) -> Result<RelayReport, ProbeError> {
            self.asked.lock().expect("not poisoned").push(address);
            self.answers.lock().expect("not poisoned").get(&address).cloned().ok_or(ProbeError { address, message: "unreachable".into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox_relay::test_support::relay_pod as pod;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_first_ready_relay_by_name_is_asked_on_its_own_port() {
        let pods = [pod("b", "10.0.0.2", true, Some(9000)), pod("a", "10.0.0.1", false, None), pod("c", "fd00::3", true, None)];
        let (count, address) = ready_relays(&pods, 8081);
        assert_eq!((count, address), (2, Some("10.0.0.2:9000".parse().expect("address"))));
        let (count, address) = ready_relays(&pods[2..], 8081);
        assert_eq!((count, address), (1, Some("[fd00::3]:8081".parse().expect("address"))));
        assert_eq!(ready_relays(&pods[1..2], 8081), (0, None));
    }

    /// Serves one canned HTTP response on a loopback port.
    async fn serve_once(response: String) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepts");
            let mut request = [0u8; 1024];
            let read = stream.read(&mut request).await.expect("reads the request");
            assert!(String::from_utf8_lossy(&request[..read]).starts_with("GET /status HTTP/1.1\r\n"));
            stream.write_all(response.as_bytes()).await.expect("answers");
        });
        address
    }

    #[test]
    fn each_relay_is_asked_at_most_once_per_interval() {
        let schedule = ProbeSchedule::default();
        let at = |seconds| Timestamp::from_second(seconds).expect("timestamp");
        let interval = Duration::from_secs(15);
        assert!(schedule.due("a", at(100), interval));
        assert!(!schedule.due("a", at(110), interval), "10 s later");
        assert!(schedule.due("b", at(110), interval), "relays are scheduled apart");
        assert!(schedule.due("a", at(115), interval));
        assert!(schedule.due("b", at(1000), interval));
        assert_eq!(schedule.0.lock().expect("not poisoned").len(), 1, "a relay not asked for long is forgotten");
    }

    #[tokio::test]
    async fn http_status_reads_the_relay_report_and_refuses_anything_else() {
        let client = HttpRelayStatus { timeout: Duration::from_secs(2) };
        let body = r#"{"pendingRows":4,"lastPublishedTime":"2026-05-01T10:00:00Z"}"#;
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let report = client.fetch(serve_once(ok).await).await.expect("a report");
        assert_eq!(report.pending_rows, Some(4));
        assert_eq!(report.last_published_time.map(|time| time.0.as_second()), Some(1_777_629_600));

        let error = client.fetch(serve_once("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()).await).await.expect_err("404");
        assert!(error.message.contains("404"), "{error}");
        let error =
            client.fetch(serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]".into()).await).await.expect_err("not a report");
        assert!(error.message.contains("not a relay status"), "{error}");

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let quick = HttpRelayStatus { timeout: Duration::from_millis(200) };
        let error = quick.fetch(silent.local_addr().expect("address")).await.expect_err("times out");
        assert!(error.message.contains("no answer within"), "{error}");
    }
}
