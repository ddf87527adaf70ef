//! The live demo: the shipped Migration moves a chat service with history and live users from
//! PostgreSQL to the CQL store, then a fault scenario rolls a second run back. One line per
//! change (phase, step, traffic, drift, error rate and p99 per cohort, acknowledged writes) and
//! a summary per scenario.
//!
//!   ficus-live                    clean, then errors
//!   ficus-live <scenario>...      clean | errors | latency | abort-from-cutover | chat-sigkill
//!   ficus-live --quick ...        the demo's pace: 20 s windows, shorter bakes, less history
//!                                 (the tests run at the default pace)

use ficus_e2e::live::scenarios::{Scenario, run_with};
use ficus_e2e::live::{HistorySpec, Timing};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ficus_testkit::init();
    let mut names: Vec<String> = std::env::args().skip(1).collect();
    let quick = names.iter().any(|n| n == "--quick");
    names.retain(|n| n != "--quick");
    let (timing, history) = if quick {
        (Timing::quick(), HistorySpec::quick())
    } else {
        (Timing::default(), HistorySpec::from_env())
    };
    let scenarios: Vec<Scenario> = if names.is_empty() {
        vec![Scenario::Clean, Scenario::Errors]
    } else {
        names
            .iter()
            .map(|n| {
                Scenario::parse(n).ok_or_else(|| {
                    let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario {n:?}: use one of {}", known.join(", "))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut failed = 0;
    for scenario in scenarios {
        println!(
            "\n==> scenario {}: starting the live stack (control plane, PostgreSQL with history, Cassandra behind Toxiproxy, NATS, 2 chat-service routers, Prometheus, Alertmanager, the operator)",
            scenario.name()
        );
        let outcome = run_with(scenario, timing.clone(), history).await?;
        if outcome.lost > 0 || !outcome.ended {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} scenario(s) lost writes or did not end").into());
    }
    Ok(())
}
