//! k6's `stages` (the `ramping-vus` executor): the number of virtual users moves linearly from
//! one stage's target to the next over the stage's duration. Pure; the runner asks
//! [`Ramp::target_at`] before each iteration of each virtual user.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One stage: reach `target` virtual users, linearly, over `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    pub duration: Duration,
    pub target: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RampError {
    #[error("stage {stage:?}: write DURATION:TARGET, e.g. 2m:50 (ramp to 50 users over 2 minutes)")]
    Syntax { stage: String },
    #[error("stage {stage:?}: {reason}")]
    Duration { stage: String, reason: String },
    #[error("stage {stage:?}: the target must be a number of virtual users, e.g. 50")]
    Target { stage: String },
    #[error("no stages: give at least one, e.g. 2m:10,5m:50,2m:0")]
    Empty,
    #[error("the stages last 0 s in all: give at least one stage a duration")]
    NoTime,
}

/// Virtual users over time: `start` at 0 s, then each stage in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ramp {
    start: u32,
    stages: Vec<Stage>,
}

impl Ramp {
    /// `workers` users for `duration` (no ramp).
    pub fn constant(workers: u32, duration: Duration) -> Ramp {
        Ramp {
            start: workers,
            stages: vec![Stage {
                duration,
                target: workers,
            }],
        }
    }

    /// k6's stages, starting from 0 users.
    pub fn stages(stages: Vec<Stage>) -> Result<Ramp, RampError> {
        if stages.is_empty() {
            return Err(RampError::Empty);
        }
        if stages.iter().all(|s| s.duration.is_zero()) {
            return Err(RampError::NoTime);
        }
        Ok(Ramp { start: 0, stages })
    }

    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The most users at any moment (the workers to start).
    pub fn max_target(&self) -> u32 {
        self.stages
            .iter()
            .map(|s| s.target)
            .chain([self.start])
            .max()
            .unwrap_or(0)
    }

    /// Users wanted `elapsed` into the run (rounded to the nearest user); 0 after the end.
    pub fn target_at(&self, elapsed: Duration) -> u32 {
        let mut from = self.start;
        let mut begun = Duration::ZERO;
        for stage in &self.stages {
            let end = begun + stage.duration;
            if elapsed < end {
                let done = (elapsed - begun).as_secs_f64() / stage.duration.as_secs_f64();
                let users = f64::from(from) + (f64::from(stage.target) - f64::from(from)) * done;
                return users.round() as u32;
            }
            from = stage.target;
            begun = end;
        }
        0
    }
}

impl FromStr for Ramp {
    type Err = RampError;

    /// `2m:10,5m:50,2m:100,5m:100,2m:0` (durations as k6 writes them: `30s`, `2m`, `1m30s`).
    fn from_str(text: &str) -> Result<Ramp, RampError> {
        let stages = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|stage| {
                let (duration, target) =
                    stage.split_once(':').ok_or_else(|| RampError::Syntax {
                        stage: stage.to_owned(),
                    })?;
                let duration = humantime::parse_duration(duration.trim()).map_err(|e| {
                    RampError::Duration {
                        stage: stage.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                let target = target.trim().parse().map_err(|_| RampError::Target {
                    stage: stage.to_owned(),
                })?;
                Ok(Stage { duration, target })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ramp::stages(stages)
    }
}

impl fmt::Display for Ramp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{}:{}", humantime::format_duration(s.duration), s.target))
            .collect();
        write!(f, "from {} users: {}", self.start, stages.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_the_original_k6_stages() {
        let ramp: Ramp = "2m:10, 5m:50,2m:100,5m:100,2m:0".parse().expect("stages");
        assert_eq!(ramp.total(), secs(16 * 60));
        assert_eq!(ramp.max_target(), 100);
        let half: Ramp = "1m30s:4".parse().expect("stages");
        assert_eq!(half.total(), secs(90));
    }

    #[test]
    fn users_move_linearly_from_one_target_to_the_next() {
        let ramp: Ramp = "10s:10,10s:10,10s:0".parse().expect("stages");
        let at = |s: u64| ramp.target_at(secs(s));
        assert_eq!(
            [at(0), at(5), at(10), at(15), at(20), at(25), at(29)],
            [0, 5, 10, 10, 10, 5, 1]
        );
        assert_eq!(at(30), 0, "the run is over");
        assert_eq!(ramp.target_at(Duration::from_millis(9_960)), 10);
    }

    #[test]
    fn a_zero_length_stage_jumps() {
        let ramp: Ramp = "0s:20,10s:20".parse().expect("stages");
        assert_eq!(ramp.target_at(Duration::ZERO), 20);
        assert_eq!(ramp.target_at(secs(9)), 20);
    }

    #[test]
    fn constant_is_the_same_users_throughout() {
        let ramp = Ramp::constant(8, secs(30));
        assert_eq!(
            (ramp.target_at(Duration::ZERO), ramp.target_at(secs(29))),
            (8, 8)
        );
        assert_eq!((ramp.max_target(), ramp.total()), (8, secs(30)));
    }

    #[test]
    fn bad_stages_say_what_to_write() {
        let err = |s: &str| s.parse::<Ramp>().expect_err(s).to_string();
        assert!(err("2m").contains("DURATION:TARGET"), "{}", err("2m"));
        assert!(err("2x:5").contains("\"2x:5\""), "{}", err("2x:5"));
        assert!(err("2m:-1").contains("number of virtual users"));
        assert!(err("").contains("at least one"));
        assert!(err("0s:5").contains("0 s"));
    }
}
