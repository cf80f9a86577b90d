//! The registrar and ringing with real SIP software: sipp as a softphone registers with
//! digest (401, then `[authentication]`, 200), the registrar reports the binding, confer
//! rings it into a room over the flow it registered on, and the phone answers (joins the
//! room, then hangs up with BYE) or rings until confer cancels it (CANCEL, 487). The
//! phone's unregistration at the end is reported too.
//!
//! Why here, in the binary's tests, and not in `tests/`: the API reaches
//! [`SipControl::ring`](super::SipControl::ring) only through an escalation, and the
//! registrar events only through the directory; this test checks the SIP side on its
//! own, so it runs the SIP server in-process (real sockets, a real media host) and
//! drives the control handle and the events channel directly. The scenarios are in
//! `tests/sipp/phone_*.xml`. sipp 3.6 answers only the first challenge, and only MD5:
//! the registrar here offers MD5 first.
//!
//! Each test bounds sipp's run and skips, with a message, only when sipp is not installed
//! and `CI` is not set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    DialPlan, DialProgress, Pins, RegistrarEvent, RegistrarSetup, RingRequest, SipAccount,
    SipAccounts, SipServer, Trunks,
};
use crate::config::Config;
use crate::host::{Host, HostConfig, RoomSpec};

/// sipp, or `None` (and a message) when it is missing outside CI.
fn sipp() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("sipp"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "sipp (Debian package sip-tester) is not installed, and CI is set"
        );
        eprintln!("SKIPPED: sipp is not installed (apt-get install sip-tester)");
    }
    found
}

