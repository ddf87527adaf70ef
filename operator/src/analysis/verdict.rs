//! From a query outcome to a gate verdict: pure, so every path is a unit test.

use crate::crd::{Gate, GateResult, NoDataPolicy, Verdict};

/// What one PromQL instant query returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// One value per returned series (a scalar is one value).
    Values(Vec<f64>),
    /// Prometheus answered but could not be asked (down, timed out, overloaded).
    Unreachable(String),
    /// Prometheus rejected the query itself (`bad_data`): a spec problem.
    Invalid(String),
}

pub fn judge(gate: &Gate, outcome: &Outcome) -> GateResult {
    let result = |verdict, value: Option<f64>, message: Option<String>| GateResult {
        name: gate.name.clone(),
        verdict,
        value: value.filter(|v| v.is_finite()),
        min: gate.min,
        max: gate.max,
        message,
    };
    let no_data = |why: &str| {
        let verdict = match gate.on_no_data {
            NoDataPolicy::Inconclusive => Verdict::Inconclusive,
            NoDataPolicy::Pass => Verdict::Pass,
            NoDataPolicy::Fail => Verdict::Fail,
        };
        result(verdict, None, Some(why.to_string()))
    };
    match outcome {
        Outcome::Invalid(msg) => {
            result(Verdict::Error, None, Some(format!("invalid query: {msg}")))
        }
        Outcome::Unreachable(msg) => result(
            Verdict::Inconclusive,
            None,
            Some(format!("Prometheus unreachable: {msg}")),
        ),
        Outcome::Values(values) if values.is_empty() => {
            no_data("no data: the query returned an empty result")
        }
        Outcome::Values(values) if values.iter().any(|v| v.is_nan()) => {
            no_data("no data: the query returned NaN")
        }
        Outcome::Values(values) => {
            let out_of_range =
                |v: f64| gate.max.is_some_and(|m| v > m) || gate.min.is_some_and(|m| v < m);
            match values.iter().copied().find(|v| out_of_range(*v)) {
                Some(bad) => result(Verdict::Fail, Some(bad), Some(describe_breach(gate, bad))),
                None => {
                    // Report the value closest to a threshold: the one a reader worries about.
                    let worst = if gate.max.is_some() {
                        values.iter().copied().fold(f64::MIN, f64::max)
                    } else {
                        values.iter().copied().fold(f64::MAX, f64::min)
                    };
                    result(Verdict::Pass, Some(worst), None)
                }
            }
        }
    }
}

fn describe_breach(gate: &Gate, value: f64) -> String {
    match (gate.min, gate.max) {
        (_, Some(max)) if value > max => format!("{value} is above the maximum {max}"),
        (Some(min), _) => format!("{value} is below the minimum {min}"),
        _ => format!("{value} is out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(min: Option<f64>, max: Option<f64>, on_no_data: NoDataPolicy) -> Gate {
        Gate {
            name: "g".into(),
            query: "q".into(),
            min,
            max,
            on_no_data,
        }
    }

    #[test]
    fn values_inside_the_range_pass_and_outside_fail_with_the_offending_value() {
        let g = gate(Some(0.5), Some(1.5), NoDataPolicy::Inconclusive);
        let cases = [
            (vec![1.0], Verdict::Pass, Some(1.0)),
            (vec![1.5], Verdict::Pass, Some(1.5)),
            (vec![0.5], Verdict::Pass, Some(0.5)),
            (vec![1.6], Verdict::Fail, Some(1.6)),
            (vec![0.4], Verdict::Fail, Some(0.4)),
            (vec![1.0, 2.0, 1.2], Verdict::Fail, Some(2.0)),
            (vec![f64::INFINITY], Verdict::Fail, None),
        ];
        for (values, verdict, value) in cases {
            let r = judge(&g, &Outcome::Values(values.clone()));
            assert_eq!((r.verdict, r.value), (verdict, value), "{values:?}");
            assert_eq!(
                (r.min, r.max),
                (Some(0.5), Some(1.5)),
                "thresholds are recorded with the verdict"
            );
        }
    }

    #[test]
    fn empty_and_nan_follow_the_gates_no_data_policy() {
        for (policy, verdict) in [
            (NoDataPolicy::Inconclusive, Verdict::Inconclusive),
            (NoDataPolicy::Pass, Verdict::Pass),
            (NoDataPolicy::Fail, Verdict::Fail),
        ] {
            let g = gate(None, Some(0.01), policy);
            assert_eq!(judge(&g, &Outcome::Values(vec![])).verdict, verdict);
            assert_eq!(judge(&g, &Outcome::Values(vec![f64::NAN])).verdict, verdict);
        }
    }

    #[test]
    fn unreachable_is_inconclusive_whatever_the_policy_and_bad_queries_are_errors() {
        let g = gate(None, Some(1.0), NoDataPolicy::Pass);
        let r = judge(&g, &Outcome::Unreachable("connection refused".into()));
        assert_eq!(
            r.verdict,
            Verdict::Inconclusive,
            "missing evidence never passes"
        );
        let r = judge(&g, &Outcome::Invalid("parse error at char 5".into()));
        assert_eq!(r.verdict, Verdict::Error);
        assert!(
            r.message
                .unwrap_or_default()
                .contains("parse error at char 5"),
            "Prometheus's own message is kept"
        );
    }
}
