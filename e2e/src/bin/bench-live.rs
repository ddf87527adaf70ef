//! bench-live: for each fault path of the live stack (the shipped Migration moving a chat
//! service under load, `docs/live.md`), the time from the fault to the safe flags and the errors
//! the clients saw meanwhile, min/median/max over RUNS runs, each on a fresh stack. Then the
//! floor: `bench-rollback` (operator and alert pipeline alone, synthetic evidence) run in the
//! same invocation, so both sets of figures come from the same machine state. Asserts nothing.
//!
//!   cargo build -p chat-service -p ficus-operator -p ficus-e2e --bins
//!   target/debug/bench-live [RUNS] [SCENARIO...]
//!
//! RUNS defaults to 5; the scenarios default to every fault path (errors, latency, drift,
//! alert-from-cutover, abort-from-cutover). A run takes 2-4 minutes, so the default is about
//! an hour and a half on 2 cores.

use std::process::Command;

use ficus_e2e::live::Timing;
use ficus_e2e::live::scenarios::{Outcome, Scenario, run};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FAULT_PATHS: [Scenario; 5] = [
    Scenario::Errors,
    Scenario::Latency,
    Scenario::Drift,
    Scenario::AlertFromCutover,
    Scenario::AbortFromCutover,
];

/// One path's runs.
struct PathRuns {
    scenario: Scenario,
    /// Seconds from the fault to the safe flags, of the runs that got there.
    to_safe: Vec<f64>,
    errors: Vec<f64>,
    lost: usize,
    /// Runs that never reached the fault's phase or never got safe flags.
    incomplete: usize,
    /// Distinct rollback causes: the reason and, for a gate, its name (`GateFailed: gate p99`).
    reasons: Vec<String>,
}

impl PathRuns {
    fn new(scenario: Scenario) -> PathRuns {
        PathRuns {
            scenario,
            to_safe: Vec::new(),
            errors: Vec::new(),
            lost: 0,
            incomplete: 0,
            reasons: Vec::new(),
        }
    }

    fn add(&mut self, outcome: &Outcome) {
        self.lost += outcome.lost;
        match (outcome.fault_at, outcome.safe_at, outcome.errors_until_safe) {
            (Some(fault), Some(safe), Some(errors)) => {
                self.to_safe.push(safe.saturating_sub(fault).as_secs_f64());
                self.errors.push(errors as f64);
            }
            _ => self.incomplete += 1,
        }
        if let Some(reason) = outcome.last_rollback.as_deref().map(|r| {
            // `GateFailed: gate p99 = 1.2 (max 1) ...`: up to the value.
            let cause = r.split(" = ").next().unwrap_or(r);
            cause.chars().take(60).collect::<String>()
        }) && !self.reasons.contains(&reason)
        {
            self.reasons.push(reason);
        }
    }
}

/// `min / median / max`, or `-` when empty.
fn spread(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    format!(
        "{:.digits$} / {:.digits$} / {:.digits$}",
        sorted[0],
        median,
        sorted[sorted.len() - 1]
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), BoxError> {
    ficus_testkit::init();
    let mut args = std::env::args().skip(1).peekable();
    let runs: usize = match args.peek().map(|a| a.parse::<usize>()) {
        Some(Ok(n)) => {
            args.next();
            n
        }
        _ => 5,
    };
    let scenarios: Vec<Scenario> = {
        let named: Vec<String> = args.collect();
        if named.is_empty() {
            FAULT_PATHS.to_vec()
        } else {
            named
                .iter()
                .map(|n| {
                    Scenario::parse(n)
                        .filter(|s| FAULT_PATHS.contains(s))
                        .ok_or_else(|| {
                            let known: Vec<&str> = FAULT_PATHS.iter().map(|s| s.name()).collect();
                            format!("{n:?} is not a fault path: use one of {}", known.join(", "))
                        })
                })
                .collect::<Result<_, _>>()?
        }
    };

    let mut results = Vec::new();
    for scenario in scenarios {
        let mut path = PathRuns::new(scenario);
        for i in 1..=runs {
            println!("\n==> bench-live {} run {i}/{runs}", scenario.name());
            let outcome = run(scenario).await?;
            path.add(&outcome);
        }
        results.push(path);
    }

    let timing = Timing::default();
    println!("\n=== bench-live: {runs} run(s) per fault path, a fresh stack each ===");
    println!(
        "settings: Prometheus scrape 1s, rule evaluation 1s; gate interval {}, PromQL windows {}, alert for: {}; Alertmanager group_wait 0s, group_interval 1s; load {} calls/s from {} users",
        timing.interval,
        timing.window,
        timing.alert_for,
        ficus_e2e::live::scenarios::RATE,
        ficus_e2e::live::scenarios::USERS,
    );
    println!(
        "{:<20} {:>26} {:>26} {:>5} {:>11}  rolled back by",
        "fault path", "fault -> safe flags (s)", "client errors meanwhile", "lost", "incomplete"
    );
    println!(
        "{:<20} {:>26} {:>26}",
        "", "min / median / max", "min / median / max"
    );
    for path in &results {
        println!(
            "{:<20} {:>26} {:>26} {:>5} {:>11}  {}",
            path.scenario.name(),
            spread(&path.to_safe, 1),
            spread(&path.errors, 0),
            path.lost,
            path.incomplete,
            path.reasons.join(", ")
        );
    }

    // The floor, measured now: the operator and alert pipeline alone on synthetic evidence.
    let floor = std::env::current_exe()?.with_file_name("bench-rollback");
    if floor.is_file() {
        println!(
            "\n=== floor: bench-rollback {runs} (operator and alert pipeline alone, synthetic evidence) ==="
        );
        let status = Command::new(&floor).arg(runs.to_string()).status()?;
        if !status.success() {
            return Err(format!("{} failed: {status}", floor.display()).into());
        }
    } else {
        println!(
            "\nfloor not measured: {} not built (cargo build -p ficus-e2e --bins)",
            floor.display()
        );
    }
    Ok(())
}
