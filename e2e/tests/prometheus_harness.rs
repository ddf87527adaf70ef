//! The Prometheus/Alertmanager harness against the real binaries: scraping a test-controlled
//! exporter, staleness, NaN, alert delivery to a webhook, and stop/restart.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use ficus_testkit::{Alertmanager, Exporter, Prometheus, PrometheusConfig, skip_or_fail};

const WAIT: Duration = Duration::from_secs(15);

fn config(exporter: &Exporter) -> PrometheusConfig {
    PrometheusConfig {
        targets: vec![exporter.addr().to_string()],
        ..Default::default()
    }
}

#[test]
fn exporter_serves_the_text_format() -> anyhow::Result<()> {
    ficus_testkit::init();
    let exporter = Exporter::start()?;
    exporter.set("test_metric", &[("service", "chat"), ("a", "x\"y")], 1.5);
    exporter.set("other", &[], f64::NAN);

    let response = raw_get(exporter.addr(), "/metrics")?;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("Content-Type: text/plain; version=0.0.4"),
        "{response}"
    );
    assert!(response.contains("Connection: close"), "{response}");
    assert!(
        response.contains("\ntest_metric{a=\"x\\\"y\",service=\"chat\"} 1.5\n"),
        "{response}"
    );
    assert!(response.contains("\nother NaN\n"), "{response}");

    exporter.remove("test_metric");
    let response = raw_get(exporter.addr(), "/metrics")?;
    assert!(!response.contains("test_metric"), "{response}");
    assert!(raw_get(exporter.addr(), "/")?.starts_with("HTTP/1.1 404"));

    let addr = exporter.addr();
    drop(exporter);
    // Other tests in this binary bind free ports in parallel and may be handed this one the
    // moment it is released, so "nothing answers" is too strict: what must hold is that this
    // exporter's page is gone.
    match raw_get(addr, "/metrics") {
        Err(_) => {}
        Ok(response) => assert!(
            !response.contains("\nother NaN\n"),
            "exporter still serving after drop: {response}"
        ),
    }
    Ok(())
}

