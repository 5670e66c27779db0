//! Delivery over HTTP/1.1: one POST per record in CloudEvents HTTP binary content mode, on
//! keep-alive connections each owned by one lane (a lane delivers one record at a time; the engine
//! runs as many lanes as deliveries may be in flight).
//!
//! The request: `ce-<attr>` headers from the record's `ce_<attr>` headers (values percent-encoded
//! as the HTTP binding asks), `content-type` from its `content-type` header, body = the value. The
//! record's other headers pass through unchanged when they are valid HTTP headers, except
//! hop-by-hop and framing headers (`connection`, `keep-alive`, `proxy-*`, `te`, `trailer`,
//! `transfer-encoding`, `upgrade`, `host`, `content-length`, `expect`), which would change how the
//! request itself is sent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::record::Record;
use super::retry::{is_retryable_status, parse_retry_after};

/// Bytes of an error response's body kept for the dead-letter `tributary_error` header.
const ERROR_BODY_BYTES: usize = 256;
/// A response body longer than this is not read to the end; the connection is dropped instead.
const MAX_DRAINED_BODY_BYTES: usize = 1 << 20;
/// Distinct `ce_*` header names whose HTTP names are kept for reuse.
const HEADER_NAME_CACHE: usize = 256;

static AGENT: HeaderValue = HeaderValue::from_static(concat!("tributary-relay/", env!("CARGO_PKG_VERSION")));

/// Where events are POSTed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// `host:port`, resolved on every connect.
    address: String,
    host: HeaderValue,
    /// Origin form (path and query) of the sink URL.
    target: Uri,
    url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("sink {url:?} is not a URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("sink {0:?}: only http:// sinks are supported (the dispatcher runs beside its consumer)")]
    Scheme(String),
}

