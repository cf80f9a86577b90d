//! `confer bench jitter` as scripts use it: JSON keys, traces, plots and clear errors.

use std::path::PathBuf;
use std::process::Command;

fn confer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_confer"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("confer-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn json_output_has_one_object_per_run_with_the_documented_keys() {
    let out = confer()
        .args(["bench", "jitter", "--preset", "lan", "--preset", "wifi"])
        .args(["--duration", "5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let runs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["name"], "lan");
    assert_eq!(runs[1]["name"], "wifi");
    for r in &runs {
        for key in [
            "packets",
            "mean_delay_ms",
            "p95_delay_ms",
            "late_loss_pct",
            "concealed_pct",
            "oracle_delay_ms",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
        assert_eq!(r["packets"], 250);
    }
}

#[test]
fn a_recorded_trace_is_replayed_and_named_after_its_file() {
    let dir = tmp("trace");
    let path = dir.join("office-wifi.csv");
    let mut csv = String::from("seq,send_ms,arrival_ms\n");
    for i in 0..500u64 {
        let send = i * 20;
        if i % 50 == 7 {
            csv += &format!("{i},{send},\n");
        } else {
            let jitter = (i * 37 % 11) as f64;
            csv += &format!("{i},{send},{}\n", send as f64 + 30.0 + jitter);
        }
    }
    std::fs::write(&path, csv).unwrap();
    let plots = dir.join("plots");
    let out = confer()
        .args(["bench", "jitter", "--json", "--trace"])
        .arg(&path)
        .arg("--plot")
        .arg(&plots)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["name"], "office-wifi");
    assert_eq!(r["packets"], 500);
    let svg = std::fs::read_to_string(plots.join("jitter-office-wifi.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(svg.contains("delay distribution"));
}

#[test]
fn a_malformed_trace_is_refused_naming_the_line() {
    let dir = tmp("badtrace");
    let path = dir.join("bad.csv");
    std::fs::write(&path, "seq,send_ms,arrival_ms\n0,0,30\n1,twenty,50\n").unwrap();
    let out = confer()
        .args(["bench", "jitter", "--trace"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn an_unknown_preset_is_refused_listing_the_known_ones() {
    let out = confer()
        .args(["bench", "jitter", "--preset", "moon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moon") && err.contains("cellular"), "{err}");
}
