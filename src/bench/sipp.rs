//! Driving sipp for `confer bench sip`: its scenarios, the G.711 pcap it plays, one run of
//! it, and what its trace files say about that run.
//!
//! Why sipp: it is the SIP load generator operators already trust, so a rate measured
//! with it compares with other servers' published numbers. The bench runs one sipp
//! process per step (a fresh process per rate or caller count keeps every step's counts
//! its own) in a private working directory, and reads its results from files rather than
//! its screen:
//!
//! - `-trace_stat` (`stat.csv`, the last row): calls created, successful, failed, and the
//!   failure kinds (`Failed*(C)` columns), retransmissions;
//! - `-trace_rtt` (`<scenario>_<pid>_rtt.csv`): every call's setup time (INVITE -> 200,
//!   the scenario's `setup` RTD) in whole milliseconds (sipp's resolution) with its
//!   arrival time, from which the achieved answer rate follows;
//! - `-trace_err` (`errors.log`): the unexpected messages; the status codes among them
//!   say why calls failed (503, 480, ...).
//!
//! sipp's CPU time is read from `/proc/<pid>/stat` (all its threads, including the pcap
//! players), once more when it has exited but is not yet reaped (a zombie still reports
//! its totals), so the bench can say how much of the machine the generator took.
//!
//! The scenarios are those of `tests/sipp/load_uac*.xml`, built into the binary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::signals::Frame;

/// Calls without media.
const SCENARIO: &str = include_str!("../../tests/sipp/load_uac.xml");
/// Calls that play [`PCAP_NAME`] once answered.
const SCENARIO_PCAP: &str = include_str!("../../tests/sipp/load_uac_pcap.xml");
/// The pcap the media scenario plays, relative to sipp's working directory.
pub const PCAP_NAME: &str = "confer-bench-g711u.pcap";
/// The SSRC of the generated stream (every caller plays the same file).
const SSRC: u32 = 0x0c0f_5e11;

/// The sipp binary on the PATH.
pub fn find() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join("sipp"))
        .find(|p| p.is_file())
}

/// sipp's version line (`SIPp v3.6.1-...`).
pub fn version(sipp: &Path) -> Option<String> {
    let out = Command::new(sipp)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SIPp"))
        .map(|l| l.trim_end_matches('.').to_owned())
}

/// sipp's private working directory: the scenarios and the pcap, removed when dropped.
pub struct Workdir {
    dir: PathBuf,
}