#[tokio::test]
async fn prometheus_follows_exporter_values_staleness_and_nan() -> anyhow::Result<()> {
    ficus_testkit::init();
    let exporter = Exporter::start()?;
    exporter.set("test_metric", &[("service", "chat")], 3.0);
    let begin = Instant::now();
    let prom = skip_or_fail!(Prometheus::start(config(&exporter)));
    eprintln!("prometheus ready after {:?}", begin.elapsed());

    prom.wait_for_targets(WAIT).await?;
    eprintln!("first scrape after {:?}", begin.elapsed());
    let value = prom.wait_for_value("test_metric", WAIT).await?;
    assert_eq!(value, 3.0);
    let samples = prom.query(r#"test_metric{service="chat"}"#).await?;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].labels["job"], "test");

    let value_is =
        |want: f64| move |s: &[ficus_testkit::Sample]| (s.first()?.value == want).then_some(());
    let changed = Instant::now();
    exporter.set("test_metric", &[("service", "chat")], 7.0);
    prom.wait_for("test_metric", WAIT, value_is(7.0)).await?;
    eprintln!("value change seen after {:?}", changed.elapsed());

    // Gone from the page: the next scrape writes a staleness marker, so the series vanishes
    // without waiting for the 5m lookback.
    let removed = Instant::now();
    exporter.remove("test_metric");
    prom.wait_for("test_metric", WAIT, |s| s.is_empty().then_some(()))
        .await?;
    eprintln!("removal seen after {:?}", removed.elapsed());

    exporter.set("test_metric", &[("service", "chat")], f64::NAN);
    let value = prom.wait_for_value("test_metric", WAIT).await?;
    assert!(value.is_nan(), "expected NaN, got {value}");
    Ok(())
}

#[tokio::test]
async fn alert_reaches_the_webhook_with_bearer_token() -> anyhow::Result<()> {
    const TOKEN: &str = "s3cret-token";
    const RULES: &str = r#"
groups:
  - name: test
    rules:
      - alert: TestMetricHigh
        expr: test_metric > 5
        for: 0s
        labels:
          service: chat
"#;
    ficus_testkit::init();
    let exporter = Exporter::start()?;
    exporter.set("test_metric", &[], 1.0);
    let webhook = Webhook::start()?;
    let am = skip_or_fail!(Alertmanager::start(&webhook.url(), TOKEN));
    let prom = skip_or_fail!(Prometheus::start(PrometheusConfig {
        rules: Some(RULES.into()),
        alertmanager: Some(am.addr().to_string()),
        ..config(&exporter)
    }));
    // Measure from a warm pipeline: the target is scraped and the rule evaluated (inactive).
    prom.wait_for_targets(WAIT).await?;
    prom.wait_for_value("test_metric", WAIT).await?;

    let changed = Instant::now();
    exporter.set("test_metric", &[], 10.0);
    let firing = webhook.next(WAIT)?;
    eprintln!(
        "metric -> firing webhook: {:?}",
        firing.at.duration_since(changed)
    );
    assert!(firing.head.starts_with("POST "), "{}", firing.head);
    assert!(
        firing
            .head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))),
        "no bearer token in\n{}",
        firing.head
    );
    let body: serde_json::Value = serde_json::from_str(&firing.body)?;
    assert_eq!(body["status"], "firing", "{body}");
    assert_eq!(
        body["commonLabels"]["alertname"], "TestMetricHigh",
        "{body}"
    );
    assert_eq!(body["commonLabels"]["service"], "chat", "{body}");

    // send_resolved: dropping below the threshold sends a resolved notification.
    let changed = Instant::now();
    exporter.set("test_metric", &[], 1.0);
    let resolved = loop {
        let got = webhook.next(WAIT)?;
        let body: serde_json::Value = serde_json::from_str(&got.body)?;
        if body["status"] == "resolved" {
            break got;
        }
    };
    eprintln!(
        "metric -> resolved webhook: {:?}",
        resolved.at.duration_since(changed)
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_stop_and_restart_keep_port_and_data() -> anyhow::Result<()> {
    ficus_testkit::init();
    let exporter = Exporter::start()?;
    exporter.set("test_metric", &[], 1.0);
    let prom = skip_or_fail!(Prometheus::start(config(&exporter)));
    prom.wait_for_value("test_metric", WAIT).await?;
    let before = prom
        .wait_for_value("count_over_time(test_metric[1h])", WAIT)
        .await?;

    let url = prom.url();
    prom.stop();
    let err = prom
        .query("test_metric")
        .await
        .expect_err("query after stop");
    assert!(err.is_connection_refused(), "{err}");

    let begin = Instant::now();
    prom.restart()?;
    eprintln!("prometheus restarted in {:?}", begin.elapsed());
    // The address from before the stop answers again: the restart kept the port.
    let ready = prometheus_http_query::reqwest::get(format!("{url}/-/ready")).await?;
    assert!(
        ready.status().is_success(),
        "{url}/-/ready: {}",
        ready.status()
    );
    let readiness = ready.text().await?;
    assert!(readiness.contains("Ready"), "{readiness}");
    // The samples scraped before the stop survive (same data dir, WAL replayed).
    let after = prom.query("count_over_time(test_metric[1h])").await?;
    assert!(
        after.first().is_some_and(|s| s.value >= before),
        "{before} then {after:?}"
    );
    // Scraping resumes as after start (~5-6s later); not waited for here to keep the test short.
    Ok(())
}

#[tokio::test]
async fn prometheus_startup_failure_reports_the_log_tail() {
    ficus_testkit::init();
    let started = Prometheus::start(PrometheusConfig {
        rules: Some("groups: [{name: bad, rules: [{alert: X, expr: 'sum('}]}]".into()),
        ..Default::default()
    });
    let err = match started {
        Err(err) if err.is_missing() => return ficus_testkit::skip_or_panic(&err),
        Err(err) => err,
        Ok(_) => panic!("Prometheus started with an invalid rule"),
    };
    let msg = err.to_string();
    assert!(msg.contains("exited early"), "{msg}");
    assert!(msg.contains("last lines of"), "{msg}");
    assert!(msg.contains("rules.yml"), "{msg}");
}

/// One request as the webhook listener saw it.
struct Received {
    at: Instant,
    head: String,
    body: String,
}

/// A webhook receiver on a std thread: answers every request 200 and hands it to the test.
struct Webhook {
    addr: SocketAddr,
    rx: mpsc::Receiver<Received>,
}

impl Webhook {
    fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        // Lives until the test binary exits; it only ever blocks in accept.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(received) = receive(stream)
                    && tx.send(received).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self { addr, rx })
    }

    fn url(&self) -> String {
        format!("http://{}/alerts", self.addr)
    }

    /// The next request; blocking is fine, the test has nothing else to run meanwhile.
    fn next(&self, timeout: Duration) -> anyhow::Result<Received> {
        Ok(self.rx.recv_timeout(timeout)?)
    }
}

fn receive(stream: TcpStream) -> std::io::Result<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let n = reader.read_line(&mut head)?;
        if n == 0 || head.ends_with("\r\n\r\n") {
            break;
        }
    }
    let at = Instant::now();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    reader
        .get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(Received {
        at,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
