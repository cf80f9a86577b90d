//! `confer serve` with no configuration (except an ephemeral control API port, so that the
//! test does not depend on 8080 being free) starts the media engine, says so with the
//! control API's address, and stops cleanly on SIGTERM; a bad configuration is refused
//! with the reason.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serve_runs_with_no_configuration_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("serve")
        .env("CONFER_HTTP_LISTEN", "127.0.0.1:0")
        .env("CONFER_SIP_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("media engine running"), "{ready}");
    assert!(ready.contains("127.0.0.1"), "{ready}");
    assert!(ready.contains("control API http://127.0.0.1:"), "{ready}");
    assert!(
        !ready.contains("http://127.0.0.1:0,"),
        "the actual port: {ready}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let last = lines.next().unwrap().unwrap();
    assert!(last.contains("stopped"), "{last}");
}

#[test]
fn a_bad_setting_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("serve")
        .env("CONFER_HTTP_LISTEN", "127.0.0.1:0")
        .env("CONFER_SIP_LISTEN", "127.0.0.1:0")
        .env("CONFER_FRAME_MS", "15")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frame_ms"), "{err}");
}
