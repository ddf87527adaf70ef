//! Just enough of an HTTP client to talk to Prometheus, Alertmanager, moto and etcd on loopback: no HTTP
//! stack to pull in, and nothing tied to a tokio runtime (each `#[tokio::test]` has its own).
//!
//! Requests are HTTP/1.0, so the (Go) server never uses chunked encoding or keep-alive: the
//! body is everything up to EOF.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use crate::HarnessError;

/// Per-request connect/read/write timeout; everything is on loopback.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE: u64 = 16 << 20;

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET http://<addr><path>`, blocking.
pub(crate) fn get_blocking(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: ficus-e2e\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse(&raw)
}

/// `<method> http://<addr><path>` with a JSON `body` (none when empty), blocking.
pub(crate) fn send_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: ficus-e2e\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse(&raw)
}

/// [`get_blocking`] on the runtime's blocking pool, so a test's runtime keeps running meanwhile.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || get_blocking(addr, &path))
        .await
        .map_err(io::Error::other)?
}

fn parse(raw: &[u8]) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("response without a complete header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 response header"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let mut body = &raw[end + 4..];
    let length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if let Some(length) = length {
        body = body
            .get(..length)
            .ok_or_else(|| bad("body shorter than Content-Length"))?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// The request error for `GET http://<addr><path>`.
pub(crate) fn request_error(
    addr: SocketAddr,
    path: &str,
) -> impl FnOnce(io::Error) -> HarnessError {
    let url = format!("http://{addr}{path}");
    move |source| HarnessError::Request {
        url,
        source: Arc::new(source),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query parameters).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_close_delimited_and_sized_bodies() {
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
        let r =
            parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abc"));
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"up{job="x"} > 0.5"#),
            "up%7Bjob%3D%22x%22%7D%20%3E%200.5"
        );
    }
}
