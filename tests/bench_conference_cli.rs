//! `confer bench` (the conference load benchmark) as scripts use it: the documented JSON
//! keys, a marker timed through a real engine over UDP, `--target URL`, capacity mode and
//! clear errors. Runs are short and real-time; nothing here asserts a timing goal (that is
//! what the benchmark itself reports).

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::process::Command;

use serde_json::Value;

fn confer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_confer"))
}

fn bench_json(args: &[&str]) -> Value {
    let out = confer()
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("confer runs");
    assert!(
        out.status.success(),
        "confer bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn assert_pcts(v: &Value, key: &str, with_p95: bool) {
    let p = &v[key];
    let mut want = vec!["p50", "p99", "max"];
    if with_p95 {
        want.push("p95");
    }
    for q in want {
        assert!(p[q].is_number(), "{key}.{q} missing in {p}");
    }
    assert!(p["p50"].as_f64() <= p["p99"].as_f64() && p["p99"].as_f64() <= p["max"].as_f64());
}

#[test]
fn an_in_process_run_times_the_probe_through_the_mix_and_reports_the_documented_keys() {
    let dir = std::env::temp_dir().join(format!("confer-bench-cli-{}", std::process::id()));
    let dir_s = dir.to_str().unwrap();
    let v = bench_json(&[
        "--participants",
        "8",
        "--talkers",
        "3",
        "--duration",
        "4",
        "--warmup",
        "2",
        "--plot",
        dir_s,
    ]);
    assert_eq!(v["participants"], 8);
    assert_eq!(v["talkers"], 3);
    assert_eq!(v["rooms"], 1);
    for key in ["added_latency_ms", "added_latency_excl_jb_ms"] {
        assert_pcts(&v, key, true);
    }
    assert_pcts(&v, "tick_ms", false);
    for key in ["overruns", "packets_lost", "cpu_pct", "packets_expected"] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    // The probe's markers crossed the engine: at least 2 of the 4 seconds' markers were
    // found in a listener's decoded audio, after the packet that carried them left.
    assert!(v["latency_samples"].as_u64().unwrap() >= 2, "{v}");
    let added = v["added_latency_ms"]["p50"].as_f64().unwrap();
    let hop = v["hop_latency_ms"]["p50"].as_f64().unwrap();
    assert!(added > 0.0 && hop >= added, "added {added} hop {hop}");
    // 7 listeners x 50 packets/s x 4 s, whatever the machine's load.
    assert!(v["packets_expected"].as_u64().unwrap() >= 7 * 50 * 3, "{v}");
    // The engine's own stages are read from its /metrics.
    assert!(v["stages_ms"]["tick"]["p50"].is_number(), "{v}");
    let svg = std::fs::read_to_string(dir.join("bench-confer-0-1-0.svg")).expect("a plot");
    assert!(svg.contains("<svg") && svg.contains("latency"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_running_engine_is_measured_through_its_url() {
    let server = serve_harness::Server::start(5, 50, &[]);
    let url = format!("http://{}", server.http);
    let v = bench_json(&[
        "--target",
        &url,
        "--participants",
        "4",
        "--talkers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "1",
    ]);
    assert_eq!(v["participants"], 4);
    assert!(v["packets_expected"].as_u64().unwrap() > 0, "{v}");
    assert!(v["cpu_pct"].is_number(), "the target's process CPU: {v}");
    // The bench cleans up after itself.
    let (status, rooms) = server.request("GET", "/v1/rooms", None);
    assert_eq!(status, 200);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(0), "{rooms}");
}

#[test]
fn capacity_mode_stops_at_the_first_unhealthy_load_and_says_why() {
    // A tick limit no engine meets: the first run is unhealthy, nothing is healthy.
    let v = bench_json(&[
        "--capacity",
        "--participants",
        "3",
        "--duration",
        "1",
        "--warmup",
        "1",
        "--max-tick-ms",
        "0.000001",
    ]);
    assert!(v["max_healthy_participants"].is_null(), "{v}");
    // 3 is unhealthy, so it bisects down to 1 and stops there.
    let runs = v["runs"].as_array().unwrap();
    let sizes: Vec<u64> = runs
        .iter()
        .map(|r| r["participants"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [3, 1]);
    let why = runs[0]["unhealthy_because"].to_string();
    assert!(why.contains("tick p99"), "{why}");
}

#[test]
fn bad_options_and_unreachable_targets_fail_with_a_clear_message() {
    for (args, want) in [
        (&["--participants", "0"][..], "at least 1"),
        (&["--duration", "0"][..], "--duration"),
        (&["--target", "http://127.0.0.1:1"][..], "does not answer"),
    ] {
        let out = confer().arg("bench").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