impl Workdir {
    /// Creates it under the system's temporary directory.
    pub fn create() -> anyhow::Result<Workdir> {
        let dir = std::env::temp_dir().join(format!("confer-bench-sip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("load_uac.xml"), SCENARIO)?;
        std::fs::write(dir.join("load_uac_pcap.xml"), SCENARIO_PCAP)?;
        Ok(Workdir { dir })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The scenario file, with or without media.
    pub fn scenario(&self, media: bool) -> PathBuf {
        self.dir.join(if media {
            "load_uac_pcap.xml"
        } else {
            "load_uac.xml"
        })
    }

    /// Writes [`PCAP_NAME`]: `secs` of `frames` (20 ms G.711 u-law payloads, looped).
    pub fn write_pcap(&self, frames: &[Frame], secs: f64) -> anyhow::Result<()> {
        let path = self.dir.join(PCAP_NAME);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        write_g711_pcap(BufWriter::new(file), frames, secs)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Removes the trace files of the last run.
    fn clear_traces(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".csv") || name.ends_with(".log") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a pcap (Ethernet, IPv4, UDP, RTP payload type 0) of `secs` of `frames`, one
/// packet every 20 ms, sequence numbers and timestamps continuous. sipp rewrites the
/// addresses and ports when it plays it; the checksum is left at 0 (none), which UDP over
/// IPv4 allows.
pub fn write_g711_pcap(mut w: impl Write, frames: &[Frame], secs: f64) -> anyhow::Result<()> {
    if frames.is_empty() {
        bail!("no frames to write");
    }
    let packets = (secs * 50.0).ceil().max(1.0) as usize;
    // Global header: magic, version 2.4, GMT, accuracy, snap length, Ethernet.
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&65_535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())?;
    let local = Ipv4Addr::LOCALHOST.octets();
    let mut packet = Vec::with_capacity(256);
    for i in 0..packets {
        let payload = &frames[i % frames.len()].payload;
        let rtp_len = 12 + payload.len();
        let udp_len = 8 + rtp_len;
        let ip_len = 20 + udp_len;
        packet.clear();
        // Ethernet: locally administered addresses, IPv4.
        packet.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&local);
        ip[16..20].copy_from_slice(&local);
        let sum = ip
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        packet.extend_from_slice(&ip);
        packet.extend_from_slice(&6000u16.to_be_bytes());
        packet.extend_from_slice(&6000u16.to_be_bytes());
        packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.push(0x80);
        packet.push(if i == 0 { 0x80 } else { 0 });
        packet.extend_from_slice(&(i as u16).to_be_bytes());
        packet.extend_from_slice(&((i as u32).wrapping_mul(160)).to_be_bytes());
        packet.extend_from_slice(&SSRC.to_be_bytes());
        packet.extend_from_slice(payload);
        let t_us = i as u64 * 20_000;
        w.write_all(&((t_us / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((t_us % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&(packet.len() as u32).to_le_bytes())?;
        w.write_all(&(packet.len() as u32).to_le_bytes())?;
        w.write_all(&packet)?;
    }
    w.flush()?;
    Ok(())
}

/// A free UDP port on `ip` whose neighbour two above is free too (sipp binds its media
/// port and the one two above, for video).
pub fn free_port_pair(ip: Ipv4Addr) -> anyhow::Result<u16> {
    for _ in 0..64 {
        let a = UdpSocket::bind((ip, 0))?;
        let port = a.local_addr()?.port();
        if port < u16::MAX - 2 && UdpSocket::bind((ip, port + 2)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of UDP ports on {ip}")
}

/// One sipp run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to call (SIP over UDP).
    pub target: SocketAddr,
    /// The number dialled.
    pub number: String,
    /// sipp's own address (SIP `-i`, media `-mi`); `None`: sipp chooses.
    pub local_ip: Option<Ipv4Addr>,
    /// Calls per second.
    pub rate: f64,
    /// Calls in all.
    pub calls: u64,
    /// Simultaneous calls at most.
    pub limit: u64,
    /// How long each call holds after the answer.
    pub hold: Duration,
    /// Play the pcap once answered.
    pub media: bool,
    /// sipp is stopped (and the step fails) after this long.
    pub timeout: Duration,
}

/// A running sipp.
pub struct Running {
    child: Child,
    pid: u32,
    started: Instant,
    cpu_s: f64,
    exited_cpu: Option<f64>,
}

impl Running {
    /// Starts sipp for `plan` in `work`.
    pub fn start(sipp: &Path, work: &Workdir, plan: &Plan) -> anyhow::Result<Running> {
        work.clear_traces();
        let mut args: Vec<String> = vec![
            "-sf".into(),
            work.scenario(plan.media).display().to_string(),
            "-s".into(),
            plan.number.clone(),
            plan.target.to_string(),
        ];
        // sipp's own SIP port: free, rather than its default 5060 (often taken here).
        let any = plan.local_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let sip_port = UdpSocket::bind((any, 0))?.local_addr()?.port();
        args.extend(["-p".into(), sip_port.to_string()]);
        if let Some(ip) = plan.local_ip {
            let media_port = free_port_pair(ip)?;
            args.extend([
                "-i".into(),
                ip.to_string(),
                "-mi".into(),
                ip.to_string(),
                "-mp".into(),
                media_port.to_string(),
            ]);
        }
        let timeout_s = plan.timeout.as_secs().max(1);
        args.extend([
            "-r".into(),
            format!("{:.3}", plan.rate),
            "-rp".into(),
            "1000".into(),
            "-m".into(),
            plan.calls.to_string(),
            "-l".into(),
            plan.limit.max(1).to_string(),
            "-d".into(),
            plan.hold.as_millis().to_string(),
            "-trace_stat".into(),
            "-stf".into(),
            "stat.csv".into(),
            "-fd".into(),
            "1".into(),
            "-trace_rtt".into(),
            // Every call at once: sipp drops what is left over a multiple at exit.
            "-rtt_freq".into(),
            "1".into(),
            "-trace_err".into(),
            "-error_file".into(),
            "errors.log".into(),
            "-aa".into(),
            "-nostdin".into(),
            "-recv_timeout".into(),
            "10000".into(),
            "-timeout".into(),
            format!("{timeout_s}s"),
            "-buff_size".into(),
            (4 << 20).to_string(),
        ]);
        let child = Command::new(sipp)
            .args(&args)
            .current_dir(work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", sipp.display()))?;
        let pid = child.id();
        Ok(Running {
            child,
            pid,
            started: Instant::now(),
            cpu_s: 0.0,
            exited_cpu: None,
        })
    }

    /// sipp's CPU seconds so far (all its threads).
    pub fn cpu_s(&mut self) -> f64 {
        if let Some(c) = self.exited_cpu {
            return c;
        }
        if let Some((state, cpu)) = proc_state_cpu(self.pid) {
            self.cpu_s = cpu;
            if state == 'Z' || state == 'X' {
                self.exited_cpu = Some(cpu);
            }
        }
        self.cpu_s
    }

    /// Whether it has exited (its CPU time is then final).
    pub fn exited(&mut self) -> bool {
        self.cpu_s();
        self.exited_cpu.is_some()
    }

    /// Waits for it to exit (killed after `limit` in all); reads its results.
    pub fn finish(mut self, work: &Workdir, limit: Duration) -> anyhow::Result<Outcome> {
        let deadline = self.started + limit;
        let mut killed = false;
        while !self.exited() {
            if Instant::now() > deadline && !killed {
                let _ = self.child.kill();
                killed = true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu_s = self.cpu_s();
        let out = self.child.wait_with_output().context("waiting for sipp")?;
        let wall_s = self.started.elapsed().as_secs_f64();
        let mut outcome = read_traces(work.path())?;
        outcome.exit_code = out.status.code();
        outcome.killed = killed;
        outcome.cpu_s = cpu_s;
        outcome.wall_s = wall_s;
        let stderr = String::from_utf8_lossy(&out.stderr);
        outcome.stderr = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        Ok(outcome)
    }
}

/// Process state and CPU seconds (user + system, all threads) from `/proc/<pid>/stat`.
fn proc_state_cpu(pid: u32) -> Option<(char, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some((state, (utime + stime) / 100.0))
}

/// What one sipp run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Calls created.
    pub created: u64,
    /// Calls that went through the whole scenario.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Failure kinds with their counts (`FailedMaxUDPRetrans`, ...), non-zero only.
    pub failures: BTreeMap<String, u64>,
    /// Retransmissions sipp made.
    pub retransmissions: u64,
    /// Status codes of the unexpected responses (why calls were refused).
    pub unexpected_statuses: BTreeMap<u16, u64>,
    /// Setup times (INVITE -> 200), ms, in arrival order.
    pub setup_ms: Vec<f64>,
    /// When each 200 arrived, ms after sipp started.
    pub answered_at_ms: Vec<f64>,
    /// sipp's exit code (0: every call succeeded).
    pub exit_code: Option<i32>,
    /// sipp ran past its limit and was killed.
    pub killed: bool,
    /// sipp's CPU seconds.
    pub cpu_s: f64,
    /// sipp's wall time.
    pub wall_s: f64,
    /// The start of sipp's standard error (its fatal errors).
    pub stderr: String,
}

impl Outcome {
    /// Answers per second from the first to the last 200 (what the server kept up with).
    pub fn answer_rate(&self) -> Option<f64> {
        let (first, last) = (self.answered_at_ms.first()?, self.answered_at_ms.last()?);
        let n = self.answered_at_ms.len();
        (n >= 2 && last > first).then(|| (n - 1) as f64 * 1000.0 / (last - first))
    }
}

impl Outcome {
    /// Calls placed per second, from the first INVITE to the last answered one (an
    /// INVITE left when its 200 came minus its setup time).
    pub fn placed_rate(&self) -> Option<f64> {
        let mut sent: Vec<f64> = self
            .answered_at_ms
            .iter()
            .zip(&self.setup_ms)
            .map(|(a, s)| a - s)
            .collect();
        sent.sort_by(f64::total_cmp);
        let (first, last) = (sent.first()?, sent.last()?);
        (sent.len() >= 2 && last > first).then(|| (sent.len() - 1) as f64 * 1000.0 / (last - first))
    }
}

/// Reads the trace files of the run that just ended in `dir`.
fn read_traces(dir: &Path) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    if let Ok(text) = std::fs::read_to_string(dir.join("stat.csv")) {
        parse_stat(&text, &mut o);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_rtt.csv") {
            let text = std::fs::read_to_string(e.path())?;
            parse_rtt(&text, &mut o);
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("errors.log")) {
        o.unexpected_statuses = parse_error_statuses(&text);
    }
    Ok(o)
}

/// The last row of sipp's statistics file, by column name.
fn parse_stat(text: &str, o: &mut Outcome) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return };
    let Some(last) = lines.next_back() else {
        return;
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| -> u64 {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    o.created = get("TotalCallCreated");
    o.ok = get("SuccessfulCall(C)");
    o.failed = get("FailedCall(C)");
    o.retransmissions = get("Retransmissions(C)");
    for n in &names {
        if let Some(kind) = n.strip_suffix("(C)")
            && kind.starts_with("Failed")
            && kind != "FailedCall"
        {
            let v = get(n);
            if v > 0 {
                o.failures.insert(kind.to_owned(), v);
            }
        }
    }
}

/// `Date_ms;response_time_ms;rtd_no` rows of the `setup` RTD.
fn parse_rtt(text: &str, o: &mut Outcome) {
    let mut rows: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(';');
            let at: f64 = f.next()?.trim().parse().ok()?;
            let rt: f64 = f.next()?.trim().parse().ok()?;
            (f.next()?.trim() == "setup").then_some((at, rt))
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    o.answered_at_ms = rows.iter().map(|r| r.0).collect();
    o.setup_ms = rows.iter().map(|r| r.1).collect();
}

/// Status codes of the responses in sipp's unexpected-message log (`... received
/// 'SIP/2.0 503 Service Unavailable`).
fn parse_error_statuses(text: &str) -> BTreeMap<u16, u64> {
    const MARK: &str = "received 'SIP/2.0 ";
    let mut codes = BTreeMap::new();
    for l in text.lines() {
        if let Some(at) = l.find(MARK)
            && let Some(code) = l
                .get(at + MARK.len()..at + MARK.len() + 3)
                .and_then(|c| c.parse::<u16>().ok())
        {
            *codes.entry(code).or_insert(0) += 1;
        }
    }
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcap_holds_fifty_rtp_packets_a_second_with_continuous_numbers() {
        let frames = vec![
            Frame {
                payload: vec![0xff; 160],
                level: 127,
                voice: false,
            };
            3
        ];
        let mut buf = Vec::new();
        write_g711_pcap(&mut buf, &frames, 1.0).unwrap();
        // 24-byte header, then 50 records of 16 + 14 + 20 + 8 + 12 + 160 bytes.
        assert_eq!(buf.len(), 24 + 50 * (16 + 214));
        let rec = |i: usize| &buf[24 + i * 230..24 + (i + 1) * 230];
        let second = rec(1);
        assert_eq!(u32::from_le_bytes(second[4..8].try_into().unwrap()), 20_000);
        let rtp = &second[16 + 42..];
        assert_eq!(rtp[0], 0x80);
        assert_eq!(rtp[1], 0, "payload type 0, no marker after the first");
        assert_eq!(u16::from_be_bytes([rtp[2], rtp[3]]), 1);
        assert_eq!(u32::from_be_bytes(rtp[4..8].try_into().unwrap()), 160);
        // The IPv4 header checksums to zero.
        let ip = &second[16 + 14..16 + 34];
        let sum: u32 = ip
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
    }

    #[test]
    fn the_last_statistics_row_gives_the_counts_and_the_failure_kinds() {
        let text = "StartTime;TotalCallCreated;SuccessfulCall(C);FailedCall(C);\
                    FailedMaxUDPRetrans(C);FailedCallRejected(C);Retransmissions(C);\n\
                    a;10;9;1;0;0;3;\n\
                    b;20;18;2;0;2;7;\n";
        let mut o = Outcome::default();
        parse_stat(text, &mut o);
        assert_eq!(
            (o.created, o.ok, o.failed, o.retransmissions),
            (20, 18, 2, 7)
        );
        assert_eq!(
            o.failures.into_iter().collect::<Vec<_>>(),
            [("FailedCallRejected".to_owned(), 2)]
        );
    }

    #[test]
    fn response_times_give_the_answer_rate_and_error_logs_the_refusals() {
        let mut o = Outcome::default();
        parse_rtt(
            "Date_ms;response_time_ms;rtd_no\n100.0;3;setup\n300.0;5;setup\n200.0;4;setup\n",
            &mut o,
        );
        assert_eq!(o.setup_ms, [3.0, 4.0, 5.0]);
        assert!((o.answer_rate().unwrap() - 10.0).abs() < 1e-9);
        // Sent at 97, 196, 295 ms.
        assert!((o.placed_rate().unwrap() - 2000.0 / 198.0).abs() < 1e-9);
        let abort = "2026-11-26\t08:36:16.159820\t1795682176.159820: Aborting call on \
                     unexpected message for Call-Id '1-7754@127.0.0.1': while expecting '180' \
                     (index 2), received 'SIP/2.0 ";
        let log = format!(
            "The following events occurred:\n{abort}503 Service Unavailable\nVia: x\n\
             CSeq: 1 INVITE\n\n'{abort}503 Service Unavailable\n\n'{abort}480 Busy\n\
             SIP/2.0 200 OK\n"
        );
        let codes = parse_error_statuses(&log);
        assert_eq!(codes.into_iter().collect::<Vec<_>>(), [(480, 1), (503, 2)]);
    }
}
