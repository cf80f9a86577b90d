//! Escalation end to end, with real parts: `confer serve` with tokens, an IM server (this
//! test) escalating a chat, alice's browser and mobile as client sessions on `/v1/client`
//! (WebSockets), bob's softphone registered on confer's registrar (two sipp processes: one
//! registers with digest auth, naming the other as its Contact, which answers the INVITE),
//! a carrier (sipp UAS) for the PSTN fallback, and the compliance archive checked with
//! `confer archive verify` and `export`.
//!
//! Each sipp run is bounded; without sipp (and without `CI`) the SIP parts are skipped
//! with a message.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serve_harness::{Events, Server};
use sip_support::{free_udp_port, run_sipp, sipp};

const SECRET: &str = "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff";

/// `confer` with `args` (`token ...`, `archive ...`), the secret and `env` set.
fn confer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confer"));
    cmd.args(args).env("CONFER_API_SECRET", SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("confer runs")
}

fn token(args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = confer(&all, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .trim()
        .to_owned()
}

struct Tokens {
    admin: String,
    im: String,
}

fn tokens() -> Tokens {
    Tokens {
        admin: token(&["--scope", "admin", "--subject", "ops"]),
        im: token(&["--scope", "im-server", "--subject", "chat-server"]),
    }
}

fn device_token(user: &str, device: &str) -> String {
    token(&["--scope", "device", "--subject", user, "--device", device])
}

/// The configuration of these tests: short rings, a PIN dial-in number, a trunk to
/// `carrier` (a sipp UAS port) and `extra` TOML at the end.
fn config(extra: &str) -> String {
    format!(
        r#"
pin_digits = 6
# baresip 1.0 knows only MD5 and fails on any SHA-256 challenge.
sip_registrar_digest = "md5"

[escalation]
ring_timeout_ms = 4000
pstn_timeout_ms = 10000

[escalation.ring_delays]
mobile_ms = 300

[[dial_in]]
number = "+15550100"
pin = true
{extra}
"#
    )
}

/// confer with SIP on free ports, tokens on, `config`.
fn start(slot: u16, config: &str, env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut all = vec![
        ("CONFER_API_SECRET", SECRET),
        ("CONFER_SIP_LISTEN", "127.0.0.1:0"),
        ("CONFER_REALTIME_PRIORITY", "0"),
    ];
    all.extend_from_slice(env);
    let server = Server::start_with(slot, 8, &all, Some(config));
    let udp = server
        .ready
        .split(" udp:")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no SIP address in {:?}", server.ready));
    (server, udp)
}

fn put(s: &Server, t: &str, path: &str, body: Value) -> Value {
    let (status, _, v) = s.request_as(t, "PUT", path, Some(&body.to_string()));
    assert!(status == 200 || status == 201, "PUT {path}: {status} {v}");
    v
}

/// Opens a client session of `user` on `device` (a device token), `kind` and `video`.
fn session(s: &Server, user: &str, device: &str, kind: &str, video: bool) -> Events {
    let t = device_token(user, device);
    let mut ws = Events::open(
        s,
        &format!("/v1/client?kind={kind}&video={video}&access_token={t}"),
        &[("User-Agent", "ConferWeb/2.4.1")],
    )
    .unwrap_or_else(|(st, b)| panic!("session refused: {st} {b}"));
    let hello = ws.next();
    assert_eq!(hello["type"], "welcome", "{hello}");
    ws
}

/// Messages of a session until one of `kind` (at most `wait`).
fn expect_msg(ws: &mut Events, kind: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ws
            .next_within(left.max(Duration::from_millis(1)))
            .unwrap_or_else(|| panic!("no {kind} message within {wait:?}"));
        if m["type"] == kind {
            return m;
        }
        assert!(Instant::now() < deadline, "no {kind} message, last {m}");
    }
}

/// Call events of the stream (`source` `call`) until `pred` holds for one (at most
/// `wait`); returns all of them.
fn call_events_until(ev: &mut Events, wait: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let Some(e) = ev.next_within(Duration::from_millis(200)) else {
            continue;
        };
        if e["source"] != "call" {
            continue;
        }
        let done = pred(&e);
        out.push(e);
        if done {
            return out;
        }
    }
    panic!("the awaited call event did not come; got {out:#?}");
}

fn archive(args: &[&str], data_dir: &Path) -> Output {
    let mut all = vec!["archive"];
    all.extend_from_slice(args);
    confer(
        &all,
        &[("CONFER_DATA_DIR", data_dir.to_str().expect("utf-8 path"))],
    )
}