/// A UDP port free right now.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// Four consecutive UDP ports free right now, for the host's RTP sockets.
fn free_rtp_range() -> u16 {
    for base in (43_000..44_000).step_by(4) {
        let held: Vec<_> = (base..base + 4)
            .filter_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no four free RTP ports in 43000..44000");
}

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs sipp to the end (killed after `limit`); its output.
fn run_sipp(sipp: &PathBuf, args: &[String], limit: Duration) -> Output {
    let mut child = Command::new(sipp)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp starts");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("sipp's output")
}

/// confer's SIP server and media host in-process, with alice's account (user `u-alice`).
struct Confer {
    /// sipp's error log.
    errors: PathBuf,
    runtime: tokio::runtime::Runtime,
    host: Host,
    sip: Option<SipServer>,
    events: mpsc::UnboundedReceiver<RegistrarEvent>,
}

impl Confer {
    fn start(test: &str) -> Confer {
        let errors = std::env::temp_dir().join(format!(
            "confer-registrar-sipp-{}-{test}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&errors);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let rtp = free_rtp_range();
        let cfg = Config {
            sip_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            realtime_priority: 0,
            rtp_port_min: rtp,
            rtp_port_max: rtp + 3,
            ..Config::default()
        };
        let host = {
            let _guard = runtime.enter();
            Host::start(&HostConfig {
                workers: 1,
                realtime_priority: 0,
                send_lanes: 1,
                frame_ms: cfg.frame_ms,
                media_ip: cfg.media_ip,
                rtp_port_min: cfg.rtp_port_min,
                rtp_port_max: cfg.rtp_port_max,
                recordings_dir: std::env::temp_dir().join("confer-registrar-sipp"),
            })
            .expect("media workers")
        };
        let accounts = SipAccounts::default();
        accounts.set(
            "alice",
            SipAccount {
                user: "u-alice".into(),
                password: "wonderland".into(),
            },
        );
        let (tx, events) = mpsc::unbounded_channel();
        let pins = Arc::new(Pins::new(
            DialPlan::new(&[], "1").expect("plan").pin_number(),
            6,
        ));
        let trunks = Arc::new(Trunks::new(&[], "1", &[], &[]).expect("no trunks"));
        let sip = runtime
            .block_on(SipServer::start(
                &cfg,
                host.clone(),
                pins,
                trunks,
                RegistrarSetup {
                    enabled: true,
                    accounts,
                    events: Some(tx),
                    domains: Vec::new(),
                    // sipp 3.6 answers the first challenge, and only MD5.
                    md5_first: true,
                    md5_only: false,
                },
            ))
            .expect("SIP starts");
        Confer {
            errors,
            runtime,
            host,
            sip: Some(sip),
            events,
        }
    }

    fn sip(&self) -> &SipServer {
        self.sip.as_ref().expect("running")
    }

    fn room(&self) -> u64 {
        self.runtime
            .block_on(self.host.create_room(RoomSpec {
                name: "escalation".into(),
                max_participants: None,
                wait_for_moderator: false,
                announce_joins: false,
                internal: false,
            }))
            .expect("a room")
            .id
    }

    fn participants(&self, room: u64) -> usize {
        self.runtime
            .block_on(self.host.room(room))
            .map_or(0, |r| r.participants)
    }

    /// The next registrar event within `wait`.
    fn next_event(&mut self, wait: Duration) -> Option<RegistrarEvent> {
        let events = &mut self.events;
        self.runtime
            .block_on(async { tokio::time::timeout(wait, events.recv()).await.ok()? })
    }

    /// sipp as alice's softphone over `transport` (`u1` UDP, `t1` one TCP connection),
    /// answering rings with `answer` (a scenario file), in a thread; its output when it
    /// ends.
    fn phone(
        &self,
        sipp: PathBuf,
        transport: &str,
        answer: &str,
    ) -> std::thread::JoinHandle<Output> {
        let server = if transport == "t1" {
            self.sip().tcp
        } else {
            self.sip().udp
        };
        let args: Vec<String> = [
            &server.to_string(),
            "-t",
            transport,
            "-sf",
            &scenario("phone_register.xml"),
            "-oocsf",
            &scenario(answer),
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_udp_port().to_string(),
            "-m",
            "1",
            "-timeout",
            "30",
            "-timeout_error",
            // An out-of-call scenario's failure is in no count sipp keeps: without
            // sipp's default BYE on a failed call, it shows as a ring that never ends.
            "-nd",
            "-trace_err",
            "-error_file",
            &self.errors.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(30)))
    }

    /// What sipp reported as errors.
    fn sipp_errors(&self) -> String {
        std::fs::read_to_string(&self.errors).unwrap_or_default()
    }

    /// Waits for alice's binding (over `transport`, granted `secs`); its device id.
    fn bound(&mut self, transport_name: &str, secs: u64) -> String {
        match self.next_event(Duration::from_secs(10)) {
            Some(RegistrarEvent::Bound {
                user,
                device,
                contact,
                expires_at_ms,
                user_agent,
                transport,
            }) => {
                assert_eq!(user, "u-alice");
                assert_eq!(device, "sip-u-alice-00000000-0000-4000-8000-00005eed0001");
                assert!(contact.starts_with("sip:alice@127.0.0.1:"), "{contact}");
                assert_eq!(user_agent.as_deref(), Some("sipp-softphone"));
                assert_eq!(transport, transport_name);
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis() as u64;
                let left = expires_at_ms.saturating_sub(unix_ms);
                assert!(
                    (secs * 1000 - 10_000..=secs * 1000).contains(&left),
                    "expires in {left} ms"
                );
                device
            }
            other => panic!(
                "no binding reported ({other:?}); sipp says:\n{}",
                self.sipp_errors()
            ),
        }
    }

    /// The progress of a ring until it ends (at most 15 s).
    fn progress(&self, mut rx: mpsc::UnboundedReceiver<DialProgress>) -> Vec<DialProgress> {
        self.runtime.block_on(async {
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                seen.push(p);
            }
            seen
        })
    }

    /// The phone's unregistration is reported.
    fn unbound(&mut self, device: &str) {
        let e = self.next_event(Duration::from_secs(10));
        assert_eq!(
            e,
            Some(RegistrarEvent::Unbound {
                user: "u-alice".into(),
                device: device.into(),
                reason: "unregistered",
            })
        );
    }
}

impl Drop for Confer {
    fn drop(&mut self) {
        if let Some(sip) = self.sip.take() {
            self.runtime.block_on(sip.stop());
        }
        self.host.stop();
    }
}

/// sipp ended well, its out-of-call scenario too (sipp counts only the main one).
fn assert_sipp_ok(confer: &Confer, out: &Output) {
    let errors = confer.sipp_errors();
    assert!(
        out.status.success() && !errors.contains("while expecting") && !errors.contains("borted"),
        "sipp (the softphone) failed ({:?})\n{}\n{}\n{errors}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The phone registers over `transport` (sipp's `-t`; the registrar reports
/// `transport_name`, granted `secs`), is rung, answers, joins the room and hangs up.
fn registers_is_rung_answers_and_hangs_up(transport: &str, transport_name: &str, secs: u64) {
    let Some(sipp) = sipp() else { return };
    let mut confer = Confer::start(transport_name);
    let room = confer.room();
    let phone = confer.phone(sipp, transport, "phone_answer.xml");
    let device = confer.bound(transport_name, secs);
    let sip = confer.sip().control.clone();
    let (call, rx) = confer
        .runtime
        .block_on(sip.ring(RingRequest {
            room,
            user: "u-alice".into(),
            device: device.clone(),
            caller: Some("Bob".into()),
            subject: Some("Quarterly numbers".into()),
        }))
        .expect("the phone is rung");
    // While the phone is in the call (it hangs up after 1.5 s), it is in the room.
    let progress = {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut joined = 0;
        while joined == 0 && Instant::now() < deadline {
            joined = confer.participants(room);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(joined, 1, "the phone joined the room");
        confer.progress(rx)
    };
    let [
        DialProgress::Trying,
        DialProgress::Ringing,
        DialProgress::Answered { participant },
        DialProgress::HungUp,
    ] = progress[..]
    else {
        panic!("call {call}: {progress:?}");
    };
    assert!(participant > 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while confer.participants(room) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(confer.participants(room), 0, "the phone left the room");
    confer.unbound(&device);
    assert_sipp_ok(&confer, &phone.join().expect("sipp thread"));
    let metrics = confer.sip().metrics.render();
    assert!(
        metrics.contains("confer_sip_register_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nconfer_sip_registrations 0\n"),
        "{metrics}"
    );
    // The phone's own BYE ended the call.
    assert!(
        metrics.contains("confer_sip_calls_ended_total{reason=\"bye\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_softphone_registers_with_digest_is_rung_answers_joins_the_room_and_hangs_up() {
    registers_is_rung_answers_and_hangs_up("u1", "udp", 600);
}

/// Over TCP the INVITE must take the phone's own connection (confer opens none), and
/// the binding lasts no longer than an idle connection (300 s by default).
#[test]
fn a_softphone_registered_over_tcp_is_rung_over_its_own_connection() {
    registers_is_rung_answers_and_hangs_up("t1", "tcp", 300);
}

#[test]
fn a_ringing_softphone_is_cancelled_with_cancel_and_answers_487() {
    let Some(sipp) = sipp() else { return };
    let mut confer = Confer::start("cancel");
    let room = confer.room();
    let phone = confer.phone(sipp, "u1", "phone_cancelled.xml");
    let device = confer.bound("udp", 600);
    let sip = confer.sip().control.clone();
    let (call, mut rx) = confer
        .runtime
        .block_on(sip.ring(RingRequest {
            room,
            user: "u-alice".into(),
            device: device.clone(),
            caller: None,
            subject: None,
        }))
        .expect("the phone is rung");
    let first = confer.runtime.block_on(async {
        let mut seen = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            seen.push(p);
            if p == DialProgress::Ringing {
                break;
            }
        }
        seen
    });
    assert_eq!(first, [DialProgress::Trying, DialProgress::Ringing]);
    confer
        .runtime
        .block_on(sip.hang_up(room, call))
        .expect("cancelled");
    assert_eq!(confer.progress(rx), [DialProgress::Failed { status: 487 }]);
    assert_eq!(confer.participants(room), 0);
    confer.unbound(&device);
    assert_sipp_ok(&confer, &phone.join().expect("sipp thread"));
}