impl Sink {
    pub fn parse(url: &str) -> Result<Sink, SinkError> {
        let invalid = |reason: &str| SinkError::Invalid { url: url.to_owned(), reason: reason.to_owned() };
        let uri: Uri = url.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(SinkError::Scheme(url.to_owned())),
            None => return Err(invalid("no scheme (http://host:port/path)")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let target = uri.path_and_query().map_or("/", |path| path.as_str());
        Ok(Sink {
            address: format!("{host}:{port}"),
            host: HeaderValue::from_str(authority.as_str()).map_err(|error| invalid(&error.to_string()))?,
            target: target.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?,
            url: url.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the sink accepts a connection within `timeout` (what the circuit breaker probes:
    /// an HTTP answer of any kind would count as an attempt).
    pub async fn accepts_connections(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, TcpStream::connect(&self.address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("cannot connect to {}: {}", self.url, with_causes(&error))),
            Err(_) => Err(format!("cannot connect to {} within {timeout:?}", self.url)),
        }
    }
}

/// Record headers that must not become request headers: they describe the hop or the framing.
fn is_connection_header(name: &[u8]) -> bool {
    const EXCLUDED: [&[u8]; 9] =
        [b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect"];
    EXCLUDED.iter().any(|excluded| name.eq_ignore_ascii_case(excluded)) || starts_with_ignore_case(name, b"proxy-")
}

fn starts_with_ignore_case(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// A CloudEvents attribute value as an HTTP header value: space, `"`, `%` and anything outside
/// printable ASCII are percent-encoded (CloudEvents HTTP binding, 3.1.3.2).
fn encode_attribute(value: &[u8]) -> Cow<'_, [u8]> {
    let needs_encoding = |b: &u8| !(0x21..=0x7e).contains(b) || *b == b'"' || *b == b'%';
    if !value.iter().any(needs_encoding) {
        return Cow::Borrowed(value);
    }
    let mut encoded = Vec::with_capacity(value.len() + 16);
    for byte in value {
        if needs_encoding(byte) {
            encoded.extend_from_slice(format!("%{byte:02X}").as_bytes());
        } else {
            encoded.push(*byte);
        }
    }
    Cow::Owned(encoded)
}

fn header_value(value: &Bytes) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(value.clone()).ok()
}

/// Builds requests, keeping the HTTP names of `ce_*` headers it has seen.
#[derive(Debug, Default)]
pub struct RequestBuilder {
    attribute_names: HashMap<Bytes, HeaderName>,
}

impl RequestBuilder {
    fn attribute_name(&mut self, record_header: &Bytes) -> Option<HeaderName> {
        if let Some(name) = self.attribute_names.get(record_header) {
            return Some(name.clone());
        }
        let mut http_name = b"ce-".to_vec();
        http_name.extend_from_slice(record_header.get(3..)?);
        let name = HeaderName::from_bytes(&http_name).ok()?;
        if self.attribute_names.len() < HEADER_NAME_CACHE {
            self.attribute_names.insert(record_header.clone(), name.clone());
        }
        Some(name)
    }

    /// The POST of one record to the sink (see the module documentation).
    pub fn build(&mut self, sink: &Sink, record: &Record) -> Request<Full<Bytes>> {
        let body = record.value.clone().unwrap_or_default();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = sink.target.clone();
        let headers = request.headers_mut();
        headers.reserve(record.headers.len() + 2);
        headers.insert(HOST, sink.host.clone());
        headers.insert(USER_AGENT, AGENT.clone());
        for header in &record.headers {
            let Some(value) = &header.value else { continue };
            let name = &header.name[..];
            if name.len() > 3 && starts_with_ignore_case(name, b"ce_") {
                let encoded = match encode_attribute(value) {
                    Cow::Borrowed(_) => header_value(value),
                    Cow::Owned(encoded) => HeaderValue::from_bytes(&encoded).ok(),
                };
                if let (Some(name), Some(value)) = (self.attribute_name(&header.name), encoded) {
                    headers.append(name, value);
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                if let Some(value) = header_value(value) {
                    headers.insert(CONTENT_TYPE, value);
                }
            } else if !is_connection_header(name) && !starts_with_ignore_case(name, b"ce-") {
                if let (Ok(name), Some(value)) = (HeaderName::from_bytes(name), header_value(value)) {
                    headers.append(name, value);
                }
            }
        }
        request
    }
}

/// What kind of failure an attempt met (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection to the sink (refused, unreachable, timed out): the request was never sent,
    /// so it is no attempt; the dispatcher pauses until the sink accepts connections again.
    Connect,
    Timeout,
    Network,
    Status,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Network => "network",
            FailureKind::Status => "status",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub retryable: bool,
    /// The sink's `Retry-After`, as a delay.
    pub retry_after: Option<Duration>,
    /// For logs and the dead-letter `tributary_error` header.
    pub message: String,
}

/// One delivery attempt's outcome.
pub type Attempt = Result<(), Failure>;

/// The classification of a response: success for 2xx, else a failure naming the status and the
/// start of the body.
pub fn classify_response(status: StatusCode, retry_after: Option<&HeaderValue>, body: &[u8], now: SystemTime) -> Attempt {
    if status.is_success() {
        return Ok(());
    }
    let mut message = format!("HTTP {status}");
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]);
    let text = text.trim();
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(text);
    }
    Err(Failure {
        kind: FailureKind::Status,
        retryable: is_retryable_status(status.as_u16()),
        retry_after: retry_after.and_then(|value| parse_retry_after(value.as_bytes(), now)),
        message,
    })
}

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// Driven by the lane itself while it waits for a response (no task of its own).
    driver: Pin<Box<Driver>>,
    /// The driver finished: the connection is closed.
    ended: bool,
}

impl Connection {
    /// Runs `future` while driving the connection.
    async fn drive<F: Future + Unpin>(&mut self, mut future: F) -> F::Output {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = Pin::new(&mut future).poll(cx) {
                return Poll::Ready(output);
            }
            if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
                // Closed (by either side, or an error): what was waiting on it fails now.
                self.ended = true;
                return Pin::new(&mut future).poll(cx);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the connection can take a request; notices a close by the sink while idle.
    fn is_usable(&mut self) -> bool {
        if !self.ended {
            let waker = std::task::Waker::noop();
            if self.driver.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready() {
                self.ended = true;
            }
        }
        !self.ended && !self.sender.is_closed()
    }
}

/// A response as far as the dispatcher cares.
struct Answer {
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    body: BytesMut,
    /// The body was read to its end (else the connection cannot be reused).
    complete: bool,
}

/// One delivery slot: a connection to the sink, opened when needed and reused while it lasts.
pub struct Lane {
    sink: std::sync::Arc<Sink>,
    timeout: Duration,
    builder: RequestBuilder,
    connection: Option<Connection>,
    /// Connecting right now (a timeout then means the sink never took the request).
    connecting: bool,
}

impl Lane {
    pub fn new(sink: std::sync::Arc<Sink>, timeout: Duration) -> Self {
        Lane { sink, timeout, builder: RequestBuilder::default(), connection: None, connecting: false }
    }

