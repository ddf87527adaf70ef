//! Resuming after an operator restart from the serialized status.

use super::*;

#[test]
fn a_restarted_operator_continues_mid_step_without_skipping_or_repeating() {
    let spec = gated();
    // Mid-step: Split step 2, one failure on record, a last analysis.
    let mut sim = Simulation::from(spec.clone(), status_in(&spec, Split, Some(2)));
    sim.with(
        15,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    sim.with(
        30,
        Observations {
            analysis: pass(),
            ..Observations::default()
        },
    );
    sim.with(
        45,
        Observations {
            analysis: fail(),
            ..Observations::default()
        },
    );
    assert_eq!(
        (sim.status.consecutive_failures, sim.status.step),
        (1, Some(2))
    );

    // A second operator starts from the status as stored in the API server.
    let mut restarted = Simulation::from(spec.clone(), roundtrip(&sim.status));
    assert_eq!(
        (&restarted.status, restarted.store),
        (&sim.status, sim.store)
    );

    let mut steps_seen = vec![];
    for secs in (60..=400).step_by(15) {
        let obs = Observations {
            analysis: pass(),
            ..Observations::default()
        };
        let a = sim.with(secs, obs.clone());
        let b = restarted.with(secs, obs);
        assert_eq!(a, b, "+{secs}s");
        if steps_seen.last() != Some(&(a.status.phase, a.status.step)) {
            steps_seen.push((a.status.phase, a.status.step));
        }
    }
    assert_eq!(
        steps_seen,
        [
            (Split, Some(2)),
            (Split, Some(3)),
            (Split, Some(4)),
            (CutOver, None)
        ],
        "each step once, in order"
    );
}
