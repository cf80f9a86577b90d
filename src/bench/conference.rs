//! `confer bench` (no subcommand): conference load and media latency, on confer in-process,
//! on a running confer (`--target URL`), or side by side with Janus AudioBridge
//! (`--target janus`).
//!
//! Each run creates `--rooms` rooms of `--participants` synthetic participants (see
//! [`super::load`]): in the first room, participant 0 is the *probe* talker (a hum with a
//! marker burst each second, loud enough to stay mixed), participants 1..K talk (the
//! shipped speech, each from its own point), the others are quiet (Opus DTX); every other
//! room has K talkers. Two quiet listeners of the first room (or two talkers, when
//! everyone talks) decode what they receive and time the marker:
//!
//! - **added latency**: the probe packet's send -> the first packet carrying the marker
//!   received (what the engine adds: receive queue, jitter buffer, the wait for the next
//!   mix tick, mix, encode, send; loopback transit is microseconds);
//! - **added latency excluding the jitter buffer**: what the engine adds after its jitter
//!   buffers release a frame: from the start of that tick to each mixed packet's send
//!   (confer measures it for every packet: `tick_to_sent` in `/metrics`); and, from the
//!   probe, its added latency minus its jitter buffer's delay read from the API;
//! - **hop**: to the marker's onset in the listener's decoded audio (adds the onset's
//!   position inside that packet: a frame-clock phase, up to a frame).
//!
//! The engine's side (tick durations, per-stage histograms, overruns) comes from its
//! `/metrics`, read before and after the measured window; Janus has none, so its columns
//! are what the generator sees from outside (latency, loss, output jitter, CPU).
//!
//! A run is **healthy** when listeners lose at most 1% of packets, the output's delay
//! variation p99 is at most 20 ms (both from outside, for every engine: a worker whose
//! ticks run late or vary shows there), and for confer also tick p99 <= `--max-tick-ms`
//! (default: the 20 ms frame) with overruns in at most 0.1% of ticks. Capacity mode raises
//! the load until a run is not healthy and reports the largest healthy one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use confer_engine::jitter_eval::quantile;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use super::load::{self, LEVEL_EXT_ID, LoadReport, Member, Onset, Plan, Role};
use super::prom::{Hist, Scrape};
use super::signals::{BenchCodec, Signals};
use crate::config::Config;

/// `confer bench` options.
#[derive(Args, Debug, Clone)]
pub struct ConferenceArgs {
    /// Participants per room.
    #[arg(long, default_value_t = 20)]
    pub participants: usize,
    /// Talkers per room (the probe counts as one in the first room).
    #[arg(long, default_value_t = 3)]
    pub talkers: usize,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before measuring (joins settle, jitter buffers converge).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Codec of the synthetic participants.
    #[arg(long, value_enum, default_value_t = BenchCodec::Opus)]
    pub codec: BenchCodec,
    /// Noise suppression on every participant (confer; Janus has none to turn on).
    #[arg(long)]
    pub denoise: bool,
    /// Do not send RFC 6464 audio levels (browsers send them).
    #[arg(long)]
    pub no_levels: bool,
    /// Raise the load until a run is unhealthy; report the largest healthy one.
    #[arg(long)]
    pub capacity: bool,
    /// What capacity mode raises.
    #[arg(long, value_enum, default_value_t = Scale::Participants)]
    pub scale: Scale,
    /// Health limit on the engine's tick p99, ms. Default: the frame period (a worker
    /// must finish each tick within its frame); what tick-time variation does to listeners
    /// is judged from outside, as for every engine (output delay variation).
    #[arg(long, default_value_t = f64::from(super::signals::FRAME_MS))]
    pub max_tick_ms: f64,
    /// `URL` of a running confer (e.g. http://127.0.0.1:8080), or `janus` to start Janus
    /// AudioBridge and run the same load on confer (in-process) and Janus side by side.
    /// Default: confer in-process.
    #[arg(long)]
    pub target: Option<String>,
    /// Media worker threads of the in-process engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// `SCHED_FIFO` priority of the in-process engine's media threads (0: the normal
    /// scheduler). Default: the engine's default (`realtime_priority` in README).
    #[arg(long)]
    pub realtime_priority: Option<u8>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write SVG plots (latency distribution, tick time over the run) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

/// What capacity mode raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Participants per room.
    Participants,
    /// Rooms.
    Rooms,
}

