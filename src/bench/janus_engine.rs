//! Janus AudioBridge as an engine of `confer bench` (`--target janus`): the same synthetic
//! load as confer gets, driven through [`super::janus`]. Janus exposes no tick or stage
//! timings, so its side of the table is what the load generator sees from outside plus
//! its process's CPU time (`/proc/<pid>/stat`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::conference::{Engine, JoinOpts, Joined, ServerView};
use super::janus::{Janus, JanusCodec, RoomOpts};
use super::load::LEVEL_EXT_ID;
use super::signals::BenchCodec;
use crate::host::proc_stat_cpu_s;

/// A Janus process started for the bench.
pub struct JanusEngine {
    janus: Option<Janus>,
    work_dir: PathBuf,
    version: String,
    next_room: u64,
    before: Option<(f64, Instant)>,
    last: Option<(f64, Instant)>,
    cpu_series: Vec<(f64, f64)>,
}

impl JanusEngine {
    /// Starts Janus with a private configuration in a temporary directory.
    pub fn start(_codec: BenchCodec) -> anyhow::Result<JanusEngine> {
        let work_dir =
            std::env::temp_dir().join(format!("confer-bench-janus-{}", std::process::id()));
        let janus = Janus::start(&work_dir)?;
        let version = janus.version();
        Ok(JanusEngine {
            janus: Some(janus),
            work_dir,
            version,
            next_room: 1000,
            before: None,
            last: None,
            cpu_series: Vec::new(),
        })
    }

    fn janus(&mut self) -> anyhow::Result<&mut Janus> {
        self.janus
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("janus has stopped"))
    }

    fn cpu_s(&self) -> Option<f64> {
        let pid = self.janus.as_ref()?.pid();
        proc_stat_cpu_s(&format!("/proc/{pid}/stat"))
    }

    /// Stops Janus and removes its work directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(j) = self.janus.take() {
            j.stop()?;
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
        Ok(())
    }
}

impl Engine for JanusEngine {
    fn name(&self) -> String {
        format!("janus {}", self.version)
    }

    fn media_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn create_room(&mut self, _index: usize) -> anyhow::Result<u64> {
        let id = self.next_room;
        self.next_room += 1;
        self.janus()?.create_room(id, &RoomOpts::default())?;
        Ok(id)
    }

    fn join(&mut self, room: u64, client: SocketAddr, p: &JoinOpts) -> anyhow::Result<Joined> {
        let codec = match p.codec {
            BenchCodec::Opus => JanusCodec::Opus,
            BenchCodec::Pcmu => JanusCodec::Pcmu,
        };
        let ext = p.levels.then_some(LEVEL_EXT_ID);
        let j = self
            .janus()?
            .join_rtp(room, client, codec, p.codec.payload_type(), ext)?;
        Ok(Joined {
            room,
            id: j.id,
            server: j.janus_rtp,
        })
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        let c = self.cpu_s().map(|c| (c, Instant::now()));
        self.before = c;
        self.last = c;
        Ok(())
    }

    fn sample(&mut self, at: Duration, _probe: Option<&Joined>) -> anyhow::Result<()> {
        if let Some((c0, t0)) = self.last
            && t0.elapsed() >= Duration::from_millis(900)
            && let Some(c) = self.cpu_s()
        {
            self.cpu_series
                .push((at.as_secs_f64(), (c - c0) / t0.elapsed().as_secs_f64()));
            self.last = Some((c, Instant::now()));
        }
        Ok(())
    }

    fn end(&mut self, _generator_cores: f64) -> anyhow::Result<ServerView> {
        let cpu_cores = match (self.before.take(), self.cpu_s()) {
            (Some((c0, t0)), Some(c1)) => Some((c1 - c0) / t0.elapsed().as_secs_f64().max(1e-3)),
            _ => None,
        };
        Ok(ServerView {
            cpu_cores,
            cpu_series: std::mem::take(&mut self.cpu_series),
            ..ServerView::default()
        })
    }

    fn delete_room(&mut self, room: u64) -> anyhow::Result<()> {
        self.janus()?.destroy_room(room)
    }
}
