//! k6's `thresholds`: pass/fail criteria on a run's figures, written as k6 writes them
//! (`http_req_duration:p(95)<500`, `errors:rate<0.1`). A failed threshold fails the command
//! (exit code 99, as k6's), so a pipeline can gate on a load test. Pure: parsed once, evaluated
//! on the [`RunReport`](super::RunReport).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The seed's thresholds: 95 % of requests under 500 ms, fewer than 10 % errors, 95 % of
/// message sends under 200 ms.
pub const DEFAULT_THRESHOLDS: [&str; 3] = [
    "http_req_duration:p(95)<500",
    "errors:rate<0.1",
    "message_duration:p(95)<200",
];

/// What a threshold looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Latency of every call, in milliseconds.
    RequestDuration,
    /// Latency of SendMessage calls, in milliseconds.
    MessageDuration,
    /// Failed calls over all calls.
    Errors,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::RequestDuration => "http_req_duration",
            Metric::MessageDuration => "message_duration",
            Metric::Errors => "errors",
        }
    }

    fn is_duration(self) -> bool {
        self != Metric::Errors
    }
}

/// How a metric's samples become one number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregate {
    /// Percentile, 0-100 (`p(95)`; nearest rank).
    Percentile(f64),
    Avg,
    Min,
    Max,
    /// Failed over all (`errors` only).
    Rate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Comparison::Less => value < limit,
            Comparison::LessOrEqual => value <= limit,
            Comparison::Greater => value > limit,
            Comparison::GreaterOrEqual => value >= limit,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }
}

/// One criterion, e.g. `http_req_duration:p(95)<500`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub aggregate: Aggregate,
    pub comparison: Comparison,
    /// Milliseconds for durations, a fraction for `rate`.
    pub limit: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    #[error(
        "threshold {0:?}: write METRIC:AGGREGATE OP LIMIT, e.g. http_req_duration:p(95)<500 or errors:rate<0.1"
    )]
    Syntax(String),
    #[error("threshold {0:?}: unknown metric: use http_req_duration, message_duration or errors")]
    Metric(String),
    #[error(
        "threshold {0:?}: unknown aggregate: durations take p(N), avg, min or max; errors take rate"
    )]
    Aggregate(String),
    #[error("threshold {0:?}: the limit must be a number (milliseconds, or a fraction for rate)")]
    Limit(String),
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Threshold, ThresholdError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (metric, expression) = compact
            .split_once(':')
            .ok_or_else(|| ThresholdError::Syntax(text.to_owned()))?;
        let metric = match metric {
            "http_req_duration" => Metric::RequestDuration,
            "message_duration" => Metric::MessageDuration,
            "errors" | "http_req_failed" => Metric::Errors,
            _ => return Err(ThresholdError::Metric(text.to_owned())),
        };
        // Two-character operators first.
        let (at, comparison, width) = [
            ("<=", Comparison::LessOrEqual),
            (">=", Comparison::GreaterOrEqual),
            ("<", Comparison::Less),
            (">", Comparison::Greater),
        ]
        .into_iter()
        .find_map(|(symbol, c)| expression.find(symbol).map(|at| (at, c, symbol.len())))
        .ok_or_else(|| ThresholdError::Syntax(text.to_owned()))?;
        let (aggregate, limit) = (&expression[..at], &expression[at + width..]);
        let aggregate = match (aggregate, metric.is_duration()) {
            ("avg", true) => Aggregate::Avg,
            ("min", true) => Aggregate::Min,
            ("max", true) => Aggregate::Max,
            ("med", true) => Aggregate::Percentile(50.0),
            ("rate", false) => Aggregate::Rate,
            (p, true) if p.starts_with("p(") && p.ends_with(')') => p[2..p.len() - 1]
                .parse::<f64>()
                .ok()
                .filter(|n| (0.0..=100.0).contains(n))
                .map(Aggregate::Percentile)
                .ok_or_else(|| ThresholdError::Aggregate(text.to_owned()))?,
            _ => return Err(ThresholdError::Aggregate(text.to_owned())),
        };
        let limit = limit
            .parse::<f64>()
            .ok()
            .filter(|l| l.is_finite())
            .ok_or_else(|| ThresholdError::Limit(text.to_owned()))?;
        Ok(Threshold {
            metric,
            aggregate,
            comparison,
            limit,
        })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let aggregate = match self.aggregate {
            Aggregate::Percentile(p) => format!("p({p})"),
            Aggregate::Avg => "avg".into(),
            Aggregate::Min => "min".into(),
            Aggregate::Max => "max".into(),
            Aggregate::Rate => "rate".into(),
        };
        write!(
            f,
            "{}:{aggregate}{}{}",
            self.metric.name(),
            self.comparison.symbol(),
            self.limit
        )
    }
}

/// The samples a threshold is evaluated on.
pub struct Observed<'a> {
    /// Latency of every call, ascending.
    pub requests: &'a [Duration],
    /// Latency of every SendMessage call, ascending.
    pub messages: &'a [Duration],
    pub calls: u64,
    pub errors: u64,
}

