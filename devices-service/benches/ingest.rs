//! Ingest throughput and write latency with the shadow copy off and on (sync dual write), in
//! one run on one PostgreSQL server, so the ratio compares like with like. Prints figures; never
//! asserts them.
//!
//! `cargo bench -p devices-service --bench ingest` (needs PostgreSQL: ficus-testkit's server).
//! For each mode: the plan's 200 events/s for 5 s (write latency at the target load), then as
//! fast as 16 clients go for 10 s (throughput).

use std::time::Duration;

use devices_service::compare::CompareConfig;
use devices_service::flags::FlagSource;
use devices_service::loadgen::{self, LoadConfig, LoadReport};
use devices_service::outbox::ReplayConfig;
use devices_service::serve::{self, ServeConfig};
use devices_service::writer::WriteConfig;
use ficus_flags::{DualWrite, FlagValues, Flags, Percent, Side};
use ficus_testkit::Postgres;

async fn server(pg: &Postgres, name: &str, dual_write: DualWrite) -> String {
    let flags = Flags {
        generation: 1,
        values: FlagValues {
            write_primary: Side::Legacy,
            dual_write,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::ZERO,
            ..Default::default()
        },
    };
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        legacy_database_url: pg
            .create_database(&format!("bench_{name}_legacy"))
            .await
            .expect("db"),
        new_database_url: pg
            .create_database(&format!("bench_{name}_new"))
            .await
            .expect("db"),
        max_connections: 16,
        flags: FlagSource::Static(flags),
        write: WriteConfig::default(),
        replay: ReplayConfig::default(),
        compare: CompareConfig::default(),
        compare_interval: Duration::from_secs(3600),
    };
    let server = serve::bind(config).await.expect("bind");
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    url
}

async fn drive(url: &str, rate: f64, concurrency: usize, secs: u64) -> LoadReport {
    let config = LoadConfig {
        targets: vec![url.to_owned()],
        rate,
        batch: 10,
        users: 200,
        devices_per_user: 3,
        reads_per_write: 0.0,
        concurrency,
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.send_replace(true);
    });
    loadgen::run(config, rx).await
}

fn line(mode: &str, what: &str, r: &LoadReport) {
    println!(
        "{mode:<10} {what:<12} {:>8.0} events/s  write p50 {:>8.2} ms  p99 {:>8.2} ms  failed {}",
        r.events_per_second(),
        r.write_quantile(0.5).as_secs_f64() * 1e3,
        r.write_quantile(0.99).as_secs_f64() * 1e3,
        r.failed_events
    );
}

fn main() {
    ficus_testkit::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut saturated = Vec::new();
        for (mode, dual) in [("dual off", DualWrite::Off), ("dual sync", DualWrite::Sync)] {
            let url = server(pg, &mode.replace(' ', "_"), dual).await;
            let target = drive(&url, 200.0, 64, 5).await;
            line(mode, "200 ev/s", &target);
            let max = drive(&url, 1_000_000.0, 16, 10).await;
            line(mode, "saturated", &max);
            saturated.push(max);
        }
        let (off, on) = (&saturated[0], &saturated[1]);
        println!(
            "dual write on / off: throughput {:.2}x, write p50 {:.2}x, p99 {:.2}x",
            on.events_per_second() / off.events_per_second().max(1e-9),
            on.write_quantile(0.5).as_secs_f64() / off.write_quantile(0.5).as_secs_f64().max(1e-9),
            on.write_quantile(0.99).as_secs_f64()
                / off.write_quantile(0.99).as_secs_f64().max(1e-9),
        );
    });
}
