//! The registrar and ringing with real SIP software: sipp as a softphone registers with
//! digest (401, then `[authentication]`, 200) over UDP or TCP, the registrar reports the
//! binding, confer rings it into a room over the flow it registered on, and the phone
//! answers (joins the room, then hangs up with BYE) or rings until confer cancels it
//! (CANCEL, 487). baresip registers (MD5 only), auto-answers and is hung up by confer.
//! The phones' unregistrations at the end are reported too. A baresip registered before
//! confer restarts is rung after it: the registrar's bindings are saved in the journal
//! and restored at start.
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
    SipAccounts, SipSecret, SipServer, Trunks,
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

/// Four consecutive UDP ports free right now, for the host's RTP sockets; each call
/// starts its search further on, so that tests running at once take different ones.
fn free_rtp_range() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let first = 43_000 + 4 * (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200);
    for base in (first..44_000).step_by(4) {
        let held: Vec<_> = (base..base + 4)
            .filter_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no four free RTP ports in {first}..44000");
}

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program` to its end (killed after `limit`); its output, read while it runs so
/// that a full pipe never stalls it.
fn run_bounded(program: &PathBuf, args: &[String], limit: Duration) -> Output {
    use std::io::Read;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("the killed program is reaped");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// confer's SIP server and media host in-process, with alice's account (user `u-alice`).
struct Confer {
    /// sipp's error log.
    errors: PathBuf,
    runtime: tokio::runtime::Runtime,
    host: Host,
    sip: Option<SipServer>,
    events: mpsc::UnboundedReceiver<RegistrarEvent>,
    cfg: Config,
    accounts: SipAccounts,
    md5_only: bool,
    /// Where the bindings are saved (in memory: it outlives the SIP server, not the test).
    journal: crate::journal::Journal,
}

impl Confer {
    /// With `md5_only` challenges (baresip 1.0), else MD5 first (sipp 3.6).
    fn start(test: &str, md5_only: bool) -> Confer {
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
                secret: SipSecret::from_password("alice", "wonderland"),
            },
        );
        let journal = runtime
            .block_on(crate::journal::Journal::open(
                &crate::journal::JournalConfig::default(),
            ))
            .expect("a journal in memory");
        let (_, events) = mpsc::unbounded_channel();
        let mut confer = Confer {
            errors,
            runtime,
            host,
            sip: None,
            events,
            cfg,
            accounts,
            md5_only,
            journal,
        };
        confer.start_sip();
        confer
    }

    /// Starts the SIP server (its registrar events replace those of the one before).
    fn start_sip(&mut self) {
        let (tx, events) = mpsc::unbounded_channel();
        let pins = Arc::new(Pins::new(
            DialPlan::new(&[], "1").expect("plan").pin_number(),
            6,
        ));
        let trunks = Arc::new(Trunks::new(&[], "1", &[], &[]).expect("no trunks"));
        let sip = self
            .runtime
            .block_on(SipServer::start(
                &self.cfg,
                self.host.clone(),
                pins,
                trunks,
                RegistrarSetup {
                    enabled: true,
                    accounts: self.accounts.clone(),
                    events: Some(tx),
                    domains: Vec::new(),
                    // sipp 3.6 answers the first challenge, and only MD5.
                    md5_first: true,
                    md5_only: self.md5_only,
                },
                crate::sip::SipRecords {
                    journal: Some(self.journal.clone()),
                    archive: None,
                },
            ))
            .expect("SIP starts");
        self.sip = Some(sip);
        self.events = events;
    }

    /// Stops the SIP server and starts another (on another port) with the same journal.
    fn restart_sip(&mut self) {
        if let Some(sip) = self.sip.take() {
            self.runtime.block_on(sip.stop());
        }
        self.start_sip();
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

    /// The room's participants once they are `n`, or after 5 s (joins and leaves run on
    /// the media host after the SIP side has moved on).
    fn participants_become(&self, room: u64, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.participants(room);
            if now == n || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        std::thread::spawn(move || run_bounded(&sipp, &args, Duration::from_secs(30)))
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
                assert!(device.starts_with("sip-u-alice-"), "{device}");
                assert!(contact.starts_with("sip:alice@127.0.0.1:"), "{contact}");
                assert!(
                    user_agent
                        .as_deref()
                        .is_some_and(|ua| ua == "sipp-softphone" || ua.starts_with("baresip")),
                    "{user_agent:?}"
                );
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
    let mut confer = Confer::start(transport_name, false);
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
    assert_eq!(
        confer.participants_become(room, 1),
        1,
        "the phone joined the room"
    );
    let progress = confer.progress(rx);
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
    assert_eq!(
        confer.participants_become(room, 0),
        0,
        "the phone left the room"
    );
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
    let mut confer = Confer::start("cancel", false);
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

/// baresip, or `None` (and a message) when it is missing outside CI.
fn baresip() -> Option<PathBuf> {
    let found = ["/usr/bin/baresip", "/usr/local/bin/baresip"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "baresip is not installed, and CI is set"
        );
        eprintln!("SKIPPED: baresip is not installed (apt-get install baresip)");
    }
    found
}

/// baresip as alice's softphone registered with `confer` (MD5, auto-answer), quitting
/// after `seconds`, in a thread; its output when it ends, and its directory.
fn baresip_phone(
    confer: &Confer,
    baresip: PathBuf,
    name: &str,
    seconds: u32,
) -> (std::thread::JoinHandle<Output>, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "confer-registrar-baresip-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("baresip's directory");
    let modules = [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).join("aubridge.so").is_file())
    .unwrap_or("/usr/lib/baresip/modules");
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:0\n\
             net_interface 127.0.0.1\n\
             audio_source aubridge,nil\n\
             audio_player aubridge,nil\n\
             audio_alert aubridge,nil\n\
             module_path {modules}\n\
             module g711.so\n\
             module aubridge.so\n\
             module_tmp account.so\n\
             module_app menu.so\n"
        ),
    )
    .expect("baresip's config");
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:alice@{}>;auth_pass=wonderland;regint=600;answermode=auto;audio_codecs=PCMU\n",
            confer.sip().udp
        ),
    )
    .expect("baresip's accounts");
    let args: Vec<String> = [
        "-f",
        &dir.to_string_lossy(),
        "-t",
        &seconds.to_string(),
        "-s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let phone = std::thread::spawn(move || run_bounded(&baresip, &args, Duration::from_secs(20)));
    (phone, dir)
}

/// baresip 1.0 gives up on a 401 with any challenge it cannot answer (SHA-256): with MD5
/// alone it registers. It answers the ring by itself (`answermode=auto`), joins the room,
/// and confer hangs up with BYE; at its exit it unregisters.
#[test]
fn a_baresip_softphone_registers_with_md5_is_rung_answers_and_is_hung_up() {
    let Some(baresip) = baresip() else { return };
    let mut confer = Confer::start("baresip", true);
    let room = confer.room();
    let (phone, dir) = baresip_phone(&confer, baresip, "rung", 8);
    let (device, phone) = baresip_bound(&mut confer, phone);
    ring_answered_and_hung_up(&confer, room, &device);
    // baresip quits after 8 s and removes its binding.
    let e = confer.next_event(Duration::from_secs(12));
    assert!(
        matches!(&e, Some(RegistrarEvent::Unbound { device: d, reason: "unregistered", .. }) if *d == device),
        "{e:?}"
    );
    let _ = phone.join();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A phone registered before confer restarts is rung after the restart, before it
/// registers again: the new SIP server restores the binding the old one saved in the
/// journal, reports it bound, and rings the phone's address from its own new socket.
#[test]
fn a_baresip_softphone_registered_before_a_restart_is_rung_after_it() {
    let Some(baresip) = baresip() else { return };
    let mut confer = Confer::start("baresip-restart", true);
    let room = confer.room();
    let (phone, dir) = baresip_phone(&confer, baresip, "restart", 8);
    let (device, phone) = baresip_bound(&mut confer, phone);
    let before = confer.sip().udp;
    confer.restart_sip();
    assert_ne!(
        confer.sip().udp,
        before,
        "another socket, as after a restart"
    );
    match confer.next_event(Duration::from_secs(5)) {
        Some(RegistrarEvent::Bound {
            device: restored,
            transport: "udp",
            expires_at_ms,
            ..
        }) if restored == device => {
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis() as u64;
            let left = expires_at_ms.saturating_sub(unix_ms);
            assert!((590_000..=600_000).contains(&left), "expires in {left} ms");
        }
        other => panic!("the binding was not restored: {other:?}"),
    }
    ring_answered_and_hung_up(&confer, room, &device);
    let _ = phone.join();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The device of baresip's binding, reported within 5 s (else what baresip said).
fn baresip_bound(
    confer: &mut Confer,
    phone: std::thread::JoinHandle<Output>,
) -> (String, std::thread::JoinHandle<Output>) {
    match confer.next_event(Duration::from_secs(5)) {
        Some(RegistrarEvent::Bound { device, .. }) => (device, phone),
        other => {
            let out = phone.join().expect("baresip thread");
            panic!(
                "baresip did not register ({other:?}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

/// confer rings `device` (baresip), which answers by itself and joins `room`; confer
/// hangs up with BYE and it leaves.
fn ring_answered_and_hung_up(confer: &Confer, room: u64, device: &str) {
    let sip = confer.sip().control.clone();
    let (call, mut rx) = confer
        .runtime
        .block_on(sip.ring(RingRequest {
            room,
            user: "u-alice".into(),
            device: device.into(),
            caller: Some("Bob".into()),
            subject: None,
        }))
        .expect("baresip is rung");
    let answered = confer.runtime.block_on(async {
        let mut seen = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            seen.push(p);
            if matches!(
                p,
                DialProgress::Answered { .. } | DialProgress::Failed { .. }
            ) {
                break;
            }
        }
        seen
    });
    assert!(
        matches!(answered.last(), Some(DialProgress::Answered { .. })),
        "call {call}: {answered:?}"
    );
    assert_eq!(
        confer.participants_become(room, 1),
        1,
        "baresip joined the room"
    );
    confer
        .runtime
        .block_on(sip.hang_up(room, call))
        .expect("hung up");
    assert_eq!(confer.progress(rx), [DialProgress::HungUp]);
    assert_eq!(
        confer.participants_become(room, 0),
        0,
        "baresip left the room"
    );
}
