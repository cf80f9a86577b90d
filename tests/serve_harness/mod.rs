//! Shared harness of the `confer serve` end-to-end tests: the real binary on free ports, a
//! tiny HTTP/1.1 client, and client-side media legs on real UDP sockets.
//!
//! Why: these tests check the engine as a user runs it (process, HTTP, UDP, real time), so
//! they talk to the built binary over sockets only. Everything is bounded: the process is
//! killed when the [`Server`] is dropped (also on a failed assertion), HTTP reads time out,
//! and media runs for fixed durations. What it is not: deterministic in timing (real
//! clock, real scheduler); assertions leave room for a loaded machine.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use confer_engine::leg::{LegConfig, MediaLeg};
use confer_engine::udp::{LegIo, LegIoRemote, UdpLeg};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringbuf::traits::Producer;
use serde_json::Value;

/// `confer serve` running on a private RTP range and an ephemeral HTTP port.
pub struct Server {
    child: Child,
    /// What the process wrote to stderr (its log) so far.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The control API's address, from the ready line.
    pub http: SocketAddr,
    /// The ready line.
    pub ready: String,
    /// The data directory (journal, archive, recordings): a fresh one per server unless
    /// `CONFER_DATA_DIR` is given; a fresh one is removed on drop.
    pub data_dir: std::path::PathBuf,
    own_data_dir: bool,
}

/// A data directory no other test uses.
/// The User-Agent of the harness's requests (a client's joins name it).
pub const USER_AGENT: &str = "confer-tests/1.0";

