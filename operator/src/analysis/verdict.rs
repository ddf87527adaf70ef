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

/// The verdict of `gate` on `outcome`, given what its `samplesQuery` returned (`None` for a
/// gate without one).
pub fn judge(gate: &Gate, outcome: &Outcome, samples: Option<&Outcome>) -> GateResult {
    let result = |verdict, value: Option<f64>, message: Option<String>| GateResult {
        name: gate.name.clone(),
        verdict,
        value: value.filter(|v| v.is_finite()),
        min: gate.min,
        max: gate.max,
        message,
        failing_since: None,
    };
    // Enough samples first: a ratio over a handful of requests is noise, and an empty sample
    // count is a dead scrape, never a pass.
    let counted = match (samples, gate.min_samples) {
        (Some(Outcome::Invalid(msg)), _) => {
            return result(
                Verdict::Error,
                None,
                Some(format!("invalid samplesQuery: {msg}")),
            );
        }
        (Some(Outcome::Unreachable(msg)), _) => {
            return result(
                Verdict::Inconclusive,
                None,
                Some(format!("Prometheus unreachable: {msg}")),
            );
        }
        (Some(Outcome::Values(values)), Some(min)) => {
            let total: f64 = values.iter().copied().filter(|v| v.is_finite()).sum();
            if values.is_empty() || total < min {
                return result(
                    Verdict::Inconclusive,
                    None,
                    Some(format!(
                        "too few samples: {total} of the {min} needed (samplesQuery)"
                    )),
                );
            }
            true
        }
        _ => false,
    };
    let no_data = |why: &str| {
        let verdict = match gate.on_no_data {
            NoDataPolicy::Inconclusive => Verdict::Inconclusive,
            // Only counted samples prove the scrape is alive; without them nothing passes.
            NoDataPolicy::Pass if counted => Verdict::Pass,
            NoDataPolicy::Pass => Verdict::Inconclusive,
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
            cohorts: Default::default(),
            samples_query: None,
            min_samples: None,
            fail_for: None,
        }
    }

    fn counted(min_samples: f64, on_no_data: NoDataPolicy) -> Gate {
        Gate {
            samples_query: Some("s".into()),
            min_samples: Some(min_samples),
            ..gate(None, Some(0.01), on_no_data)
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
            let r = judge(&g, &Outcome::Values(values.clone()), None);
            assert_eq!((r.verdict, r.value), (verdict, value), "{values:?}");
            assert_eq!(
                (r.min, r.max),
                (Some(0.5), Some(1.5)),
                "thresholds are recorded with the verdict"
            );
        }
    }

    #[test]
    fn empty_and_nan_follow_the_gates_no_data_policy_and_never_pass_without_counted_samples() {
        for (policy, verdict) in [
            (NoDataPolicy::Inconclusive, Verdict::Inconclusive),
            // A dead scrape is an empty result too: without a sample count it cannot pass.
            (NoDataPolicy::Pass, Verdict::Inconclusive),
            (NoDataPolicy::Fail, Verdict::Fail),
        ] {
            let g = gate(None, Some(0.01), policy);
            assert_eq!(judge(&g, &Outcome::Values(vec![]), None).verdict, verdict);
            assert_eq!(
                judge(&g, &Outcome::Values(vec![f64::NAN]), None).verdict,
                verdict
            );
        }
    }

    #[test]
    fn unreachable_is_inconclusive_whatever_the_policy_and_bad_queries_are_errors() {
        let g = gate(None, Some(1.0), NoDataPolicy::Pass);
        let r = judge(&g, &Outcome::Unreachable("connection refused".into()), None);
        assert_eq!(
            r.verdict,
            Verdict::Inconclusive,
            "missing evidence never passes"
        );
        let r = judge(&g, &Outcome::Invalid("parse error at char 5".into()), None);
        assert_eq!(r.verdict, Verdict::Error);
        assert!(
            r.message
                .unwrap_or_default()
                .contains("parse error at char 5"),
            "Prometheus's own message is kept"
        );
    }

    #[test]
    fn too_few_samples_are_inconclusive_whatever_the_value() {
        let g = counted(100.0, NoDataPolicy::Inconclusive);
        let cases = [
            // (samples, query value, verdict)
            (vec![], vec![0.0], Verdict::Inconclusive),
            (vec![f64::NAN], vec![0.0], Verdict::Inconclusive),
            (vec![99.0], vec![0.0], Verdict::Inconclusive),
            (vec![99.0], vec![0.5], Verdict::Inconclusive),
            (vec![60.0, 40.0], vec![0.001], Verdict::Pass),
            (vec![100.0], vec![0.5], Verdict::Fail),
        ];
        for (samples, values, verdict) in cases {
            let r = judge(
                &g,
                &Outcome::Values(values.clone()),
                Some(&Outcome::Values(samples.clone())),
            );
            assert_eq!(r.verdict, verdict, "samples {samples:?}, value {values:?}");
            if verdict == Verdict::Inconclusive {
                assert!(
                    r.message.unwrap_or_default().contains("too few samples"),
                    "the reason is given"
                );
            }
        }
        let unreachable = judge(
            &g,
            &Outcome::Values(vec![0.0]),
            Some(&Outcome::Unreachable("timeout".into())),
        );
        assert_eq!(unreachable.verdict, Verdict::Inconclusive);
        let invalid = judge(
            &g,
            &Outcome::Values(vec![0.0]),
            Some(&Outcome::Invalid("parse error".into())),
        );
        assert_eq!(invalid.verdict, Verdict::Error);
    }

    #[test]
    fn with_counted_samples_an_empty_result_may_pass() {
        let g = counted(10.0, NoDataPolicy::Pass);
        let enough = Outcome::Values(vec![50.0]);
        assert_eq!(
            judge(&g, &Outcome::Values(vec![]), Some(&enough)).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&g, &Outcome::Values(vec![]), Some(&Outcome::Values(vec![]))).verdict,
            Verdict::Inconclusive,
            "no samples: a dead scrape"
        );
    }
}
