//! `confer bench sip` as scripts use it: a short run against the built binary (its own
//! in-process engine, sipp placing real calls with media) prints one JSON object with the
//! documented keys, and the calls it counts as successful are calls the engine answered.
//!
//! The rates and caller counts are low and the steps short (a few seconds each), so the
//! tests measure the bench's plumbing, not the machine. They skip, with a message, when
//! sipp is not installed and `CI` is not set.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// sipp on the PATH, or a skip (a failure in CI, where it must be installed).
fn sipp() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("sipp"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "sipp (Debian package sip-tester) is not installed, and CI is set: it must run here"
        );
        eprintln!("SKIPPED: sipp is not installed (apt-get install sip-tester)");
    }
    found
}

/// Runs `confer bench sip ARGS --json` and parses its one JSON object.
fn bench_sip(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["bench", "sip", "--realtime-priority", "0", "--json"])
        .args(args)
        .output()
        .expect("confer runs");
    assert!(
        out.status.success(),
        "confer bench sip failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn a_rising_call_rate_with_media_reports_each_step_and_every_call_succeeds() {
    if sipp().is_none() {
        return;
    }
    let r = bench_sip(&[
        "--start-rate",
        "10",
        "--step",
        "10",
        "--max-rate",
        "20",
        "--step-secs",
        "2",
        "--call-secs",
        "0.5",
        "--media",
        // Setup times of a debug build on a busy test machine are not what this tests.
        "--max-setup-ms",
        "3000",
    ]);
    assert_eq!(r["benchmark"], "sip", "{r}");
    assert_eq!(r["mode"], "rate", "{r}");
    assert_eq!(r["media"], true, "{r}");
    for key in [
        "engine",
        "target",
        "number",
        "stopped_because",
        "loadavg_at_start",
    ] {
        assert!(r[key].is_string(), "{key} missing in {r}");
    }
    assert!(r["cpus"].as_u64() >= Some(1), "{r}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{r}");
    let mut answered = 0.0;
    for (s, rate) in steps.iter().zip([10u64, 20]) {
        assert_eq!(s["rate"], rate, "{s}");
        assert_eq!(s["calls"], rate * 2, "{s}");
        assert_eq!(s["calls_ok"], rate * 2, "every call succeeded: {s}");
        assert_eq!(s["calls_failed"], 0, "{s}");
        assert!(s["passed"].is_boolean(), "{s}");
        // sipp kept the rate and the answers followed (loosely: a loaded test machine).
        for key in ["achieved_rate", "placed_rate"] {
            assert!(
                s[key].as_f64().is_some_and(|a| a > 0.8 * rate as f64),
                "{key} in {s}"
            );
        }
        for q in ["p50", "p99", "max"] {
            assert!(s["setup_ms"][q].is_number(), "setup_ms.{q} in {s}");
        }
        assert!(s["sipp_cpu_pct"].is_number(), "{s}");
        let engine = &s["engine"];
        assert!(engine["cpu_pct"].is_number(), "{engine}");
        assert!(engine["tick_ms"]["p99"].is_number(), "{engine}");
        assert!(engine["overruns"].is_number(), "{engine}");
        // The engine's own counters agree with sipp: each call answered and hung up.
        let sip = &engine["sip"];
        assert_eq!(
            sip["confer_sip_calls_answered_total"],
            rate as f64 * 2.0,
            "{sip}"
        );
        assert_eq!(
            sip["confer_sip_calls_ended_total{reason=\"bye\"}"],
            rate as f64 * 2.0,
            "{sip}"
        );
        assert_eq!(sip["confer_sip_calls"], 0.0, "every call ended: {sip}");
        // The callers' G.711 reached the engine.
        answered += engine["rtp_in_per_s"].as_f64().expect("rtp_in_per_s");
    }
    assert!(answered > 0.0, "no RTP reached the engine: {r}");
    // The result is the last step that passed (both, unless the machine is overloaded).
    let last_passed = steps
        .iter()
        .take_while(|s| s["passed"] == true)
        .last()
        .map(|s| s["rate"].clone());
    assert_eq!(
        r["max_rate_zero_failures"],
        last_passed.unwrap_or(Value::Null),
        "{r}"
    );
}

#[test]
fn concurrent_g711_callers_are_all_in_the_room_and_their_media_arrives() {
    if sipp().is_none() {
        return;
    }
    let r = bench_sip(&[
        "--concurrent",
        "--start-callers",
        "6",
        "--callers-step",
        "0",
        "--ramp-rate",
        "20",
        "--step-secs",
        "2",
    ]);
    assert_eq!(r["mode"], "concurrent", "{r}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{r}");
    let s = &steps[0];
    assert_eq!(s["callers"], 6, "{s}");
    assert_eq!(s["joined"], 6, "all six were in at once: {s}");
    assert_eq!(s["calls_ok"], 6, "{s}");
    assert_eq!(s["calls_failed"], 0, "{s}");
    assert_eq!(s["rtp_expected_per_s"], 300.0, "{s}");
    // 50 packets a second per caller (some slack for a loaded test machine).
    let rx = s["engine"]["rtp_in_per_s"].as_f64().expect("rtp_in_per_s");
    assert!(rx > 200.0 && rx < 330.0, "RTP in {rx}/s: {s}");
    for key in ["sipp_cpu_pct", "passed"] {
        assert!(!s[key].is_null(), "{key} missing in {s}");
    }
    assert!(s["engine"]["tick_ms"]["p99"].is_number(), "{s}");
    // Whether the step passed depends on the machine's load; the key is always there.
    assert!(
        r.get("max_concurrent_callers").is_some(),
        "max_concurrent_callers missing in {r}"
    );
}
