//! `confer bench jitter`: the adaptive jitter buffer over the simulated-network presets or
//! over traces a user recorded, scored against the hindsight oracle
//! (definitions in `confer_engine::jitter_eval`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use confer_codecs::decoder::AudioEncoder;
use confer_codecs::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use confer_engine::jitter_eval::{EvalConfig, EvalReport, evaluate};
use confer_engine::netsim::{LinkConfig, NetSim, Trace, TraceLink, presets};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

#[derive(Args, Debug)]
pub struct JitterArgs {
    /// A network preset to run (repeatable): lan, wifi, cellular, congested, satellite.
    /// Default: every preset, unless --trace is given.
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,
    /// A recorded trace to replay (repeatable): CSV with the header `seq,send_ms,arrival_ms`,
    /// one row per packet sent every 20 ms, arrival_ms empty when lost.
    #[arg(long = "trace", value_name = "FILE")]
    pub traces: Vec<PathBuf>,
    /// Seconds of traffic per preset run.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seed of the simulated network.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Frame-clock phases to average over (evenly spaced over one frame).
    #[arg(long, default_value_t = 4)]
    pub phases: u32,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot per run (delay over time and its distribution) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

pub fn run(args: JitterArgs) -> anyhow::Result<()> {
    if args.duration == 0 || args.duration > 24 * 3600 {
        bail!("--duration must be between 1 and 86400 seconds");
    }
    if args.phases == 0 || args.phases > 100 {
        bail!("--phases must be between 1 and 100");
    }
    let frames = speech_frames()?;
    let mut jobs: Vec<(String, Job)> = Vec::new();
    let names: Vec<String> = if args.presets.is_empty() && args.traces.is_empty() {
        presets().iter().map(|(n, _)| n.to_string()).collect()
    } else {
        args.presets.clone()
    };
    for name in names {
        let Some(link) = LinkConfig::by_name(&name) else {
            let known: Vec<_> = presets().iter().map(|(n, _)| *n).collect();
            bail!("unknown preset {name:?}; known: {}", known.join(", "));
        };
        jobs.push((name, Job::Preset(Box::new(link))));
    }
    for path in &args.traces {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening trace {}", path.display()))?;
        let trace = Trace::read_csv(std::io::BufReader::new(file))
            .with_context(|| format!("in trace {}", path.display()))?;
        if trace.packet_count() == 0 {
            bail!("trace {} has no packets", path.display());
        }
        let stem = path
            .file_stem()
            .map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
        jobs.push((stem, Job::Trace(trace)));
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating plot directory {}", dir.display()))?;
    }

    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    if !args.json {
        println!(
            "{:<12} {:>8} {:>9} {:>9} {:>8} {:>11} {:>10} {:>15} {:>7}",
            "run",
            "packets",
            "mean_ms",
            "p95_ms",
            "late_%",
            "concealed_%",
            "oracle_ms",
            "oracle_1pct_ms",
            "goal"
        );
    }
    let start = Instant::now();
    for (name, job) in &jobs {
        bar.set_message(name.clone());
        let report = run_job(name, job, start, &frames, &args)?;
        bar.suspend(|| print_report(&report, args.json));
        if let Some(dir) = &args.plot {
            let path = dir.join(format!("jitter-{name}.svg"));
            plot(&report, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

enum Job {
    Preset(Box<LinkConfig>),
    Trace(Trace),
}

fn run_job(
    name: &str,
    job: &Job,
    start: Instant,
    frames: &[Vec<u8>],
    args: &JitterArgs,
) -> anyhow::Result<EvalReport> {
    let decoder = || OpusDecoder::new(48_000).expect("48 kHz is a valid Opus rate");
    let mut cfg = EvalConfig {
        duration: Duration::from_secs(args.duration),
        phases: args.phases,
        ..EvalConfig::default()
    };
    let report = match job {
        Job::Preset(link) => {
            link.validate().context("preset")?;
            let make = || NetSim::new((**link).clone(), args.seed, start).expect("validated above");
            evaluate(name, make, start, frames, decoder, &cfg)?
        }
        Job::Trace(trace) => {
            let packets = TraceLink::<u64>::new(trace).packet_count();
            cfg.duration = cfg.interval * u32::try_from(packets).unwrap_or(u32::MAX);
            evaluate(name, || TraceLink::new(trace), start, frames, decoder, &cfg)?
        }
    };
    Ok(report)
}

/// The goal of the issue: mean delay <= 1.15 x oracle + 10 ms at <= 1% late loss.
fn goal_met(r: &EvalReport) -> bool {
    r.late_loss_pct <= 1.0 && r.mean_delay_ms <= 1.15 * r.oracle_delay_ms + 10.0
}

fn print_report(r: &EvalReport, json: bool) {
    if json {
        let v = serde_json::json!({
            "name": r.name,
            "packets": r.packets,
            "mean_delay_ms": round2(r.mean_delay_ms),
            "p95_delay_ms": round2(r.p95_delay_ms),
            "late_loss_pct": round2(r.late_loss_pct),
            "concealed_pct": round2(r.concealed_pct),
            "oracle_delay_ms": round2(r.oracle_delay_ms),
            "oracle_1pct_delay_ms": round2(r.oracle_1pct_delay_ms),
            "accelerated_ms": round2(r.jitter.accelerated_ms),
            "expanded_ms": round2(r.jitter.expanded_ms),
            "fec_recovered": r.jitter.fec_recovered,
            "goal_met": goal_met(r),
        });
        println!("{v}");
    } else {
        println!(
            "{:<12} {:>8} {:>9.1} {:>9.1} {:>8.2} {:>11.2} {:>10.1} {:>15.1} {:>7}",
            r.name,
            r.packets,
            r.mean_delay_ms,
            r.p95_delay_ms,
            r.late_loss_pct,
            r.concealed_pct,
            r.oracle_delay_ms,
            r.oracle_1pct_delay_ms,
            if goal_met(r) { "met" } else { "MISSED" }
        );
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The shipped speech sample as 20 ms Opus packets (with in-band FEC, as voice clients
/// send), decodable at 48 kHz.
fn speech_frames() -> anyhow::Result<Vec<Vec<u8>>> {
    let (sample_rate, pcm) = super::signals::speech_sample()?;
    let mut enc = OpusEncoder::new(OpusEncoderConfig {
        sample_rate,
        complexity: 5,
        ..OpusEncoderConfig::default()
    })?;
    let n = enc.frame_samples();
    let mut out = vec![0u8; 1500];
    pcm.chunks_exact(n)
        .map(|f| {
            let len = enc.encode(f, &mut out)?;
            Ok(out[..len].to_vec())
        })
        .collect()
}

fn plot(r: &EvalReport, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let t_max = r.delays.last().map_or(1.0, |d| d.0).max(1.0);
    let d_max = r
        .delays
        .iter()
        .map(|d| d.1)
        .fold(r.oracle_delay_ms, f64::max)
        .max(10.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{}: playout delay (mean {:.1} ms, oracle {:.1} ms, late {:.2}%)",
                r.name, r.mean_delay_ms, r.oracle_delay_ms, r.late_loss_pct
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max, 0.0..d_max)?;
    chart
        .configure_mesh()
        .x_desc("send time (s)")
        .y_desc("delay (ms)")
        .draw()?;
    chart
        .draw_series(
            r.delays
                .iter()
                .map(|&(t, d)| Circle::new((t, d), 1, BLUE.mix(0.5).filled())),
        )?
        .label("packet delay")
        .legend(|(x, y)| Circle::new((x, y), 3, BLUE.filled()));
    chart
        .draw_series(LineSeries::new(
            [(0.0, r.oracle_delay_ms), (t_max, r.oracle_delay_ms)],
            RED.stroke_width(1),
        ))?
        .label("oracle (best fixed delay)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let bins = 60usize;
    let width = d_max / bins as f64;
    let mut counts = vec![0u32; bins];
    for &(_, d) in &r.delays {
        let i = ((d / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let c_max = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut hist = ChartBuilder::on(&bottom)
        .caption("delay distribution", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..d_max, 0u32..c_max + c_max / 10 + 1)?;
    hist.configure_mesh()
        .x_desc("delay (ms)")
        .y_desc("packets")
        .draw()?;
    hist.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = i as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
    }))?;
    root.present()?;
    Ok(())
}