/// One threshold's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub threshold: Threshold,
    /// None when the metric had no samples (a failure: nothing was shown).
    pub value: Option<f64>,
    pub passed: bool,
}

impl Threshold {
    pub fn evaluate(&self, observed: &Observed<'_>) -> Verdict {
        let value = match self.metric {
            Metric::Errors => {
                (observed.calls > 0).then(|| observed.errors as f64 / observed.calls as f64)
            }
            Metric::RequestDuration => aggregate_ms(observed.requests, self.aggregate),
            Metric::MessageDuration => aggregate_ms(observed.messages, self.aggregate),
        };
        Verdict {
            threshold: self.clone(),
            value,
            passed: value.is_some_and(|v| self.comparison.holds(v, self.limit)),
        }
    }
}

/// `sorted` (ascending) aggregated, in milliseconds; None when empty.
fn aggregate_ms(sorted: &[Duration], aggregate: Aggregate) -> Option<f64> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (first, last) = (sorted.first()?, sorted.last()?);
    Some(match aggregate {
        Aggregate::Percentile(p) => {
            let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            ms(sorted[rank - 1])
        }
        Aggregate::Avg => sorted.iter().map(|d| ms(*d)).sum::<f64>() / sorted.len() as f64,
        Aggregate::Min => ms(*first),
        Aggregate::Max => ms(*last),
        Aggregate::Rate => return None,
    })
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.passed { "ok  " } else { "FAIL" };
        match self.value {
            Some(v) if self.threshold.metric.is_duration() => {
                write!(f, "{mark} {} (was {v:.2} ms)", self.threshold)
            }
            Some(v) => write!(f, "{mark} {} (was {v:.4})", self.threshold),
            None => write!(f, "{mark} {} (no samples)", self.threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_the_seed_thresholds() {
        let t: Vec<Threshold> = DEFAULT_THRESHOLDS
            .iter()
            .map(|t| t.parse().expect(t))
            .collect();
        assert_eq!(
            t[0],
            Threshold {
                metric: Metric::RequestDuration,
                aggregate: Aggregate::Percentile(95.0),
                comparison: Comparison::Less,
                limit: 500.0
            }
        );
        assert_eq!(
            (t[1].metric, t[1].aggregate, t[1].limit),
            (Metric::Errors, Aggregate::Rate, 0.1)
        );
        assert_eq!(t[2].metric, Metric::MessageDuration);
        assert_eq!(t[0].to_string(), "http_req_duration:p(95)<500");
        let spaced: Threshold = "http_req_duration: avg <= 20".parse().expect("spaces");
        assert_eq!(
            (spaced.aggregate, spaced.comparison),
            (Aggregate::Avg, Comparison::LessOrEqual)
        );
    }

    #[test]
    fn bad_thresholds_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Threshold>().expect_err(s);
        assert!(matches!(err("p95<500"), ThresholdError::Syntax(_)));
        assert!(matches!(err("latency:p(95)<5"), ThresholdError::Metric(_)));
        assert!(matches!(
            err("errors:p(95)<5"),
            ThresholdError::Aggregate(_)
        ));
        assert!(matches!(
            err("http_req_duration:rate<5"),
            ThresholdError::Aggregate(_)
        ));
        assert!(matches!(
            err("http_req_duration:p(101)<5"),
            ThresholdError::Aggregate(_)
        ));
        assert!(matches!(
            err("http_req_duration:p(95)<fast"),
            ThresholdError::Limit(_)
        ));
        assert!(err("x").to_string().contains("http_req_duration:p(95)<500"));
    }

    #[test]
    fn evaluates_on_the_runs_samples() {
        let requests: Vec<Duration> = (1..=100).map(ms).collect();
        let messages = [ms(10), ms(300)];
        let observed = Observed {
            requests: &requests,
            messages: &messages,
            calls: 100,
            errors: 5,
        };
        let verdict = |t: &str| t.parse::<Threshold>().expect(t).evaluate(&observed);
        let p95 = verdict("http_req_duration:p(95)<95");
        assert_eq!((p95.value, p95.passed), (Some(95.0), false));
        assert!(verdict("http_req_duration:p(95)<=95").passed);
        assert!(verdict("http_req_duration:avg<51").passed);
        assert!(!verdict("http_req_duration:max<100").passed);
        assert!(verdict("errors:rate<0.1").passed);
        assert!(!verdict("errors:rate<0.05").passed);
        assert!(!verdict("message_duration:p(95)<200").passed);
        assert!(verdict("message_duration:min<200").passed);
        let none = Threshold::evaluate(
            &"message_duration:p(95)<200".parse().expect("t"),
            &Observed {
                messages: &[],
                ..observed
            },
        );
        assert!(
            !none.passed && none.value.is_none(),
            "no samples is no evidence"
        );
        assert!(none.to_string().contains("no samples"));
    }
}
