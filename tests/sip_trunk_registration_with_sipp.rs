//! Trunk registration against a real registrar: sipp plays the trunk's registrar, which
//! challenges confer's REGISTER (digest MD5, qop=auth) and checks the answer with sipp's
//! own `verifyauth`. With the right password the binding is granted and the API and
//! `/metrics` say registered; with a wrong one the registrar refuses (403) and confer
//! reports the failure and backs off.
//!
//! Each test bounds sipp's run and skips, with a message, only when sipp is not installed
//! and `CI` is not set.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::time::{Duration, Instant};

use serde_json::Value;
use sip_support::{SipServer, free_udp_port, run_sipp, sipp};

fn registrar(port: u16) -> Vec<String> {
    let scenario = sip_support::scenario("uas_registrar.xml");
    [
        "-sf",
        &scenario.display().to_string(),
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        "1",
        "-timeout",
        "20",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn server(slot: u16, port: u16, password: &str) -> SipServer {
    let trunks = format!(
        r#"[{{name = "carrier", address = "127.0.0.1:{port}", domain = "carrier.example", username = "acct", password = "{password}", register = true, register_expires = 300}}]"#
    );
    SipServer::start(slot, 2, &[("CONFER_TRUNKS", &trunks)])
}

/// The trunk's registration once its state is not `registering` (at most 8 s).
fn settled(s: &SipServer) -> Value {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, v) = s.server.request("GET", "/v1/trunks", None);
        assert_eq!(status, 200, "{v}");
        let r = v["trunks"][0]["registration"].clone();
        if (r["state"] != "registering" && !r.is_null()) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_trunk_with_register_answers_the_challenge_and_is_registered() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let args = registrar(port);
    let sipp_run = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    let s = server(13, port, "secret");
    let r = settled(&s);
    assert_eq!(r["state"], "registered", "{r}\n{}", s.server.log());
    assert_eq!(r["last_status"], 200, "{r}");
    assert_eq!(r["successes"], 1, "{r}");
    // 120 s granted (less than the 300 asked for), a little of it already gone.
    let left = r["expires_in_s"].as_u64().expect("expiry");
    assert!((110..=120).contains(&left), "{r}");
    let (_, metrics) = s.server.request_text("GET", "/metrics", None);
    assert!(
        metrics.contains("confer_sip_trunk_registered{trunk=\"carrier\"} 1"),
        "{metrics}"
    );
    let out = sipp_run.join().expect("sipp thread");
    assert!(
        out.status.success(),
        "the registrar: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_wrong_password_is_refused_reported_and_retried_later() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let args = registrar(port);
    let sipp_run = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    let s = server(14, port, "wrong");
    let r = settled(&s);
    assert_eq!(r["state"], "backoff", "{r}");
    assert_eq!(r["last_status"], 403, "{r}");
    assert_eq!(r["failures"], 1, "{r}");
    assert!(
        r["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("403")),
        "{r}"
    );
    let (_, metrics) = s.server.request_text("GET", "/metrics", None);
    assert!(metrics.contains("confer_sip_trunk_registered{trunk=\"carrier\"} 0"));
    assert!(metrics.contains("confer_sip_trunk_registration_failures_total{trunk=\"carrier\"} 1"));
    let _ = sipp_run.join();
    assert!(
        !s.server.log().contains("secret"),
        "a password is in the log"
    );
}