/// p50/p95/p99/max of a distribution.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Pcts {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Pcts {
    fn of(values: &[f64]) -> Option<Pcts> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| quantile(&v, p);
        Some(Pcts {
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: q(1.0),
        })
    }

    fn of_hist(h: &Hist, scale: f64) -> Option<Pcts> {
        Some(Pcts {
            p50: h.quantile(0.50)? * scale,
            p95: h.quantile(0.95)? * scale,
            p99: h.quantile(0.99)? * scale,
            max: h.quantile(1.0)? * scale,
        })
    }
}

/// The engine's own view of a run.
#[derive(Debug, Default)]
pub(super) struct ServerView {
    pub(super) tick_ms: Option<Pcts>,
    pub(super) ticks: Option<f64>,
    pub(super) overruns: Option<u64>,
    pub(super) stages_ms: BTreeMap<String, Pcts>,
    pub(super) cpu_cores: Option<f64>,
    /// (seconds into the window, tick p99 ms in the last interval).
    pub(super) tick_series: Vec<(f64, f64)>,
    /// (seconds into the window, cpu cores in the last interval).
    pub(super) cpu_series: Vec<(f64, f64)>,
    /// (seconds into the window, probe's jitter-buffer delay ms).
    pub(super) jb_series: Vec<(f64, f64)>,
    /// From the tick that played a frame out of the jitter buffers to its packet sent.
    pub(super) tick_to_sent_ms: Option<Pcts>,
}

/// An engine the bench can load.
pub(super) trait Engine {
    fn name(&self) -> String;
    fn media_ip(&self) -> IpAddr;
    fn create_room(&mut self, index: usize) -> anyhow::Result<u64>;
    fn join(&mut self, room: u64, client: SocketAddr, p: &JoinOpts) -> anyhow::Result<Joined>;
    /// Start of the measured window.
    fn begin(&mut self) -> anyhow::Result<()>;
    /// Periodically during the window (`at`: time into it); `probe` is the probe talker.
    fn sample(&mut self, at: Duration, probe: Option<&Joined>) -> anyhow::Result<()>;
    /// End of the window; the generator's CPU share (in cores) when it shares the process.
    fn end(&mut self, generator_cores: f64) -> anyhow::Result<ServerView>;
    fn delete_room(&mut self, room: u64) -> anyhow::Result<()>;
}

/// How a synthetic participant joins.
pub(super) struct JoinOpts {
    pub(super) codec: BenchCodec,
    pub(super) denoise: bool,
    pub(super) levels: bool,
}

/// A joined participant: the engine's ids and its RTP address for it.
#[derive(Debug, Clone)]
pub(super) struct Joined {
    pub(super) room: u64,
    pub(super) id: u64,
    pub(super) server: SocketAddr,
}

/// confer through its HTTP control API (in-process or remote).
struct ConferHttp {
    base: String,
    agent: ureq::Agent,
    in_process: bool,
    media_ip: IpAddr,
    before: Option<(Scrape, Instant, Option<f64>)>,
    last: Option<(Scrape, Instant, f64)>,
    tick_series: Vec<(f64, f64)>,
    cpu_series: Vec<(f64, f64)>,
    jb_series: Vec<(f64, f64)>,
}

/// confer's per-stage histograms (`stage` label) in `/metrics`.
const STAGE_HIST: &str = "confer_stage_duration_seconds";
const TICK: (&str, &str) = (STAGE_HIST, "stage=\"tick\"");

impl ConferHttp {
    fn new(base: &str, in_process: bool) -> anyhow::Result<ConferHttp> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = base.trim_end_matches('/').to_owned();
        let c = ConferHttp {
            base,
            agent,
            in_process,
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            before: None,
            last: None,
            tick_series: Vec::new(),
            cpu_series: Vec::new(),
            jb_series: Vec::new(),
        };
        c.call("GET", "/healthz", None)
            .with_context(|| format!("confer at {} does not answer", c.base))?;
        Ok(c)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut resp = match (method, body) {
            ("POST", Some(b)) => self.agent.post(&url).send_json(b)?,
            ("POST", None) => self.agent.post(&url).send_empty()?,
            ("DELETE", _) => self.agent.delete(&url).call()?,
            _ => self.agent.get(&url).call()?,
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn scrape(&self) -> anyhow::Result<Scrape> {
        match self.call("GET", "/metrics", None)? {
            Value::String(s) => Ok(Scrape::parse(&s)),
            other => bail!("/metrics is not text: {other}"),
        }
    }

    /// CPU seconds of the engine's process so far.
    fn cpu_s(&self, s: &Scrape) -> Option<f64> {
        if self.in_process {
            crate::host::proc_stat_cpu_s("/proc/self/stat")
        } else {
            s.get("process_cpu_seconds_total")
        }
    }
}

impl Engine for ConferHttp {
    fn name(&self) -> String {
        format!("confer {}", env!("CARGO_PKG_VERSION"))
    }

