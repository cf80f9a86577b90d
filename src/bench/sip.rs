//! `confer bench sip`: SIP dial-in under load, driven by sipp ([`super::sipp`]).
//!
//! Two questions, one mode each:
//!
//! - **Call rate** (default): sipp dials the room's number at a rate R for `--step-secs`,
//!   every call held `--call-secs` after the answer (with G.711 speech when `--media`),
//!   then hung up (BYE). R rises by `--step` until a step fails: a call failed, fewer
//!   calls completed than were placed, the answers came slower than R (below 95% of it:
//!   sipp could not keep the rate, or confer could not answer it), or the setup time
//!   p99 exceeded `--max-setup-ms` (default T1, 500 ms: the callers would retransmit,
//!   a backlog is building even if every call still gets through). The result,
//!   `max_rate_zero_failures`, is the highest rate whose step passed.
//! - **Concurrent callers** (`--concurrent`): N G.711 callers with media in the room
//!   (joining at `--ramp-rate`), held while the engine is measured for `--step-secs`; N
//!   rises by `--callers-step` until a call fails, the engine's tick p99 exceeds the
//!   frame, more than `--max-overrun-pct` of its ticks overrun (default 0.1%, the health
//!   rule of `confer bench`), or it stops receiving the callers' media. The result is
//!   `max_concurrent_callers`.
//!
//! By default confer runs in-process with SIP on a free loopback port, the number
//! mapped to a room created beforehand through the API (room size 100000), and the
//! limits a load from one source needs: no per-source rate limit (sipp is one source
//! sending everything) and room for 10000 calls (the transaction table follows the call
//! limit). `--config FILE` runs the in-process engine with a configuration of one's own
//! instead (its limits apply; the bench only moves the listeners to free ports and adds
//! the number). `--target` calls a running confer; `--api` then names its control API
//! for `/metrics`.
//!
//! Per step the bench reports sipp's side (calls, failures and their status codes, setup
//! time INVITE -> 200, the achieved answer rate, sipp's CPU) and the engine's
//! (`/metrics` before and after: CPU, tick duration, overruns, RTP datagrams in, and
//! the `confer_sip_*` counters). sipp shares the machine with the engine in-process,
//! so its CPU is part of every result: see `sipp_cpu_pct`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use confer_engine::jitter_eval::quantile;
use serde::Serialize;
use serde_json::json;

use super::prom::Scrape;
use super::signals::{BenchCodec, Signals};
use super::sipp::{self, Outcome, Plan, Workdir};
use crate::config::{Config, DialIn};

/// The number dialled when none is given.
const DEFAULT_NUMBER: &str = "+15555550123";
/// The room the in-process engine maps it to.
const ROOM: &str = "bench-sip";
/// How long callers settle (jitter buffers converge) before the measured window.
const SETTLE: Duration = Duration::from_secs(3);
/// A step passes only if answers come at least this share of the asked rate.
const RATE_KEPT: f64 = 0.95;
/// And a concurrent level only if the engine receives this share of the media.
const MEDIA_KEPT: f64 = 0.95;
/// The frame of the pcap the callers play, ms.
const PCAP_FRAME_MS: f64 = 20.0;
/// The engine's histograms of stage durations, and the tick's series.
const STAGE_HIST: &str = "confer_stage_duration_seconds";
const TICK_LABELS: &str = "stage=\"tick\"";

