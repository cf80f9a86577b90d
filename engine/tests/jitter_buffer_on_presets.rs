//! The jitter buffer on every simulated-network preset: it stays close to the hindsight
//! oracle (mean delay <= 1.15 x oracle + 10 ms of frame-clock alignment) at <= 1% late loss.

mod common;

use confer_engine::jitter_eval::EvalReport;
use confer_engine::netsim::{LinkConfig, presets};

fn run(name: &str, link: LinkConfig, seed: u64) -> EvalReport {
    common::evaluate_link(name, &link, seed, 60, common::frames())
}

fn assert_near_oracle(r: &EvalReport) {
    assert!(
        r.late_loss_pct <= 1.0,
        "{}: late loss {:.2}%",
        r.name,
        r.late_loss_pct
    );
    let bound = 1.15 * r.oracle_delay_ms + 10.0;
    assert!(
        r.mean_delay_ms <= bound,
        "{}: mean delay {:.1} ms > 1.15 x oracle {:.1} + 10",
        r.name,
        r.mean_delay_ms,
        r.oracle_delay_ms
    );
}

#[test]
fn every_preset_stays_near_the_oracle_at_low_late_loss() {
    for (name, make) in presets() {
        for seed in 1..=2 {
            let r = run(name, make(), seed);
            assert!(
                r.played > 4 * 2000,
                "{name}: only {} packets played",
                r.played
            );
            assert_near_oracle(&r);
        }
    }
}
