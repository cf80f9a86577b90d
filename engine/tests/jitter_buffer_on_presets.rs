//! The jitter buffer on every simulated-network preset: it stays close to the hindsight
//! oracle (mean delay <= 1.15 x oracle + 10 ms of frame-clock alignment) at <= 1% late loss.

mod common;

use std::time::Duration;

use confer_codecs::opus::OpusDecoder;
use confer_engine::jitter_eval::{EvalConfig, EvalReport, evaluate};
use confer_engine::netsim::{LinkConfig, NetSim, presets};

fn run(name: &str, link: LinkConfig, seed: u64) -> EvalReport {
    let start = common::epoch();
    let cfg = EvalConfig {
        duration: Duration::from_secs(60),
        ..EvalConfig::default()
    };
    let r = evaluate(
        name,
        || NetSim::new(link.clone(), seed, start).expect("valid preset"),
        start,
        common::frames(),
        || OpusDecoder::new(48_000).expect("decoder"),
        &cfg,
    )
    .expect("run");
    println!(
        "{name:10} seed {seed}: mean {:.1} ms p95 {:.1} ms late {:.2}% concealed {:.2}% oracle {:.1} ms (acc {:.0} ms, exp {:.0} ms, discarded {}, skew {:.2})",
        r.mean_delay_ms,
        r.p95_delay_ms,
        r.late_loss_pct,
        r.concealed_pct,
        r.oracle_delay_ms,
        r.jitter.accelerated_ms,
        r.jitter.expanded_ms,
        r.jitter.discarded,
        r.jitter.skew_ms_per_s,
    );
    r
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
