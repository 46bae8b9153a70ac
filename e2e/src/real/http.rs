//! Plain HTTP/1.0 requests from inside a network namespace (etcd's gateway, health endpoints).

use crate::netns::in_netns;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A request to `addr` made with a socket created in the namespace at `netns`; returns (status,
/// body). `body` is sent as JSON when given (a POST), otherwise it is a GET.
pub fn request(
    netns: &Path,
    addr: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let stream = in_netns(netns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .with_context(|| format!("connecting to {addr}"))?;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = match body {
        Some(body) => format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    };
    stream.write_all(head.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A GET; see [`request`].
pub fn get(netns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    request(netns, addr, path, None)
}