    /// POSTs the record once; the whole attempt, connecting included, is bounded by the request
    /// timeout. A request that fails on a reused connection before any response (the sink closed
    /// it while idle) is sent once more on a new connection, as part of the same attempt.
    pub async fn deliver(&mut self, record: &Record) -> Attempt {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.timeout);
        match tokio::time::timeout_at(deadline, self.exchange(record)).await {
            Ok(attempt) => attempt,
            Err(_) if std::mem::take(&mut self.connecting) => Err(Failure {
                kind: FailureKind::Connect,
                retryable: true,
                retry_after: None,
                message: format!("cannot connect to {} within {:?}", self.sink.url(), self.timeout),
            }),
            Err(_) => {
                // The connection is mid-request: unusable.
                self.connection = None;
                Err(Failure {
                    kind: FailureKind::Timeout,
                    retryable: true,
                    retry_after: None,
                    message: format!("no response from {} within {:?}", self.sink.url(), self.timeout),
                })
            }
        }
    }

    async fn exchange(&mut self, record: &Record) -> Attempt {
        loop {
            let idle = self.connection.take().and_then(|mut connection| connection.is_usable().then_some(connection));
            let (mut connection, reused) = match idle {
                Some(connection) => (connection, true),
                None => {
                    self.connecting = true;
                    let connected = self.connect().await;
                    self.connecting = false;
                    (connected?, false)
                }
            };
            let request = self.builder.build(&self.sink, record);
            match exchange_on(&mut connection, request).await {
                Ok(answer) => {
                    if answer.complete && !connection.ended {
                        self.connection = Some(connection);
                    }
                    return classify_response(answer.status, answer.retry_after.as_ref(), &answer.body, SystemTime::now());
                }
                Err(error) => {
                    let before_response = error.is_canceled() || error.is_incomplete_message() || error.is_closed();
                    if reused && before_response {
                        continue;
                    }
                    return Err(Failure {
                        kind: FailureKind::Network,
                        retryable: true,
                        retry_after: None,
                        message: format!("request to {} failed: {}", self.sink.url(), with_causes(&error)),
                    });
                }
            }
        }
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let failure = |error: &dyn std::error::Error| Failure {
            kind: FailureKind::Connect,
            retryable: true,
            retry_after: None,
            message: format!("cannot connect to {}: {}", self.sink.url(), with_causes(error)),
        };
        let stream = TcpStream::connect(&self.sink.address).await.map_err(|error| failure(&error))?;
        // Small requests and responses: do not wait to coalesce them.
        stream.set_nodelay(true).map_err(|error| failure(&error))?;
        let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|error| failure(&error))?;
        Ok(Connection { sender, driver: Box::pin(driver), ended: false })
    }
}

async fn exchange_on(connection: &mut Connection, request: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
    let response = connection.sender.send_request(request);
    let response = connection.drive(Box::pin(response)).await?;
    let status = response.status();
    let retry_after = response.headers().get(RETRY_AFTER).cloned();
    let mut body: Incoming = response.into_body();
    let mut kept = BytesMut::new();
    let mut read = 0usize;
    loop {
        if read > MAX_DRAINED_BODY_BYTES {
            return Ok(Answer { status, retry_after, body: kept, complete: false });
        }
        match connection.drive(body.frame()).await {
            None => return Ok(Answer { status, retry_after, body: kept, complete: true }),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    read += data.len();
                    if !status.is_success() && kept.len() < ERROR_BODY_BYTES {
                        kept.extend_from_slice(&data[..data.len().min(ERROR_BODY_BYTES - kept.len())]);
                    }
                }
            }
        }
    }
}