pub fn fresh_data_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("confer-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    /// Starts the binary with `rtp_ports` ports from a range chosen per process (so test
    /// binaries running side by side do not compete), plus `env`.
    pub fn start(slot: u16, rtp_ports: u16, env: &[(&str, &str)]) -> Server {
        Server::start_with(slot, rtp_ports, env, None)
    }

    /// [`Server::start`] with a TOML configuration file of `config`'s text.
    pub fn start_with(
        slot: u16,
        rtp_ports: u16,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Server {
        let base = 40_000 + (std::process::id() % 100) as u16 * 200 + slot * 50;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confer"));
        cmd.arg("serve");
        if let Some(text) = config {
            let file = std::env::temp_dir()
                .join(format!("confer-test-{}-{slot}.toml", std::process::id()));
            std::fs::write(&file, text).expect("write the config file");
            cmd.arg("--config").arg(file);
        }
        cmd.env("CONFER_HTTP_LISTEN", "127.0.0.1:0")
            .env("CONFER_SIP_LISTEN", "127.0.0.1:0")
            .env("CONFER_RTP_PORT_MIN", base.to_string())
            .env("CONFER_RTP_PORT_MAX", (base + rtp_ports - 1).to_string())
            .env("CONFER_MEDIA_WORKERS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let given = env
            .iter()
            .find(|(k, _)| *k == "CONFER_DATA_DIR")
            .map(|(_, v)| *v);
        let data_dir = given.map_or_else(fresh_data_dir, std::path::PathBuf::from);
        cmd.env("CONFER_DATA_DIR", &data_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the confer binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = match lines.next() {
            Some(Ok(line)) => line,
            other => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("no ready line: {other:?}; stderr: {err}");
            }
        };
        // Keep draining stdout so the process never blocks on a full pipe; keep the log.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let http = ready
            .split("control API http://")
            .nth(1)
            .and_then(|s| s.split([',', ' ']).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no control API address in {ready:?}"));
        Server {
            child,
            log,
            http,
            ready,
            data_dir,
            own_data_dir: given.is_none(),
        }
    }

    /// The process's log (stderr) so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One request; returns the status and the body parsed as JSON (`Null` when empty or
    /// not JSON).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.request_text(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// One request; returns the status and the raw body.
    pub fn request_text(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let (status, _, body) = self.exchange(method, path, body, None);
        (status, body)
    }

    /// `GET path` with a bearer token; returns the body as text.
    pub fn request_text_as(&self, token: &str, path: &str) -> String {
        self.exchange("GET", path, None, Some(token)).2
    }

    /// One request with a bearer token; returns the status, the response head and the
    /// body as JSON (`Null` when empty or not JSON).
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String, Value) {
        let (status, head, body) = self.exchange(method, path, body, Some(token));
        (
            status,
            head,
            serde_json::from_str(&body).unwrap_or(Value::Null),
        )
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String, String) {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(5))
            .expect("connect to the control API");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let body = body.unwrap_or("");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\
             User-Agent: {USER_AGENT}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.http,
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send request");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read response");
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad response {resp:?}"));
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (status, head.to_owned(), body.to_owned())
    }

    /// Creates a room; returns its id.
    pub fn create_room(&self, body: &str) -> u64 {
        let (status, v) = self.request("POST", "/v1/rooms", Some(body));
        assert_eq!(status, 201, "{v}");
        v["id"].as_u64().expect("room id")
    }

    /// Adds a participant receiving at `rtp`; returns its id and our local RTP address.
    pub fn join(&self, room: u64, rtp: SocketAddr, codec: &str) -> (u64, SocketAddr) {
        self.join_body(
            room,
            &format!(r#"{{"rtp_address":"{rtp}","codec":"{codec}"}}"#),
        )
    }

    /// Adds a participant with the JSON `body`; returns its id and our local RTP address.
    pub fn join_body(&self, room: u64, body: &str) -> (u64, SocketAddr) {
        let (status, v) = self.request(
            "POST",
            &format!("/v1/rooms/{room}/participants"),
            Some(body),
        );
        assert_eq!(status, 201, "{v}");
        let local = v["local_rtp_address"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("local_rtp_address");
        (v["id"].as_u64().expect("participant id"), local)
    }

    /// The value of a Prometheus sample line that starts with `name` (labels included).
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.request_text("GET", "/metrics", None);
        assert_eq!(status, 200);
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Mean of a stage histogram, in microseconds, and its observation count.
    pub fn stage_mean_us(&self, stage: &str) -> (f64, f64) {
        let sum = self.metric(&format!(
            "confer_stage_duration_seconds_sum{{stage=\"{stage}\"}}"
        ));
        let count = self.metric(&format!(
            "confer_stage_duration_seconds_count{{stage=\"{stage}\"}}"
        ));
        (sum / count.max(1.0) * 1e6, count)
    }

    /// Sends SIGTERM and waits (at most 10 s) for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "confer did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl Server {
    /// [`Server::stop`], keeping the data directory (the caller removes it).
    pub fn stop_keeping_data(mut self) -> (std::process::ExitStatus, std::path::PathBuf) {
        self.own_data_dir = false;
        let dir = self.data_dir.clone();
        (self.stop(), dir)
    }

    /// Kills the process at once (SIGKILL), as a crash would; the data directory stays.
    pub fn kill(mut self) -> std::path::PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.own_data_dir = false;
        self.data_dir.clone()
    }
}

/// The 16 kHz speech sample at 48 kHz (engine resampler), cached.
pub fn speech_48k() -> &'static [f32] {
    static SPEECH: OnceLock<Vec<f32>> = OnceLock::new();
    SPEECH.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/audio/speech-16k.wav");
        let mut reader = hound::WavReader::open(path).expect("speech sample is committed");
        let pcm: Vec<f32> = reader
            .samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav")) / 32768.0)
            .collect();
        crate::leg_harness::resample_all(&pcm, 16_000, 48_000)
    })
}

/// `seconds` of speech from `offset` seconds in, whole 20 ms frames.
pub fn speech(offset: f64, seconds: f64) -> Vec<f32> {
    let s = speech_48k();
    let start = (offset * 48_000.0) as usize;
    let len = ((seconds * 48_000.0) as usize / 960) * 960;
    s[start..start + len].to_vec()
}