/// `confer bench sip` options.
#[derive(Args, Debug, Clone)]
pub struct SipArgs {
    /// Where to call: `HOST:PORT` or `sip:NUMBER@HOST:PORT` of a running confer (SIP over
    /// UDP). Default: confer in-process, configured for the load (see --config).
    #[arg(long, value_name = "SIP_URI_OR_ADDR")]
    pub target: Option<String>,
    /// The control API of --target (e.g. http://127.0.0.1:8080): its /metrics give the
    /// engine's side. Without it only sipp's side is reported.
    #[arg(long, value_name = "URL", requires = "target")]
    pub api: Option<String>,
    /// sipp's own IPv4 address (SIP and media). Default: 127.0.0.1 for a loopback
    /// target, else sipp's choice.
    #[arg(long)]
    pub local_ip: Option<Ipv4Addr>,
    /// The number to dial (a dial-in number of the target).
    #[arg(long, default_value = DEFAULT_NUMBER)]
    pub number: String,
    /// First call rate, calls per second.
    #[arg(long, default_value_t = 100)]
    pub start_rate: u32,
    /// Rate increase per step, calls per second (0: one step).
    #[arg(long, default_value_t = 100)]
    pub step: u32,
    /// Highest rate tried, calls per second.
    #[arg(long, default_value_t = 1000)]
    pub max_rate: u32,
    /// Seconds per step: calls are placed for this long (rate), or the engine is
    /// measured for this long once every caller is in (--concurrent).
    #[arg(long, default_value_t = 5)]
    pub step_secs: u32,
    /// How long each call holds after the answer, seconds (rate mode).
    #[arg(long, default_value_t = 1.0)]
    pub call_secs: f64,
    /// Callers send G.711 u-law speech (RTP, 20 ms packets) while they hold.
    #[arg(long)]
    pub media: bool,
    /// Measure concurrent G.711 callers with media instead of the call rate.
    #[arg(long)]
    pub concurrent: bool,
    /// First number of concurrent callers.
    #[arg(long, default_value_t = 50)]
    pub start_callers: u32,
    /// Callers added per step (0: one step).
    #[arg(long, default_value_t = 50)]
    pub callers_step: u32,
    /// Most concurrent callers tried.
    #[arg(long, default_value_t = 2000)]
    pub max_callers: u32,
    /// Rate at which concurrent callers join, calls per second.
    #[arg(long, default_value_t = 100)]
    pub ramp_rate: u32,
    /// A rate step fails when the setup time (INVITE -> 200) p99 exceeds this, ms
    /// (default: T1, beyond which callers retransmit their INVITEs).
    #[arg(long, default_value_t = 500.0)]
    pub max_setup_ms: f64,
    /// Health limit on the engine's tick p99, ms (default: its frame, 20 ms).
    #[arg(long)]
    pub max_tick_ms: Option<f64>,
    /// Share of the window's ticks that may overrun (take over a frame), percent; the
    /// default is the health rule of `confer bench` (a 5 s window at 50 ticks/s then
    /// tolerates none).
    #[arg(long, default_value_t = 0.1)]
    pub max_overrun_pct: f64,
    /// A TOML configuration for the in-process engine (its limits apply; SIP and the
    /// control API move to free loopback ports and the number is added).
    #[arg(long, value_name = "FILE", conflicts_with = "target")]
    pub config: Option<PathBuf>,
    /// Media worker threads of the in-process engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// `SCHED_FIFO` priority of the in-process engine's media threads (0: the normal
    /// scheduler). Default: the engine's default.
    #[arg(long)]
    pub realtime_priority: Option<u8>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// p50, p99 and the largest value.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Spread {
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: quantile(&v, 1.0),
        })
    }
}

/// The engine's side of a window, from two scrapes of `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineSide {
    /// The engine's CPU, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Tick duration, ms.
    pub tick_ms: Option<Spread>,
    /// Ticks in the window.
    pub ticks: Option<u64>,
    /// Ticks that took longer than a frame.
    pub overruns: Option<u64>,
    /// RTP datagrams the engine received per second.
    pub rtp_in_per_s: Option<f64>,
    /// `confer_sip_*`: counters' increase in the window (non-zero ones), gauges' value at
    /// its end.
    pub sip: BTreeMap<String, f64>,
}

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub struct RateStep {
    /// Calls per second asked of sipp.
    pub rate: u32,
    /// Answers (200) per second from the first to the last.
    pub achieved_rate: Option<f64>,
    /// INVITEs per second sipp placed (short of `rate`: sipp could not keep it).
    pub placed_rate: Option<f64>,
    /// Calls placed.
    pub calls: u64,
    /// Calls that completed (answered, held, hung up).
    pub calls_ok: u64,
    /// Calls that failed.
    pub calls_failed: u64,
    /// sipp's failure kinds.
    pub failures: BTreeMap<String, u64>,
    /// Status codes of unexpected responses.
    pub unexpected_statuses: BTreeMap<u16, u64>,
    /// Retransmissions by sipp (requests confer answered late or lost).
    pub retransmissions: u64,
    /// INVITE -> 200, ms (sipp's resolution: 1 ms).
    pub setup_ms: Option<Spread>,
    /// sipp's CPU, percent of one core.
    pub sipp_cpu_pct: f64,
    /// Most calls the engine held at once (sampled every 250 ms).
    pub peak_calls: Option<u64>,
    /// Most live SIP transactions (same sampling).
    pub peak_transactions: Option<u64>,
    /// The engine's side.
    pub engine: EngineSide,
    /// No call failed, all completed, the rate was kept.
    pub passed: bool,
    /// Why not.
    pub failed_because: Vec<String>,
}