/// An error and its causes, `a: b: c`.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::scheduler::PartitionId;

    fn record(headers: &[(&str, Option<&[u8]>)], value: Option<&[u8]>) -> Record {
        Record::copy_from(PartitionId(1), 7, Some(b"order-1"), value, headers.iter().copied())
    }

    #[test]
    fn sink_urls_must_be_http_with_a_host() {
        let sink = Sink::parse("http://127.0.0.1:8080/events?x=1").expect("valid");
        assert_eq!(sink.address, "127.0.0.1:8080");
        assert_eq!(sink.host, "127.0.0.1:8080");
        assert_eq!(sink.target, "/events?x=1");
        let sink = Sink::parse("http://consumer").expect("valid");
        assert_eq!((sink.address.as_str(), sink.target.to_string().as_str()), ("consumer:80", "/"));
        assert_eq!(Sink::parse("https://consumer/"), Err(SinkError::Scheme("https://consumer/".into())));
        for bad in ["consumer:8080", "/events", "http://", "http://user:pw@consumer/", "not a url"] {
            assert!(matches!(Sink::parse(bad), Err(SinkError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn requests_are_cloudevents_binary_mode() {
        let sink = Sink::parse("http://127.0.0.1:9/events").expect("valid");
        let record = record(
            &[
                ("ce_specversion", Some(b"1.0")),
                ("ce_id", Some(b"0b7e")),
                ("ce_type", Some(b"orders.created")),
                ("ce_source", Some(b"/shop/orders")),
                ("ce_subject", Some("Bestellung 42 \"€\"".as_bytes())),
                ("content-type", Some(b"application/json")),
                ("traceparent", Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
                ("Transfer-Encoding", Some(b"chunked")),
                ("connection", Some(b"close")),
                ("proxy-authorization", Some(b"secret")),
                ("ce-smuggled", Some(b"x")),
                ("bad header", Some(b"x")),
                ("null-valued", None),
                ("tributary_attempts", Some(b"3")),
            ],
            Some(br#"{"order":42}"#),
        );
        let request = RequestBuilder::default().build(&sink, &record);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/events");
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let expected = [
            ("host", "127.0.0.1:9"),
            ("user-agent", concat!("tributary-relay/", env!("CARGO_PKG_VERSION"))),
            ("ce-specversion", "1.0"),
            ("ce-id", "0b7e"),
            ("ce-type", "orders.created"),
            ("ce-source", "/shop/orders"),
            ("ce-subject", "Bestellung%2042%20%22%E2%82%AC%22"),
            ("content-type", "application/json"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tributary_attempts", "3"),
        ];
        let mut expected: Vec<(String, String)> = expected.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        let mut headers = headers;
        expected.sort();
        headers.sort();
        assert_eq!(headers, expected);
        let body = request.into_body();
        let body = futures::executor::block_on(body.collect()).expect("body").to_bytes();
        assert_eq!(&body[..], br#"{"order":42}"#);
    }

    #[test]
    fn a_null_value_is_an_empty_body() {
        let sink = Sink::parse("http://127.0.0.1:9/").expect("valid");
        let request = RequestBuilder::default().build(&sink, &record(&[("ce_id", Some(b"1"))], None));
        let body = futures::executor::block_on(request.into_body().collect()).expect("body").to_bytes();
        assert!(body.is_empty());
    }

    #[test]
    fn responses_classify_as_success_retryable_or_final() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(classify_response(StatusCode::ACCEPTED, None, b"", now), Ok(()));
        assert_eq!(classify_response(StatusCode::NO_CONTENT, None, b"", now), Ok(()));
        let busy = HeaderValue::from_static("3");
        let failure = classify_response(StatusCode::TOO_MANY_REQUESTS, Some(&busy), b" slow down \n", now).expect_err("429 fails");
        assert_eq!(
            failure,
            Failure {
                kind: FailureKind::Status,
                retryable: true,
                retry_after: Some(Duration::from_secs(3)),
                message: "HTTP 429 Too Many Requests: slow down".into()
            }
        );
        let failure = classify_response(StatusCode::BAD_REQUEST, None, &[b'x'; 1000], now).expect_err("400 fails");
        assert!(!failure.retryable);
        assert_eq!(failure.message.len(), "HTTP 400 Bad Request: ".len() + ERROR_BODY_BYTES);
        assert!(!classify_response(StatusCode::MOVED_PERMANENTLY, None, b"", now).expect_err("3xx fails").retryable);
        assert!(classify_response(StatusCode::SERVICE_UNAVAILABLE, None, b"", now).expect_err("503 fails").retryable);
    }

    /// How the raw sink treats a connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Conduct {
        /// Answers every request.
        KeepAlive,
        /// Closes the connection after its answer (as an idle keep-alive timeout would).
        CloseAfterAnswer,
        /// Answers the first request, then closes on the next without answering (the sink's
        /// close crossing the dispatcher's next request).
        CloseOnSecondRequest,
        Silent,
    }

    /// A minimal HTTP/1.1 server answering `response` as `conduct` says; counts the connections
    /// it accepted.
    async fn raw_sink(response: &'static str, conduct: Conduct) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/events", listener.local_addr().expect("address"));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let mut filled = 0;
                    let mut answered = 0;
                    loop {
                        let Ok(read) = stream.read(&mut buffer[filled..]).await else { return };
                        if read == 0 {
                            return;
                        }
                        filled += read;
                        let text = String::from_utf8_lossy(&buffer[..filled]).into_owned();
                        let Some(head_end) = text.find("\r\n\r\n") else { continue };
                        let length: usize = text[..head_end]
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if filled < head_end + 4 + length {
                            continue;
                        }
                        filled = 0;
                        match conduct {
                            Conduct::Silent => continue,
                            Conduct::CloseOnSecondRequest if answered == 1 => return,
                            _ => {}
                        }
                        answered += 1;
                        if stream.write_all(response.as_bytes()).await.is_err() || conduct == Conduct::CloseAfterAnswer {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn lane(url: &str, timeout: Duration) -> Lane {
        Lane::new(std::sync::Arc::new(Sink::parse(url).expect("sink")), timeout)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    #[tokio::test]
    async fn a_lane_keeps_its_connection_alive() {
        let (url, accepted) = raw_sink(OK, Conduct::KeepAlive).await;
        let mut lane = lane(&url, Duration::from_secs(5));
        let record = record(&[("ce_id", Some(b"1"))], Some(b"{}"));
        for _ in 0..5 {
            assert_eq!(lane.deliver(&record).await, Ok(()));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_sink_closed_is_replaced_without_failing_the_attempt() {
        let record = record(&[("ce_id", Some(b"1"))], Some(b"{}"));
        // Closed while idle: noticed before the next request.
        let (url, accepted) = raw_sink(OK, Conduct::CloseAfterAnswer).await;
        let mut idle = lane(&url, Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(idle.deliver(&record).await, Ok(()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        // Closed as the next request arrives: sent again on a new connection.
        let (url, accepted) = raw_sink(OK, Conduct::CloseOnSecondRequest).await;
        let mut racing = lane(&url, Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(racing.deliver(&record).await, Ok(()));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unanswered_requests_time_out_and_refused_connections_fail_to_connect() {
        let (url, _) = raw_sink(OK, Conduct::Silent).await;
        let failure = lane(&url, Duration::from_millis(200)).deliver(&record(&[], None)).await.expect_err("no answer");
        assert_eq!((failure.kind, failure.retryable), (FailureKind::Timeout, true));
        // A port nothing listens on: bound, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
        let failure = lane(&format!("http://{closed}/"), Duration::from_secs(5)).deliver(&record(&[], None)).await.expect_err("refused");
        assert_eq!((failure.kind, failure.retryable), (FailureKind::Connect, true));
        assert!(failure.message.contains("cannot connect"), "{}", failure.message);
        let sink = Sink::parse(&format!("http://{closed}/")).expect("sink");
        let refused = sink.accepts_connections(Duration::from_secs(5)).await.expect_err("refused");
        assert!(refused.contains("cannot connect"), "{refused}");
        let (url, _) = raw_sink(OK, Conduct::KeepAlive).await;
        assert_eq!(Sink::parse(&url).expect("sink").accepts_connections(Duration::from_secs(5)).await, Ok(()));
    }

    #[tokio::test]
    async fn error_responses_carry_status_body_and_retry_after() {
        let (url, _) =
            raw_sink("HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy", Conduct::KeepAlive).await;
        let failure = lane(&url, Duration::from_secs(5)).deliver(&record(&[], None)).await.expect_err("503");
        assert_eq!(
            failure,
            Failure {
                kind: FailureKind::Status,
                retryable: true,
                retry_after: Some(Duration::from_secs(7)),
                message: "HTTP 503 Service Unavailable: busy".into()
            }
        );
    }
}
