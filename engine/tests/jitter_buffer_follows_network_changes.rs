//! The jitter buffer follows a network that changes under it: delay steps, spikes, clock
//! drift, a freeze and bursts, on virtual time (each minute of network runs in
//! milliseconds and always the same way).

mod common;

use std::time::Duration;

use confer_engine::jitter_eval::EvalReport;
use confer_engine::netsim::{Jitter, LinkChange, LinkConfig};

fn base() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Jitter::normal(Duration::from_millis(3)),
        ..LinkConfig::default()
    }
}

fn run(name: &str, link: LinkConfig, secs: u64) -> EvalReport {
    common::evaluate_link(name, &link, 7, secs, common::frames())
}

/// Mean delay of packets sent in [from, to) seconds (first phase).
fn mean_between(r: &EvalReport, from: f64, to: f64) -> f64 {
    let d: Vec<f64> = r
        .delays
        .iter()
        .filter(|x| x.0 >= from && x.0 < to)
        .map(|x| x.1)
        .collect();
    assert!(!d.is_empty(), "no packets between {from} and {to} s");
    d.iter().sum::<f64>() / d.len() as f64
}

fn assert_goal(r: &EvalReport) {
    assert!(
        r.late_loss_pct <= 1.0,
        "{}: late {:.2}%",
        r.name,
        r.late_loss_pct
    );
    assert!(
        r.mean_delay_ms <= 1.15 * r.oracle_delay_ms + 10.0,
        "{}: mean {:.1} ms vs oracle {:.1} ms",
        r.name,
        r.mean_delay_ms,
        r.oracle_delay_ms
    );
}

#[test]
fn a_delay_step_up_costs_one_hold_and_no_lasting_late_loss() {
    let link = base().with_change(
        Duration::from_secs(20),
        LinkChange::Latency(Duration::from_millis(100)),
    );
    let r = run("step up", link, 60);
    assert_goal(&r);
    // After the step the delay settles at the old delay plus the 80 ms the network added,
    // give or take the frame of margin the late packets of the step cost.
    let before = mean_between(&r, 10.0, 20.0);
    let after = mean_between(&r, 40.0, 60.0);
    assert!(
        after < before + 80.0 + 25.0,
        "delay before the step {before:.1} ms, after {after:.1} ms"
    );
}

#[test]
fn a_delay_step_down_is_given_back_by_acceleration() {
    let link = LinkConfig {
        latency: Duration::from_millis(120),
        ..base()
    }
    .with_change(
        Duration::from_secs(20),
        LinkChange::Latency(Duration::from_millis(20)),
    );
    let r = run("step down", link, 60);
    assert_goal(&r);
    let before = mean_between(&r, 10.0, 20.0);
    let after = mean_between(&r, 40.0, 60.0);
    // The 100 ms the network gave back is given back to the listener, by stretching.
    assert!(
        after < before - 80.0,
        "delay before {before:.1} ms, after {after:.1} ms"
    );
    assert!(r.jitter.accelerated_ms >= 80.0, "{:?}", r.jitter);
}

#[test]
fn delay_spikes_cost_delay_not_packets() {
    let mut link = base();
    for s in [10, 25, 40] {
        link = link.with_change(
            Duration::from_secs(s),
            LinkChange::Spike {
                extra: Duration::from_millis(150),
                duration: Duration::from_millis(200),
            },
        );
    }
    let r = run("spikes", link, 60);
    assert_goal(&r);
    assert_eq!(r.late, 0, "a spike's packets are held for, not thrown away");
}

#[test]
fn clock_drift_of_25_ms_per_second_is_tracked_both_ways() {
    for drift in [25.0, -25.0] {
        let r = run(
            &format!("drift {drift:+}"),
            base().with_drift_ms_per_s(drift),
            60,
        );
        assert_goal(&r);
        let skew = r.jitter.skew_ms_per_s;
        assert!(
            (skew + drift).abs() < 2.0 || (skew - drift).abs() < 2.0,
            "skew estimate {skew:.2} ms/s for a drift of {drift} ms/s"
        );
        // The buffer's own target does not run away: drift is followed by stretching,
        // not by piling up delay or concealing (delays measured against the sender's
        // clock grow with the drift itself, so the target is what to look at).
        let t_early: f64 = r
            .targets
            .iter()
            .filter(|t| t.0 >= 10.0 && t.0 < 30.0)
            .map(|t| t.1)
            .sum::<f64>()
            / 200.0;
        let t_late: f64 = r
            .targets
            .iter()
            .filter(|t| t.0 >= 40.0 && t.0 < 60.0)
            .map(|t| t.1)
            .sum::<f64>()
            / 200.0;
        assert!(
            (t_late - t_early).abs() < 15.0,
            "target delay went from {t_early:.1} to {t_late:.1} ms"
        );
        // 2.5% of the audio must be made up for (or given up): mostly stretched.
        assert!(r.concealed_pct < 2.0, "concealed {:.2}%", r.concealed_pct);
    }
}

#[test]
fn after_a_5_second_freeze_the_backlog_is_dropped_and_the_delay_recovers() {
    let link = base().with_change(
        Duration::from_secs(20),
        LinkChange::Freeze(Duration::from_secs(5)),
    );
    let r = run("freeze", link, 60);
    // About 250 packets were held by the network. The buffer holds for a second
    // (`max_hold_ms`), then moves on: what comes after that is late, and the backlog
    // beyond the catch-up threshold is dropped instead of played seconds late.
    let lost = r.jitter.late + r.jitter.discarded;
    assert!((150..=250).contains(&lost), "{:?}", r.jitter);
    let before = mean_between(&r, 10.0, 20.0);
    let after = mean_between(&r, 35.0, 60.0);
    assert!(
        after < before + 30.0,
        "delay before {before:.1} ms, well after the freeze {after:.1} ms"
    );
}

#[test]
fn a_burst_of_30_packets_at_once_is_played_not_dropped() {
    // A 600 ms freeze releases 30 packets in one instant.
    let link = base().with_change(
        Duration::from_secs(20),
        LinkChange::Freeze(Duration::from_millis(600)),
    );
    let r = run("burst", link, 60);
    assert_eq!(r.late, 0, "{:?}", r.jitter);
    assert_eq!(r.jitter.discarded, 0);
    let before = mean_between(&r, 10.0, 20.0);
    let after = mean_between(&r, 40.0, 60.0);
    assert!(
        after < before + 30.0,
        "delay before {before:.1} ms, after {after:.1} ms"
    );
}