/// One concurrent-callers step.
#[derive(Debug, Clone, Serialize)]
pub struct CallersStep {
    /// Callers asked for.
    pub callers: u32,
    /// Calls the engine held when the window started.
    pub joined: u64,
    /// Calls that completed.
    pub calls_ok: u64,
    /// Calls that failed.
    pub calls_failed: u64,
    /// sipp's failure kinds.
    pub failures: BTreeMap<String, u64>,
    /// Status codes of unexpected responses.
    pub unexpected_statuses: BTreeMap<u16, u64>,
    /// INVITE -> 200, ms.
    pub setup_ms: Option<Spread>,
    /// RTP datagrams per second the callers should send (50 each).
    pub rtp_expected_per_s: f64,
    /// sipp's CPU in the window, percent of one core.
    pub sipp_cpu_pct: f64,
    /// The engine's side in the window.
    pub engine: EngineSide,
    /// Every call succeeded and the engine stayed healthy.
    pub passed: bool,
    /// Why not.
    pub failed_because: Vec<String>,
}

/// What a mode found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Results {
    /// The call rate.
    Rate {
        /// Calls sent G.711 media.
        media: bool,
        /// How long each call held, seconds.
        call_secs: f64,
        /// The highest rate whose step passed, calls per second.
        max_rate_zero_failures: Option<u32>,
        /// Every step, in order.
        steps: Vec<RateStep>,
    },
    /// Concurrent callers with media.
    Concurrent {
        /// Callers joined at this rate, calls per second.
        ramp_rate: u32,
        /// The tick p99 limit, ms.
        max_tick_ms: f64,
        /// The most callers whose step passed.
        max_concurrent_callers: Option<u32>,
        /// Every step, in order.
        steps: Vec<CallersStep>,
    },
}

/// `--json`: one object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `sip`.
    pub benchmark: &'static str,
    /// The engine measured.
    pub engine: String,
    /// Where sipp called.
    pub target: String,
    /// The number it dialled.
    pub number: String,
    /// sipp's version.
    pub sipp: Option<String>,
    /// CPUs of this machine (sipp and an in-process engine share them).
    pub cpus: usize,
    /// `/proc/loadavg` when the bench started (other work on the machine).
    pub loadavg_at_start: String,
    /// Seconds per step.
    pub step_secs: u32,
    /// The mode and its results.
    #[serde(flatten)]
    pub results: Results,
    /// Why the ramp ended.
    pub stopped_because: String,
}

/// The engine's control API.
struct Api {
    base: String,
    agent: ureq::Agent,
    in_process: bool,
}

/// One scrape with the time and the engine's CPU seconds.
struct Snapshot {
    at: Instant,
    scrape: Scrape,
    sip: BTreeMap<String, f64>,
    cpu_s: Option<f64>,
}

impl Api {
    fn new(base: &str, in_process: bool) -> anyhow::Result<Api> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let api = Api {
            base: base.trim_end_matches('/').to_owned(),
            agent,
            in_process,
        };
        api.text("/healthz")
            .with_context(|| format!("confer's API at {} does not answer", api.base))?;
        Ok(api)
    }

    fn text(&self, path: &str) -> anyhow::Result<String> {
        let mut resp = self.agent.get(&format!("{}{path}", self.base)).call()?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: {status} {text}");
        }
        Ok(text)
    }

    fn create_room(&self, name: &str) -> anyhow::Result<()> {
        let mut resp = self
            .agent
            .post(&format!("{}/v1/rooms", self.base))
            .send_json(json!({ "name": name, "max_participants": 100_000 }))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            bail!(
                "creating room {name}: {status} {}",
                resp.body_mut().read_to_string().unwrap_or_default()
            );
        }
        Ok(())
    }

    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let text = self.text("/metrics")?;
        let scrape = Scrape::parse(&text);
        let cpu_s = if self.in_process {
            crate::host::proc_stat_cpu_s("/proc/self/stat")
        } else {
            scrape.get("process_cpu_seconds_total")
        };
        Ok(Snapshot {
            at: Instant::now(),
            sip: sip_series(&text),
            scrape,
            cpu_s,
        })
    }
}