    fn media_ip(&self) -> IpAddr {
        self.media_ip
    }

    fn create_room(&mut self, index: usize) -> anyhow::Result<u64> {
        let r = self.call(
            "POST",
            "/v1/rooms",
            Some(json!({ "name": format!("bench-{index}"), "max_participants": 100_000 })),
        )?;
        r["id"].as_u64().context("room id missing")
    }

    fn join(&mut self, room: u64, client: SocketAddr, p: &JoinOpts) -> anyhow::Result<Joined> {
        let mut body = json!({
            "rtp_address": client.to_string(),
            "codec": p.codec.name(),
            "payload_type": p.codec.payload_type(),
            "denoise": p.denoise,
        });
        if p.levels {
            body["audio_level_extension"] = json!(LEVEL_EXT_ID);
        }
        let r = self.call(
            "POST",
            &format!("/v1/rooms/{room}/participants"),
            Some(body),
        )?;
        let server: SocketAddr = r["local_rtp_address"]
            .as_str()
            .context("local_rtp_address missing")?
            .parse()?;
        self.media_ip = server.ip();
        Ok(Joined {
            room,
            id: r["id"].as_u64().context("participant id missing")?,
            server,
        })
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        let s = self.scrape()?;
        let cpu = self.cpu_s(&s);
        self.last = cpu.map(|c| (s.clone(), Instant::now(), c));
        self.before = Some((s, Instant::now(), cpu));
        Ok(())
    }

    fn sample(&mut self, at: Duration, probe: Option<&Joined>) -> anyhow::Result<()> {
        let at_s = at.as_secs_f64();
        if let Some(p) = probe {
            let r = self.call(
                "GET",
                &format!("/v1/rooms/{}/participants/{}", p.room, p.id),
                None,
            )?;
            if let Some(d) = r["stats"]["jitter_buffer_delay_ms"].as_f64() {
                self.jb_series.push((at_s, d));
            }
        }
        // Tick p99 and CPU per second.
        if let Some((prev, when, cpu)) = &self.last
            && when.elapsed() >= Duration::from_millis(900)
        {
            let s = self.scrape()?;
            if let (Some(now), Some(before)) = (s.hist(TICK.0, TICK.1), prev.hist(TICK.0, TICK.1))
                && let Some(p99) = now.since(&before).quantile(0.99)
            {
                self.tick_series.push((at_s, p99 * 1000.0));
            }
            let c = self.cpu_s(&s).unwrap_or(*cpu);
            self.cpu_series
                .push((at_s, (c - cpu) / when.elapsed().as_secs_f64()));
            self.last = Some((s, Instant::now(), c));
        }
        Ok(())
    }

