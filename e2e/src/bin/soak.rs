//! soak: the user flow at a steady rate through the migration router for MINUTES (default 10)
//! while the shipped Migration holds in Split, printing each chat-service's memory and open
//! descriptors, database connections, outbox depth and latency every 15 s, then how the second
//! half compares with the first. A benchmark: it prints and asserts nothing.
//!
//!   cargo build --workspace --bins
//!   target/debug/soak [MINUTES] [CALLS_PER_SECOND]

use std::time::Duration;

use ficus_e2e::live::soak::{SoakConfig, run_soak};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ficus_testkit::init();
    let mut args = std::env::args().skip(1);
    let minutes: f64 = match args.next() {
        Some(m) => m.parse().map_err(|e| format!("MINUTES {m:?}: {e}"))?,
        None => 10.0,
    };
    let mut config = SoakConfig::new(Duration::from_secs_f64(minutes * 60.0));
    if let Some(rate) = args.next() {
        config.rate = rate
            .parse()
            .map_err(|e| format!("CALLS_PER_SECOND {rate:?}: {e}"))?;
    }
    println!(
        "soak: {minutes} min at {} calls/s, held in Split at {} % (starting the live stack)",
        config.rate, config.hold_percent
    );
    run_soak(config).await?;
    Ok(())
}