fn exported(data_dir: &Path) -> Vec<Value> {
    let out = archive(&["export"], data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A plain-RTP join body for a client.
fn rtp_join(peer: &UdpSocket) -> String {
    json!({ "rtp_address": peer.local_addr().expect("bound").to_string(), "codec": "pcmu" })
        .to_string()
}

/// baresip as bob's softphone: registers on confer (`sip`) with digest auth, answers
/// every call at once, sends a tone, quits after `seconds`. Its configuration directory is
/// returned (remove it after).
fn bob_softphone(
    baresip: &Path,
    sip: SocketAddr,
    seconds: u64,
) -> (
    std::thread::JoinHandle<(std::process::ExitStatus, String)>,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!("confer-bob-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("baresip's config dir");
    let tone = dir.join("tone.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&tone, spec).expect("tone file");
    for i in 0..8000 * 20 {
        let v = (f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 8000.0;
        w.write_sample(v as i16).expect("tone sample");
    }
    w.finalize().expect("tone file");
    let modules = [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
    ]
    .into_iter()
    .find(|p| Path::new(p).join("aufile.so").is_file())
    .unwrap_or("/usr/lib/baresip/modules");
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:0\nnet_interface 127.0.0.1\n\
         call_max_calls 1\naudio_source aufile,{}\naudio_player aubridge,nil\n\
         audio_alert aubridge,nil\nrtcp_mux no\nmodule_path {modules}\nmodule g711.so\n\
         module aufile.so\nmodule aubridge.so\nmodule_tmp account.so\nmodule_app menu.so\n",
        tone.display()
    );
    std::fs::write(dir.join("config"), config).expect("baresip config");
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:bob@{sip}>;auth_pass=bob-secret-1;regint=120;answermode=auto;\
             audio_codecs=PCMU/8000/1\n"
        ),
    )
    .expect("baresip accounts");
    let args: Vec<String> = vec![
        "-f".into(),
        dir.display().to_string(),
        "-s".into(),
        "-t".into(),
        seconds.to_string(),
    ];
    let program = baresip.to_path_buf();
    let run = std::thread::spawn(move || {
        sip_support::run_bounded(&program, &args, Duration::from_secs(seconds + 10))
    });
    (run, dir)
}

/// Polls until `user` has a device online (at most `wait`).
fn wait_online(s: &Server, admin: &str, user: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let (_, _, v) = s.request_as(admin, "GET", &format!("/v1/users/{user}"), None);
        if v["presence"]["online_devices"].as_u64().unwrap_or(0) > 0 {
            return v;
        }
        assert!(Instant::now() < deadline, "{user} never came online: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_escalated_chat_rings_the_right_devices_first_answer_wins_and_the_archive_holds_it() {
    let t = tokens();
    let (s, sip) = start(30, &config(""), &[]);
    put(
        &s,
        &t.admin,
        "/v1/users/alice",
        json!({ "display_name": "Alice", "phone": "+15550111" }),
    );
    put(
        &s,
        &t.admin,
        "/v1/users/bob",
        json!({ "display_name": "Bob", "sip_password": "bob-secret-1" }),
    );
    // Bob's softphone registers with confer (digest) and becomes his online desk phone.
    let bob_phone = sip_support::baresip().map(|b| bob_softphone(&b, sip, 20));
    if bob_phone.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI installs baresip");
        eprintln!("baresip is not installed: bob is left out");
    } else {
        let bob = wait_online(&s, &t.admin, "bob", Duration::from_secs(8));
        assert_eq!(bob["devices"][0]["kind"], "desk_phone", "{bob}");
        assert_eq!(
            bob["devices"][0]["reach"]["type"], "sip_registration",
            "{bob}"
        );
    }
    let mut browser = session(&s, "alice", "alice-browser", "browser", true);
    let mut mobile = session(&s, "alice", "alice-mobile", "mobile", false);
    let mut stream = Events::open(&s, &format!("/v1/events?access_token={}", t.im), &[])
        .unwrap_or_else(|(st, b)| panic!("{st} {b}"));

    let body = json!({
        "conversation": "chat-42",
        "participants": [{ "user": "alice" }, { "user": "bob" }],
        "modality": "video",
        "subject": "Q3 numbers",
        "requested_by": "carol",
    });
    let (status, _, resp) = s.request_as(&t.im, "POST", "/v1/escalations", Some(&body.to_string()));
    assert_eq!(status, 201, "{resp}");
    assert_eq!(resp["created"], true, "{resp}");
    let alice = &resp["invitees"][0];
    assert_eq!(alice["action"]["type"], "ringing", "{resp}");
    let planned = alice["action"]["devices"].as_array().expect("devices");
    assert_eq!(planned.len(), 2, "{resp}");
    // The join instructions are there from the start: number and PIN.
    assert_eq!(alice["join"]["dial_in"]["number"], "+15550100", "{resp}");
    assert_eq!(
        alice["join"]["dial_in"]["pin"].as_str().map(str::len),
        Some(6),
        "{resp}"
    );

    // The browser rings with video at once, the mobile with audio only, later.
    let ring_b = expect_msg(&mut browser, "ring", Duration::from_secs(3));
    assert_eq!(ring_b["media"], "audio_video", "{ring_b}");
    assert_eq!(ring_b["subject"], "Q3 numbers", "{ring_b}");
    let ring_m = expect_msg(&mut mobile, "ring", Duration::from_secs(3));
    assert_eq!(ring_m["media"], "audio", "a mobile without video: {ring_m}");

    // The browser answers: the mobile stops ringing, the browser is told to join.
    browser.send(&json!({ "type": "answer", "leg": ring_b["leg"] }).to_string());
    let cancel = expect_msg(&mut mobile, "cancel", Duration::from_secs(3));
    assert_eq!(cancel["leg"], ring_m["leg"], "{cancel}");
    assert_eq!(cancel["reason"], "answered_elsewhere", "{cancel}");
    let join = expect_msg(&mut browser, "join", Duration::from_secs(3));
    let room = join["room"].as_u64().expect("room");
    let client = join["token"].as_str().expect("a client token");
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (status, _, p) = s.request_as(
        client,
        "POST",
        &format!("/v1/rooms/{room}/participants"),
        Some(&rtp_join(&peer)),
    );
    assert_eq!(status, 201, "{p}");

    // Both end up in the room: alice by her browser, bob by his phone (auto-answer).
    let joined_count = if bob_phone.is_some() { 2 } else { 1 };
    let mut story = Vec::new();
    for _ in 0..joined_count {
        story.extend(call_events_until(
            &mut stream,
            Duration::from_secs(10),
            |e| e["kind"] == "joined",
        ));
    }
    let kinds: Vec<&str> = story.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "started",
        "invited",
        "ringing",
        "answered",
        "ring_cancelled",
        "joined",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let seqs: Vec<u64> = story.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let joined_by = |who: &str| {
        story
            .iter()
            .find(|e| e["kind"] == "joined" && e["participant"]["user"] == who)
            .cloned()
    };
    let alice_joined = joined_by("alice").expect("alice joined");
    assert_eq!(
        alice_joined["via"]["device"], "alice-browser",
        "{alice_joined}"
    );
    assert_eq!(alice_joined["media"], "audio_video", "{alice_joined}");
    if bob_phone.is_some() {
        let bob_joined = joined_by("bob").expect("bob joined");
        assert_eq!(bob_joined["media"], "audio", "a desk phone: {bob_joined}");
    }

    let (status, _, call) = s.request_as(&t.im, "GET", "/v1/escalations/chat-42", None);
    assert_eq!(status, 200, "{call}");
    let joined = call["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter(|p| p["status"] == "joined")
        .count();
    assert_eq!(joined, joined_count, "{call}");
    let (_, _, room_view) = s.request_as(&t.admin, "GET", &format!("/v1/rooms/{room}"), None);
    assert_eq!(room_view["participants"], joined_count, "{room_view}");
    let (status, _, presence) = s.request_as(&t.admin, "GET", "/v1/users/alice/presence", None);
    assert_eq!(status, 200);
    assert_eq!(presence["state"], "in_a_conference", "{presence}");
    // alice asks the IM server to record: it records for her (her policy allows it).
    let record = format!("/v1/rooms/{room}/recording");
    let (status, _, v) = s.request_as(&t.im, "POST", &record, Some("{}"));
    assert_eq!(status, 400, "an IM server records for someone: {v}");
    let (status, _, rec) = s.request_as(&t.im, "POST", &record, Some(r#"{"by":"alice"}"#));
    assert_eq!(status, 201, "{rec}");
    let mix_file = rec["files"][0]["name"]
        .as_str()
        .expect("the mix file")
        .to_owned();

    // The IM server ends the call: the room goes.
    let end = json!({ "conversation": "chat-42", "modality": "voice", "end": true });
    let (status, _, v) = s.request_as(&t.im, "POST", "/v1/escalations", Some(&end.to_string()));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ended"], true, "{v}");
    call_events_until(&mut stream, Duration::from_secs(5), |e| {
        e["kind"] == "ended"
    });
    let (status, _, _) = s.request_as(&t.admin, "GET", &format!("/v1/rooms/{room}"), None);
    assert_eq!(status, 404, "the conversation's room is closed");
    let (_, _, presence) = s.request_as(&t.admin, "GET", "/v1/users/alice/presence", None);
    assert_eq!(
        presence["calls"], 0,
        "the call ended for presence too: {presence}"
    );
    assert_ne!(presence["state"], "in_a_conference", "{presence}");
    if let Some((run, dir)) = bob_phone {
        let (_, output) = run.join().expect("baresip's runner");
        let _ = std::fs::remove_dir_all(dir);
        // Bob's phone was rung by INVITE, answered, and hung up by confer's BYE.
        assert!(output.contains("INVITE sip:bob"), "{output}");
        assert!(output.contains("SIP/2.0 200 "), "{output}");
        assert!(output.contains("BYE sip:"), "{output}");
    }

    let (status, data) = s.stop_keeping_data();
    assert!(status.success());
    // The archive holds the whole story, verifies, and detects tampering.
    let records = exported(&data);
    let of = |kind: &str| {
        records
            .iter()
            .filter(|r| r["details"]["kind"] == kind && r["conversation"] == "chat-42")
            .count()
    };
    for k in [
        "started",
        "ringing",
        "answered",
        "ring_cancelled",
        "joined",
        "ended",
    ] {
        assert!(of(k) >= 1, "no {k} record in {records:#?}");
    }
    // The room's own records name the client participant: user, device and client.
    let in_room = |kind: &str| {
        records
            .iter()
            .filter(|r| r["conversation"] == format!("room:{room}") && r["details"]["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let browser_joined = in_room("joined")
        .into_iter()
        .find(|r| r["user"] == "alice")
        .unwrap_or_else(|| panic!("no room joined record for alice in {records:#?}"));
    assert_eq!(
        browser_joined["details"]["device"], "alice-browser",
        "{browser_joined}"
    );
    assert_eq!(
        browser_joined["details"]["client"],
        serve_harness::USER_AGENT,
        "{browser_joined}"
    );
    // The recording: started for alice with its files, stopped when the room ended.
    let started = in_room("recording_started");
    assert_eq!(started.len(), 1, "{records:#?}");
    assert_eq!(started[0]["user"], "alice", "{started:?}");
    assert_eq!(
        started[0]["details"]["files"][0],
        mix_file.as_str(),
        "{started:?}"
    );
    let stopped = in_room("recording_stopped");
    assert_eq!(stopped.len(), 1, "{records:#?}");
    assert_eq!(stopped[0]["details"]["reason"], "room_ended", "{stopped:?}");
    assert_eq!(
        stopped[0]["details"]["recording"], started[0]["details"]["recording"],
        "the stop names the recording it ends"
    );
    // The room's PIN went to the IM server, never into the archive.
    let pin = alice["join"]["dial_in"]["pin"].as_str().expect("pin");
    assert!(
        !records.iter().any(|r| holds_string(r, pin)),
        "the PIN is in the archive"
    );
    let out = archive(&["verify"], &data);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let victim = records[records.len() / 2]["seq"].as_u64().expect("seq");
    tamper(&data.join("archive.db"), victim);
    let out = archive(&["verify"], &data);
    assert!(!out.status.success(), "tampering went unnoticed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&victim.to_string()), "{said}");
    let _ = std::fs::remove_dir_all(&data);
}

/// base64url without padding (RFC 4648 section 5).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An admin token signed with the secret whose lifetime ended 100 s ago.
fn expired_admin_token() -> String {
    use hmac::Mac;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let header = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"1"}"#);
    let claims = json!({
        "sub": "ops", "scope": { "kind": "admin" }, "iat": now - 400, "nbf": now - 400,
        "exp": now - 100, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
    });
    let mut token = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let key: Vec<u8> = (0..SECRET.len() / 2)
        .map(|i| u8::from_str_radix(&SECRET[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&b64url(&mac.finalize().into_bytes()));
    token
}

/// Whether any string inside `v` is `s`.
fn holds_string(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|x| holds_string(x, s)),
        Value::Object(o) => o.values().any(|x| holds_string(x, s)),
        _ => false,
    }
}

/// Rewrites one record's details in the SQLite archive, as an insider with file access
/// would.
fn tamper(db: &Path, seq: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .connect()
            .await
            .expect("open the archive");
        let n =
            sqlx::query("UPDATE archive_records SET details = '{\"edited\":true}' WHERE seq = ?")
                .bind(i64::try_from(seq).expect("small"))
                .execute(&mut conn)
                .await
                .expect("update")
                .rows_affected();
        assert_eq!(n, 1);
    });
}

#[test]
fn unanswered_devices_fall_back_to_the_pstn_and_forbidden_dial_out_gives_dial_in() {
    let Some(sipp) = sipp() else { return };
    let t = tokens();
    let port = free_udp_port();
    let trunks = format!(r#"[{{name = "carrier", address = "127.0.0.1:{port}"}}]"#);
    let (s, _) = start(31, &config(""), &[("CONFER_TRUNKS", &trunks)]);
    put(
        &s,
        &t.admin,
        "/v1/users/dave",
        json!({ "display_name": "Dave", "phone": "+15550122" }),
    );
    // Erin's number is abroad: the default dial-out policy (home country) refuses it.
    put(
        &s,
        &t.admin,
        "/v1/users/erin",
        json!({ "display_name": "Erin", "phone": "+442079460000" }),
    );
    let mut browser = session(&s, "dave", "dave-browser", "browser", true);
    let media = free_udp_port();
    let args: Vec<String> = [
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &media.to_string(),
        "-m",
        "1",
        "-timeout",
        "40",
        "-timeout_error",
        "-sn",
        "uas",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let carrier = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(40)));
    std::thread::sleep(Duration::from_millis(500));
    let mut stream = Events::open(&s, &format!("/v1/events?access_token={}", t.im), &[])
        .unwrap_or_else(|(st, b)| panic!("{st} {b}"));

    let body = json!({
        "conversation": "chat-7",
        "participants": [{ "user": "dave" }, { "user": "erin" }],
        "modality": "voice",
    });
    let (status, _, resp) = s.request_as(&t.im, "POST", "/v1/escalations", Some(&body.to_string()));
    assert_eq!(status, 201, "{resp}");
    assert_eq!(resp["invitees"][0]["pstn"]["type"], "dial", "{resp}");
    // Erin: no device and the policy forbids her number: dial-in instructions at once.
    let erin = &resp["invitees"][1];
    assert_eq!(erin["action"]["type"], "dial_in_instructions", "{resp}");
    assert_eq!(erin["pstn"]["type"], "refused", "{resp}");
    assert!(erin["join"]["dial_in"]["pin"].is_string(), "{resp}");

    // Dave's browser rings and nobody answers: after the ring timeout his number is
    // dialled through the trunk, sipp answers, and he is in the call by phone.
    expect_msg(&mut browser, "ring", Duration::from_secs(3));
    expect_msg(&mut browser, "cancel", Duration::from_secs(8));
    let story = call_events_until(&mut stream, Duration::from_secs(20), |e| {
        e["kind"] == "joined" && e["via"] == "pstn"
    });
    let kinds: Vec<&str> = story.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "dial_in_offered",
        "fell_back_to_pstn",
        "dialling_pstn",
        "answered",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let end = json!({ "conversation": "chat-7", "modality": "voice", "end": true });
    let (status, _, _) = s.request_as(&t.im, "POST", "/v1/escalations", Some(&end.to_string()));
    assert_eq!(status, 200);
    let out = carrier.join().expect("sipp thread");
    assert!(
        out.status.success(),
        "sipp: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (status, data) = s.stop_keeping_data();
    assert!(status.success());
    let records = exported(&data);
    assert!(
        records
            .iter()
            .any(|r| r["details"]["kind"] == "dial_out_refused"),
        "the refusal is archived"
    );
    assert!(
        records
            .iter()
            .any(|r| r["details"]["kind"] == "dialling_pstn"),
        "the dial-out is archived"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_creates_nothing() {
    let t = tokens();
    let (s, _) = start(
        32,
        &config(
            r#"
[[policy.clients.rules]]
product = "OldPhone"
below_version = "3.0"
action = "block"
message = "update OldPhone to 3.0 or later"
"#,
        ),
        &[],
    );
    put(
        &s,
        &t.admin,
        "/v1/users/alice",
        json!({ "display_name": "Alice" }),
    );
    let post = |tok: &str, body: &str| s.request_as(tok, "POST", "/v1/escalations", Some(body));
    // Malformed JSON, a wrong shape, an unknown field.
    assert_eq!(post(&t.im, "{").0, 400);
    assert_eq!(
        post(&t.im, r#"{"conversation":"c","modality":"smell"}"#).0,
        400
    );
    assert_eq!(
        post(&t.im, r#"{"conversation":"c","modality":"voice","x":1}"#).0,
        400
    );
    // An unknown user: 404, and no call was made for the conversation.
    let (status, _, v) = post(
        &t.im,
        r#"{"conversation":"c1","participants":[{"user":"nobody"}],"modality":"voice"}"#,
    );
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        s.request_as(&t.im, "GET", "/v1/escalations/c1", None).0,
        404
    );
    let (_, _, rooms) = s.request_as(&t.admin, "GET", "/v1/rooms", None);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(0), "{rooms}");
    // Tokens: none, another scope, a device token.
    assert_eq!(s.request("POST", "/v1/escalations", Some("{}")).0, 401);
    let device = device_token("alice", "alice-browser");
    assert_eq!(post(&device, "{}").0, 403);
    // An admin token that expired 100 s ago (beyond the 30 s leeway).
    let (status, _, v) = s.request_as(&expired_admin_token(), "GET", "/v1/users", None);
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["code"], "token_expired", "{v}");
    // A blocked client version: refused with the policy's message, no device made.
    let t_old = device_token("alice", "alice-old");
    let refused = Events::open(
        &s,
        &format!("/v1/client?kind=desktop_app&access_token={t_old}"),
        &[("User-Agent", "OldPhone/2.9")],
    );
    let (status, body) = refused.err().expect("a blocked client is refused");
    assert!(status.contains(" 403 "), "{status}");
    assert!(body.contains("update OldPhone"), "{body}");
    let (_, _, u) = s.request_as(&t.admin, "GET", "/v1/users/alice", None);
    assert_eq!(u["devices"].as_array().map(Vec::len), Some(0), "{u}");
    // A user with a bad phone number is 422 and not created.
    let (status, _, _) = s.request_as(
        &t.admin,
        "PUT",
        "/v1/users/zed",
        Some(r#"{"display_name":"Z","phone":"12"}"#),
    );
    assert_eq!(status, 422);
    assert_eq!(s.request_as(&t.admin, "GET", "/v1/users/zed", None).0, 404);

    // A policy that does not validate is refused whole; a valid one takes effect at once:
    // alice's group blocks video, so a video escalation rings her browser with audio.
    let bad_policy = json!({ "groups": { "default": { "blocked": ["teleport"] } } });
    let (status, _, _) = s.request_as(&t.admin, "PUT", "/v1/policy", Some(&bad_policy.to_string()));
    assert_eq!(status, 400);
    let policy = json!({
        "groups": { "default": {}, "no-video": { "escalate": ["voice", "dial_in"], "blocked": ["video", "recording"] } },
        "members": { "alice": "no-video" },
    });
    let (status, _, v) = s.request_as(&t.admin, "PUT", "/v1/policy", Some(&policy.to_string()));
    assert_eq!(status, 200, "{v}");
    let mut browser = session(&s, "alice", "alice-browser", "browser", true);
    let body = json!({
        "conversation": "chat-nv", "participants": [{ "user": "alice" }], "modality": "video",
    });
    let (status, _, resp) = post(&t.im, &body.to_string());
    assert_eq!(status, 201, "{resp}");
    let ring = expect_msg(&mut browser, "ring", Duration::from_secs(3));
    assert_eq!(ring["media"], "audio", "video is blocked for alice: {ring}");
    // Recording too: the IM server may not record the conversation's room for her, nor
    // for an unknown user, nor a room that is no conversation's.
    let (_, _, call) = s.request_as(&t.im, "GET", "/v1/escalations/chat-nv", None);
    let room = call["room"].as_u64().expect("the conversation's room");
    let record = format!("/v1/rooms/{room}/recording");
    let (status, _, v) = s.request_as(&t.im, "POST", &record, Some(r#"{"by":"alice"}"#));
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "activity_blocked", "{v}");
    let (status, _, v) = s.request_as(&t.im, "POST", &record, Some(r#"{"by":"nobody"}"#));
    assert_eq!(status, 404, "{v}");
    let (status, _, v) = s.request_as(&t.admin, "POST", "/v1/rooms", Some("{}"));
    assert_eq!(status, 201, "{v}");
    let other = v["id"].as_u64().expect("room id");
    let (status, _, v) = s.request_as(
        &t.im,
        "POST",
        &format!("/v1/rooms/{other}/recording"),
        Some(r#"{"by":"alice"}"#),
    );
    assert_eq!(status, 403, "{v}");
    let (_, _, listed) = s.request_as(&t.admin, "GET", "/v1/recordings", None);
    assert_eq!(
        listed["recordings"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    // The IM server asks the policy about what it carries itself.
    let decide = |q: &str| {
        let (status, _, v) = s.request_as(&t.im, "GET", &format!("/v1/policy/decision?{q}"), None);
        assert_eq!(status, 200, "{q}: {v}");
        v
    };
    let v = decide("user=alice&activity=video");
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["code"], "activity_blocked", "{v}");
    assert_eq!(v["rule"], "groups.no-video.blocked", "{v}");
    assert_eq!(decide("user=alice&activity=file_transfer")["allowed"], true);
    let (status, _, _) = s.request_as(
        &t.im,
        "GET",
        "/v1/policy/decision?user=alice&activity=teleport",
        None,
    );
    assert_eq!(status, 400);
    let (status, _, _) = s.request_as(
        &t.im,
        "GET",
        "/v1/policy/decision?user=nobody&activity=video",
        None,
    );
    assert_eq!(status, 404);
    assert!(s.stop().success());
}

#[test]
fn a_killed_server_loses_no_archive_record_and_the_stream_resumes_from_its_cursor() {
    let t = tokens();
    let (s, _) = start(33, &config(""), &[]);
    put(
        &s,
        &t.admin,
        "/v1/users/alice",
        json!({ "display_name": "Alice" }),
    );
    let mut stream = Events::open(&s, &format!("/v1/events?access_token={}", t.im), &[])
        .unwrap_or_else(|(st, b)| panic!("{st} {b}"));
    let body = json!({
        "conversation": "chat-r", "participants": [{ "user": "alice" }], "modality": "dial_in",
    });
    let (status, _, resp) = s.request_as(&t.im, "POST", "/v1/escalations", Some(&body.to_string()));
    assert_eq!(status, 201, "{resp}");
    let seen = call_events_until(&mut stream, Duration::from_secs(5), |e| {
        e["kind"] == "dial_in_offered"
    });
    let cursor = seen.last().and_then(|e| e["seq"].as_u64()).expect("a seq");
    // More happens after the client's last event, then the server is killed (SIGKILL).
    let room = resp["invitees"][0]["join"]["url"]
        .as_str()
        .and_then(|u| u.split('/').nth(3))
        .and_then(|r| r.parse::<u64>().ok())
        .expect("the room in the join URL");
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (status, _, _) = s.request_as(
        &t.admin,
        "POST",
        &format!("/v1/rooms/{room}/participants"),
        Some(&rtp_join(&peer)),
    );
    assert_eq!(status, 201);
    let after_cursor: Vec<Value> = {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut v = Vec::new();
        while Instant::now() < deadline {
            if let Some(e) = stream.next_within(Duration::from_millis(200)) {
                v.push(e);
            }
        }
        v
    };
    assert!(
        after_cursor.iter().any(|e| e["kind"] == "joined"),
        "{after_cursor:#?}"
    );
    let data = s.kill();
    // Restarted on the same data: the stream resumes after the cursor, in order, with
    // every event the client had not seen.
    let data_s = data.to_str().expect("utf-8").to_owned();
    let (s2, _) = start(34, &config(""), &[("CONFER_DATA_DIR", &data_s)]);
    let mut resumed = Events::open(
        &s2,
        &format!("/v1/events?after={cursor}&access_token={}", t.im),
        &[],
    )
    .unwrap_or_else(|(st, b)| panic!("{st} {b}"));
    for want in &after_cursor {
        let got = resumed.next();
        assert_eq!(got["seq"], want["seq"], "{got} vs {want}");
        assert_eq!(got["kind"], want["kind"]);
    }
    // The archive caught up with everything the journal holds, and verifies.
    let (status, _) = s2.stop_keeping_data();
    assert!(status.success());
    let records = exported(&data);
    let archived: Vec<u64> = records
        .iter()
        .filter_map(|r| r["details"]["event"].as_u64())
        .collect();
    for e in after_cursor.iter().chain(&seen) {
        let archivable = e["source"] == "call" || (e["source"] == "room" && e["kind"] == "joined");
        if archivable {
            let seq = e["seq"].as_u64().expect("seq");
            assert!(archived.contains(&seq), "event {seq} ({e}) not archived");
        }
    }
    assert!(archive(&["verify"], &data).status.success());
    let _ = std::fs::remove_dir_all(&data);
}

#[path = "../archive-store/tests/common/mod.rs"]
mod test_db;

/// An INVITE from `from` to `number` at confer, offering PCMU.
fn dial_in_invite(from: SocketAddr, number: &str, call_id: &str) -> Vec<u8> {
    let sdp = format!(
        "v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        from.port() + 2
    );
    format!(
        "INVITE sip:{number}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+15550199@127.0.0.1>;tag=uac-{call_id}\r\n\
         To: <sip:{number}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:uac@{from}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// A sample of the metrics text, or 0 when absent.
fn metric(s: &Server, admin: &str, name: &str) -> f64 {
    s.request_text_as(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn wait_metric(s: &Server, admin: &str, name: &str, want: f64, wait: Duration) {
    let deadline = Instant::now() + wait;
    while metric(s, admin, name) != want {
        assert!(Instant::now() < deadline, "{name} never became {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn with_the_archive_down_new_escalations_are_refused_with_the_reason_and_nothing_is_lost() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(mut db) = runtime.block_on(test_db::TestDb::postgres_dedicated()) else {
        return;
    };
    let url = match &db.config().location {
        confer_archive_store::Location::Postgres(u) => u.clone(),
        other => panic!("not PostgreSQL: {other:?}"),
    };
    let t = tokens();
    let (s, sip) = start(
        35,
        &config(""),
        &[
            ("CONFER_ARCHIVE_URL", &url),
            ("CONFER_DIAL_IN", "+15550100=lobby,+15550177"),
        ],
    );
    put(
        &s,
        &t.admin,
        "/v1/users/alice",
        json!({ "display_name": "Alice" }),
    );
    let escalate = |conversation: &str| {
        let body = json!({
            "conversation": conversation, "participants": [{ "user": "alice" }],
            "modality": "dial_in",
        });
        s.request_as(&t.im, "POST", "/v1/escalations", Some(&body.to_string()))
    };
    assert_eq!(escalate("before").0, 201);
    wait_metric(
        &s,
        &t.admin,
        "confer_archive_writable",
        1.0,
        Duration::from_secs(10),
    );

    // PostgreSQL stops. The next events cannot be archived; the archive says so.
    runtime.block_on(db.outage_begin());
    let (status, _, _) = s.request_as(&t.admin, "POST", "/v1/rooms", Some(r#"{"name":"during"}"#));
    assert_eq!(status, 201, "rooms themselves go on");
    wait_metric(
        &s,
        &t.admin,
        "confer_archive_writable",
        0.0,
        Duration::from_secs(15),
    );
    let (status, _, v) = escalate("refused");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], "archive_unavailable", "{v}");
    assert!(
        metric(
            &s,
            &t.admin,
            "confer_archive_refusals_total{what=\"escalation\"}"
        ) >= 1.0,
        "the refusal is counted"
    );
    assert_eq!(
        s.request_as(&t.im, "GET", "/v1/escalations/refused", None)
            .0,
        404
    );
    // A phone calling in is refused too: 503, with the reason in a Warning.
    let phone = sip_support::UdpClient::bind("127.0.0.1:0", sip);
    phone.send(&dial_in_invite(phone.addr(), "+15550100", "refused-call"));
    let (status, answer) = phone
        .final_response(Duration::from_secs(5))
        .expect("an answer to the INVITE");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&answer));
    let warning = sip_support::header_of(&answer, "Warning").expect("a Warning");
    assert!(warning.contains("archive"), "{warning}");

    // Back: escalations are taken again, and what happened meanwhile is archived.
    runtime.block_on(db.outage_end());
    wait_metric(
        &s,
        &t.admin,
        "confer_archive_writable",
        1.0,
        Duration::from_secs(20),
    );
    assert_eq!(escalate("after").0, 201);
    // A dial-in is taken again, and archived with its numbers.
    // A new phone: the first one still hears the 503 retransmitted (it never ACKed).
    let phone = sip_support::UdpClient::bind("127.0.0.1:0", sip);
    phone.send(&dial_in_invite(phone.addr(), "+15550100", "taken-call"));
    let (status, answer) = phone
        .final_response(Duration::from_secs(5))
        .expect("an answer to the INVITE");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    std::thread::sleep(Duration::from_millis(500));
    let (status, data) = s.stop_keeping_data();
    assert!(status.success());
    let out = confer(
        &["archive", "export"],
        &[
            ("CONFER_ARCHIVE_URL", &url),
            ("CONFER_DATA_DIR", data.to_str().expect("utf-8")),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let has = |pred: &dyn Fn(&Value) -> bool| records.iter().any(pred);
    assert!(has(&|r| r["conversation"] == "before"), "before the outage");
    assert!(has(&|r| r["conversation"] == "after"), "after the outage");
    assert!(
        has(&|r| r["details"]["kind"] == "created" && r["details"]["source"] == "room"),
        "the room made during the outage is archived after it"
    );
    assert!(
        has(&|r| r["details"]["source"] == "policy"),
        "the refusal itself is archived"
    );
    assert!(
        has(&|r| r["details"]["source"] == "sip" && r["details"]["kind"] == "call_refused"),
        "the refused phone call is archived"
    );
    assert!(
        has(&|r| r["kind"] == "dial_in" && r["details"]["called_number"] == "+15550100"),
        "the dial-in is archived with the number: {records:#?}"
    );
    let out = confer(&["archive", "verify"], &[("CONFER_ARCHIVE_URL", &url)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&data);
}