    fn end(&mut self, generator_cores: f64) -> anyhow::Result<ServerView> {
        let s = self.scrape()?;
        let (before, t0, cpu0) = self.before.take().context("end without begin")?;
        let mut v = ServerView {
            tick_series: std::mem::take(&mut self.tick_series),
            cpu_series: std::mem::take(&mut self.cpu_series),
            jb_series: std::mem::take(&mut self.jb_series),
            ..ServerView::default()
        };
        if let (Some(a), Some(b)) = (s.hist(TICK.0, TICK.1), before.hist(TICK.0, TICK.1)) {
            let d = a.since(&b);
            v.ticks = Some(d.count);
            v.tick_ms = Pcts::of_hist(&d, 1000.0);
        }
        let overruns = "confer_tick_overruns_total";
        if let (Some(a), Some(b)) = (s.get(overruns), before.get(overruns)) {
            v.overruns = Some((a - b).max(0.0) as u64);
        }
        for stage in s.label_values(&format!("{STAGE_HIST}_count"), "stage") {
            let labels = format!("stage=\"{stage}\"");
            if let (Some(a), Some(b)) = (
                s.hist(STAGE_HIST, &labels),
                before.hist(STAGE_HIST, &labels),
            ) && let Some(p) = Pcts::of_hist(&a.since(&b), 1000.0)
            {
                v.stages_ms.insert(stage, p);
            }
        }
        v.tick_to_sent_ms = v.stages_ms.get("tick_to_sent").copied();
        if let (Some(c1), Some(c0)) = (self.cpu_s(&s), cpu0) {
            let cores = (c1 - c0) / t0.elapsed().as_secs_f64().max(1e-3);
            v.cpu_cores = Some(if self.in_process {
                (cores - generator_cores).max(0.0)
            } else {
                cores
            });
            if self.in_process {
                for c in &mut v.cpu_series {
                    c.1 = (c.1 - generator_cores).max(0.0);
                }
            }
        }
        Ok(v)
    }

    fn delete_room(&mut self, room: u64) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/v1/rooms/{room}"), None)
            .map(|_| ())
    }
}

/// One run's results, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// The engine measured.
    pub engine: String,
    /// Participants per room.
    pub participants: usize,
    /// Participants in all rooms.
    pub participants_total: usize,
    /// Talkers per room.
    pub talkers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Codec.
    pub codec: BenchCodec,
    /// Noise suppression on.
    pub denoise: bool,
    /// RFC 6464 levels sent.
    pub levels: bool,
    /// Measured seconds.
    pub duration_s: f64,
    /// Seconds of warm-up it took until every participant heard the engine.
    pub warmup_s: f64,
    /// Probe packet in -> first packet carrying it out, ms.
    pub added_latency_ms: Option<Pcts>,
    /// What the engine adds beyond its jitter buffers: from the tick that plays a frame
    /// out of them to its mixed packet sent, every packet (confer's `/metrics`,
    /// `tick_to_sent`), ms.
    pub added_latency_excl_jb_ms: Option<Pcts>,
    /// The probe's added latency minus its jitter-buffer delay at that moment (read from
    /// the API; includes the wait for the next tick), ms (confer only).
    pub added_latency_minus_jb_delay_ms: Option<Pcts>,
    /// Probe send -> onset in the listener's decoded audio, ms.
    pub hop_latency_ms: Option<Pcts>,
    /// Marker onsets timed (each probe listener times each marker).
    pub latency_samples: usize,
    /// Markers sent in the window.
    pub markers_sent: u64,
    /// Onsets that could have been timed (markers sent times probe listeners).
    pub markers_expected: u64,
    /// Tick duration, ms (confer).
    pub tick_ms: Option<Pcts>,
    /// Ticks over a frame (confer).
    pub overruns: Option<u64>,
    /// Ticks in the window (confer).
    pub ticks: Option<f64>,
    /// Per-stage durations, ms (confer).
    pub stages_ms: BTreeMap<String, Pcts>,
    /// Packets the listeners lost.
    pub packets_lost: u64,
    /// Packets they should have received.
    pub packets_expected: u64,
    /// Lost, percent.
    pub loss_pct: f64,
    /// Output delay variation at the listeners, ms (p50, p99).
    pub output_jitter_ms: (f64, f64),
    /// The engine's CPU, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Per participant, percent of one core.
    pub cpu_pct_per_participant: Option<f64>,
    /// The load generator's CPU, percent of one core.
    pub generator_cpu_pct: f64,
    /// Packets the generator sent in the window, and sends that failed.
    pub generator_packets_sent: (u64, u64),
    /// Generator ticks that started over a frame late (the measurement is suspect if any).
    pub generator_late_ticks: u64,
    /// See the module docs.
    pub healthy: bool,
    /// Why not.
    pub unhealthy_because: Vec<String>,
    /// Timed markers.
    #[serde(skip)]
    pub onsets: Vec<Onset>,
    #[serde(skip)]
    tick_series: Vec<(f64, f64)>,
    #[serde(skip)]
    cpu_series: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy)]
struct Load {
    participants: usize,
    rooms: usize,
}