/// The `confer_sip_*` samples of a scrape.
fn sip_series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("confer_sip_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// What the engine did between two snapshots.
fn engine_side(a: &Snapshot, b: &Snapshot) -> EngineSide {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let mut side = EngineSide {
        cpu_pct: a
            .cpu_s
            .zip(b.cpu_s)
            .map(|(x, y)| 100.0 * (y - x).max(0.0) / secs),
        ..EngineSide::default()
    };
    if let (Some(x), Some(y)) = (
        a.scrape.hist(STAGE_HIST, TICK_LABELS),
        b.scrape.hist(STAGE_HIST, TICK_LABELS),
    ) {
        let d = y.since(&x);
        side.ticks = Some(d.count as u64);
        side.tick_ms = (|| {
            Some(Spread {
                p50: d.quantile(0.5)? * 1000.0,
                p99: d.quantile(0.99)? * 1000.0,
                max: d.quantile(1.0)? * 1000.0,
            })
        })();
    }
    let delta = |name: &str| Some((b.scrape.get(name)? - a.scrape.get(name)?).max(0.0));
    side.overruns = delta("confer_tick_overruns_total").map(|v| v as u64);
    side.rtp_in_per_s = delta("confer_datagrams_received_total").map(|v| v / secs);
    for (series, &v) in &b.sip {
        let name = series.split('{').next().unwrap_or(series);
        if name.ends_with("_total") {
            let d = (v - a.sip.get(series).copied().unwrap_or(0.0)).max(0.0);
            if d > 0.0 {
                side.sip.insert(series.clone(), d);
            }
        } else {
            side.sip.insert(series.clone(), v);
        }
    }
    side
}

/// Where and how the calls go.
struct Target {
    sip: SocketAddr,
    number: String,
    local_ip: Option<Ipv4Addr>,
    api: Option<Api>,
    engine: String,
    frame_ms: f64,
}

impl Target {
    fn gauge(&self, name: &str) -> Option<u64> {
        let s = self.api.as_ref()?.snapshot().ok()?;
        s.scrape.get(name).map(|v| v.max(0.0) as u64)
    }

    /// Waits until the engine holds no call (at most `wait`).
    fn drain(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && self.gauge("confer_sip_calls").is_some_and(|n| n > 0) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `sip:NUMBER@HOST:PORT`, `HOST:PORT` or `HOST` -> (address, number in the URI).
fn parse_target(t: &str) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let rest = t.strip_prefix("sip:").unwrap_or(t);
    let (user, host) = match rest.split_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h),
        None => (None, rest),
    };
    let host = host.split(';').next().unwrap_or(host);
    let with_port = if host.parse::<SocketAddr>().is_ok()
        || (host.contains(':') && !host.starts_with('[') && host.matches(':').count() == 1)
    {
        host.to_owned()
    } else {
        format!("{host}:5060")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving --target {t}"))?
        .next()
        .with_context(|| format!("--target {t} has no address"))?;
    Ok((addr, user))
}

/// The in-process engine's configuration.
fn in_process_config(args: &SipArgs, data: &Path) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(file) => Config::load(Some(file))?,
        None => Config {
            rtp_port_min: 20_000,
            rtp_port_max: 29_999,
            data_dir: data.to_owned(),
            // sipp is one source that sends every call's messages.
            sip_rate_per_second: 0,
            sip_max_calls: 10_000,
            media_workers: args.workers,
            realtime_priority: args
                .realtime_priority
                .unwrap_or(Config::default().realtime_priority),
            ..Config::default()
        },
    };
    cfg.http_listen = "127.0.0.1:0".parse()?;
    cfg.sip_listen = "127.0.0.1:0".parse()?;
    cfg.sip_tls_listen = None;
    cfg.sip_tls_cert = None;
    cfg.sip_tls_key = None;
    if !cfg.dial_in.iter().any(|d| d.number == args.number) {
        cfg.dial_in.push(DialIn::room(args.number.clone(), ROOM));
    }
    cfg.validate()
        .context("the in-process engine's configuration")?;
    Ok(cfg)
}

