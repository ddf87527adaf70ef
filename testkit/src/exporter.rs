//! A fake metrics endpoint whose values the test sets, for a real Prometheus to scrape.
//!
//! It runs on a plain std thread with a blocking listener, so it is independent of any tokio
//! runtime (each `#[tokio::test]` has its own) and can outlive or be shared between them.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::HarnessError;

/// Metric name → rendered label set (`{a="1",b="2"}` or empty) → value.
type Families = BTreeMap<String, BTreeMap<String, f64>>;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 16 * 1024;

/// Serves `GET /metrics` in the Prometheus text format (0.0.4) on `127.0.0.1:<free port>`.
/// Every metric is a gauge. Stops when dropped.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    families: Arc<Mutex<Families>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds a free loopback port and starts serving (an empty page until [`set`](Self::set)).
    pub fn start() -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(HarnessError::io("binding a free port on", "127.0.0.1"))?;
        let addr = listener.local_addr().map_err(HarnessError::io(
            "reading the local address of",
            "127.0.0.1",
        ))?;
        let families = Arc::new(Mutex::new(Families::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("exporter-{}", addr.port()))
            .spawn({
                let (families, stop) = (families.clone(), stop.clone());
                move || serve(&listener, &families, &stop)
            })
            .map_err(HarnessError::io(
                "spawning the exporter thread for",
                "127.0.0.1",
            ))?;
        tracing::debug!(%addr, "exporter serving /metrics");
        Ok(Self {
            addr,
            families,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`: a scrape target for [`PrometheusConfig`](crate::PrometheusConfig).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the series `name{labels}` to `value` (NaN and ±Inf allowed). Label order does not
    /// matter: the same set in another order is the same series.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        let mut rendered = String::new();
        for (i, (label, val)) in labels.iter().enumerate() {
            let sep = if i == 0 { "{" } else { "," };
            let _ = write!(rendered, "{sep}{label}=\"{}\"", escape(val));
        }
        if !rendered.is_empty() {
            rendered.push('}');
        }
        self.lock()
            .entry(name.to_owned())
            .or_default()
            .insert(rendered, value);
    }

    /// Removes every series of `name` from the page (Prometheus then marks them stale).
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Families> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // `accept` has no timeout: wake it with a connection so the thread sees the flag.
        let woke = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).is_ok();
        if let Some(thread) = self.thread.take().filter(|_| woke) {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, families: &Mutex<Families>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            // One connection at a time: Prometheus scrapes a target sequentially anyway.
            Ok(stream) => {
                if let Err(e) = respond(stream, families) {
                    tracing::debug!(error = %e, "exporter: bad request");
                }
            }
            // E.g. out of file descriptors: do not spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads one request head and answers it, then closes the connection.
fn respond(mut stream: TcpStream, families: &Mutex<Families>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (request_line.next(), request_line.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (Some("GET" | "HEAD"), "/metrics") => {
            let families = families.lock().unwrap_or_else(PoisonError::into_inner);
            ("200 OK", render(&families))
        }
        (Some("GET" | "HEAD"), _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != Some("HEAD") {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Reads up to the blank line ending the request head (GET requests carry no body).
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn render(families: &Families) -> String {
    let mut page = String::new();
    for (name, series) in families {
        let _ = writeln!(page, "# TYPE {name} gauge");
        for (labels, value) in series {
            let _ = writeln!(page, "{name}{labels} {}", format_value(*value));
        }
    }
    page
}

/// The text format spells the special values `NaN`, `+Inf` and `-Inf`.
fn format_value(v: f64) -> String {
    match v {
        _ if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        // Debug is the shortest round-tripping form, with an exponent for extreme magnitudes.
        _ => format!("{v:?}"),
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let mut families = Families::new();
        families
            .entry("b".into())
            .or_default()
            .insert(String::new(), f64::NAN);
        families
            .entry("a".into())
            .or_default()
            .insert(r#"{x="1"}"#.into(), 2.5);
        assert_eq!(
            render(&families),
            "# TYPE a gauge\na{x=\"1\"} 2.5\n# TYPE b gauge\nb NaN\n"
        );
        assert_eq!(format_value(10.0), "10.0");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