/// A client-side leg with a seeded RNG.
pub fn client_leg(config: LegConfig, seed: u64) -> MediaLeg {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The clients' start; the clock is read by the test, which is a real-time shell.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    MediaLeg::new(config, None, &mut rng, now).expect("valid leg config")
}

/// A client talking in a room: its UDP leg, the leg's audio I/O and its remote half (the
/// capture preloaded with its source), and its participant id.
pub type Speaker = (UdpLeg, LegIo, LegIoRemote, u64);

/// Binds a client leg of `config` (Opus) on loopback per source (seeds `seed`,
/// `seed + 1`, ...), joins each to `room` (declaring the config's RFC 6464 extension id,
/// if any) and preloads its capture with its source; `playout` samples of room audio can
/// be played out to each.
pub async fn join_speakers(
    server: &Server,
    room: u64,
    sources: &[Vec<f32>],
    config: &LegConfig,
    seed: u64,
    playout: usize,
) -> Vec<Speaker> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let mut out = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let mut udp = UdpLeg::bind(loopback, client_leg(config.clone(), seed + i as u64))
            .await
            .expect("bind client");
        let mine = udp.local_addr().expect("bound");
        let levels = config.audio_level_extension.map_or(String::new(), |id| {
            format!(r#","audio_level_extension":{id}"#)
        });
        let (pid, theirs) = server.join_body(
            room,
            &format!(r#"{{"rtp_address":"{mine}","codec":"opus"{levels}}}"#),
        );
        udp.set_peer(theirs);
        let (io, mut remote) = LegIo::new(playout, src.len());
        assert_eq!(remote.capture.push_slice(src), src.len());
        out.push((udp, io, remote, pid));
    }
    out
}

/// Runs futures concurrently on the current task (no extra crate for `join_all`).
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut handles: Vec<Option<_>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (h, out) in handles.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A minimal WebSocket client (RFC 6455): the upgrade, then unmasked server text frames.
pub struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    /// Connects to `GET /v1/events`.
    pub fn connect(server: &Server) -> Events {
        Events::open(server, "/v1/events", &[]).unwrap_or_else(|(s, b)| panic!("{s}: {b}"))
    }

    /// Upgrades `GET path` (with a query) to a WebSocket with extra `headers`; a refusal
    /// is its status line and body.
    pub fn open(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Events, (String, String)> {
        let mut s =
            TcpStream::connect_timeout(&server.http, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            server.http
        )
        .expect("send upgrade");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        if !status.starts_with("HTTP/1.1 101") {
            let mut body = vec![0; content_length];
            let _ = reader.read_exact(&mut body);
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        Ok(Events { reader })
    }

    /// Sends a text message (masked, as a client must).
    pub fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).expect("small message").to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.reader
            .get_mut()
            .write_all(&frame)
            .expect("send a frame");
    }

    /// The next message within `wait`, `None` if none came.
    pub fn next_within(&mut self, wait: Duration) -> Option<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(wait))
            .expect("timeout");
        let got = self.reader.fill_buf().map(|b| !b.is_empty());
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        match got {
            Ok(true) => Some(self.next()),
            _ => None,
        }
    }

    /// The next text message as JSON.
    pub fn next(&mut self) -> Value {
        loop {
            let mut head = [0u8; 2];
            self.reader
                .read_exact(&mut head)
                .expect("frame header (no event within 5 s?)");
            let opcode = head[0] & 0x0F;
            let len = match head[1] & 0x7F {
                126 => {
                    let mut b = [0u8; 2];
                    self.reader.read_exact(&mut b).expect("length");
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.reader.read_exact(&mut b).expect("length");
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("small frame")];
            self.reader.read_exact(&mut payload).expect("payload");
            match opcode {
                1 => return serde_json::from_slice(&payload).expect("JSON event"),
                8 => panic!("the server closed the event stream"),
                _ => {} // pings and the like
            }
        }
    }
}