fn run_once(
    engine: &mut dyn Engine,
    args: &ConferenceArgs,
    signals: &Arc<Signals>,
    load: Load,
    progress: &ProgressBar,
) -> anyhow::Result<RunResult> {
    let (n, k) = (load.participants, args.talkers.min(load.participants));
    let total = n * load.rooms;
    let sockets = load::client_sockets(engine.media_ip(), total.clamp(1, 16))?;
    let opts = JoinOpts {
        codec: args.codec,
        denoise: args.denoise,
        levels: !args.no_levels,
    };
    let mut members = Vec::with_capacity(total);
    let mut rooms = Vec::new();
    let mut probe = None;
    progress.set_message(format!("joining {total} participants"));
    for r in 0..load.rooms {
        let room = engine.create_room(r)?;
        rooms.push(room);
        for p in 0..n {
            let socket = members.len() % sockets.len();
            let joined = engine.join(room, sockets[socket].local_addr()?, &opts)?;
            let role = if r == 0 && p == 0 && k > 0 {
                Role::Probe
            } else if p < k {
                Role::Talker {
                    offset: (members.len() * 131) % signals.speech.len(),
                }
            } else {
                Role::Silent
            };
            // Two listeners of the first room time the probe: quiet ones, or talkers when
            // everyone talks.
            let first_listener = if k < n { k } else { 1 };
            let probe_listener = r == 0 && (p == first_listener || p == first_listener + 1);
            if role == Role::Probe {
                probe = Some(joined.clone());
            }
            members.push(Member {
                server: joined.server,
                socket,
                role,
                probe_listener,
            });
        }
    }
    let plan = Plan {
        members,
        sockets,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
        levels: opts.levels,
    };
    let mut began = false;
    let mut err = None;
    let secs = args.warmup + args.duration;
    progress.set_length(secs);
    progress.set_position(0);
    progress.set_message(format!("{}: {total} participants", engine.name()));
    let t0 = Instant::now();
    let report = load::run(plan, signals.clone(), |at| {
        progress.set_position(t0.elapsed().as_secs().min(secs));
        let Some(at) = at else { return };
        let r = if began {
            engine.sample(at, probe.as_ref())
        } else {
            began = true;
            engine.begin()
        };
        if let Err(e) = r {
            err.get_or_insert(e);
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let view = engine.end(report.cpu_cores)?;
    for room in rooms {
        engine.delete_room(room)?;
    }
    Ok(result(engine.name(), args, load, &report, view))
}

fn result(
    engine: String,
    args: &ConferenceArgs,
    load: Load,
    report: &LoadReport,
    view: ServerView,
) -> RunResult {
    let added: Vec<f64> = report.onsets.iter().map(|o| o.added_ms).collect();
    let hop: Vec<f64> = report.onsets.iter().map(|o| o.hop_ms).collect();
    let excl: Vec<f64> = report
        .onsets
        .iter()
        .filter_map(|o| {
            let jb = view
                .jb_series
                .iter()
                .min_by(|a, b| (a.0 - o.at_s).abs().total_cmp(&(b.0 - o.at_s).abs()))?;
            Some((o.added_ms - jb.1).max(0.0))
        })
        .collect();
    let total = load.participants * load.rooms;
    let loss_pct = if report.packets_expected == 0 {
        100.0
    } else {
        report.packets_lost() as f64 * 100.0 / report.packets_expected as f64
    };
    let jitter = (
        report.delay_variation_ms(0.5),
        report.delay_variation_ms(0.99),
    );
    let mut why = Vec::new();
    if loss_pct > 1.0 {
        why.push(format!(
            "listeners lost {loss_pct:.2}% of packets (limit 1%)"
        ));
    }
    if report.silent_listeners > 0 {
        why.push(format!(
            "{} listeners received nothing",
            report.silent_listeners
        ));
    }
    if jitter.1 > 20.0 {
        why.push(format!(
            "output delay variation p99 {:.1} ms (limit 20 ms)",
            jitter.1
        ));
    }
    if let Some(t) = view.tick_ms
        && t.p99 > args.max_tick_ms
    {
        why.push(format!(
            "tick p99 {:.2} ms (limit {} ms)",
            t.p99, args.max_tick_ms
        ));
    }
    if let (Some(o), Some(t)) = (view.overruns, view.ticks)
        && o as f64 > t * 0.001
    {
        why.push(format!("{o} tick overruns in {t} ticks (limit 0.1%)"));
    }
    if report.send_errors > 0 {
        why.push(format!("{} sends failed", report.send_errors));
    }
    if report.sender_late_ticks > 0 {
        why.push(format!(
            "the load generator fell behind {} times (the machine is saturated)",
            report.sender_late_ticks
        ));
    }
    let cpu_pct = view.cpu_cores.map(|c| c * 100.0);
    RunResult {
        engine,
        participants: load.participants,
        participants_total: total,
        talkers: args.talkers.min(load.participants),
        rooms: load.rooms,
        codec: args.codec,
        denoise: args.denoise,
        levels: !args.no_levels,
        duration_s: args.duration as f64,
        warmup_s: report.warmup.as_secs_f64(),
        added_latency_ms: Pcts::of(&added),
        added_latency_excl_jb_ms: view.tick_to_sent_ms,
        added_latency_minus_jb_delay_ms: Pcts::of(&excl),
        hop_latency_ms: Pcts::of(&hop),
        latency_samples: report.onsets.len(),
        markers_sent: report.markers_sent,
        markers_expected: report.markers_expected,
        tick_ms: view.tick_ms,
        overruns: view.overruns,
        ticks: view.ticks,
        stages_ms: view.stages_ms,
        packets_lost: report.packets_lost(),
        packets_expected: report.packets_expected,
        loss_pct,
        output_jitter_ms: jitter,
        cpu_pct,
        cpu_pct_per_participant: cpu_pct.map(|c| c / total.max(1) as f64),
        generator_cpu_pct: report.cpu_cores * 100.0,
        generator_packets_sent: (report.packets_sent, report.send_errors),
        generator_late_ticks: report.sender_late_ticks,
        healthy: why.is_empty(),
        unhealthy_because: why,
        onsets: report.onsets.clone(),
        tick_series: view.tick_series,
        cpu_series: view.cpu_series,
    }
}

/// Runs at rising load until unhealthy; returns every run and the largest healthy load.
fn capacity(
    engine: &mut dyn Engine,
    args: &ConferenceArgs,
    signals: &Arc<Signals>,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<RunResult>, Option<RunResult>)> {
    let at = |x: usize| match args.scale {
        Scale::Participants => Load {
            participants: x,
            rooms: args.rooms,
        },
        Scale::Rooms => Load {
            participants: args.participants,
            rooms: x,
        },
    };
    let mut x = match args.scale {
        Scale::Participants => args.participants,
        Scale::Rooms => args.rooms,
    }
    .max(1);
    let mut runs = Vec::new();
    let mut best: Option<RunResult> = None;
    let mut bad: Option<usize> = None;
    loop {
        let r = run_once(engine, args, signals, at(x), progress)?;
        let ok = r.healthy;
        if !args.json {
            progress.println(format!(
                "  {:>6} {}: {}",
                x,
                match args.scale {
                    Scale::Participants => "participants/room",
                    Scale::Rooms => "rooms",
                },
                if ok {
                    "healthy".to_owned()
                } else {
                    r.unhealthy_because.join("; ")
                }
            ));
        }
        runs.push(r.clone());
        let good = best.as_ref().map_or(0, |b| match args.scale {
            Scale::Participants => b.participants,
            Scale::Rooms => b.rooms,
        });
        if ok {
            best = Some(r);
        } else {
            bad = Some(bad.map_or(x, |b| b.min(x)));
        }
        let lo = if ok { x } else { good };
        x = match bad {
            None => (x * 3).div_ceil(2).max(x + 1),
            Some(b) => {
                // Bisect until the step is within 5% (and at least 1).
                if b <= lo + 1 || (b - lo) * 20 <= lo {
                    break;
                }
                lo + (b - lo) / 2
            }
        };
        if x > 20_000 {
            break;
        }
    }
    Ok((runs, best))
}

/// Entry point of `confer bench` without a subcommand.
pub fn run(args: ConferenceArgs) -> anyhow::Result<()> {
    if args.participants == 0 || args.rooms == 0 {
        bail!("--participants and --rooms must be at least 1");
    }
    if args.duration == 0 || args.duration > 3600 {
        bail!("--duration must be between 1 and 3600 seconds");
    }
    let signals = Arc::new(Signals::new(args.codec)?);
    let progress = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut outputs: Vec<(String, Vec<RunResult>, Option<RunResult>)> = Vec::new();
    let janus = matches!(args.target.as_deref(), Some("janus"));
    // confer: in-process unless a URL is given.
    match args.target.as_deref() {
        Some(url) if url != "janus" => {
            let mut e = ConferHttp::new(url, false)?;
            outputs.push(measure(&mut e, &args, &signals, &progress)?);
        }
        _ => {
            let data = std::env::temp_dir().join(format!("confer-bench-{}", std::process::id()));
            let cfg = Config {
                http_listen: "127.0.0.1:0".parse()?,
                rtp_port_min: 30_000,
                rtp_port_max: 39_999,
                media_workers: args.workers,
                realtime_priority: args
                    .realtime_priority
                    .unwrap_or(Config::default().realtime_priority),
                data_dir: data.clone(),
                ..Config::default()
            };
            cfg.validate()?;
            let running = crate::serve::spawn(&cfg)?;
            let r = ConferHttp::new(&format!("http://{}", running.http), true)
                .and_then(|mut e| measure(&mut e, &args, &signals, &progress));
            running.stop()?;
            let _ = std::fs::remove_dir_all(&data);
            outputs.push(r?);
        }
    }
    if janus {
        let mut e = super::janus_engine::JanusEngine::start(args.codec)?;
        let r = measure(&mut e, &args, &signals, &progress);
        e.stop()?;
        outputs.push(r?);
    }
    progress.finish_and_clear();
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, runs, best) in &outputs {
            if let Some(r) = best.as_ref().or(runs.last()) {
                let file = dir.join(format!("bench-{}.svg", slug(name)));
                plot(r, &file)?;
                if !args.json {
                    println!("plot: {}", file.display());
                }
            }
        }
    }
    if args.json {
        let mut objs: Vec<Value> = outputs
            .iter()
            .map(|(_, runs, best)| json_of(&args, runs, best))
            .collect::<anyhow::Result<_>>()?;
        let mut top = objs.remove(0);
        if let Some(other) = objs.pop() {
            top["side_by_side"] = other;
        }
        println!("{}", serde_json::to_string_pretty(&top)?);
    } else {
        print_table(&args, &outputs);
    }
    Ok(())
}

type Measured = (String, Vec<RunResult>, Option<RunResult>);

fn measure(
    engine: &mut dyn Engine,
    args: &ConferenceArgs,
    signals: &Arc<Signals>,
    progress: &ProgressBar,
) -> anyhow::Result<Measured> {
    if args.capacity {
        let (runs, best) = capacity(engine, args, signals, progress)?;
        Ok((engine.name(), runs, best))
    } else {
        let r = run_once(
            engine,
            args,
            signals,
            Load {
                participants: args.participants,
                rooms: args.rooms,
            },
            progress,
        )?;
        Ok((
            engine.name(),
            vec![r.clone()],
            Some(r).filter(|r| r.healthy),
        ))
    }
}

fn json_of(
    args: &ConferenceArgs,
    runs: &[RunResult],
    best: &Option<RunResult>,
) -> anyhow::Result<Value> {
    let shown = if args.capacity {
        best.as_ref().or(runs.first())
    } else {
        runs.last()
    }
    .context("no run")?;
    let mut v = serde_json::to_value(shown)?;
    if args.capacity {
        v["max_healthy_participants"] = json!(best.as_ref().map(|b| b.participants_total));
        v["max_healthy_rooms"] = json!(best.as_ref().map(|b| b.rooms));
        v["runs"] = serde_json::to_value(runs)?;
    }
    Ok(v)
}

fn fmt_pcts(p: &Option<Pcts>) -> String {
    p.map_or("-".to_owned(), |p| {
        format!("{:.2} / {:.2} / {:.2} / {:.2}", p.p50, p.p95, p.p99, p.max)
    })
}

fn print_table(args: &ConferenceArgs, outputs: &[Measured]) {
    let mut out = String::new();
    let shown: Vec<(&str, Option<&RunResult>)> = outputs
        .iter()
        .map(|(n, runs, best)| {
            (
                n.as_str(),
                if args.capacity {
                    best.as_ref()
                } else {
                    runs.last()
                },
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{:<34}{}",
        "",
        shown
            .iter()
            .map(|(n, _)| format!("{n:<36}"))
            .collect::<String>()
    );
    let row = |out: &mut String, label: &str, f: &dyn Fn(&RunResult) -> String| {
        let _ = writeln!(
            out,
            "{:<34}{}",
            label,
            shown
                .iter()
                .map(|(_, r)| format!("{:<36}", r.map_or("-".to_owned(), f)))
                .collect::<String>()
        );
    };
    if args.capacity {
        row(&mut out, "max healthy participants (total)", &|r| {
            r.participants_total.to_string()
        });
        row(&mut out, "max healthy rooms", &|r| r.rooms.to_string());
    }
    row(&mut out, "participants x rooms (talkers)", &|r| {
        format!("{} x {} ({})", r.participants, r.rooms, r.talkers)
    });
    row(&mut out, "added latency ms p50/p95/p99/max", &|r| {
        fmt_pcts(&r.added_latency_ms)
    });
    row(&mut out, "  minus the probe's JB delay", &|r| {
        fmt_pcts(&r.added_latency_minus_jb_delay_ms)
    });
    row(&mut out, "excl. JB: tick -> sent (all pkts)", &|r| {
        fmt_pcts(&r.added_latency_excl_jb_ms)
    });
    row(&mut out, "hop (decoded onset) ms", &|r| {
        fmt_pcts(&r.hop_latency_ms)
    });
    row(&mut out, "marker onsets timed / expected", &|r| {
        format!("{} / {}", r.latency_samples, r.markers_expected)
    });
    row(&mut out, "tick ms p50/p95/p99/max", &|r| {
        fmt_pcts(&r.tick_ms)
    });
    row(&mut out, "overruns", &|r| {
        r.overruns.map_or("-".into(), |o| o.to_string())
    });
    let stages: Vec<String> = shown
        .iter()
        .filter_map(|(_, r)| *r)
        .flat_map(|r| r.stages_ms.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for s in &stages {
        row(&mut out, &format!("  stage {s} ms"), &|r| {
            fmt_pcts(&r.stages_ms.get(s).copied())
        });
    }
    row(&mut out, "packets lost / expected", &|r| {
        format!(
            "{} / {} ({:.3}%)",
            r.packets_lost, r.packets_expected, r.loss_pct
        )
    });
    row(&mut out, "output jitter ms p50/p99", &|r| {
        format!("{:.1} / {:.1}", r.output_jitter_ms.0, r.output_jitter_ms.1)
    });
    row(&mut out, "engine CPU % (per participant)", &|r| match (
        r.cpu_pct,
        r.cpu_pct_per_participant,
    ) {
        (Some(c), Some(p)) => format!("{c:.1} ({p:.3})"),
        _ => "-".into(),
    });
    row(&mut out, "generator CPU %", &|r| {
        format!("{:.1}", r.generator_cpu_pct)
    });
    row(&mut out, "healthy", &|r| {
        if r.healthy {
            "yes".into()
        } else {
            format!("no: {}", r.unhealthy_because.join("; "))
        }
    });
    print!("{out}");
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Latency distributions (top) and tick p99 / CPU over the run (bottom).
fn plot(r: &RunResult, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let mut added: Vec<f64> = r.onsets.iter().map(|o| o.added_ms).collect();
    let mut hop: Vec<f64> = r.onsets.iter().map(|o| o.hop_ms).collect();
    added.sort_by(f64::total_cmp);
    hop.sort_by(f64::total_cmp);
    let x_max = hop.last().copied().unwrap_or(1.0).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{}: {} participants x {} rooms: latency CDF",
                r.engine, r.participants, r.rooms
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction")
        .draw()?;
    for (data, color, label) in [
        (&added, BLUE, "added (packet in -> out)"),
        (&hop, RED, "hop (decoded onset)"),
    ] {
        let n = data.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new(
                data.iter()
                    .enumerate()
                    .map(|(i, &x)| (x, (i + 1) as f64 / n)),
                color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let (series, what) = if r.tick_series.is_empty() {
        (&r.cpu_series, "engine CPU (cores)")
    } else {
        (&r.tick_series, "tick p99 per second (ms)")
    };
    let y_max = series.iter().map(|s| s.1).fold(0.1, f64::max) * 1.2;
    let t_max = series.last().map_or(1.0, |s| s.0).max(1.0);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(what, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("s").draw()?;
    chart.draw_series(LineSeries::new(series.iter().copied(), &BLUE))?;
    root.present()?;
    Ok(())
}
