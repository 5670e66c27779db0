//! A minimal HTTP/1.1 GET over a fresh connection: what a kubelet probe or a scraper does.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status code and body of `GET path`, or the connection error (e.g. nothing listening yet).
pub async fn get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` until it answers `status` or `within` has passed; returns the last answer.
pub async fn wait_for_status(address: SocketAddr, path: &str, status: u16, within: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        if let Ok(answer) = get(address, path).await {
            if answer.0 == status {
                return Some(answer);
            }
            last = Some(answer);
        }
        if tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback address with a port nobody listens on right now.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|error| panic!("cannot bind a loopback port: {error}"));
    listener.local_addr().unwrap_or_else(|error| panic!("no local address: {error}"))
}