fn validate(args: &SipArgs) -> anyhow::Result<()> {
    if args.step_secs == 0 || args.step_secs > 3600 {
        bail!("--step-secs must be 1..=3600");
    }
    if !(0.0..=3600.0).contains(&args.call_secs) {
        bail!("--call-secs must be 0..=3600");
    }
    if args.concurrent {
        if args.start_callers == 0 || args.max_callers < args.start_callers {
            bail!("--start-callers must be at least 1 and at most --max-callers");
        }
        if args.ramp_rate == 0 {
            bail!("--ramp-rate must be at least 1");
        }
    } else if args.start_rate == 0 || args.max_rate < args.start_rate {
        bail!("--start-rate must be at least 1 and at most --max-rate");
    }
    Ok(())
}

/// Entry point of `confer bench sip`.
pub fn run(args: SipArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let Some(sipp_bin) = sipp::find() else {
        bail!("sipp is not installed (Debian/Ubuntu: apt-get install sip-tester)");
    };
    let work = Workdir::create()?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let data = work.path().join("confer-data");
    let mut running = None;
    let target = match &args.target {
        Some(t) => {
            let (sip, user) = parse_target(t)?;
            let local_ip = args.local_ip.or(match sip.ip() {
                IpAddr::V4(ip) if ip.is_loopback() => Some(Ipv4Addr::LOCALHOST),
                _ => None,
            });
            Target {
                sip,
                number: user.unwrap_or_else(|| args.number.clone()),
                local_ip,
                api: args
                    .api
                    .as_deref()
                    .map(|u| Api::new(u, false))
                    .transpose()?,
                engine: format!("confer at {sip}"),
                frame_ms: 20.0,
            }
        }
        None => {
            let cfg = in_process_config(&args, &data)?;
            let r = crate::serve::spawn_with(&cfg, true)?;
            let sip = r.sip.as_ref().context("SIP did not start")?.udp;
            let api = Api::new(&format!("http://{}", r.http), true);
            let http = r.http;
            running = Some(r);
            let api = api?;
            let room = cfg
                .dial_in
                .iter()
                .find(|d| d.number == args.number)
                .map_or(ROOM, |d| d.room.as_str());
            api.create_room(room)?;
            Target {
                sip,
                number: args.number.clone(),
                local_ip: Some(Ipv4Addr::LOCALHOST),
                api: Some(api),
                engine: format!(
                    "confer {} in-process (SIP udp:{sip}, API http://{http})",
                    env!("CARGO_PKG_VERSION")
                ),
                frame_ms: f64::from(cfg.frame_ms),
            }
        }
    };
    let result = if args.concurrent {
        concurrent(&args, &sipp_bin, &work, &target)
    } else {
        rate(&args, &sipp_bin, &work, &target)
    };
    if let Some(r) = running {
        r.stop()?;
    }
    let (results, stopped_because) = result?;
    let report = Report {
        benchmark: "sip",
        engine: target.engine.clone(),
        target: format!("udp:{}", target.sip),
        number: target.number.clone(),
        sipp: sipp::version(&sipp_bin),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg_at_start: loadavg,
        step_secs: args.step_secs,
        results,
        stopped_because,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn progress(args: &SipArgs, line: &str) {
    if !args.json {
        eprintln!("{line}");
    }
}

/// Rate mode (see the module docs).
fn rate(
    args: &SipArgs,
    sipp_bin: &Path,
    work: &Workdir,
    t: &Target,
) -> anyhow::Result<(Results, String)> {
    let hold = Duration::from_secs_f64(args.call_secs);
    if args.media {
        let signals = Signals::new(BenchCodec::Pcmu)?;
        work.write_pcap(&signals.speech, args.call_secs + 1.0)?;
    }
    let mut steps: Vec<RateStep> = Vec::new();
    let mut best = None;
    let mut r = args.start_rate;
    let stopped_because = loop {
        if steps.is_empty() {
            progress(args, RATE_HEADER);
        }
        let step = rate_step(args, sipp_bin, work, t, r, hold)?;
        progress(args, &rate_line(&step));
        let passed = step.passed;
        let why = step.failed_because.join("; ");
        steps.push(step);
        if !passed {
            break format!("{r} calls/s failed: {why}");
        }
        best = Some(r);
        if args.step == 0 {
            break "one step (--step 0)".to_owned();
        }
        if r.saturating_add(args.step) > args.max_rate {
            break format!("reached --max-rate {}", args.max_rate);
        }
        r += args.step;
    };
    Ok((
        Results::Rate {
            media: args.media,
            call_secs: args.call_secs,
            max_rate_zero_failures: best,
            steps,
        },
        stopped_because,
    ))
}

fn rate_step(
    args: &SipArgs,
    sipp_bin: &Path,
    work: &Workdir,
    t: &Target,
    rate: u32,
    hold: Duration,
) -> anyhow::Result<RateStep> {
    let calls = u64::from(rate) * u64::from(args.step_secs);
    let timeout = Duration::from_secs(u64::from(args.step_secs) + 45) + hold;
    let plan = Plan {
        target: t.sip,
        number: t.number.clone(),
        local_ip: t.local_ip,
        rate: f64::from(rate),
        calls,
        limit: (f64::from(rate) * (args.call_secs + 30.0)).ceil() as u64,
        hold,
        media: args.media,
        timeout,
    };
    let before = t.api.as_ref().map(Api::snapshot).transpose()?;
    let mut sipp = sipp::Running::start(sipp_bin, work, &plan)?;
    let (mut peak_calls, mut peak_tx) = (None::<u64>, None::<u64>);
    while !sipp.exited() {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(s) = t.api.as_ref().and_then(|a| a.snapshot().ok()) {
            let g = |n: &str| s.scrape.get(n).map(|v| v.max(0.0) as u64);
            peak_calls = peak_calls.max(g("confer_sip_calls"));
            peak_tx = peak_tx.max(g("confer_sip_transactions"));
        }
    }
    let out = sipp.finish(work, timeout + Duration::from_secs(5))?;
    t.drain(Duration::from_secs(10));
    let after = t.api.as_ref().map(Api::snapshot).transpose()?;
    let engine = before
        .as_ref()
        .zip(after.as_ref())
        .map_or_else(EngineSide::default, |(a, b)| engine_side(a, b));
    let achieved = out.answer_rate();
    let mut why = call_failures(&out, calls);
    if let Some(a) = achieved
        && a < RATE_KEPT * f64::from(rate)
    {
        why.push(format!(
            "answers came at {a:.0}/s, below {:.0}% of the rate{}",
            RATE_KEPT * 100.0,
            sipp_bound(&out)
        ));
    }
    if let Some(setup) = Spread::of(&out.setup_ms)
        && setup.p99 > args.max_setup_ms
    {
        why.push(format!(
            "setup p99 {:.0} ms > {:.0} ms",
            setup.p99, args.max_setup_ms
        ));
    }
    Ok(RateStep {
        rate,
        achieved_rate: achieved,
        placed_rate: out.placed_rate(),
        calls,
        calls_ok: out.ok,
        calls_failed: out.failed,
        failures: out.failures.clone(),
        unexpected_statuses: out.unexpected_statuses.clone(),
        retransmissions: out.retransmissions,
        setup_ms: Spread::of(&out.setup_ms),
        sipp_cpu_pct: 100.0 * out.cpu_s / out.wall_s.max(1e-3),
        peak_calls,
        peak_transactions: peak_tx,
        engine,
        passed: why.is_empty(),
        failed_because: why,
    })
}

/// Why sipp's calls did not all succeed (empty when they did).
fn call_failures(out: &Outcome, calls: u64) -> Vec<String> {
    let mut why = Vec::new();
    if out.killed {
        why.push("sipp did not finish in time".to_owned());
    }
    if out.failed > 0 {
        let kinds: Vec<String> = out
            .failures
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .chain(
                out.unexpected_statuses
                    .iter()
                    .map(|(c, n)| format!("{n} x {c}")),
            )
            .collect();
        why.push(format!(
            "{} calls failed ({})",
            out.failed,
            kinds.join(", ")
        ));
    }
    if out.ok < calls && out.failed == 0 {
        why.push(format!("{} of {calls} calls completed", out.ok));
    }
    if out.exit_code != Some(0) && why.is_empty() {
        why.push(format!(
            "sipp exited with {:?}: {}",
            out.exit_code, out.stderr
        ));
    }
    why
}

/// A note when sipp itself was the bottleneck (about a core busy).
fn sipp_bound(out: &Outcome) -> &'static str {
    if out.cpu_s / out.wall_s.max(1e-3) > 0.9 {
        " (sipp was CPU-bound)"
    } else {
        ""
    }
}

/// Concurrent mode (see the module docs).
fn concurrent(
    args: &SipArgs,
    sipp_bin: &Path,
    work: &Workdir,
    t: &Target,
) -> anyhow::Result<(Results, String)> {
    let signals = Signals::new(BenchCodec::Pcmu)?;
    let max_tick = args.max_tick_ms.unwrap_or(t.frame_ms);
    let mut steps: Vec<CallersStep> = Vec::new();
    let mut best = None;
    let mut n = args.start_callers;
    let stopped_because = loop {
        if steps.is_empty() {
            progress(args, CALLERS_HEADER);
        }
        let step = callers_step(args, sipp_bin, work, t, &signals, n, max_tick)?;
        progress(args, &callers_line(&step));
        let passed = step.passed;
        let why = step.failed_because.join("; ");
        steps.push(step);
        if !passed {
            break format!("{n} callers failed: {why}");
        }
        best = Some(n);
        if args.callers_step == 0 {
            break "one step (--callers-step 0)".to_owned();
        }
        if n.saturating_add(args.callers_step) > args.max_callers {
            break format!("reached --max-callers {}", args.max_callers);
        }
        n += args.callers_step;
    };
    Ok((
        Results::Concurrent {
            ramp_rate: args.ramp_rate,
            max_tick_ms: max_tick,
            max_concurrent_callers: best,
            steps,
        },
        stopped_because,
    ))
}

fn callers_step(
    args: &SipArgs,
    sipp_bin: &Path,
    work: &Workdir,
    t: &Target,
    signals: &Signals,
    n: u32,
    max_tick: f64,
) -> anyhow::Result<CallersStep> {
    let ramp = Duration::from_secs_f64(f64::from(n) / f64::from(args.ramp_rate));
    let window = Duration::from_secs(u64::from(args.step_secs));
    // Joining, settling, the window, and a second to spare before the BYEs.
    let hold = ramp + SETTLE + window + Duration::from_secs(2);
    work.write_pcap(&signals.speech, hold.as_secs_f64() + 1.0)?;
    let timeout = ramp + hold + Duration::from_secs(45);
    let plan = Plan {
        target: t.sip,
        number: t.number.clone(),
        local_ip: t.local_ip,
        rate: f64::from(args.ramp_rate),
        calls: u64::from(n),
        limit: u64::from(n),
        hold,
        media: true,
        timeout,
    };
    let mut sipp = sipp::Running::start(sipp_bin, work, &plan)?;
    // Wait for every caller (without the API: for as long as joining should take).
    let spare = Duration::from_secs(if t.api.is_some() { 10 } else { 2 });
    let deadline = Instant::now() + ramp + spare;
    while Instant::now() < deadline && !sipp.exited() {
        if t.gauge("confer_sip_calls")
            .is_some_and(|c| c >= u64::from(n))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(SETTLE);
    let before = t.api.as_ref().map(Api::snapshot).transpose()?;
    let sipp_cpu0 = sipp.cpu_s();
    let w0 = Instant::now();
    std::thread::sleep(window);
    let after = t.api.as_ref().map(Api::snapshot).transpose()?;
    let sipp_cpu_pct = 100.0 * (sipp.cpu_s() - sipp_cpu0) / w0.elapsed().as_secs_f64();
    let joined = before
        .as_ref()
        .and_then(|s| s.scrape.get("confer_sip_calls"))
        .map_or(0, |v| v.max(0.0) as u64);
    let out = sipp.finish(work, timeout + Duration::from_secs(5))?;
    t.drain(Duration::from_secs(10));
    let engine = before
        .as_ref()
        .zip(after.as_ref())
        .map_or_else(EngineSide::default, |(a, b)| engine_side(a, b));
    let rtp_expected = joined as f64 * 1000.0 / PCAP_FRAME_MS;
    let mut why = call_failures(&out, u64::from(n));
    if t.api.is_some() && joined < u64::from(n) {
        why.push(format!("only {joined} of {n} callers were in at once"));
    }
    if let Some(tick) = engine.tick_ms
        && tick.p99 > max_tick
    {
        why.push(format!("tick p99 {:.1} ms > {max_tick} ms", tick.p99));
    }
    if let (Some(o), Some(ticks)) = (engine.overruns, engine.ticks)
        && o as f64 > args.max_overrun_pct / 100.0 * ticks as f64
    {
        why.push(format!("{o} of {ticks} ticks overran"));
    }
    if let Some(rx) = engine.rtp_in_per_s
        && rx < MEDIA_KEPT * rtp_expected
    {
        why.push(format!(
            "the engine received {rx:.0} of {rtp_expected:.0} RTP packets/s (sipp at {sipp_cpu_pct:.0}% CPU)"
        ));
    }
    Ok(CallersStep {
        callers: n,
        joined,
        calls_ok: out.ok,
        calls_failed: out.failed,
        failures: out.failures.clone(),
        unexpected_statuses: out.unexpected_statuses.clone(),
        setup_ms: Spread::of(&out.setup_ms),
        rtp_expected_per_s: rtp_expected,
        sipp_cpu_pct,
        engine,
        passed: why.is_empty(),
        failed_because: why,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
}

const RATE_HEADER: &str =
    " rate achieved      ok failed  set50  set99   cpu%   sipp%  tick99 peak_tx  over verdict";
const CALLERS_HEADER: &str =
    "callers joined failed  rtp in/s  expected  tick50  tick99 tickmax  over   cpu%  sipp% verdict";

fn rate_line(s: &RateStep) -> String {
    format!(
        "{:>5} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>5} {}",
        s.rate,
        opt(s.achieved_rate, 1),
        s.calls_ok,
        s.calls_failed,
        opt(s.setup_ms.map(|x| x.p50), 0),
        opt(s.setup_ms.map(|x| x.p99), 0),
        opt(s.engine.cpu_pct, 0),
        format!("{:.0}", s.sipp_cpu_pct),
        opt(s.engine.tick_ms.map(|x| x.p99), 2),
        s.peak_transactions.map_or("-".into(), |v| v.to_string()),
        s.engine.overruns.map_or("-".into(), |v| v.to_string()),
        if s.passed {
            "ok".to_owned()
        } else {
            s.failed_because.join("; ")
        }
    )
}

fn callers_line(s: &CallersStep) -> String {
    format!(
        "{:>7} {:>6} {:>6} {:>9} {:>9} {:>7} {:>7} {:>7} {:>5} {:>6} {:>6} {}",
        s.callers,
        s.joined,
        s.calls_failed,
        opt(s.engine.rtp_in_per_s, 0),
        format!("{:.0}", s.rtp_expected_per_s),
        opt(s.engine.tick_ms.map(|x| x.p50), 2),
        opt(s.engine.tick_ms.map(|x| x.p99), 2),
        opt(s.engine.tick_ms.map(|x| x.max), 2),
        s.engine.overruns.map_or("-".into(), |v| v.to_string()),
        opt(s.engine.cpu_pct, 0),
        format!("{:.0}", s.sipp_cpu_pct),
        if s.passed {
            "ok".to_owned()
        } else {
            s.failed_because.join("; ")
        }
    )
}

fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} CPUs, load average {} at start; {})",
        r.engine,
        r.cpus,
        r.loadavg_at_start,
        r.sipp.as_deref().unwrap_or("sipp")
    );
    match &r.results {
        Results::Rate {
            media,
            call_secs,
            max_rate_zero_failures,
            steps,
        } => {
            let _ = writeln!(
                out,
                "call rate: {} s per step, calls held {call_secs} s, media: {media}",
                r.step_secs
            );
            let _ = writeln!(out, "{RATE_HEADER}");
            for s in steps {
                let _ = writeln!(out, "{}", rate_line(s));
            }
            let _ = writeln!(
                out,
                "max rate with 0 failed calls: {} ({})",
                max_rate_zero_failures.map_or("none".to_owned(), |v| format!("{v} calls/s")),
                r.stopped_because
            );
        }
        Results::Concurrent {
            max_concurrent_callers,
            steps,
            ..
        } => {
            let _ = writeln!(
                out,
                "concurrent G.711 callers with media: {} s measured per step",
                r.step_secs
            );
            let _ = writeln!(out, "{CALLERS_HEADER}");
            for s in steps {
                let _ = writeln!(out, "{}", callers_line(s));
            }
            let _ = writeln!(
                out,
                "max concurrent callers: {} ({})",
                max_concurrent_callers.map_or("none".to_owned(), |v| v.to_string()),
                r.stopped_because
            );
        }
    }
    out
}
